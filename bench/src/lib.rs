//! `jetmesh-bench` (`./dev bench`): measures jetmesh next to a baseline taken in the same run, on
//! the same server. (a) the raw JetStream loop — publish → pull → KV put → ack,
//! no mesh — against (b) jetmesh end to end, for many single tasks
//! (`mesh.tasks`) and for one plan with thousands of subtasks; (c) `mesh.run`
//! latency against a plain core-NATS request/reply; (d) the resident memory of
//! an idle `jetmesh up` (without nats-server); the failure figures
//! ([`failures`]), the pool figures ([`pools`]) and the web figures ([`web`]).

mod db;
mod failures;
mod planning;
mod pools;
mod web;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use jetmesh::embedded::EmbeddedServer;
use jetmesh_shared::config::NatsConfig;
use jetmesh_shared::wire::{Plan, SubmitRequest, Subtask};
use jetmesh_shared::{CancellationToken, Config, EventKind, Mesh, Names, registry};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Single tasks for the throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Subtasks of the one big plan.
    #[arg(long, default_value_t = 5_000)]
    pub plan_tasks: usize,
    /// Sequential requests for the latency run.
    #[arg(long, default_value_t = 2_000)]
    pub samples: usize,
    /// Concurrent slots of the math pool, and of the baseline consumer.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Rounds of the throughput figures (raw loop, single tasks, plan),
    /// interleaved; each figure is the median of its rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Shapes of the raw loop to try, PULLERSxIN_FLIGHT, comma-separated;
    /// the fastest is the baseline (1 x --workers, the pool's own shape, is
    /// always tried).
    #[arg(long, value_delimiter = ',', default_value = "2x16,4x16,4x32,8x16")]
    pub raw_shapes: Vec<Shape>,
    /// Skip the idle-memory measurement.
    #[arg(long)]
    pub no_memory: bool,
    /// Skip the failure figures (poison, worker kill, chief failover).
    #[arg(long)]
    pub no_failures: bool,
    /// Skip the pool figures (I/O-bound throughput against slots, time to scale up).
    #[arg(long)]
    pub no_pools: bool,
    /// Skip the web figures (pages/s against slots, browser memory, cold start).
    #[arg(long)]
    pub no_web: bool,
    /// Only the web figures.
    #[arg(long)]
    pub web_only: bool,
    /// Skip the db figures (queries/s against slots, SQLite and PostgreSQL).
    #[arg(long)]
    pub no_db: bool,
    /// Only the db figures.
    #[arg(long)]
    pub db_only: bool,
    /// Skip the planning figures (planner overhead per goal, goals/s).
    #[arg(long)]
    pub no_planning: bool,
    /// Only the planning figures.
    #[arg(long)]
    pub planning_only: bool,
}

struct Figure {
    name: &'static str,
    value: String,
    baseline: String,
    ratio: String,
}

/// The `jetmesh` binary next to this one (`./dev bench` builds both): the
/// bench starts roles and `jetmesh up` as separate processes.
pub fn jetmesh_exe() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("the bench binary has no folder")?
        .join("jetmesh");
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p jetmesh` (./dev bench does)",
        bin.display()
    );
    Ok(bin)
}

pub async fn run(mut config: Config, args: BenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = if config.nats.url.is_empty() {
        config.embedded.data_dir = tmp.path().join("nats");
        config.embedded.port = 0;
        let s = EmbeddedServer::start(&config.embedded).await?;
        config.nats.url = s.url.clone();
        Some(s)
    } else {
        None
    };
    config.telemetry.metrics_listen.clear();
    let server_pid = server.as_ref().and_then(|s| s.pid());
    let result = if args.web_only {
        web::measure(&config).await
    } else if args.db_only {
        db::measure(&config).await
    } else if args.planning_only {
        planning::measure(&config).await
    } else {
        measure(config, &args, server_pid).await
    };
    if let Some(s) = server {
        s.stop().await;
    }
    let figures = result?;
    println!("\n| measure | jetmesh | baseline | ratio |\n|---|---|---|---|");
    for f in figures {
        println!(
            "| {} | {} | {} | {} |",
            f.name, f.value, f.baseline, f.ratio
        );
    }
    Ok(())
}

/// CPU time (user + system) of a process so far (this one for `None`).
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let process = match pid {
        Some(pid) => procfs::process::Process::new(pid as i32),
        None => procfs::process::Process::myself(),
    };
    let stat = process.ok()?.stat().ok()?;
    let hz = procfs::ticks_per_second().max(1);
    Some(Duration::from_millis((stat.utime + stat.stime) * 1000 / hz))
}

/// CPU spent by this process and by the embedded server during one phase.
struct CpuMeter {
    server: Option<u32>,
    start: (Option<Duration>, Option<Duration>),
}

impl CpuMeter {
    fn start(server: Option<u32>) -> CpuMeter {
        CpuMeter {
            server,
            start: (cpu_time(None), server.and_then(|p| cpu_time(Some(p)))),
        }
    }

    /// `client / server` CPU milliseconds per 1000 items, as text.
    fn per_thousand(&self, items: usize) -> String {
        let per = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => format!(
                "{:.0}",
                b.saturating_sub(a).as_secs_f64() * 1000.0 * 1000.0 / items.max(1) as f64
            ),
            _ => "?".into(),
        };
        let client = per(self.start.0, cpu_time(None));
        let server = per(self.start.1, self.server.and_then(|p| cpu_time(Some(p))));
        format!("{client} + {server}")
    }
}

async fn measure(
    mut config: Config,
    args: &BenchArgs,
    server_pid: Option<u32>,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let (client, _) =
        jetmesh_shared::mesh::connect(&config.nats, &jetmesh_shared::Identity::from("bench"))
            .await?;

    config
        .pools
        .retain(|name, _| name == "math" || name == "date");
    if let Some(math) = config.pools.get_mut("math") {
        math.workers = args.workers;
        // A throughput burst, not an admission test: no backlog limit.
        math.max_backlog = 0;
    }
    let mesh = Mesh::connect(config.clone(), "bench").await?;
    let shutdown = CancellationToken::new();
    let roles = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
    wait_for_math(&mesh).await?;

    // A small uncounted round first: the first plan of a fresh server pays for
    // its page cache and stream files (the first round ran up to 40 % slower).
    eprintln!("warm-up: 1000 raw messages, 1000 single tasks, a plan of 500 ...");
    raw_loop_alone(
        &config.nats,
        1000,
        Shape {
            pullers: 1,
            in_flight: args.workers,
        },
    )
    .await?;
    single_tasks(&mesh, 1000).await?;
    big_plan(&mesh, 500).await?;

    // The baseline is the best raw JetStream does here: every shape is
    // measured once and the fastest is the one the rounds use.
    let pool_shaped = Shape {
        pullers: 1,
        in_flight: args.workers,
    };
    let mut shapes = args.raw_shapes.clone();
    if !shapes.contains(&pool_shaped) {
        shapes.insert(0, pool_shaped);
    }
    let mut tried = Vec::new();
    for shape in &shapes {
        eprintln!("raw loop shape {shape}: {} messages ...", args.tasks);
        let rate = raw_loop_alone(&config.nats, args.tasks, *shape).await?;
        eprintln!("    {rate:.0} msg/s");
        tried.push((*shape, rate));
    }
    let (best, _) = *tried
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one shape");
    figures.push(Figure {
        name: "raw loop by shape, pullers x in flight (msg/s)",
        value: tried
            .iter()
            .map(|(s, r)| format!("{s}: {r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        baseline: format!("best: {best}"),
        ratio: "-".into(),
    });

    // Rounds of (a), (b) single and (b) plan, interleaved, so that a slow
    // moment of the machine falls on both sides; each figure is the median.
    let (mut raw, mut single, mut plan) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let mut timeline = Vec::new();
    for round in 1..=args.rounds.max(1) {
        eprintln!(
            "round {round}: (a) raw JetStream loop, {} messages, shape {best} ...",
            args.tasks
        );
        let meter = CpuMeter::start(server_pid);
        raw.push(raw_loop_alone(&config.nats, args.tasks, best).await?);
        cpu[0].push(meter.per_thousand(args.tasks));
        eprintln!("    {:.0} msg/s", raw.last().unwrap_or(&0.0));

        eprintln!(
            "round {round}: (b) {} single tasks via mesh.tasks ...",
            args.tasks
        );
        let meter = CpuMeter::start(server_pid);
        single.push(single_tasks(&mesh, args.tasks).await?);
        cpu[1].push(meter.per_thousand(args.tasks));
        eprintln!("    {:.0} tasks/s", single.last().unwrap_or(&0.0));

        eprintln!(
            "round {round}: (b) one plan of {} subtasks ...",
            args.plan_tasks
        );
        let meter = CpuMeter::start(server_pid);
        let (rate, phases) = big_plan(&mesh, args.plan_tasks).await?;
        plan.push(rate);
        cpu[2].push(meter.per_thousand(args.plan_tasks));
        eprintln!("    {rate:.0} tasks/s ({phases})");
        timeline.push(phases);
    }
    let raw_m = median(&raw);
    let rounds = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        match (sorted.first(), sorted.last()) {
            (Some(lo), Some(hi)) if v.len() > 1 => {
                format!("{:.0} (median of {}; {lo:.0}–{hi:.0})", median(v), v.len())
            }
            _ => format!("{:.0}", median(v)),
        }
    };
    let ratios = |v: &[f64]| {
        let r: Vec<String> = v
            .iter()
            .zip(&raw)
            .map(|(x, r)| format!("{:.2}", x / r))
            .collect();
        format!("{:.2} (rounds: {})", median(v) / raw_m, r.join(", "))
    };
    figures.push(Figure {
        name: "single tasks end to end (tasks/s)",
        value: rounds(&single),
        baseline: format!("{} (raw loop {best})", rounds(&raw)),
        ratio: ratios(&single),
    });
    figures.push(Figure {
        name: "one plan, thousands of subtasks (tasks/s)",
        value: rounds(&plan),
        baseline: format!("{} (raw loop {best})", rounds(&raw)),
        ratio: ratios(&plan),
    });
    figures.push(Figure {
        name: "one plan: where the time went (ms from submit)",
        value: timeline.join("; "),
        baseline: "-".into(),
        ratio: "-".into(),
    });
    if server_pid.is_some() {
        figures.push(Figure {
            name: "CPU ms per 1000 tasks, jetmesh + nats-server: single / plan",
            value: cpu[1]
                .iter()
                .zip(&cpu[2])
                .map(|(s, p)| format!("{s} / {p}"))
                .collect::<Vec<_>>()
                .join("; "),
            baseline: format!("{} (raw loop)", cpu[0].join("; ")),
            ratio: "-".into(),
        });
    }

    eprintln!("(c) latency, {} sequential requests each ...", args.samples);
    let (run50, run99) = run_latency(&mesh, args.samples).await?;
    let (core50, core99) = core_latency(&client, args.samples).await?;
    figures.push(Figure {
        name: "mesh.run latency p50 (ms)",
        value: format!("{run50:.3}"),
        baseline: format!("{core50:.3} (core request/reply)"),
        ratio: format!("{:.1}x", run50 / core50),
    });
    figures.push(Figure {
        name: "mesh.run latency p99 (ms)",
        value: format!("{run99:.3}"),
        baseline: format!("{core99:.3} (core request/reply)"),
        ratio: format!("{:.1}x", run99 / core99),
    });
    shutdown.cancel();
    roles.await??;

    if !args.no_failures {
        figures.extend(failures::measure(&config, args.workers).await?);
    }
    if !args.no_pools {
        figures.extend(pools::measure(&config).await?);
    }
    if !args.no_web {
        figures.extend(web::measure(&config).await?);
    }
    if !args.no_planning {
        figures.extend(planning::measure(&config).await?);
    }
    if !args.no_db {
        figures.extend(db::measure(&config).await?);
    }

    if !args.no_memory {
        eprintln!("(d) idle `jetmesh up` resident memory ...");
        let rss = idle_rss(&config.nats.url).await?;
        figures.push(Figure {
            name: "idle `jetmesh up` RSS, without nats-server (MB)",
            value: format!("{rss:.1}"),
            baseline: "target ≤ 50".into(),
            ratio: "-".into(),
        });
    }
    Ok(figures)
}

async fn wait_for_math(mesh: &Mesh) -> Result<()> {
    jetmesh::up::wait_ready(mesh, Duration::from_secs(30)).await?;
    for _ in 0..100 {
        if registry::list(mesh)
            .await?
            .0
            .iter()
            .any(|c| c.capability == "math")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the math pool did not register")
}

/// Publishes with acks in flight, as fast as the server takes them.
async fn publish_all(
    js: &jetstream::Context,
    subjects: impl Iterator<Item = (String, bytes::Bytes)> + Send,
) -> Result<()> {
    let mut acks = futures::stream::FuturesUnordered::new();
    for (subject, payload) in subjects {
        let ack = js.publish(subject, payload).await?;
        acks.push(std::future::IntoFuture::into_future(ack));
        if acks.len() >= 512 {
            acks.next().await.transpose()?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// How the raw loop consumes: `pullers` pull streams on one durable
/// consumer, each with `in_flight` messages handled at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub pullers: usize,
    pub in_flight: usize,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shape, String> {
        let (p, f) = s
            .split_once('x')
            .ok_or_else(|| format!("{s:?}: a shape is PULLERSxIN_FLIGHT, like 4x16"))?;
        let n = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{s:?}: {v:?} is not a positive number"))
        };
        Ok(Shape {
            pullers: n(p)?,
            in_flight: n(f)?,
        })
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.pullers, self.in_flight)
    }
}

/// (a) at its best: on its own connection and its own runtime with one
/// thread per core, whatever the mesh's runtime has (`runtime.worker_threads`).
async fn raw_loop_alone(nats: &NatsConfig, n: usize, shape: Shape) -> Result<f64> {
    let nats = nats.clone();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("bench-raw")
            .enable_all()
            .build()?
            .block_on(async {
                let (client, _) = jetmesh_shared::mesh::connect(
                    &nats,
                    &jetmesh_shared::Identity::from("bench-raw"),
                )
                .await?;
                raw_loop(&client, n, shape).await
            })
    })
    .await?
}

/// (a): publish → pull → KV put → ack, with `shape.pullers` pull streams
/// on one durable consumer, `shape.in_flight` messages at a time each.
async fn raw_loop(client: &async_nats::Client, n: usize, shape: Shape) -> Result<f64> {
    let js = jetstream::new(client.clone());
    let names = Names::default();
    let stream = js
        .create_stream(stream::Config {
            name: names.bench_raw_stream(),
            subjects: vec![names.bench_raw_subjects()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    let store = js
        .create_key_value(kv::Config {
            bucket: names.bench_raw_bucket(),
            history: 1,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let payload = bytes::Bytes::from(
        r#"{"plan_id":"p","id":"t","type":"math","action":"sum","args":[1,2,3],"attempt":1}"#,
    );
    let publisher = tokio::spawn({
        let (js, names) = (js.clone(), names.clone());
        async move {
            publish_all(
                &js,
                (0..n).map(move |i| (names.bench_raw_subject(i), payload.clone())),
            )
            .await
        }
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_done = CancellationToken::new();
    let mut pullers = tokio::task::JoinSet::new();
    for _ in 0..shape.pullers {
        let (consumer, store, done, all_done, names) = (
            consumer.clone(),
            store.clone(),
            done.clone(),
            all_done.clone(),
            names.clone(),
        );
        pullers.spawn(async move {
            let messages = consumer
                .stream()
                .max_messages_per_batch(shape.in_flight)
                .messages()
                .await?;
            messages
                .take_until(all_done.clone().cancelled_owned())
                .for_each_concurrent(shape.in_flight, |m| {
                    let (store, done, all_done, names) =
                        (store.clone(), done.clone(), all_done.clone(), names.clone());
                    async move {
                        let m = m.expect("raw message");
                        let i = m.subject.as_str().rsplit('.').next().unwrap_or("x");
                        store
                            .put(
                                names.task_key("p", i),
                                bytes::Bytes::from_static(br#"{"status":"success","output":6}"#),
                            )
                            .await
                            .expect("raw put");
                        m.ack().await.expect("raw ack");
                        if done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= n {
                            all_done.cancel();
                        }
                    }
                })
                .await;
            anyhow::Ok(())
        });
    }
    while let Some(r) = pullers.join_next().await {
        r??;
    }
    publisher.await??;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(names.bench_raw_stream()).await?;
    js.delete_key_value(names.bench_raw_bucket()).await?;
    Ok(rate)
}

/// (b): `n` tasks on `mesh.tasks.math.sum`, until every result is stored.
async fn single_tasks(mesh: &Mesh, n: usize) -> Result<f64> {
    let run = format!("bench-{}", &jetmesh_shared::ids::generate()[..8]);
    let mut done = mesh
        .client
        .subscribe(
            mesh.names
                .kv_subject(&mesh.results.name, &mesh.names.task_key_plan(&run)),
        )
        .await?;
    mesh.client.flush().await?;
    let started = Instant::now();
    let subject = mesh.names.tasks("math", "sum");
    let plan_id = run.clone();
    let publisher = tokio::spawn({
        let js = mesh.js.clone();
        async move {
            publish_all(
                &js,
                (0..n).map(move |i| {
                    let body =
                        json!({"plan_id": plan_id, "id": format!("t{i}"), "args": [i, 1, 2]});
                    (subject.clone(), bytes::Bytes::from(body.to_string()))
                }),
            )
            .await
        }
    });
    let mut seen = 0;
    while seen < n {
        let msg = tokio::time::timeout(Duration::from_secs(60), done.next())
            .await
            .context("single-task results stalled")?
            .context("the result subscription ended")?;
        // Only successes count: a refusal or a failure ends the run.
        let result: jetmesh_shared::wire::ResultStatus = serde_json::from_slice(&msg.payload)?;
        anyhow::ensure!(
            result.status == jetmesh_shared::wire::TaskStatus::Success,
            "a task did not succeed: {}",
            String::from_utf8_lossy(&msg.payload)
        );
        seen += 1;
    }
    publisher.await??;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// (b): one plan of `n` independent subtasks, submitted with `wait`. Also
/// returns where the time went: when `plan_ready` and `aggregation_ready` were
/// seen and when the first and last results were stored (their timestamps,
/// read after the run so the measurement adds no load), in ms from submit.
async fn big_plan(mesh: &Mesh, n: usize) -> Result<(f64, String)> {
    let subtasks = (0..n)
        .map(|i| {
            serde_json::from_value::<Subtask>(
                json!({"id": format!("t{i}"), "type": "math", "action": "sum", "args": [i, 1]}),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plan_id = jetmesh_shared::ids::generate();
    let request = SubmitRequest {
        plan: Plan {
            epic: None,
            plan_id: plan_id.clone(),
            goal: Some("benchmark".into()),
            subtasks,
            deadline_ms: None,
        },
        wait: true,
        wait_timeout_ms: Some(300_000),
        dry_run: false,
    };
    let event = |kind| mesh.names.event(kind, &plan_id);
    let ready = mesh.client.subscribe(event(EventKind::PlanReady)).await?;
    let aggregated = mesh
        .client
        .subscribe(event(EventKind::AggregationReady))
        .await?;
    mesh.client.flush().await?;
    let unix_start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let started = Instant::now();
    let seen = |mut sub: async_nats::Subscriber| {
        tokio::spawn(async move {
            sub.next().await?;
            Some(started.elapsed())
        })
    };
    let (ready, aggregated) = (seen(ready), seen(aggregated));
    let report = jetmesh::client::submit_and_wait(mesh, request, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.completed == n,
        "the plan completed {} of {n} tasks",
        report.completed
    );
    let ms =
        |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3));
    let results = mesh
        .scan(&mesh.results, &mesh.names.task_key_plan(&plan_id))
        .await?;
    let stored: Vec<i128> = results
        .iter()
        .map(|e| e.created.unix_timestamp_nanos() - unix_start.as_nanos() as i128)
        .collect();
    let at = |ns: Option<&i128>| ms(ns.map(|n| Duration::from_nanos((*n).max(0) as u64)));
    let phases = format!(
        "plan_ready {}, first result {}, last result {}, aggregation_ready {}, report {}",
        ms(ready.await.ok().flatten()),
        at(stored.iter().min()),
        at(stored.iter().max()),
        ms(aggregated.await.ok().flatten()),
        ms(Some(elapsed)),
    );
    Ok((n as f64 / elapsed.as_secs_f64(), phases))
}

fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// p50 and p99 in ms of latencies recorded in µs.
fn percentiles(samples: &hdrhistogram::Histogram<u64>) -> (f64, f64) {
    let ms = |q: f64| samples.value_at_quantile(q) as f64 / 1000.0;
    (ms(0.50), ms(0.99))
}

/// A histogram of latencies in µs, from 1 µs to 60 s, 3 significant digits.
fn latencies() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

async fn run_latency(mesh: &Mesh, n: usize) -> Result<(f64, f64)> {
    let subject = mesh.names.run("math", "sum");
    let mut samples = latencies();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        mesh.client
            .request(subject.clone(), r#"{"args":[1,2,3]}"#.into())
            .await?;
        if i >= n / 10 {
            samples.saturating_record(t.elapsed().as_micros() as u64);
        }
    }
    Ok(percentiles(&samples))
}

async fn core_latency(client: &async_nats::Client, n: usize) -> Result<(f64, f64)> {
    let echo_subject = Names::default().bench_echo();
    let mut sub = client.subscribe(echo_subject.clone()).await?;
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    client.flush().await?;
    let mut samples = latencies();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        client
            .request(echo_subject.clone(), r#"{"args":[1,2,3]}"#.into())
            .await?;
        if i >= n / 10 {
            samples.saturating_record(t.elapsed().as_micros() as u64);
        }
    }
    echo.abort();
    Ok(percentiles(&samples))
}

/// RSS of an idle `jetmesh up --nats-url URL` after it settled, in MB.
async fn idle_rss(url: &str) -> Result<f64> {
    let mut child = tokio::process::Command::new(jetmesh_exe()?)
        .args(["up", "--nats-url", url])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = child.id().context("jetmesh up exited")?;
    let kb = procfs::process::Process::new(pid as i32)?
        .status()?
        .vmrss
        .context("no VmRSS")? as f64;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    Ok(kb / 1024.0)
}
