//! `jetmesh-bench`: the benchmark (docs/BENCHMARKS.md), outside the
//! production binary. `./dev bench` builds it with `jetmesh` and runs it.

use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "jetmesh-bench",
    about = "Measure jetmesh against a raw JetStream baseline"
)]
struct Cli {
    /// Config file (default: $JETMESH_CONFIG, ./config/jetmesh.toml, /etc/jetmesh/jetmesh.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URL; without one the bench starts a throw-away embedded server.
    #[arg(long)]
    nats_url: Option<String>,
    #[command(flatten)]
    args: jetmesh_bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = jetmesh_shared::Config::load(cli.config.as_deref())?;
    if let Some(url) = &cli.nats_url {
        config.nats.url = url.clone();
    }
    // The bench provokes failures (dead letters, killed processes) on purpose.
    let mut telemetry = config.telemetry.clone();
    if telemetry.log == "info" {
        telemetry.log = "error".into();
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = config.runtime.threads(cores, config.nats.url.is_empty());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(async {
            jetmesh_shared::telemetry::init(&telemetry, "jetmesh-bench");
            let outcome = jetmesh_bench::run(config, cli.args).await;
            jetmesh_shared::telemetry::shutdown().await;
            outcome
        })
}
