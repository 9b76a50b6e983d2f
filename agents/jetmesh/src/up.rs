//! `jetmesh up` and `jetmesh demo`: the whole mesh in one process, on an
//! embedded nats-server unless a NATS URL is configured.

use crate::embedded::EmbeddedServer;
use anyhow::{Context, Result};
use jetmesh_capabilities::Builtin;
use jetmesh_shared::capability::Catalog;
use jetmesh_shared::provision::Mode;
use jetmesh_shared::wire::{SubmitRequest, TaskResult};
use jetmesh_shared::{CancellationToken, Config, Identity, Mesh, Role, codec, registry};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Data folder of the embedded nats-server (default: embedded.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of the embedded nats-server (default: embedded.port; `demo` picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
}

/// Starts the embedded server when no URL is set; returns it (if started) and
/// the config pointing at the server to use.
async fn server(mut config: Config, args: &UpArgs) -> Result<(Option<EmbeddedServer>, Config)> {
    if !config.nats.url.is_empty() {
        return Ok((None, config));
    }
    if let Some(dir) = &args.data_dir {
        config.embedded.data_dir = dir.clone();
    }
    if let Some(port) = args.port {
        config.embedded.port = port;
    }
    let server = EmbeddedServer::start(&config.embedded).await?;
    config.nats.url = server.url.clone();
    Ok((Some(server), config))
}

/// The mesh for `up` and `demo`: on its own embedded server it applies this
/// config to the streams and buckets (it owns them); on a server it was
/// pointed at, it is a role like any other (creates what is missing, changes
/// nothing).
async fn open(config: &Config, embedded: bool, name: &str) -> Result<Mesh> {
    let mode = if embedded {
        Mode::Apply
    } else {
        Mode::CreateMissing
    };
    Ok(Mesh::open(config.clone(), Identity::from(name), mode).await?)
}

/// Runs the mesh until `shutdown` (Ctrl-C / SIGTERM), then drains and stops.
pub async fn up(config: Config, args: UpArgs, shutdown: CancellationToken) -> Result<()> {
    let (server, config) = server(config, &args).await?;
    let result = async {
        let mesh = open(&config, server.is_some(), "up").await?;
        let mut roles = tokio::spawn(crate::run_all_roles(mesh.clone(), shutdown));
        // Announce only once every role answers, so the first request works;
        // a role that fails first ends `up` with its error at once.
        let ready = tokio::select! {
            ended = &mut roles => return ended?,
            ready = wait_ready(&mesh, Duration::from_secs(60)) => ready,
        };
        match ready {
            Ok(()) => {
                let pools: Vec<String> = config.pools.keys().cloned().collect();
                eprintln!(
                    "jetmesh is up on {} with pools {}. Try:\n  nats --server {} req mesh.run.math.sum '{{\"args\":[1,2,3]}}'\nCtrl-C drains and stops.",
                    config.nats.url,
                    pools.join(", "),
                    config.nats.url
                );
            }
            Err(error) => tracing::warn!(%error, "Not every role answered yet."),
        }
        roles.await?
    }
    .await;
    if let Some(server) = server {
        server.stop().await;
    }
    result
}

/// Brings the mesh up, serves the demo site on loopback, runs one
/// `mesh.run`, the seed plan (its `t3` pointed at the site) and a browser
/// plan (navigate, click, extract, screenshot), prints them, stops.
pub async fn demo(config: Config, mut args: UpArgs) -> Result<i32> {
    if args.port.is_none() {
        args.port = Some(0);
    }
    if args.data_dir.is_none() {
        args.data_dir = Some(PathBuf::from(".jetmesh/demo"));
    }
    let (server, mut config) = server(config, &args).await?;
    // The site is on this machine: the demo allows its address (and only it).
    let site = crate::site::Site::start().await;
    config
        .web
        .allow_networks
        .push(format!("{}/32", site.addr.ip()));
    let browser = Builtin.unavailable(&config, "web");
    if let Some(why) = &browser {
        println!("(The web steps are left out: {why})\n");
    }
    let shutdown = CancellationToken::new();
    let result = async {
        let mesh = open(&config, server.is_some(), "demo").await?;
        let roles = tokio::spawn(crate::run_all_roles(mesh.clone(), shutdown.clone()));
        let outcome = run_demo(&mesh, &site, browser.is_none()).await;
        shutdown.cancel();
        roles.await??;
        outcome
    }
    .await;
    if let Some(server) = server {
        server.stop().await;
    }
    result
}

const DEMO_PLAN: &str = include_str!("../../../examples/plan.json");
const ORDERS_PLAN: &str = include_str!("../../../examples/orders-report.json");

/// The roles a plan needs to run end to end.
pub const FLOW_ROLES: [Role; 6] = [
    Role::Chief,
    Role::Planner,
    Role::Router,
    Role::Aggregator,
    Role::Summary,
    Role::Worker,
];

/// Every role `run_all_roles` starts: the flow, and the autoscaler.
pub const ALL_ROLES: [Role; 7] = Role::SERVICES;

/// Waits until every role `run_all_roles` starts answers and the public
/// endpoints are served (the chief's `mesh.plans.submit` only once one chief
/// holds the lease).
pub async fn wait_ready(mesh: &Mesh, within: Duration) -> jetmesh_shared::Result<()> {
    wait_ready_roles(mesh, &ALL_ROLES, within).await
}

/// [`wait_ready`] for the given roles.
pub async fn wait_ready_roles(
    mesh: &Mesh,
    roles: &[Role],
    within: Duration,
) -> jetmesh_shared::Result<()> {
    let n = &mesh.names;
    let subjects = [n.plans_get_all(), n.run_all(), n.planner_plan()];
    let deadline = tokio::time::Instant::now() + within;
    jetmesh_shared::service::wait_for_roles(&mesh.client, roles, &subjects, within).await?;
    // Plans are taken by the lease holder alone (other chiefs relay to it):
    // probe with an empty request, which a leader refuses at once as a bad
    // request, and anyone else with `unavailable`.
    loop {
        if leader_answers(mesh, Duration::from_millis(500)).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(jetmesh_shared::Error::new(
                jetmesh_shared::ErrorCode::Timeout,
                "no chief serves mesh.plans.submit (none holds the lease)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a leading chief answers `mesh.plans.submit` within `within`.
pub async fn leader_answers(mesh: &Mesh, within: Duration) -> bool {
    let probe = async_nats::Request::new()
        .payload("{}".into())
        .timeout(Some(within));
    match mesh
        .client
        .send_request(mesh.names.plans_submit(), probe)
        .await
    {
        Ok(reply) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
            .is_ok_and(|v| v["error"]["code"] != "unavailable"),
        Err(_) => false,
    }
}

async fn run_demo(mesh: &Mesh, site: &crate::site::Site, web: bool) -> Result<i32> {
    // The roles start alongside: wait until each answers and the pools registered.
    wait_ready(mesh, Duration::from_secs(30)).await?;
    let want: &[&str] = if web {
        &["math", "date", "web"]
    } else {
        &["math", "date"]
    };
    for _ in 0..100 {
        let (caps, _) = registry::list(mesh).await?;
        if want.iter().all(|c| caps.iter().any(|e| e.capability == *c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("== mesh.run.math.sum {{\"args\":[1,2,3]}}");
    let reply = mesh
        .client
        .request(mesh.names.run("math", "sum"), r#"{"args":[1,2,3]}"#.into())
        .await
        .context("mesh.run failed")?;
    let result: TaskResult = codec::from_json(&reply.payload)?;
    println!("{}\n", serde_json::to_string(&result)?);

    // The seed plan; its t3 opens the demo site (or is left out without a browser).
    let mut request: SubmitRequest = serde_json::from_str(DEMO_PLAN)?;
    for t in &mut request.plan.subtasks {
        if t.capability == "web" {
            t.params.insert("url".into(), site.url("/").into());
        }
    }
    if !web {
        request.plan.subtasks.retain(|t| t.capability != "web");
    }
    println!(
        "== mesh.plans.submit examples/plan.json, t3 on {} (wait for the report)",
        site.url("/")
    );
    let mut failed = show(mesh, request).await?;

    // Data through a plan: rows from the embedded SQLite database, their sum
    // by math (a $ref to the rows), and an email draft with the total when
    // an email account is configured.
    let (caps, _) = registry::list(mesh).await?;
    let has = |c: &str| caps.iter().any(|e| e.capability == c);
    if has("db") {
        let mut request: SubmitRequest = serde_json::from_str(ORDERS_PLAN)?;
        if !has("email") {
            request.plan.subtasks.retain(|t| t.capability != "email");
            println!("(The email draft is left out: no [email.accounts] is configured.)");
        }
        println!(
            "== mesh.plans.submit examples/orders-report.json: db rows → math sum of a column → email draft"
        );
        failed += show(mesh, request).await?;
    }

    if web {
        // One browser page through four steps: the text JavaScript wrote,
        // a click to the next page, a click that reveals a line, a screenshot.
        let plan = serde_json::json!({"goal": "Browse the demo site", "subtasks": [
            {"id": "open", "type": "web", "action": "navigate", "url": site.url("/"), "selector": ".price"},
            {"id": "prices", "type": "web", "action": "extract", "selector": ".price"},
            {"id": "next", "type": "web", "action": "click", "selector": "#next"},
            {"id": "reveal", "type": "web", "action": "click", "selector": "#reveal"},
            {"id": "secret", "type": "web", "action": "extract", "selector": "#secret"},
            {"id": "shot", "type": "web", "action": "screenshot", "full_page": true}
        ]});
        println!("== mesh.plans.submit: navigate → extract → click → click → extract → screenshot");
        failed += show(mesh, serde_json::from_value(plan)?).await?;
        println!(
            "Fetch the screenshot with `jetmesh obj get <key> -o shot.png` while a mesh runs."
        );
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Submits, waits for the report, prints it; returns how many tasks did
/// not succeed.
async fn show(mesh: &Mesh, request: SubmitRequest) -> Result<usize> {
    let report = crate::client::submit_and_wait(mesh, request, Duration::from_secs(90)).await?;
    println!("{}", report.markdown);
    println!(
        "Stored as report.{} in {}; try `jetmesh up` to keep the mesh running.\n",
        report.plan_id, mesh.results.name
    );
    Ok(report.failed + report.pending)
}
