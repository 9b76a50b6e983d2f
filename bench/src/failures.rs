//! `jetmesh bench` failure figures, with real processes and real faults on
//! the bench's server:
//! - throughput of a pool queue with 1 % poison messages against none (the
//!   poison goes to `MESH_DLQ`, its task is marked failed);
//! - redelivery after a worker process is killed mid-task (SIGKILL), next to
//!   the pool's ack wait;
//! - chief failover: 100 plans submitted, the leading chief process killed
//!   (SIGKILL), the time until a standby answers `mesh.plans.submit`, then
//!   tasks lost and final reports published more than once.

use super::Figure;
use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use jetmesh_shared::wire::{Priority, TaskResult, WorkerHeartbeat};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec, lease};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const POISON_TASKS: usize = 10_000;
const FAILOVER_PLANS: usize = 100;
const FAILOVER_PLAN_TASKS: usize = 20;
const KILL_ACK_WAIT_SECS: u64 = 2;

pub async fn measure(config: &Config, workers: usize) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    figures.extend(poison(config, workers).await?);
    figures.push(worker_kill(config).await?);
    figures.extend(chief_failover(config).await?);
    Ok(figures)
}

/// `jetmesh <args>` against the bench's server, quiet, killed on drop.
fn jetmesh(config: &Config, args: &[&str], env: &[(&str, String)]) -> Result<Child> {
    Ok(Command::new(super::jetmesh_exe()?)
        .args(args)
        .env("NATS_URL", &config.nats.url)
        .env("RUST_LOG", "error")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

fn kill9(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn until<T>(
    within: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many processes of `role` answer `$SRV.PING`.
async fn instances(mesh: &Mesh, role: &str) -> usize {
    let inbox = mesh.client.new_inbox();
    let Ok(mut sub) = mesh.client.subscribe(inbox.clone()).await else {
        return 0;
    };
    let ping = format!("$SRV.PING.jetmesh-{role}");
    if mesh
        .client
        .publish_with_reply(ping, inbox, "".into())
        .await
        .is_err()
    {
        return 0;
    }
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        n += 1;
    }
    n
}

/// (1) `n` task messages straight onto the math queue, every 100th of them
/// poison (undecodable) when `poison` is set; tasks per second until every
/// task has a result.
async fn queue_run(mesh: &Mesh, n: usize, poison: bool) -> Result<f64> {
    let run = format!("poison-{}", &jetmesh_shared::ids::generate()[..8]);
    let mut done = mesh
        .client
        .subscribe(
            mesh.names
                .kv_subject(&mesh.results.name, &mesh.names.task_key_plan(&run)),
        )
        .await?;
    mesh.client.flush().await?;
    let subject = mesh.names.queue("math", Priority::Normal);
    let started = Instant::now();
    let publisher = tokio::spawn({
        let js = mesh.js.clone();
        async move {
            super::publish_all(
                &js,
                (0..n).map(move |i| {
                    // A wrong type for `attempt`: the ids are readable, the task is not.
                    let attempt = if poison && i % 100 == 0 {
                        json!("not a number")
                    } else {
                        json!(1)
                    };
                    let body = json!({"plan_id": run, "id": format!("t{i}"), "type": "math",
                        "action": "sum", "args": [i, 1], "attempt": attempt});
                    (subject.clone(), bytes::Bytes::from(body.to_string()))
                }),
            )
            .await
        }
    });
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(60), done.next())
            .await
            .context("queue results stalled")?;
    }
    publisher.await??;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn dlq_count(mesh: &Mesh) -> Result<u64> {
    let mut s = mesh.js.get_stream(mesh.names.dlq_stream()).await?;
    Ok(s.info().await?.state.messages)
}

async fn poison(config: &Config, workers: usize) -> Result<Vec<Figure>> {
    eprintln!("(e) {POISON_TASKS} queued tasks, 1 % poison against none ...");
    let mesh = Mesh::connect(config.clone(), "bench-poison").await?;
    let stop = CancellationToken::new();
    let pool = tokio::spawn(jetmesh::run_pool(
        mesh.clone(),
        "math",
        Some(workers),
        stop.clone(),
    ));
    jetmesh_shared::service::wait_for_roles(
        &mesh.client,
        &[jetmesh_shared::Role::Worker],
        &[],
        Duration::from_secs(30),
    )
    .await?;
    let clean = queue_run(&mesh, POISON_TASKS, false).await?;
    let before = dlq_count(&mesh).await?;
    let poisoned = queue_run(&mesh, POISON_TASKS, true).await?;
    let lettered = dlq_count(&mesh).await? - before;
    stop.cancel();
    pool.await??;
    eprintln!("    {clean:.0} / {poisoned:.0} tasks/s; {lettered} dead letters");
    ensure!(
        lettered == (POISON_TASKS / 100) as u64,
        "{lettered} dead letters for {} poison tasks",
        POISON_TASKS / 100
    );
    Ok(vec![
        Figure {
            name: "queue throughput with 1 % poison tasks (tasks/s)",
            value: format!("{poisoned:.0}"),
            baseline: format!("{clean:.0} (no poison)"),
            ratio: format!("{:.2}", poisoned / clean),
        },
        Figure {
            name: "poison tasks in the DLQ",
            value: format!("{lettered}"),
            baseline: format!("{} sent", POISON_TASKS / 100),
            ratio: "-".into(),
        },
    ])
}

/// (2) Two worker processes of a `sim` pool; the one running a 1 s task is
/// killed; the time until the task starts again on the other.
async fn worker_kill(config: &Config) -> Result<Figure> {
    eprintln!("(f) a worker process killed mid-task ...");
    let mut config = config.clone();
    config.health.heartbeat_ms = 100;
    let mesh = Mesh::connect(config.clone(), "bench-kill").await?;
    let env = [
        (
            "JETMESH_POOLS__KILLBENCH__CAPABILITIES",
            "[\"sim\"]".to_string(),
        ),
        ("JETMESH_POOLS__KILLBENCH__WORKERS", "1".to_string()),
        (
            "JETMESH_POOLS__KILLBENCH__ACK_WAIT_SECS",
            KILL_ACK_WAIT_SECS.to_string(),
        ),
        ("JETMESH_HEALTH__HEARTBEAT_MS", "100".to_string()),
    ];
    let workers = [
        jetmesh(&config, &["worker", "--pool", "killbench"], &env)?,
        jetmesh(&config, &["worker", "--pool", "killbench"], &env)?,
    ];
    let beats = async |mesh: &Mesh| -> Vec<WorkerHeartbeat> {
        mesh.scan(&mesh.health, &mesh.names.pool_health_keys("killbench"))
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|e| codec::from_json(&e.value).ok())
            .collect()
    };
    until(
        Duration::from_secs(30),
        "two workers heartbeat",
        async || (beats(&mesh).await.len() == 2).then_some(()),
    )
    .await?;
    let plan = format!("kill-{}", &jetmesh_shared::ids::generate()[..8]);
    let body = json!({"plan_id": plan, "id": "t1", "type": "sim", "action": "sleep", "ms": 1000});
    mesh.js
        .publish(
            mesh.names.queue("killbench", Priority::Normal),
            body.to_string().into(),
        )
        .await?
        .await?;
    let busy = until(
        Duration::from_secs(10),
        "a worker takes the task",
        async || beats(&mesh).await.into_iter().find(|b| b.busy == 1),
    )
    .await?;
    let victim = workers
        .iter()
        .find(|w| w.id() == busy.pid)
        .context("the busy worker is not one of ours")?;
    kill9(victim);
    let killed = Instant::now();
    let key = mesh.names.task_key(&plan, "t1");
    let result: TaskResult = until(Duration::from_secs(30), "the task completes", async || {
        mesh.get_json(&mesh.results, &key).await.ok().flatten()
    })
    .await?;
    let restarted = killed
        .elapsed()
        .saturating_sub(Duration::from_millis(result.duration_ms));
    ensure!(result.is_success() && result.attempt >= 2, "{result:?}");
    eprintln!("    restarted after {restarted:?}");
    drop(workers);
    Ok(Figure {
        name: "redelivery after a worker is killed mid-task (s)",
        value: format!("{:.2}", restarted.as_secs_f64()),
        baseline: format!("{KILL_ACK_WAIT_SECS} (ack wait)"),
        ratio: "-".into(),
    })
}

/// (3) Two chief processes; 100 plans; the leader killed.
async fn chief_failover(config: &Config) -> Result<Vec<Figure>> {
    eprintln!(
        "(g) chief failover: {FAILOVER_PLANS} plans, the leading chief killed (lease TTL {} ms) ...",
        config.leases.ttl_ms
    );
    let mesh = Mesh::connect(config.clone(), "bench-failover").await?;
    let stop = CancellationToken::new();
    let mut roles = tokio::task::JoinSet::new();
    roles.spawn(jetmesh_planner::run(mesh.clone(), stop.clone()));
    roles.spawn(jetmesh_router::run(mesh.clone(), stop.clone()));
    roles.spawn(jetmesh_aggregator::run(mesh.clone(), stop.clone()));
    roles.spawn(jetmesh_summary::run(mesh.clone(), stop.clone()));
    roles.spawn(jetmesh::run_pool(
        mesh.clone(),
        "math",
        Some(16),
        stop.clone(),
    ));
    let ttl = [("JETMESH_LEASES__TTL_MS", config.leases.ttl_ms.to_string())];
    // The first chief leads (the lease is free: the bench's own chief released
    // it); the second stands by.
    let leader = jetmesh(config, &["chief"], &ttl)?;
    let first = until(Duration::from_secs(30), "a chief leads", async || {
        lease::holder(&mesh, jetmesh_shared::Role::Chief)
            .await
            .ok()
            .flatten()
    })
    .await?;
    let standby = jetmesh(config, &["chief"], &ttl)?;
    jetmesh_shared::service::wait_for_roles(
        &mesh.client,
        &jetmesh::up::FLOW_ROLES,
        &[],
        Duration::from_secs(30),
    )
    .await?;
    until(
        Duration::from_secs(30),
        "the standby chief answers",
        async || (instances(&mesh, "chief").await >= 2).then_some(()),
    )
    .await?;

    let mut reports = mesh
        .client
        .subscribe(mesh.names.event_all(jetmesh_shared::EventKind::FinalReport))
        .await?;
    mesh.client.flush().await?;
    let prefix = format!("fo{}", &jetmesh_shared::ids::generate()[..8]);
    for p in 0..FAILOVER_PLANS {
        let subtasks: Vec<_> = (0..FAILOVER_PLAN_TASKS)
            .map(
                |i| json!({"id": format!("t{i}"), "type": "math", "action": "sum", "args": [i, p]}),
            )
            .collect();
        let body = json!({"plan_id": format!("{prefix}-{p}"), "subtasks": subtasks});
        let reply = mesh
            .client
            .request(mesh.names.plans_submit(), body.to_string().into())
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        ensure!(v["status"] == "accepted", "a plan was refused: {v}");
    }
    kill9(&leader);
    let killed = Instant::now();
    // Acting = taking plans, which only the leader does (a standby relays).
    until(
        Duration::from_secs(120),
        "a standby takes over",
        async || {
            jetmesh::up::leader_answers(&mesh, Duration::from_millis(200))
                .await
                .then_some(())
        },
    )
    .await?;
    let failover = killed.elapsed();
    let second = lease::holder(&mesh, jetmesh_shared::Role::Chief)
        .await?
        .context("nobody leads")?;
    ensure!(second.holder != first.holder, "the dead chief still leads");

    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < FAILOVER_PLANS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(left, reports.next()).await else {
            bail!("{} of {FAILOVER_PLANS} plans reported", seen.len());
        };
        let plan = jetmesh_shared::names::last_token(&msg.subject).to_string();
        if plan.starts_with(&prefix) {
            *seen.entry(plan).or_default() += 1;
        }
    }
    // Late duplicates would arrive now.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), reports.next()).await {
        let plan = jetmesh_shared::names::last_token(&msg.subject).to_string();
        if plan.starts_with(&prefix) {
            *seen.entry(plan).or_default() += 1;
        }
    }
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    let mut lost = 0;
    for p in 0..FAILOVER_PLANS {
        let results = mesh
            .scan(
                &mesh.results,
                &mesh.names.task_key_plan(&format!("{prefix}-{p}")),
            )
            .await?;
        let ok = results
            .iter()
            .filter(|e| codec::from_json::<TaskResult>(&e.value).is_ok_and(|r| r.is_success()))
            .count();
        lost += FAILOVER_PLAN_TASKS - ok;
    }
    eprintln!("    failover {failover:?}; {lost} tasks lost; {duplicated} reports duplicated");
    stop.cancel();
    while roles.join_next().await.is_some() {}
    drop((leader, standby));
    Ok(vec![
        Figure {
            name: "chief failover, kill → new leader serving (s)",
            value: format!("{:.2}", failover.as_secs_f64()),
            baseline: format!("{:.1} (lease TTL)", config.leases.ttl_ms as f64 / 1000.0),
            ratio: "-".into(),
        },
        Figure {
            name: "tasks lost / final reports duplicated",
            value: format!("{lost} / {duplicated}"),
            baseline: format!(
                "{} tasks, {FAILOVER_PLANS} plans",
                FAILOVER_PLANS * FAILOVER_PLAN_TASKS
            ),
            ratio: "-".into(),
        },
    ])
}
