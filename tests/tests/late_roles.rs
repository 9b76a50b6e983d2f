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
    roles.spawn(jetmesh_worker::run(
        mesh.clone(),
        "math",
        None,
        first.clone(),
    ));
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
