//! Connection loss: nats-server (file storage) is killed and restarted on the
//! same port in the middle of a run. Every role must reconnect, re-establish
//! its KV watches and consumers, and finish every plan and every task that
//! JetStream acknowledged. Bounded in time; cleaned up on drop.

use jetmesh_tests::{InProcessMesh, NatsServer, Workload, request_json, sim_config};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_completes_across_a_server_restart() {
    let mut server = NatsServer::start();
    let m = InProcessMesh::start(sim_config(&server.url(), 8)).await;
    let mesh = m.mesh.clone();

    // Plans of 60 tasks of 30 ms on 8 slots, plus single tasks: about
    // two seconds of work, so the restart lands in the middle of it.
    let work = Workload {
        prefix: "restart".into(),
        plans: 4,
        tasks: 60,
        single: 100,
        ms: 30,
    };
    work.submit(&mesh).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let done_before = work.done(&mesh).await;
    server.restart();
    let restarted = Instant::now();
    work.finished(&mesh, Duration::from_secs(90)).await;

    // Watches and consumers were re-established, not just drained: a plan
    // submitted after the restart runs end to end.
    let reply = request_json(
        &mesh.client,
        &mesh.names.plans_submit(),
        &json!({"wait": true, "subtasks": [
            {"id": "a", "type": "sim", "action": "echo", "x": 1},
            {"id": "b", "type": "sim", "action": "sleep", "ms": 10, "depends_on": ["a"]}
        ]}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(reply["completed"], 2, "{reply}");
    eprintln!(
        "{done_before} tasks were done before the restart; everything finished {:?} after it",
        restarted.elapsed()
    );
    assert!(
        done_before < work.total(),
        "the restart came after the work was done; the test proves nothing"
    );
    m.stop().await;
}
