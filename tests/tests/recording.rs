//! Recording results when the store refuses writes: a failed task fails all
//! its dependents at once, naming the root cause; when those writes are
//! refused the router raises an alert and reports itself degraded, keeps
//! trying, and the plan still completes once the store takes writes again.

use futures::StreamExt;
use jetmesh_shared::config::WhenNoWorkers;
use jetmesh_shared::wire::{CapabilityEntry, TaskResult};
use jetmesh_shared::{Error, ErrorCode};
use jetmesh_tests::{InProcessMesh, NatsServer, report_task, request_json, test_config};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_failure_write_is_retried_and_the_plan_still_completes() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    // t1 runs on a pool nobody serves: this test plays its worker.
    config.router.when_no_workers = WhenNoWorkers::Wait;
    let mesh = InProcessMesh::start(config).await;
    let m = mesh.mesh.clone();
    let c = server.client().await;
    jetmesh_shared::registry::register(
        &m,
        &CapabilityEntry {
            capability: "manual".into(),
            actions: vec!["x".into()],
            pool: "manual".into(),
            encoding: Default::default(),
            description: None,
            registered_at: Some(jiff::Timestamp::now()),
            schemas: Default::default(),
            sessions: false,
        },
    )
    .await
    .unwrap();
    let mut alerts = c.subscribe("mesh.alerts.results").await.unwrap();
    let mut health = c.subscribe("mesh.health.router.*").await.unwrap();
    c.flush().await.unwrap();
    let plan = json!({"plan_id": "pf", "wait": true, "subtasks": [
        {"id": "t1", "type": "manual", "action": "x"},
        {"id": "t2", "type": "math", "action": "sum", "args": [1, 2], "depends_on": ["t1"]},
        {"id": "t3", "type": "math", "action": "sum", "args": [3, 4], "depends_on": ["t2"]},
        {"id": "t4", "type": "math", "action": "sum", "args": [5, 6]}
    ]});
    let submit = tokio::spawn({
        let c = c.clone();
        async move { request_json(&c, "mesh.plans.submit", &plan, Duration::from_secs(60)).await }
    });
    // t4 done: the plan is under way, t2 and t3 wait on t1.
    jetmesh_tests::stored_result(&m, "task.pf.t4").await;

    // The store refuses writes: the results stream is full (discard new).
    let js = async_nats::jetstream::new(c.clone());
    let limit = |extra: i64| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("KV_mesh_results").await.unwrap();
            let info = stream.info().await.unwrap();
            let mut cfg = info.config.clone();
            cfg.discard = async_nats::jetstream::stream::DiscardPolicy::New;
            cfg.max_messages = (info.state.messages as i64).saturating_add(extra);
            js.update_stream(cfg).await.unwrap();
        }
    };
    // t1 fails, taking the last slot: the router must now fail t2 and t3.
    // (Another write, plan counts, may take the slot first: then again.)
    let failure = TaskResult::failure(&Error::new(
        ErrorCode::capability("manual_refusal"),
        "refused by hand",
    ))
    .for_task("pf", "t1");
    let body: bytes::Bytes = serde_json::to_vec(&failure).unwrap().into();
    let mut tries = 0;
    loop {
        limit(1).await;
        match m.results.create("task.pf.t1", body.clone()).await {
            Ok(_) => break,
            Err(e) => {
                tries += 1;
                assert!(tries < 5, "t1's result never fit: {e}");
            }
        }
    }

    let alert = tokio::time::timeout(Duration::from_secs(20), alerts.next())
        .await
        .expect("a refused result write raises an alert")
        .unwrap();
    let alert: Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(alert["kind"], "result_unrecorded", "{alert}");
    let degraded = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), health.next())
            .await
            .expect("the router says it is degraded")
            .unwrap();
        let event: Value = serde_json::from_slice(&event.payload).unwrap();
        if event["state"] == "degraded" {
            break event;
        }
    };
    assert!(
        degraded["detail"].as_str().unwrap().contains("results"),
        "{degraded}"
    );

    // The store takes writes again: the router's retries land.
    limit(i64::MAX / 2).await;
    let report = tokio::time::timeout(Duration::from_secs(60), submit)
        .await
        .expect("the plan completes")
        .unwrap();
    assert_eq!(report["completed"], 1, "{report}");
    assert_eq!(report["failed"], 3, "{report}");
    for id in ["t2", "t3"] {
        let t = report_task(&report, id);
        assert_eq!(t["error"]["code"], "dependency_failed", "{t}");
        let msg = t["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("task t1 failed (manual_refusal"),
            "{id} names the root cause, t1: {msg}"
        );
    }
    let recovered = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), health.next())
            .await
            .expect("the router says it recovered")
            .unwrap();
        let event: Value = serde_json::from_slice(&event.payload).unwrap();
        if event["state"] == "recovered" {
            break event;
        }
    };
    assert_eq!(recovered["detail"], "results");
    mesh.stop().await;
}
