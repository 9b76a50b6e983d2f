//! (e) Pool figures. Throughput against slot count for tasks that wait on I/O
//! (`sim` `sleep` 20 ms, which holds no thread), next to the ideal of
//! `slots × 50` tasks/s; and the time from a backlog spike to the
//! autoscaler's first scale-up, with the default 1 s interval.

use super::Figure;
use anyhow::{Context, Result};
use futures::StreamExt;
use jetmesh_shared::config::PoolConfig;
use jetmesh_shared::wire::{Plan, ScaleDecision, SubmitRequest, Subtask, WorkerHeartbeat};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SLEEP_MS: u64 = 20;

fn sim_pool(workers: usize, min: usize, max: usize) -> PoolConfig {
    PoolConfig {
        capabilities: vec!["sim".into()],
        ..PoolConfig::new("sim", workers).limits(min, max)
    }
}

/// Runs every role with `pools`, calls `f`, and stops them.
async fn with_mesh<T>(
    config: &Config,
    pools: &[(&str, PoolConfig)],
    f: impl AsyncFnOnce(&Mesh) -> Result<T>,
) -> Result<T> {
    let mut config = config.clone();
    config.pools = pools
        .iter()
        .map(|(n, p)| (n.to_string(), p.clone()))
        .collect();
    let mesh = Mesh::connect(config, "bench-pools").await?;
    let shutdown = CancellationToken::new();
    let roles = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(30)).await?;
    let out = f(&mesh).await;
    shutdown.cancel();
    roles.await??;
    out
}

/// The live process of `pool` and its slots (waits for its heartbeat).
async fn process(mesh: &Mesh, pool: &str) -> Result<WorkerHeartbeat> {
    for _ in 0..100 {
        let beats = mesh
            .scan(&mesh.health, &mesh.names.pool_health_keys(pool))
            .await?;
        if let Some(b) = beats
            .iter()
            .find_map(|e| codec::from_json::<WorkerHeartbeat>(&e.value).ok())
        {
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("pool {pool} did not heartbeat")
}

fn sleeps(n: usize, prefix: &str) -> Result<Vec<Subtask>> {
    (0..n)
        .map(|i| {
            serde_json::from_value::<Subtask>(
                json!({"id": format!("{prefix}{i}"), "type": "sim", "action": "sleep", "ms": SLEEP_MS}),
            )
            .context("a subtask")
        })
        .collect()
}

fn request(subtasks: Vec<Subtask>, wait: bool) -> SubmitRequest {
    SubmitRequest {
        plan: Plan {
            epic: None,
            plan_id: String::new(),
            goal: Some("pool benchmark".into()),
            subtasks,
            deadline_ms: None,
        },
        wait,
        wait_timeout_ms: Some(120_000),
        dry_run: false,
    }
}

pub async fn measure(config: &Config) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    eprintln!("(e) I/O-bound tasks ({SLEEP_MS} ms) against pool slots ...");
    // min = max = 1: the autoscaler leaves the pool alone; the bench sets
    // its slots as an operator would, through mesh_scale.
    let sweep = with_mesh(config, &[("io", sim_pool(1, 1, 1))], async |mesh| {
        let instance = process(mesh, "io").await?.instance;
        let mut out = Vec::new();
        for slots in [1usize, 2, 4, 8, 16] {
            let decision = ScaleDecision {
                pool: "io".into(),
                slots: BTreeMap::from([(instance.clone(), slots)]),
                reason: "benchmark".into(),
                at: jiff::Timestamp::now(),
                term: None,
            };
            mesh.scale
                .put(mesh.names.scale_key("io"), codec::to_json(&decision)?)
                .await?;
            while process(mesh, "io").await?.slots != slots {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let n = 60 * slots;
            let started = Instant::now();
            let report = jetmesh::client::submit_and_wait(
                mesh,
                request(sleeps(n, "t")?, true),
                Duration::from_secs(120),
            )
            .await?;
            anyhow::ensure!(
                report.completed == n,
                "{} of {n} completed",
                report.completed
            );
            let rate = n as f64 / started.elapsed().as_secs_f64();
            eprintln!("    {slots:>2} slots: {rate:.0} tasks/s");
            out.push((slots, rate));
        }
        Ok(out)
    })
    .await?;
    for (slots, rate) in sweep {
        let ideal = slots as f64 * 1000.0 / SLEEP_MS as f64;
        figures.push(Figure {
            name: "I/O-bound tasks (20 ms) on N slots (tasks/s)",
            value: format!("{slots} slots: {rate:.0}"),
            baseline: format!("{ideal:.0} (ideal: N × 50)"),
            ratio: format!("{:.2}", rate / ideal),
        });
    }

    eprintln!("(e) a backlog spike to the first scale-up, 3 times ...");
    let mut pool = sim_pool(1, 1, 8);
    pool.ack_wait_secs = 30;
    let delays = with_mesh(config, &[("spike", pool)], async |mesh| {
        let instance = process(mesh, "spike").await?.instance;
        let mut out = Vec::new();
        for round in 0..3 {
            // Back to one slot, idle.
            let one = ScaleDecision {
                pool: "spike".into(),
                slots: BTreeMap::from([(instance.clone(), 1)]),
                reason: "benchmark reset".into(),
                at: jiff::Timestamp::now(),
                term: None,
            };
            mesh.scale
                .put(mesh.names.scale_key("spike"), codec::to_json(&one)?)
                .await?;
            while process(mesh, "spike").await?.slots != 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Let an autoscaler round pass with nothing waiting, at a
            // different phase each time.
            tokio::time::sleep(Duration::from_millis(1300 + 300 * round)).await;
            let mut decisions = mesh
                .scale
                .watch(mesh.names.scale_key("spike"))
                .await
                .context("watch the scaling decisions")?;
            let started = Instant::now();
            let reply = mesh
                .client
                .request(
                    mesh.names.plans_submit(),
                    codec::to_json(&request(sleeps(200, &format!("r{round}_"))?, false))?,
                )
                .await?;
            anyhow::ensure!(
                String::from_utf8_lossy(&reply.payload).contains("accepted"),
                "the spike was not accepted: {}",
                String::from_utf8_lossy(&reply.payload)
            );
            let up = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(e)) = decisions.next().await {
                    if let Ok(d) = codec::from_json::<ScaleDecision>(&e.value)
                        && d.slots.values().sum::<usize>() > 1
                    {
                        return Some(started.elapsed());
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .context("no scale-up within 10 s")?;
            eprintln!(
                "    first scale-up {:.0} ms after the spike",
                up.as_secs_f64() * 1000.0
            );
            out.push(up);
            // Let the backlog drain before the next round.
            while mesh
                .scan(&mesh.scale, &mesh.names.status_key("spike"))
                .await?
                .first()
                .and_then(|e| codec::from_json::<jetmesh_shared::wire::PoolStatus>(&e.value).ok())
                .is_some_and(|s| s.queue_depth > 0)
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(out)
    })
    .await?;
    let ms: Vec<String> = delays
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect();
    figures.push(Figure {
        name: "backlog spike → first scale-up decision (ms, 3 runs)",
        value: ms.join(", "),
        baseline: format!("interval {} ms", config.autoscaler.interval_ms),
        ratio: "-".into(),
    });
    Ok(figures)
}
