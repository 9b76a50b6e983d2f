//! Seed section 5 on a running mesh: a pool process started later (`jetmesh
//! worker --pool late`, serving `sim`) makes its capability routable with no
//! restart; once every worker of it has stopped, requests fail at once with
//! `no_workers` instead of hanging, and work comes back when a worker does.

use jetmesh_shared::config::PoolConfig;
use jetmesh_tests::{InProcessMesh, NatsServer, Proc, request_json, test_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ENV: &[(&str, &str)] = &[
    ("JETMESH_POOLS__LATE__CAPABILITIES", "[\"sim\"]"),
    ("JETMESH_POOLS__LATE__WORKERS", "2"),
    ("JETMESH_HEALTH__HEARTBEAT_MS", "100"),
    ("JETMESH_HEALTH__DEAD_AFTER_MS", "1000"),
];

async fn echo(mesh: &jetmesh_shared::Mesh) -> (Value, Duration) {
    let started = Instant::now();
    let reply = request_json(
        &mesh.client,
        &mesh.names.run("sim", "echo"),
        // A task queued in the instant its last worker stops waits 2 s at most.
        &json!({"hello": "late", "timeout_ms": 2000}),
        Duration::from_secs(20),
    )
    .await;
    (reply, started.elapsed())
}

fn start_worker(url: &str) -> Proc {
    Proc::jetmesh_env(url, &["worker", "--pool", "late"], ENV)
}

async fn until_success(mesh: &jetmesh_shared::Mesh) -> Value {
    let started = Instant::now();
    loop {
        let (reply, _) = echo(mesh).await;
        if reply["status"] == "success" {
            return reply;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_started_later_is_routed_and_its_absence_is_a_clear_error() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.pools.clear();
    config
        .pools
        .insert("math".into(), PoolConfig::new("math", 2));
    config.health.heartbeat_ms = 100;
    config.health.dead_after_ms = 1000;
    config.autoscaler.interval_ms = 200;
    let m = InProcessMesh::start(config).await;
    let mesh = m.mesh.clone();

    // Step 0: nothing serves `sim` yet.
    let (reply, _) = echo(&mesh).await;
    assert_eq!(reply["error"]["code"], "unknown_capability", "{reply}");

    // Steps 1-4: start the pool; it registers `cap.sim`, creates its queue
    // consumer, and the router routes to it, unchanged and not restarted.
    let mut worker = start_worker(&server.url());
    let reply = until_success(&mesh).await;
    assert!(
        reply["worker"].as_str().unwrap().starts_with("late-"),
        "{reply}"
    );
    assert_eq!(reply["output"]["hello"], "late");
    // The router's pool view saw its heartbeat by now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every worker of the pool stops: requests get `no_workers` quickly.
    assert!(worker.terminate(Duration::from_secs(35)).success());
    let started = Instant::now();
    let refusal = loop {
        let (reply, took) = echo(&mesh).await;
        assert!(
            took < Duration::from_secs(3),
            "a request hung for {took:?}: {reply}"
        );
        if reply["status"] == "error" {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refusal["error"]["code"], "no_workers", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("jetmesh worker --pool late"), "{message}");
    // A plan needing it is refused too, before it is accepted.
    let plan = request_json(
        &mesh.client,
        &mesh.names.plans_submit(),
        &json!({"subtasks": [{"id": "a", "type": "sim", "action": "echo"}]}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(plan["error"]["code"], "no_workers", "{plan}");

    // A worker comes back: so does the capability.
    let _worker = start_worker(&server.url());
    until_success(&mesh).await;
    m.stop().await;
}
