//! Protocol v1 from a plain client: JSON bodies with no headers, exactly what
//! `nats req` and `nats pub` send; and the service API listing every role.

use futures::StreamExt;
use jetmesh_shared::wire::TaskResult;
use jetmesh_tests::{InProcessMesh, NatsServer, stored_result, test_config};
use serde_json::{Value, json};
use std::time::Duration;

async fn req(client: &async_nats::Client, subject: &str, body: &str) -> Value {
    let reply = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .expect("reply");
    serde_json::from_slice(&reply.payload).expect("JSON reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_run_round_trip_plain_json() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    let r = req(&client, "mesh.run.math.sum", r#"{"args":[1,2,3]}"#).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["output"], 6);
    assert_eq!(r["attempt"], 1);
    assert!(r["worker"].as_str().unwrap().starts_with("math-"));
    let plan_id = r["plan_id"].as_str().unwrap().to_string();
    let task_id = r["task_id"].as_str().unwrap().to_string();
    // The reply is also the stored result of a plan of one.
    let stored: TaskResult = mesh
        .mesh
        .get_json(&mesh.mesh.results, &format!("task.{plan_id}.{task_id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.output, Some(json!(6)));
    // An empty body is an empty parameter object.
    let r = req(&client, "mesh.run.date.today", "").await;
    assert_eq!(r["status"], "success", "{r}");
    // Named ids are kept.
    let r = req(
        &client,
        "mesh.run.date.timezone",
        r#"{"id":"tz1","datetime":"2024-01-15T10:00:00Z","to":"Asia/Ho_Chi_Minh"}"#,
    )
    .await;
    assert_eq!(
        (r["plan_id"].as_str(), r["task_id"].as_str()),
        (Some("tz1"), Some("tz1"))
    );
    assert_eq!(r["output"]["datetime"], "2024-01-15T17:00:00+07:00");
    // A task error is a result with status error.
    let r = req(&client, "mesh.run.math.divide", r#"{"args":[1,0]}"#).await;
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["code"], "division_by_zero");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_tasks_round_trip_plain_json() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    let m = &mesh.mesh;
    let mut results = client.subscribe("$KV.mesh_results.task.>").await.unwrap();
    client.flush().await.unwrap();

    // Fire and forget with an id: the result lands at task.<id>.<id>.
    client
        .publish(
            "mesh.tasks.math.multiply",
            r#"{"id":"job42","args":[5,6]}"#.into(),
        )
        .await
        .unwrap();
    // With a plan id and a task id.
    client
        .publish(
            "mesh.tasks.math.sum",
            r#"{"plan_id":"batch7","id":"a","args":[1,1]}"#.into(),
        )
        .await
        .unwrap();
    // No ids: `nats req` shows the stream sequence, and the ids are tasks-<seq>.
    let ack = req(&client, "mesh.tasks.math.subtract", r#"{"args":[10,4]}"#).await;
    let seq = ack["seq"].as_u64().expect("a JetStream PubAck");
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("result in time");
    }
    let get = |key: String| async move { stored_result(m, &key).await };
    assert_eq!(get("task.job42.job42".into()).await.output, Some(json!(30)));
    assert_eq!(get("task.batch7.a".into()).await.output, Some(json!(2)));
    assert_eq!(
        get(format!("task.tasks-{seq}.tasks-{seq}")).await.output,
        Some(json!(6))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_answers_the_service_api() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .unwrap();
    let mut names = std::collections::BTreeSet::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        names.insert(v["name"].as_str().unwrap().to_string());
    }
    for role in [
        "chief",
        "planner",
        "router",
        "worker",
        "aggregator",
        "summary",
    ] {
        assert!(
            names.contains(&format!("jetmesh-{role}")),
            "{role} missing from {names:?}"
        );
    }
    let info = client
        .request("$SRV.INFO.jetmesh-router", "".into())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info["endpoints"].to_string().contains("mesh.run.>"),
        "{info}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_result_of_a_task_wins_and_is_what_mesh_run_answers() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.mesh.dedupe_window_secs = 1;
    let mesh = InProcessMesh::start(config).await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let queued = || async {
        let mut q = js.get_stream("MESH_QUEUES").await.unwrap();
        q.info().await.unwrap().state.last_sequence
    };
    // Every write of the task's result, stored or refused, is seen here.
    let mut writes = client
        .subscribe("$KV.mesh_results.task.r1.r1")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let r = req(&client, "mesh.run.math.sum", r#"{"id":"r1","args":[1,2]}"#).await;
    assert_eq!(r["output"], 3);
    let first: Value = serde_json::from_slice(&writes.next().await.unwrap().payload).unwrap();
    assert_eq!(first["output"], 3);
    let after_first = queued().await;
    // Inside the de-duplication window: JetStream drops the queued copy, and
    // the reply is the recorded result, not a new run.
    let r = req(&client, "mesh.run.math.sum", r#"{"id":"r1","args":[7,7]}"#).await;
    assert_eq!(r["output"], 3, "{r}");
    assert_eq!(
        queued().await,
        after_first,
        "the copy was a duplicate: not queued"
    );
    // After the window the task is queued and runs again; its result is not
    // recorded over the first, and the reply is what the bucket holds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = req(&client, "mesh.run.math.sum", r#"{"id":"r1","args":[7,7]}"#).await;
    assert_eq!(r["output"], 3, "{r}");
    assert_eq!(
        queued().await,
        after_first + 1,
        "queued again after the window"
    );
    let again = tokio::time::timeout(Duration::from_secs(5), writes.next())
        .await
        .expect("the task ran again and tried to record its result")
        .unwrap();
    let again: Value = serde_json::from_slice(&again.payload).unwrap();
    assert_eq!(
        again["output"], 14,
        "the second run's result, refused by the bucket"
    );
    let stored: TaskResult = mesh
        .mesh
        .get_json(&mesh.mesh.results, "task.r1.r1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.output, Some(json!(3)));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_capabilities_disappear_without_stalling_reads() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let m = &mesh.mesh;
    let entry = br#"{"capability":"gone","actions":["x"],"pool":"gone","encoding":"json"}"#;
    m.registry
        .put("cap.gone", entry.to_vec().into())
        .await
        .unwrap();
    m.registry.delete("cap.gone").await.unwrap();
    let caps = tokio::time::timeout(Duration::from_secs(5), jetmesh_shared::registry::list(m))
        .await
        .expect("a scan over a deleted key does not stall")
        .unwrap();
    let names: Vec<_> = caps.0.iter().map(|c| c.capability.as_str()).collect();
    assert_eq!(names, ["date", "math"]);
    mesh.stop().await;
}
