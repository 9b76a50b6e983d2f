//! Connection loss: nats-server (file storage) is killed and restarted on the
//! same port in the middle of a run. Every role must reconnect, re-establish
//! its KV watches and consumers, and finish every plan and every task that
//! JetStream acknowledged. Bounded in time; cleaned up on drop.

use jetmesh_shared::Config;
use jetmesh_shared::wire::TaskResult;
use jetmesh_tests::{InProcessMesh, NatsServer, request_json, test_config};
use serde_json::json;
use std::time::{Duration, Instant};

const PLANS: usize = 4;
const PLAN_TASKS: usize = 60;
const SINGLE: usize = 100;

fn config(url: &str) -> Config {
    let mut c = test_config(url);
    c.pools.clear();
    let mut sim = jetmesh_shared::config::PoolConfig::new("sim", 8);
    sim.ack_wait_secs = 5;
    c.pools.insert("sim".into(), sim);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_completes_across_a_server_restart() {
    let mut server = NatsServer::start();
    let m = InProcessMesh::start(config(&server.url())).await;
    let mesh = m.mesh.clone();

    // Plans of 60 tasks of 30 ms on 8 slots, plus single tasks: about
    // two seconds of work, so the restart lands in the middle of it.
    let mut plan_ids = Vec::new();
    for p in 0..PLANS {
        let subtasks: Vec<_> = (0..PLAN_TASKS)
            .map(|i| json!({"id": format!("t{i}"), "type": "sim", "action": "sleep", "ms": 30}))
            .collect();
        let reply = request_json(
            &mesh.client,
            &mesh.names.plans_submit(),
            &json!({"plan_id": format!("restart{p}"), "subtasks": subtasks}),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(reply["status"], "accepted", "{reply}");
        plan_ids.push(format!("restart{p}"));
    }
    for i in 0..SINGLE {
        let body = json!({"plan_id": "single", "id": format!("s{i}"), "ms": 20});
        mesh.js
            .publish(mesh.names.tasks("sim", "sleep"), body.to_string().into())
            .await
            .unwrap()
            .await
            .expect("acknowledged by JetStream");
    }

    tokio::time::sleep(Duration::from_millis(700)).await;
    let done_before = mesh
        .scan(&mesh.results, "task.>")
        .await
        .unwrap()
        .len();
    server.restart();
    let restarted = Instant::now();

    // Every plan is reported and every task has a result.
    let deadline = Duration::from_secs(90);
    for plan in &plan_ids {
        loop {
            let view = match mesh
                .client
                .request(mesh.names.plans_get(plan), "".into())
                .await
            {
                Ok(reply) => serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap(),
                Err(_) => json!({}),
            };
            if view["status"] == "reported" {
                assert_eq!(view["completed"], PLAN_TASKS, "{plan}: {}", view["report"]);
                break;
            }
            assert!(
                restarted.elapsed() < deadline,
                "{plan} not reported {deadline:?} after the restart: {}\n{}",
                json!({"status": view["status"], "completed": view["completed"], "pending": view["pending"]}),
                server.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    loop {
        let results = mesh
            .scan(&mesh.results, &mesh.names.task_key_plan("single"))
            .await
            .unwrap_or_default();
        if results.len() == SINGLE {
            for e in results {
                let r: TaskResult = serde_json::from_slice(&e.value).unwrap();
                assert!(r.is_success(), "{r:?}");
            }
            break;
        }
        assert!(
            restarted.elapsed() < deadline,
            "{} of {SINGLE} single tasks finished {deadline:?} after the restart",
            results.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        done_before < PLANS * PLAN_TASKS + SINGLE,
        "the restart came after the work was done; the test proves nothing"
    );
    m.stop().await;
}
