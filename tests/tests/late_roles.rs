//! Roles that start late (or restart) pick up what was accepted while they were
//! away: state lives in JetStream, not in a role's memory.

use jetmesh_shared::wire::{PlanCounts, PlanStatus, Report};
use jetmesh_shared::{CancellationToken, Mesh};
use jetmesh_tests::{NatsServer, test_config, wait_for_capability};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_accepted_while_router_aggregator_and_summary_are_down_completes_when_they_start() {
    let server = NatsServer::start();
    let mesh = Mesh::connect(test_config(&server.url()), "test")
        .await
        .unwrap();
    let first = CancellationToken::new();
    let mut roles = tokio::task::JoinSet::new();
    roles.spawn(jetmesh_chief::run(mesh.clone(), first.clone()));
    roles.spawn(jetmesh_planner::run(mesh.clone(), first.clone()));
    roles.spawn(jetmesh::run_pool(mesh.clone(), "math", None, first.clone()));
    wait_for_capability(&mesh, "math").await;

    let client = server.client().await;
    let mut reports = client
        .subscribe("mesh.evt.final_report.late1")
        .await
        .unwrap();
    let reply = client
        .request(
            "mesh.plans.submit",
            json!({"plan_id": "late1", "subtasks": [
                {"id": "a", "type": "math", "action": "sum", "args": [1, 2]},
                {"id": "b", "type": "math", "action": "multiply", "args": [3, 4], "depends_on": ["a"]}
            ]})
            .to_string()
            .into(),
        )
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(accepted["status"], "accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mesh.results.get("task.late1.a").await.unwrap().is_none(),
        "nothing routes yet"
    );

    // Now the rest of the mesh starts.
    roles.spawn(jetmesh_router::run(mesh.clone(), first.clone()));
    roles.spawn(jetmesh_aggregator::run(mesh.clone(), first.clone()));
    roles.spawn(jetmesh_summary::run(mesh.clone(), first.clone()));
    let msg = tokio::time::timeout(
        Duration::from_secs(15),
        futures::StreamExt::next(&mut reports),
    )
    .await
    .expect("the report comes once the roles are up")
    .unwrap();
    let report: Report = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!((report.completed, report.failed), (2, 0));
    assert_eq!(report.tasks[1].output, Some(json!(12)));
    let counts: PlanCounts = mesh
        .get_json(&mesh.results, "plan.late1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.status, PlanStatus::Completed);
    first.cancel();
    while let Some(r) = roles.join_next().await {
        r.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_announced_again_after_the_dedupe_window_does_not_rerun_finished_tasks() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.mesh.dedupe_window_secs = 1;
    // The plan is accepted though `slow` has no worker: it waits for one.
    config.router.when_no_workers = jetmesh_shared::config::WhenNoWorkers::Wait;
    let mesh = jetmesh_tests::InProcessMesh::start(config).await;
    let m = &mesh.mesh;
    let client = server.client().await;
    // `slow` belongs to a pool with no worker, so the plan stays running.
    let entry = br#"{"capability":"slow","actions":["go"],"pool":"slow","encoding":"json"}"#;
    m.registry
        .put("cap.slow", entry.to_vec().into())
        .await
        .unwrap();
    let reply = client
        .request(
            "mesh.plans.submit",
            json!({"plan_id": "again", "subtasks": [
                {"id": "a", "type": "math", "action": "sum", "args": [1, 2]},
                {"id": "b", "type": "slow", "action": "go"}
            ]})
            .to_string()
            .into(),
        )
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    let started = std::time::Instant::now();
    while m.results.get("task.again.a").await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Any write for `a` from now on (even one the bucket refuses) shows here.
    let mut writes = client
        .subscribe("$KV.mesh_results.task.again.a")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let last_queued = || async {
        let mut q = js.get_stream("MESH_QUEUES").await.unwrap();
        q.info().await.unwrap().state.last_sequence
    };
    let before = last_queued().await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the window
    // A resuming chief announces the plan again.
    m.publish_event(
        jetmesh_shared::EventKind::PlanReady,
        "again",
        &json!({"plan_id": "again", "total_tasks": 2, "at": jiff::Timestamp::now()}),
    )
    .await
    .unwrap();
    // The router handles it: it queues b again (b has no result, and the
    // window is past), which shows the announcement was acted on ...
    let started = std::time::Instant::now();
    while last_queued().await == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b is queued again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let q = js.get_stream("MESH_QUEUES").await.unwrap();
    for seq in before + 1..=last_queued().await {
        let msg = q.get_raw_message(seq).await.unwrap();
        let task: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(task["id"], "b", "only b is queued again: {task}");
    }
    // ... and a, which has its result, is not run again.
    let rerun = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut writes),
    )
    .await;
    assert!(
        rerun.is_err(),
        "task a ran again after the plan was announced again"
    );
    mesh.stop().await;
}
