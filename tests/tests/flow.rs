//! The main path end to end on a real nats-server: the seed's example plan,
//! dependencies, failures that fail alone, plan status, and both encodings.

use jetmesh_shared::codec::{CONTENT_TYPE, MSGPACK};
use jetmesh_shared::config::PoolConfig;
use jetmesh_shared::wire::{PlanCounts, PlanStatus, Report, TaskResult};
use jetmesh_tests::{InProcessMesh, NatsServer, report_task, test_config};
use serde_json::{Value, json};
use std::time::Duration;

async fn request(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        client.send_request(
            subject.to_string(),
            async_nats::Request::new()
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_secs(30))),
        ),
    )
    .await
    .expect("reply in time")
    .expect("request");
    assert!(reply.headers.is_none(), "JSON replies carry no headers");
    serde_json::from_slice(&reply.payload).expect("reply is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_plan_runs_end_to_end_with_dependencies() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    let plan = json!({
        "plan_id": "abc123",
        "wait": true,
        "subtasks": [
            {"id": "t1", "type": "math", "action": "sum", "args": [1, 2, 3]},
            {"id": "t2", "type": "date", "action": "today"},
            {"id": "t4", "type": "math", "action": "multiply", "args": [5, 6], "depends_on": ["t1"]}
        ]
    });
    let report: Report =
        serde_json::from_value(request(&client, "mesh.plans.submit", plan).await).unwrap();
    assert_eq!(report.plan_id, "abc123");
    assert_eq!(
        (
            report.total_tasks,
            report.completed,
            report.failed,
            report.pending
        ),
        (3, 3, 0, 0)
    );
    let by_id = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap().clone();
    assert_eq!(by_id("t1").output, Some(json!(6)));
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    assert_eq!(by_id("t2").output, Some(json!(today)));
    assert_eq!(by_id("t4").output, Some(json!(30)));
    assert!(
        report
            .markdown
            .contains("| t4 | math | multiply | success | 30 |"),
        "{}",
        report.markdown
    );

    // Results and counts are readable in mesh_results.
    let m = &mesh.mesh;
    let t1: TaskResult = m
        .get_json(&m.results, "task.abc123.t1")
        .await
        .unwrap()
        .unwrap();
    let t4: TaskResult = m
        .get_json(&m.results, "task.abc123.t4")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t1.output, Some(json!(6)));
    assert!(
        t4.finished_at.unwrap() >= t1.finished_at.unwrap(),
        "t4 ran after t1"
    );
    let counts: PlanCounts = m
        .get_json(&m.results, "plan.abc123")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            counts.total_tasks,
            counts.completed,
            counts.failed,
            counts.pending
        ),
        (3, 3, 0, 0)
    );
    assert_eq!(counts.status, PlanStatus::Completed);
    let stored: Report = m
        .get_json(&m.results, "report.abc123")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.completed, 3);

    // The dependent waited: it was not dispatched before t1's result existed.
    let t1_rev = m
        .results
        .entry("task.abc123.t1")
        .await
        .unwrap()
        .unwrap()
        .revision;
    let t4_rev = m
        .results
        .entry("task.abc123.t4")
        .await
        .unwrap()
        .unwrap()
        .revision;
    assert!(t4_rev > t1_rev);

    // mesh.plans.get shows every task.
    let view = request(&client, "mesh.plans.get.abc123", json!({})).await;
    assert_eq!(view["completed"], 3);
    assert_eq!(view["tasks"]["t4"]["output"], 30);
    assert_eq!(view["status"], "reported");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_fails_alone_and_its_dependents_are_skipped() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    let report = request(
        &client,
        "mesh.plans.submit",
        json!({"wait": true, "subtasks": [
            {"id": "ok", "type": "math", "action": "sum", "args": [2, 2]},
            {"id": "bad", "type": "math", "action": "divide", "args": [1, 0]},
            {"id": "after", "type": "math", "action": "sum", "args": [1], "depends_on": ["bad"]}
        ]}),
    )
    .await;
    assert_eq!(report["status"], "completed");
    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(2))
    );
    let task = |id: &str| report_task(&report, id);
    assert_eq!(task("ok")["output"], 4);
    assert_eq!(task("bad")["error"]["code"], "division_by_zero");
    assert_eq!(task("after")["error"]["code"], "dependency_failed");
    // mesh.plans.get lists tasks in plan order, not sorted by id.
    let plan_id = report["plan_id"].as_str().unwrap();
    let view = request(&client, &format!("mesh.plans.get.{plan_id}"), json!({})).await;
    let order: Vec<&String> = view["tasks"].as_object().unwrap().keys().collect();
    assert_eq!(order, ["ok", "bad", "after"]);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_plans_complete_without_waiting_and_msgpack_pools_work() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    let mut math = PoolConfig::new("math", 4);
    math.encoding = jetmesh_shared::codec::Encoding::Msgpack;
    config.pools.insert("math".into(), math);
    let mesh = InProcessMesh::start(config).await;
    let client = server.client().await;
    let mut sub = client.subscribe("mesh.evt.>").await.unwrap();
    let accepted = request(
        &client,
        "mesh.plans.submit",
        json!({"plan_id": "p-async", "subtasks": [
            {"type": "math", "action": "average", "args": [1, 2, 3, 6]},
            {"type": "date", "action": "add_days", "args": ["2024-02-28", 1]}
        ]}),
    )
    .await;
    assert_eq!(
        accepted,
        json!({"plan_id": "p-async", "status": "accepted", "total_tasks": 2})
    );
    // Every seed channel is published, in order, for this plan.
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut sub))
            .await
            .expect("event in time")
            .unwrap();
        kinds.push(msg.subject.as_str().split('.').nth(2).unwrap().to_string());
    }
    assert_eq!(
        kinds,
        [
            "task_available",
            "plan_ready",
            "aggregation_ready",
            "final_report"
        ]
    );
    let m = &mesh.mesh;
    let t1: TaskResult = m
        .get_json(&m.results, "task.p-async.t1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t1.output, Some(json!(3)));
    let t2: TaskResult = m
        .get_json(&m.results, "task.p-async.t2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t2.output, Some(json!("2024-02-29")));

    // A msgpack request gets a msgpack reply.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE, MSGPACK);
    let body = rmp_serde::to_vec_named(&json!({"args": [4, 5]})).unwrap();
    let reply = client
        .request_with_headers("mesh.run.math.multiply", headers, body.into())
        .await
        .unwrap();
    assert_eq!(
        reply.headers.unwrap().get(CONTENT_TYPE).unwrap().as_str(),
        MSGPACK
    );
    let result: TaskResult = rmp_serde::from_slice(&reply.payload).unwrap();
    assert_eq!(result.output, Some(json!(20)), "{result:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_and_fan_in_release_in_dependency_order() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    // c0 → c1 → … → c9, then ten independent f* tasks, then `join` on all of them.
    let mut subtasks = vec![json!({"id": "c0", "type": "math", "action": "sum", "args": [0]})];
    for i in 1..10 {
        subtasks.push(json!({"id": format!("c{i}"), "type": "math", "action": "sum", "args": [i], "depends_on": [format!("c{}", i - 1)]}));
    }
    let mut all: Vec<String> = vec!["c9".into()];
    for i in 0..10 {
        subtasks.push(
            json!({"id": format!("f{i}"), "type": "math", "action": "multiply", "args": [i, 2]}),
        );
        all.push(format!("f{i}"));
    }
    subtasks.push(json!({"id": "join", "type": "date", "action": "today", "depends_on": all}));
    let report = request(
        &client,
        "mesh.plans.submit",
        json!({"plan_id": "chain", "wait": true, "subtasks": subtasks}),
    )
    .await;
    assert_eq!(report["completed"], 21, "{report}");
    let m = &mesh.mesh;
    let rev = |id: &str| {
        let key = format!("task.chain.{id}");
        async move { m.results.entry(key).await.unwrap().unwrap().revision }
    };
    for i in 1..10 {
        assert!(
            rev(&format!("c{i}")).await > rev(&format!("c{}", i - 1)).await,
            "c{i} ran after its dependency"
        );
    }
    let join = rev("join").await;
    for id in all {
        assert!(join > rev(&id).await, "join ran after {id}");
    }
    mesh.stop().await;
}
