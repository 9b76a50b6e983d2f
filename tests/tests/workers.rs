//! Worker failures with real processes: a worker killed with SIGKILL in the
//! middle of a task (its task runs on another worker after the ack wait; the
//! health monitor declares it dead, alerts, and the survivor takes up its
//! slots), and a long task kept alive by in-progress acks. Bounded in time;
//! everything is cleaned up on drop.

use futures::StreamExt;
use jetmesh_shared::wire::{Alert, HealthEvent, ScaleDecision, TaskResult, WorkerHeartbeat};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec};
use jetmesh_tests::{NatsServer, Proc, SIGKILL, test_config, wait_ready};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const ACK_WAIT_SECS: u64 = 2;
const DEAD_AFTER_MS: u64 = 1500;

/// The pool `slow` serves `sim`, one slot per process, a short ack wait, and
/// a minimum of two slots; heartbeats are fast.
const ENV: &[(&str, &str)] = &[
    ("JETMESH_POOLS__SLOW__CAPABILITIES", "[\"sim\"]"),
    ("JETMESH_POOLS__SLOW__WORKERS", "1"),
    ("JETMESH_POOLS__SLOW__MIN", "2"),
    ("JETMESH_POOLS__SLOW__ACK_WAIT_SECS", "2"),
    ("JETMESH_HEALTH__HEARTBEAT_MS", "200"),
    ("JETMESH_HEALTH__DEAD_AFTER_MS", "1500"),
];

fn config(url: &str) -> Config {
    let mut c = test_config(url);
    c.pools.clear();
    c.health.heartbeat_ms = 200;
    c.health.dead_after_ms = DEAD_AFTER_MS;
    let mut slow = jetmesh_shared::config::PoolConfig::new("sim", 1);
    slow.min = 2;
    slow.ack_wait_secs = ACK_WAIT_SECS;
    c.pools.insert("slow".into(), slow);
    c
}

/// Every role but the workers, in this process.
fn start_roles(mesh: &Mesh, stop: &CancellationToken) -> JoinSet<jetmesh_shared::Result<()>> {
    let mut set = JoinSet::new();
    set.spawn(jetmesh_chief::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_planner::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_router::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_aggregator::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_summary::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_autoscaler::run(mesh.clone(), stop.clone()));
    set
}

async fn heartbeats(mesh: &Mesh) -> HashMap<String, WorkerHeartbeat> {
    let mut out = HashMap::new();
    for e in mesh.scan(&mesh.health, "worker.slow.*").await.unwrap() {
        let b: WorkerHeartbeat = codec::from_json(&e.value).unwrap();
        out.insert(b.instance.clone(), b);
    }
    out
}

/// Polls the heartbeats until `f` holds, up to `within`.
async fn until_beats(
    mesh: &Mesh,
    within: Duration,
    what: &str,
    f: impl Fn(&HashMap<String, WorkerHeartbeat>) -> bool,
) -> HashMap<String, WorkerHeartbeat> {
    let started = Instant::now();
    loop {
        let beats = heartbeats(mesh).await;
        if f(&beats) {
            return beats;
        }
        assert!(started.elapsed() < within, "{what} (heartbeats: {beats:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn result(mesh: &Mesh, plan: &str, task: &str, within: Duration) -> TaskResult {
    let key = mesh.names.task_key(plan, task);
    let started = Instant::now();
    loop {
        if let Some(r) = mesh.get_json(&mesh.results, &key).await.unwrap() {
            return r;
        }
        assert!(
            started.elapsed() < within,
            "no result for {plan}.{task} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit_sleep(mesh: &Mesh, plan: &str, ms: u64) {
    let body = serde_json::json!({"plan_id": plan, "id": "t1", "ms": ms});
    mesh.js
        .publish(mesh.names.tasks("sim", "sleep"), body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A server, the roles but workers in this process, and two `jetmesh worker`
/// processes of the pool `slow`, both heartbeating.
async fn two_workers() -> (
    NatsServer,
    Mesh,
    CancellationToken,
    JoinSet<jetmesh_shared::Result<()>>,
    [Proc; 2],
) {
    let server = NatsServer::start();
    let mesh = Mesh::connect(config(&server.url()), "test").await.unwrap();
    let stop = CancellationToken::new();
    let roles = start_roles(&mesh, &stop);
    let workers = [
        Proc::jetmesh_env(&server.url(), &["worker", "--pool", "slow"], ENV),
        Proc::jetmesh_env(&server.url(), &["worker", "--pool", "slow"], ENV),
    ];
    wait_ready(&mesh).await;
    until_beats(
        &mesh,
        Duration::from_secs(10),
        "two workers heartbeat",
        |b| b.len() == 2,
    )
    .await;
    (server, mesh, stop, roles, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_hands_it_on_and_is_replaced() {
    let (_server, mesh, stop, _roles, mut workers) = two_workers().await;

    let mut dead_events = mesh.client.subscribe("mesh.health.worker.*").await.unwrap();
    let mut alerts = mesh
        .client
        .subscribe(mesh.names.alerts("slow"))
        .await
        .unwrap();
    mesh.client.flush().await.unwrap();

    submit_sleep(&mesh, "killmid", 1500).await;
    let beats = until_beats(
        &mesh,
        Duration::from_secs(5),
        "a worker takes the task",
        |b| b.len() == 2 && b.values().filter(|w| w.busy == 1).count() == 1,
    )
    .await;
    let victim = beats.values().find(|w| w.busy == 1).unwrap().clone();
    let survivor = beats.values().find(|w| w.busy == 0).unwrap().clone();
    let proc = workers
        .iter_mut()
        .find(|p| Some(p.pid() as u32) == victim.pid)
        .expect("the busy worker is one of ours");
    proc.signal(SIGKILL);
    let killed = Instant::now();

    // The task runs again on the survivor, once the ack wait has passed.
    let r = result(&mesh, "killmid", "t1", Duration::from_secs(15)).await;
    let done = killed.elapsed();
    assert!(r.is_success(), "{r:?}");
    assert_eq!(r.worker.as_deref(), Some(survivor.instance.as_str()));
    assert!(r.attempt >= 2, "a redelivery, not the first attempt: {r:?}");
    let redelivered_after = done.saturating_sub(Duration::from_millis(r.duration_ms));
    eprintln!("the task restarted on the survivor {redelivered_after:?} after the kill");
    assert!(
        redelivered_after <= Duration::from_secs(ACK_WAIT_SECS + 1),
        "the task restarted {redelivered_after:?} after the kill (ack wait {ACK_WAIT_SECS} s)"
    );

    // The monitor declares the victim dead and alerts.
    let deadline = Duration::from_millis(DEAD_AFTER_MS + 3000);
    let dead = loop {
        let m = tokio::time::timeout(deadline, dead_events.next())
            .await
            .expect("a dead event in time")
            .unwrap();
        let e: HealthEvent = codec::from_json(&m.payload).unwrap();
        if e.state == "dead" {
            break e;
        }
    };
    assert_eq!(dead.instance, victim.instance);
    assert_eq!(dead.pool.as_deref(), Some("slow"));
    let alert: Alert = loop {
        let m = tokio::time::timeout(deadline, alerts.next())
            .await
            .expect("an alert in time")
            .unwrap();
        let a: Alert = codec::from_json(&m.payload).unwrap();
        if a.kind == "worker_dead" {
            break a;
        }
    };
    assert_eq!(alert.instance.as_deref(), Some(victim.instance.as_str()));
    assert!(
        alert.message.contains(&victim.instance),
        "{}",
        alert.message
    );

    // The pool's minimum is two slots: the survivor takes up the dead one's.
    let decision: ScaleDecision = mesh
        .get_json(&mesh.scale, &mesh.names.scale_key("slow"))
        .await
        .unwrap()
        .expect("a slot assignment");
    assert_eq!(
        decision.slots.get(&survivor.instance),
        Some(&2),
        "{decision:?}"
    );
    let beats = until_beats(
        &mesh,
        Duration::from_secs(5),
        "the survivor runs two slots",
        |b| b.get(&survivor.instance).is_some_and(|w| w.slots == 2),
    )
    .await;
    assert!(
        !beats.contains_key(&victim.instance),
        "the dead worker's heartbeat is gone"
    );

    // Two slots really run in parallel now: two sleeps of 1 s take about 1 s.
    let started = Instant::now();
    submit_sleep(&mesh, "par1", 1000).await;
    submit_sleep(&mesh, "par2", 1000).await;
    result(&mesh, "par1", "t1", Duration::from_secs(10)).await;
    result(&mesh, "par2", "t1", Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "two tasks on two slots took {:?}",
        started.elapsed()
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_task_is_kept_by_progress_acks_and_a_clean_stop_is_not_a_death() {
    let (_server, mesh, stop, _roles, mut workers) = two_workers().await;
    let mut events = mesh.client.subscribe("mesh.health.worker.*").await.unwrap();
    mesh.client.flush().await.unwrap();

    // Twice the ack wait and more: without in-progress acks it would be
    // redelivered to the idle worker.
    submit_sleep(&mesh, "long", 5000).await;
    let r = result(&mesh, "long", "t1", Duration::from_secs(20)).await;
    assert!(r.is_success() && r.duration_ms >= 5000, "{r:?}");
    let info = mesh
        .js
        .get_stream(mesh.names.queues_stream())
        .await
        .unwrap()
        .consumer_info(mesh.names.pool_consumer("slow"))
        .await
        .unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "the long task was never redelivered"
    );

    // A worker stopped with SIGTERM removes its heartbeat and is not declared dead.
    let leaving = workers[0].pid() as u32;
    let leaving_instance = heartbeats(&mesh)
        .await
        .into_values()
        .find(|b| b.pid == Some(leaving))
        .expect("the leaving worker heartbeats")
        .instance;
    let status = workers[0].terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    until_beats(
        &mesh,
        Duration::from_secs(5),
        "the heartbeat is removed",
        |b| b.len() == 1 && b.values().all(|w| w.pid != Some(leaving)),
    )
    .await;
    // The monitor is watching, and has had the time to call the worker that
    // left dead: it does call the other one dead once it is killed. Every
    // event up to that one is looked at.
    let staying = workers[1].pid() as u32;
    workers[1].signal(jetmesh_tests::SIGKILL);
    loop {
        let m = tokio::time::timeout(Duration::from_millis(DEAD_AFTER_MS + 5000), events.next())
            .await
            .expect("the killed worker is declared dead")
            .unwrap();
        let e: HealthEvent = codec::from_json(&m.payload).unwrap();
        if e.state != "dead" {
            continue;
        }
        assert_ne!(
            e.instance, leaving_instance,
            "a clean stop was reported as a death: {e:?} (the killed worker was pid {staying})"
        );
        break;
    }
    stop.cancel();
}

/// Tasks a worker holds while its slots are busy must not outlive their ack
/// wait there. One slot, an ack wait of 2 s. Quick tasks first, so the worker
/// prefetches (it holds a task beyond its free slot); then three tasks of
/// 2.5 s: the second is held while the first runs, longer than the ack wait,
/// and must be kept alive, not delivered again. After a slow task the worker
/// stops prefetching, so the third stays in the queue. Every task is
/// delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_for_a_busy_slot_are_not_redelivered() {
    let server = NatsServer::start();
    let mut config = jetmesh_tests::test_config(&server.url());
    config.pools.clear();
    let mut hold = jetmesh_shared::config::PoolConfig::new("sim", 1);
    hold.max = 1;
    hold.ack_wait_secs = ACK_WAIT_SECS;
    config.pools.insert("hold".into(), hold);
    let m = jetmesh_tests::InProcessMesh::start(config).await;
    let client = server.client().await;
    let run = |id: &str, action: &str, n: usize| {
        let plan = serde_json::json!({
            "plan_id": id,
            "wait": true,
            "subtasks": (1..=n)
                .map(|i| serde_json::json!({"id": format!("t{i}"), "type": "sim", "action": action, "ms": 2500}))
                .collect::<Vec<_>>(),
        });
        let client = client.clone();
        async move {
            let reply = jetmesh_tests::request_json(
                &client,
                "mesh.plans.submit",
                &plan,
                Duration::from_secs(40),
            )
            .await;
            let report: jetmesh_shared::wire::Report = serde_json::from_value(reply).unwrap();
            assert_eq!((report.completed, report.failed), (n, 0), "{report:?}");
            for t in &report.tasks {
                assert_eq!(t.attempt, 1, "task {} was delivered again: {t:?}", t.id);
            }
        }
    };
    run("quick", "echo", 5).await;
    run("held", "sleep", 3).await;
    let info = m
        .mesh
        .js
        .get_stream(m.mesh.names.queues_stream())
        .await
        .unwrap()
        .consumer_info(m.mesh.names.pool_consumer("hold"))
        .await
        .unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, 8,
        "eight tasks, eight deliveries: {info:?}"
    );
}
