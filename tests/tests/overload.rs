//! Pool overload on a real server: backpressure refuses new work with
//! `overloaded` and a retry hint while an accepted plan keeps running, high
//! priority overtakes a backlog of 1 000 low tasks, spillover sends work past
//! a pool's threshold to its backup pool and back, and the `priority` and
//! `round_robin` strategies choose among pools serving one capability.

use jetmesh_shared::config::{PoolConfig, Strategy};
use jetmesh_shared::wire::{Priority, TaskResult};
use jetmesh_shared::{Config, Mesh, codec};
use jetmesh_tests::{InProcessMesh, NatsServer, test_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn pool(slots: usize) -> PoolConfig {
    let mut p = PoolConfig::new("sim", slots).limits(1, slots);
    p.ack_wait_secs = 10;
    p
}

fn config(url: &str, pools: &[(&str, PoolConfig)]) -> Config {
    let mut c = test_config(url);
    c.pools.clear();
    c.health.heartbeat_ms = 100;
    c.autoscaler.interval_ms = 200;
    for (name, p) in pools {
        c.pools.insert(name.to_string(), p.clone());
    }
    c
}

fn plan(id: &str, n: usize, ms: u64, priority: &str) -> Value {
    let subtasks: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "type": "sim", "action": "sleep", "ms": ms, "priority": priority}))
        .collect();
    json!({"plan_id": id, "subtasks": subtasks})
}

async fn request_json(mesh: &Mesh, subject: &str, body: &Value) -> Value {
    jetmesh_tests::request_json(&mesh.client, subject, body, Duration::from_secs(15)).await
}

async fn submit(mesh: &Mesh, body: Value) -> Value {
    request_json(mesh, &mesh.names.plans_submit(), &body).await
}

/// The `n` results of `plan`, once all are stored (up to `within`).
async fn results(mesh: &Mesh, plan: &str, n: usize, within: Duration) -> Vec<TaskResult> {
    let started = Instant::now();
    loop {
        let entries = mesh
            .scan(&mesh.results, &mesh.names.task_key_plan(plan))
            .await
            .unwrap();
        if entries.len() >= n {
            return entries
                .iter()
                .map(|e| codec::from_json(&e.value).unwrap())
                .collect();
        }
        assert!(
            started.elapsed() < within,
            "{} of {n} results of {plan}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_key(mesh: &Mesh, key: &str) {
    for _ in 0..200 {
        if let Ok(Some(_)) = mesh.registry.get(key).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{key} never registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backpressure_refuses_new_work_and_accepted_plans_finish() {
    let server = NatsServer::start();
    let mut sim = pool(1);
    sim.max_backlog = 5;
    let m = InProcessMesh::start(config(&server.url(), &[("sim", sim)])).await;
    let mesh = m.mesh.clone();

    let accepted = submit(&mesh, plan("big", 24, 250, "normal")).await;
    assert_eq!(accepted["status"], "accepted", "{accepted}");

    // The autoscaler sees 23 waiting (> 5): the pool's status says it refuses.
    let started = Instant::now();
    loop {
        let status: Option<jetmesh_shared::wire::PoolStatus> = mesh
            .scale
            .get(mesh.names.status_key("sim"))
            .await
            .unwrap()
            .map(|v| codec::from_json(&v).unwrap());
        if status.as_ref().is_some_and(|s| s.refusing) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never refusing: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refusal = request_json(&mesh, &mesh.names.run("sim", "echo"), &json!({"x": 1})).await;
    assert_eq!(refusal["error"]["code"], "overloaded", "{refusal}");
    assert!(
        refusal["error"]["retry_after_ms"].as_u64().unwrap() >= 1000,
        "{refusal}"
    );
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pool sim is overloaded"),
        "{refusal}"
    );
    // A new plan too, and a task sent to mesh.tasks gets the error as its result.
    let refused = submit(&mesh, plan("more", 2, 1, "normal")).await;
    assert_eq!(refused["error"]["code"], "overloaded", "{refused}");
    mesh.js
        .publish(mesh.names.tasks("sim", "echo"), r#"{"id":"late"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let late = results(&mesh, "late", 1, Duration::from_secs(5)).await;
    assert_eq!(late[0].error.as_ref().unwrap().code, "overloaded");

    // The accepted plan runs to the end.
    let done = results(&mesh, "big", 24, Duration::from_secs(30)).await;
    assert!(done.iter().all(|r| r.is_success()), "{done:?}");
    // And once the backlog is gone, new work is taken again.
    let started = Instant::now();
    loop {
        let reply = request_json(&mesh, &mesh.names.run("sim", "echo"), &json!({"x": 2})).await;
        if reply["status"] == "success" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_priority_overtakes_a_backlog_of_a_thousand_low_tasks() {
    let server = NatsServer::start();
    let mut sim = pool(1);
    sim.queue_window = 5;
    sim.max_backlog = 0;
    let m = InProcessMesh::start(config(&server.url(), &[("sim", sim)])).await;
    let mesh = m.mesh.clone();

    let low = submit(&mesh, plan("low", 1000, 5, "low")).await;
    assert_eq!(low["status"], "accepted", "{low}");
    // Let the backlog form: the window holds 5 in the queue, the rest wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let high = request_json(
        &mesh,
        &mesh.names.run("sim", "echo"),
        &json!({"id": "vip", "priority": "high"}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(high["status"], "success", "{high}");
    // How many low tasks had finished when the high one did.
    let done_low = mesh
        .scan(&mesh.results, &mesh.names.task_key_plan("low"))
        .await
        .unwrap()
        .len();
    eprintln!("the high task took {took:?}; {done_low} of 1000 low tasks had finished");
    assert!(
        done_low < 200,
        "the high task waited for {done_low} low tasks (the window is 5)"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Every low task still runs.
    let all = results(&mesh, "low", 1000, Duration::from_secs(60)).await;
    assert!(all.iter().all(|r| r.is_success()));
    m.stop().await;
}

fn worker_pool(r: &TaskResult) -> String {
    let w = r.worker.clone().unwrap_or_default();
    w.rsplit_once('-').map(|(p, _)| p.to_string()).unwrap_or(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spillover_goes_to_the_backup_pool_and_back() {
    let server = NatsServer::start();
    let mut main = pool(1);
    main.spill_to = Some("spare".into());
    main.spill_at = 2;
    let spare = pool(2);
    let m = InProcessMesh::start(config(&server.url(), &[("main", main), ("spare", spare)])).await;
    let mesh = m.mesh.clone();
    // Both pools registered `sim`; `cap.sim` names whichever came first.
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "main")).await;
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "spare")).await;
    let first: jetmesh_shared::wire::CapabilityEntry = codec::from_json(
        &mesh
            .registry
            .get(mesh.names.cap_key("sim"))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    if first.pool != "main" {
        // `match` routes to the pool `cap.sim` names: make it the primary.
        let mut e = first.clone();
        e.pool = "main".into();
        mesh.registry
            .put(mesh.names.cap_key("sim"), codec::to_json(&e).unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let accepted = submit(&mesh, plan("burst", 12, 300, "normal")).await;
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    let done = results(&mesh, "burst", 12, Duration::from_secs(20)).await;
    let on_spare = done.iter().filter(|r| worker_pool(r) == "spare").count();
    let on_main = done.iter().filter(|r| worker_pool(r) == "main").count();
    eprintln!("burst: {on_main} on main, {on_spare} on spare");
    assert!(on_spare >= 3, "work past the threshold spilled: {on_spare}");
    assert!(on_main >= 2, "the primary kept its share: {on_main}");

    // With the backlog gone, work goes back to the primary.
    let after = submit(&mesh, plan("after", 2, 1, "normal")).await;
    assert_eq!(after["status"], "accepted", "{after}");
    let done = results(&mesh, "after", 2, Duration::from_secs(10)).await;
    assert!(done.iter().all(|r| worker_pool(r) == "main"), "{done:?}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn priority_and_round_robin_strategies() {
    let server = NatsServer::start();
    let mut vip = pool(2);
    vip.priorities = vec![Priority::High];
    let mut bulk = pool(2);
    bulk.priorities = vec![Priority::Normal, Priority::Low];
    let mut c = config(&server.url(), &[("vip", vip), ("bulk", bulk)]);
    c.router.strategies.insert("sim".into(), Strategy::Priority);
    let m = InProcessMesh::start(c).await;
    let mesh = m.mesh.clone();
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "vip")).await;
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "bulk")).await;
    let mut subtasks = Vec::new();
    for i in 0..6 {
        let p = if i % 2 == 0 { "high" } else { "low" };
        subtasks
            .push(json!({"id": format!("{p}{i}"), "type": "sim", "action": "echo", "priority": p}));
    }
    let reply = submit(&mesh, json!({"plan_id": "mixed", "subtasks": subtasks})).await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    for r in results(&mesh, "mixed", 6, Duration::from_secs(10)).await {
        let want = if r.task_id.as_deref().unwrap_or("").starts_with("high") {
            "vip"
        } else {
            "bulk"
        };
        assert_eq!(worker_pool(&r), want, "{r:?}");
    }
    m.stop().await;

    // Round robin over the same two pools.
    let server = NatsServer::start();
    let mut c = config(&server.url(), &[("one", pool(2)), ("two", pool(2))]);
    c.router
        .strategies
        .insert("sim".into(), Strategy::RoundRobin);
    let m = InProcessMesh::start(c).await;
    let mesh = m.mesh.clone();
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "one")).await;
    wait_for_key(&mesh, &mesh.names.cap_pool_key("sim", "two")).await;
    let reply = submit(&mesh, plan("rr", 10, 1, "normal")).await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    let done = results(&mesh, "rr", 10, Duration::from_secs(10)).await;
    let one = done.iter().filter(|r| worker_pool(r) == "one").count();
    assert_eq!((one, 10 - one), (5, 5), "{done:?}");
    m.stop().await;
}
