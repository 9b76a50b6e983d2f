//! Timeouts: a task's `timeout_ms` bounds one attempt, and a plan's
//! `deadline_ms` ends every task still unfinished when it passes. Either way
//! the task is recorded as `timeout` and the plan completes with it counted.

use jetmesh_shared::Config;
use jetmesh_tests::{InProcessMesh, NatsServer, report_task, request_json, test_config};
use serde_json::json;
use std::time::{Duration, Instant};

fn config(url: &str) -> Config {
    let mut c = test_config(url);
    c.pools.clear();
    c.pools.insert(
        "sim".into(),
        jetmesh_shared::config::PoolConfig::new("sim", 4),
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_timeouts_and_plan_deadlines_complete_the_plan() {
    let server = NatsServer::start();
    let m = InProcessMesh::start(config(&server.url())).await;
    let started = Instant::now();
    let report = request_json(
        &m.mesh.client,
        &m.mesh.names.plans_submit(),
        &json!({"wait": true, "deadline_ms": 1500, "subtasks": [
            {"id": "quick", "type": "sim", "action": "sleep", "ms": 50},
            {"id": "bounded", "type": "sim", "action": "sleep", "ms": 5000, "timeout_ms": 200},
            {"id": "slow", "type": "sim", "action": "sleep", "ms": 20000},
            {"id": "after", "type": "sim", "action": "echo", "depends_on": ["slow"]}
        ]}),
        Duration::from_secs(30),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        (
            &report["completed"],
            &report["failed"],
            &report["total_tasks"]
        ),
        (&json!(1), &json!(3), &json!(4)),
        "{report}"
    );
    assert_eq!(report_task(&report, "quick")["status"], "success");
    for id in ["bounded", "slow"] {
        assert_eq!(
            report_task(&report, id)["error"]["code"],
            "timeout",
            "{id}: {report}"
        );
    }
    // `after` never ran: it timed out at the deadline or failed with its dependency.
    let after = &report_task(&report, "after")["error"]["code"];
    assert!(
        after == "timeout" || after == "dependency_failed",
        "{report}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the plan ended {took:?} after submit; its deadline was 1.5 s"
    );
    // A deadline of zero is refused up front.
    let refused = request_json(
        &m.mesh.client,
        &m.mesh.names.plans_submit(),
        &json!({"deadline_ms": 0, "subtasks": [{"type": "sim", "action": "echo"}]}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(refused["error"]["code"], "bad_request", "{refused}");
    m.stop().await;
}
