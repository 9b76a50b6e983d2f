//! The `jetmesh` binary as a library: one command per role (so each role can be
//! its own systemd unit or container), `up` and `demo` for the embedded mesh, and
//! the people CLI (`submit`, `status`, `caps`, `run`, …).

pub mod client;
pub mod coordination;
pub mod embedded;
pub mod site;
pub mod up;

use anyhow::Result;
use clap::{Parser, Subcommand};
use jetmesh_capabilities::Builtin;
use jetmesh_shared::capability::Catalog;
use jetmesh_shared::{CancellationToken, Config, Identity, Mesh, Role, shutdown, telemetry};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "jetmesh",
    version,
    about = "A NATS JetStream-native agent mesh"
)]
pub struct Cli {
    /// Config file (default: $JETMESH_CONFIG, ./config/jetmesh.toml, /etc/jetmesh/jetmesh.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// NATS server URL; overrides NATS_URL and the config.
    #[arg(long, global = true)]
    pub nats_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole mesh in one process (an embedded nats-server unless a URL is set).
    Up(up::UpArgs),
    /// Bring up the embedded mesh, run a demo plan, print the report and stop.
    Demo(up::UpArgs),
    /// Run the chief role.
    Chief,
    /// Run the planner role.
    Planner,
    /// Run the router role.
    Router,
    /// Run the aggregator role.
    Aggregator,
    /// Run the summary role.
    Summary,
    /// Run the archiver: plans, results, reports and the audit log copied to
    /// the PostgreSQL database of `[archive] url`.
    Archiver,
    /// Run the autoscaler role (pool status, scaling rules, alerts, worker
    /// health; one leads, others stand by).
    Autoscaler,
    /// Run a worker pool process.
    Worker {
        /// The pool, as named under [pools] in the config.
        #[arg(long)]
        pool: String,
        /// Concurrent worker slots (default: the pool's `workers`).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Submit a plan (a JSON file, or - for stdin).
    Submit(client::SubmitArgs),
    /// Show who leads and what is registered, or, with a plan id, that plan's
    /// status and results.
    Status {
        plan_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the registered capabilities.
    Caps {
        /// Each action with its description and parameters (from its schema).
        #[arg(long)]
        actions: bool,
        #[arg(long)]
        json: bool,
    },
    /// The pools: min, max, current slots, queue and what the autoscaler does
    /// (the seed's "Current State" table).
    Pools {
        /// Keep refreshing every this many seconds (Ctrl-C stops).
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Compare the server's streams and buckets with this config, field by
    /// field; with --apply, create what is missing and update what differs.
    /// Exits 2 when there are changes that were not applied.
    Init {
        /// Create and update; without it nothing changes.
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        json: bool,
    },
    /// Browse, replay and clear dead letters (MESH_DLQ).
    Dlq {
        #[command(subcommand)]
        command: client::DlqCommand,
    },
    /// Large outputs in the object store: `jetmesh obj get <key> -o shot.png`.
    Obj {
        #[command(subcommand)]
        command: client::ObjCommand,
    },
    /// Run one task and print its result: `jetmesh run math sum 1 2 3`.
    Run(client::RunArgs),
    /// Execution plans: `jetmesh plan check execution-plan.md`.
    Plan {
        #[command(subcommand)]
        command: coordination::PlanCommand,
    },
    /// Epics: `jetmesh epic status E1`.
    Epic {
        #[command(subcommand)]
        command: coordination::EpicCommand,
    },
    /// Agent mail: send, reply (and decide blockers), tail, inbox, ack.
    Mail {
        #[command(subcommand)]
        command: coordination::MailCommand,
    },
    /// Reserve files in an epic (renew with --id before coord.lease_ttl_secs).
    Reserve(coordination::ReserveArgs),
    /// Release a file reservation.
    Release { epic: String, id: String },
}

/// Loads the config with the command-line overrides applied.
pub fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(url) = &cli.nats_url {
        config.nats.url = url.clone();
    }
    Ok(config)
}

/// Threads for this process's runtime (`runtime.worker_threads`): the
/// commands that start the embedded nats-server leave it a core.
pub fn worker_threads(cli: &Cli, config: &Config) -> usize {
    let embedded =
        config.nats.url.is_empty() && matches!(cli.command, Command::Up(_) | Command::Demo(_));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    config.runtime.threads(cores, embedded)
}

/// Runs the parsed command with its loaded `config` ([`load_config`]); the
/// process exit code is the returned value.
pub async fn main(cli: Cli, config: Config) -> Result<i32> {
    // Commands for people print their own output; keep role logs to warnings
    // unless asked (RUST_LOG or telemetry.log).
    let quiet = !matches!(
        cli.command,
        Command::Up(_)
            | Command::Chief
            | Command::Planner
            | Command::Router
            | Command::Aggregator
            | Command::Summary
            | Command::Autoscaler
            | Command::Worker { .. }
    );
    let mut telemetry_config = config.telemetry.clone();
    if quiet && telemetry_config.log == "info" {
        telemetry_config.log = "warn".into();
    }
    telemetry::init(&telemetry_config, service_name(&cli.command));
    let outcome = run_command(cli.command, config).await;
    // Roles return here once stopped: the last spans go out (bounded).
    telemetry::shutdown().await;
    outcome
}

/// The `service.name` of a command's spans, unless `telemetry.service_name`
/// sets one: `jetmesh-<role>`, `jetmesh-up` for every role in one process,
/// `jetmesh` for the CLI.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Up(_) => "jetmesh-up",
        Command::Demo(_) => "jetmesh-demo",
        Command::Chief => "jetmesh-chief",
        Command::Planner => "jetmesh-planner",
        Command::Router => "jetmesh-router",
        Command::Aggregator => "jetmesh-aggregator",
        Command::Summary => "jetmesh-summary",
        Command::Archiver => "jetmesh-archiver",
        Command::Autoscaler => "jetmesh-autoscaler",
        Command::Worker { .. } => "jetmesh-worker",
        _ => "jetmesh",
    }
}

/// Runs one command (a role until it stops, or a CLI command).
async fn run_command(command: Command, config: Config) -> Result<i32> {
    let role = |identity: Identity| {
        let config = config.clone();
        async move {
            let shutdown = shutdown::on_signal();
            shutdown::deadline(shutdown.clone(), config.runtime.shutdown_bound());
            let mesh = Mesh::connect(config, identity).await?;
            Ok::<_, anyhow::Error>((mesh, shutdown))
        }
    };
    match command {
        Command::Up(args) => {
            let shutdown = shutdown::on_signal();
            shutdown::deadline(shutdown.clone(), config.runtime.shutdown_bound());
            up::up(config, args, shutdown).await.map(|_| 0)
        }
        Command::Demo(args) => up::demo(config, args).await,
        Command::Chief => {
            let (mesh, s) = role(Role::Chief.into()).await?;
            jetmesh_chief::run(mesh, s).await?;
            Ok(0)
        }
        Command::Planner => {
            let (mesh, s) = role(Role::Planner.into()).await?;
            jetmesh_planner::run(mesh, s).await?;
            Ok(0)
        }
        Command::Router => {
            let (mesh, s) = role(Role::Router.into()).await?;
            jetmesh_router::run(mesh, s).await?;
            Ok(0)
        }
        Command::Aggregator => {
            let (mesh, s) = role(Role::Aggregator.into()).await?;
            jetmesh_aggregator::run(mesh, s).await?;
            Ok(0)
        }
        Command::Summary => {
            let (mesh, s) = role(Role::Summary.into()).await?;
            jetmesh_summary::run(mesh, s).await?;
            Ok(0)
        }
        Command::Archiver => {
            let (mesh, s) = role(Role::Archiver.into()).await?;
            jetmesh_archiver::run(mesh, s).await?;
            Ok(0)
        }
        Command::Autoscaler => {
            let (mesh, s) = role(Role::Autoscaler.into()).await?;
            jetmesh_autoscaler::run(mesh, s).await?;
            Ok(0)
        }
        Command::Worker { pool, workers } => {
            let (mesh, s) = role(Identity::named(Role::Worker, &pool)).await?;
            run_pool(mesh, &pool, workers, s).await?;
            Ok(0)
        }
        Command::Submit(args) => client::submit(config, args).await,
        Command::Status {
            plan_id: Some(plan_id),
            json,
        } => client::status(config, &plan_id, json).await,
        Command::Status {
            plan_id: None,
            json,
        } => client::mesh_status(config, json).await,
        Command::Caps { actions, json } => client::caps(config, actions, json).await,
        Command::Pools { watch, json } => client::pools(config, watch, json).await,
        Command::Run(args) => client::run(config, args).await,
        Command::Plan { command } => coordination::plan(config, command).await,
        Command::Epic { command } => coordination::epic_cmd(config, command).await,
        Command::Mail { command } => coordination::mail_cmd(config, command).await,
        Command::Reserve(args) => coordination::reserve(config, args).await,
        Command::Release { epic, id } => coordination::release(config, epic, id).await,
        Command::Dlq { command } => client::dlq(config, command).await,
        Command::Obj { command } => client::obj(config, command).await,
        Command::Init { apply, json } => client::init(config, apply, json).await,
    }
}

/// Runs the pool process of `pool` with the capabilities built into this
/// binary ([`Builtin`]).
pub async fn run_pool(
    mesh: Mesh,
    pool: &str,
    workers: Option<usize>,
    shutdown: CancellationToken,
) -> jetmesh_shared::Result<()> {
    jetmesh_worker::run(mesh, pool, workers, &Builtin, shutdown).await
}

/// Runs `role` on a NATS connection of its own, flushed before it closes so
/// the last acks and events are not lost (bounded: the server may be gone).
async fn on_own_connection<Fut>(
    config: &Config,
    identity: Identity,
    role: impl FnOnce(Mesh) -> Fut,
) -> jetmesh_shared::Result<()>
where
    Fut: std::future::Future<Output = jetmesh_shared::Result<()>>,
{
    let mesh = Mesh::connect(config.clone(), identity).await?;
    let result = role(mesh.clone()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), mesh.client.flush()).await;
    result
}

/// Runs every role of the mesh, and a pool process for every configured pool
/// whose capabilities are built in,
/// until `shutdown`; the first role that fails stops the others. Each role and
/// pool gets a NATS connection of its own (named `jetmesh-<role>`), as it
/// would as a separate process, so no role's traffic queues behind another's.
pub async fn run_all_roles(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    let roles: [(Role, RoleFn); 6] = [
        (Role::Chief, |m, s| Box::pin(jetmesh_chief::run(m, s))),
        (Role::Planner, |m, s| Box::pin(jetmesh_planner::run(m, s))),
        (Role::Router, |m, s| Box::pin(jetmesh_router::run(m, s))),
        (Role::Aggregator, |m, s| {
            Box::pin(jetmesh_aggregator::run(m, s))
        }),
        (Role::Summary, |m, s| Box::pin(jetmesh_summary::run(m, s))),
        (Role::Autoscaler, |m, s| {
            Box::pin(jetmesh_autoscaler::run(m, s))
        }),
    ];
    for (role, f) in roles {
        let (config, s) = (mesh.config.clone(), shutdown.clone());
        set.spawn(async move {
            let r = on_own_connection(&config, role.into(), |m| f(m, s)).await;
            (role.to_string(), r)
        });
    }
    if !mesh.config.archive.url.is_empty() {
        let (config, s) = (mesh.config.clone(), shutdown.clone());
        set.spawn(async move {
            let r = on_own_connection(&config, Role::Archiver.into(), |m| {
                jetmesh_archiver::run(m, s)
            })
            .await;
            (Role::Archiver.to_string(), r)
        });
    }
    for pool in mesh.config.pools.keys() {
        if !Builtin.serves(&mesh.config, pool) {
            tracing::info!(
                pool,
                capabilities = ?mesh.config.pool_capabilities(pool),
                "This pool has no built-in capability here; it is served by separate workers."
            );
            continue;
        }
        let missing: Vec<String> = mesh
            .config
            .pool_capabilities(pool)
            .iter()
            .filter_map(|c| Builtin.unavailable(&mesh.config, c))
            .collect();
        if !missing.is_empty() {
            tracing::info!(pool, "This pool does not run here: {}", missing.join("; "));
            continue;
        }
        let (config, s, p) = (mesh.config.clone(), shutdown.clone(), pool.clone());
        set.spawn(async move {
            let name = format!("worker {p}");
            let identity = Identity::named(Role::Worker, &p);
            let r = on_own_connection(&config, identity, |m| async move {
                run_pool(m, &p, None, s).await
            })
            .await;
            (name, r)
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => {
                tracing::error!(role = %name, error = %e, "A role failed; stopping the mesh.");
                shutdown.cancel();
                first_error.get_or_insert(anyhow::anyhow!("{name}: {e}"));
            }
            Err(e) => {
                shutdown.cancel();
                first_error.get_or_insert(anyhow::anyhow!("a role panicked: {e}"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

type RoleFn = fn(
    Mesh,
    CancellationToken,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = jetmesh_shared::Result<()>> + Send>,
>;
