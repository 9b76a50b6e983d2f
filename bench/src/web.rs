//! (f) Web figures, on the demo site served on loopback: pages per second
//! for a small static page against slots, next to the raw parts (the same
//! Chromium driven straight over CDP, one page per slot, no mesh and no
//! guard); the browser's memory with no page and per open page (PSS of its
//! process tree); and the cold start of a browser to its first page.

use super::Figure;
use anyhow::{Context, Result};
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams,
};
use jetmesh::site::Site;
use jetmesh_capabilities::web::browser::Chromium;
use jetmesh_capabilities::web::guard::Guard;
use jetmesh_shared::config::PoolConfig;
use jetmesh_shared::wire::{Plan, ScaleDecision, SubmitRequest, Subtask};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SLOTS: [usize; 4] = [1, 2, 4, 8];
/// Navigations per slot in one measurement.
const PER_SLOT: usize = 40;

pub async fn measure(config: &Config) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    if let Err(e) = jetmesh_capabilities::web::Web::available(&config.web) {
        eprintln!("(f) web figures skipped: {}", e.message);
        return Ok(figures);
    }
    let site = Site::start().await;
    let page_url = site.url("/static");

    eprintln!("(f) browser cold start, 3 times ...");
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let b = Chromium::launch(&config.web, None).await?;
        let page = new_page(&b).await?;
        page.goto(page_url.as_str()).await?;
        cold.push(started.elapsed());
        let started = Instant::now();
        page.goto(page_url.as_str()).await?;
        warm.push(started.elapsed());
    }
    figures.push(Figure {
        name: "web: browser cold start to first page (ms, 3 runs)",
        value: ms_list(&cold),
        baseline: format!("{} (warm navigation)", ms_list(&warm)),
        ratio: "-".into(),
    });

    eprintln!("(f) browser memory (PSS of its process tree) ...");
    let b = Chromium::launch(&config.web, None).await?;
    let idle = pss_mb(b.pid())?;
    let mut pages = Vec::new();
    for _ in 0..8 {
        let p = new_page(&b).await?;
        p.goto(page_url.as_str()).await?;
        pages.push(p);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let eight = pss_mb(b.pid())?;
    drop(pages);
    drop(b);
    figures.push(Figure {
        name: "web: browser memory, no page / per open page (MB, PSS)",
        value: format!("{idle:.0} / {:.1}", (eight - idle) / 8.0),
        baseline: format!("{eight:.0} with 8 pages"),
        ratio: "-".into(),
    });

    eprintln!("(f) static page navigations against slots: raw CDP, without and with the guard ...");
    let mut raw = Vec::new();
    let mut guarded = Vec::new();
    for slots in SLOTS {
        raw.push(raw_rate(config, &page_url, slots, false).await?);
        guarded.push(raw_rate(config, &page_url, slots, true).await?);
        eprintln!(
            "    {slots} slots: {:.1} pages/s, {:.1} through the guard",
            raw.last().unwrap(),
            guarded.last().unwrap()
        );
    }
    for ((slots, raw), g) in SLOTS.iter().zip(&raw).zip(&guarded) {
        figures.push(Figure {
            name: "web: raw CDP through the guard on N slots (pages/s)",
            value: format!("{slots} slots: {g:.1}"),
            baseline: format!("{raw:.1} (raw CDP, N pages)"),
            ratio: format!("{:.2}", g / raw),
        });
    }
    eprintln!("(f) ... and through the mesh (web pool, one process) ...");
    let mesh_rates = mesh_rates(config, &site).await?;
    for ((slots, raw), mesh) in SLOTS.iter().zip(&raw).zip(&mesh_rates) {
        figures.push(Figure {
            name: "web: static page navigations on N slots (pages/s)",
            value: format!("{slots} slots: {mesh:.1}"),
            baseline: format!("{raw:.1} (raw CDP, N pages)"),
            ratio: format!("{:.2}", mesh / raw),
        });
    }
    Ok(figures)
}

fn ms_list(d: &[Duration]) -> String {
    d.iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A page in a browser context of its own, as a session gets.
async fn new_page(b: &Chromium) -> Result<Page> {
    let context = b
        .browser
        .create_browser_context(CreateBrowserContextParams::default())
        .await?;
    let target = CreateTargetParams::builder()
        .url("about:blank")
        .browser_context_id(context)
        .build()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(b.browser.new_page(target).await?)
}

/// Pages per second: `slots` pages, each navigating `PER_SLOT` times; with
/// `guarded`, through the web capability's guard (loopback allowed).
async fn raw_rate(config: &Config, url: &str, slots: usize, guarded: bool) -> Result<f64> {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let proxy = if guarded {
        let g = Guard::new(&["127.0.0.0/8".to_string()]);
        Some(jetmesh_capabilities::web::guard::start(std::sync::Arc::new(g), stop).await?)
    } else {
        None
    };
    let b = Chromium::launch(&config.web, proxy).await?;
    let mut pages = Vec::new();
    for _ in 0..slots {
        let p = new_page(&b).await?;
        p.goto(url).await?;
        pages.push(p);
    }
    let started = Instant::now();
    futures::future::try_join_all(pages.iter().map(|p| async move {
        for _ in 0..PER_SLOT {
            p.goto(url).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    Ok((slots * PER_SLOT) as f64 / started.elapsed().as_secs_f64())
}

/// The same through the mesh: a plan of `PER_SLOT × slots` navigations in
/// `slots` sessions (each session's navigations run in turn, on its page),
/// on a web pool whose process has `slots` slots.
async fn mesh_rates(config: &Config, site: &Site) -> Result<Vec<f64>> {
    let mut config = config.clone();
    config.web.allow_networks = vec![format!("{}/32", site.addr.ip())];
    config.web.max_pages = 16;
    let mut pool = PoolConfig::new("web", 1).limits(1, 1);
    pool.capabilities = vec!["web".into()];
    config.pools = BTreeMap::from([("web".to_string(), pool)]);
    let mesh = Mesh::connect(config, "bench-web").await?;
    let shutdown = CancellationToken::new();
    let roles = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(30)).await?;
    let out = async {
        let instance = process(&mesh, "web").await?;
        let mut out = Vec::new();
        for (round, slots) in SLOTS.into_iter().enumerate() {
            let decision = ScaleDecision {
                pool: "web".into(),
                slots: BTreeMap::from([(instance.clone(), slots)]),
                reason: "benchmark".into(),
                at: jiff::Timestamp::now(),
                term: None,
            };
            mesh.scale
                .put(mesh.names.scale_key("web"), codec::to_json(&decision)?)
                .await?;
            // Warm: every session's page open before the clock starts.
            let warm = plan(site, slots, 1, &format!("r{round}"))?;
            let report =
                jetmesh::client::submit_and_wait(&mesh, warm, Duration::from_secs(120)).await?;
            anyhow::ensure!(report.failed == 0, "warm-up failed: {}", report.markdown);
            let n = slots * PER_SLOT;
            let request = plan(site, slots, PER_SLOT, &format!("r{round}"))?;
            let started = Instant::now();
            let report =
                jetmesh::client::submit_and_wait(&mesh, request, Duration::from_secs(300)).await?;
            anyhow::ensure!(
                report.completed == n,
                "{} of {n} completed",
                report.completed
            );
            let rate = n as f64 / started.elapsed().as_secs_f64();
            eprintln!("    {slots} slots: {rate:.1} pages/s");
            out.push(rate);
        }
        anyhow::Ok(out)
    }
    .await;
    shutdown.cancel();
    roles.await??;
    out
}

/// A plan of `per` navigations in each of `slots` sessions named after `tag`.
fn plan(site: &Site, slots: usize, per: usize, tag: &str) -> Result<SubmitRequest> {
    let subtasks = (0..slots * per)
        .map(|i| {
            serde_json::from_value::<Subtask>(json!({
                "id": format!("t{i}"), "type": "web", "action": "navigate",
                "url": site.url("/static"), "format": "none",
                "session": format!("{tag}s{}", i % slots),
            }))
            .context("a subtask")
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SubmitRequest {
        plan: Plan {
            epic: None,
            plan_id: String::new(),
            goal: Some("web benchmark".into()),
            subtasks,
            deadline_ms: None,
        },
        wait: true,
        wait_timeout_ms: Some(300_000),
        dry_run: false,
    })
}

/// The instance of `pool`'s one process.
pub(crate) async fn process(mesh: &Mesh, pool: &str) -> Result<String> {
    for _ in 0..100 {
        let beats = mesh
            .scan(&mesh.health, &mesh.names.pool_health_keys(pool))
            .await?;
        if let Some(b) = beats
            .iter()
            .find_map(|e| codec::from_json::<jetmesh_shared::wire::WorkerHeartbeat>(&e.value).ok())
        {
            return Ok(b.instance);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the {pool} pool did not heartbeat")
}

/// The proportional set size of `pid` and every process below it, in MB:
/// shared pages counted once, split among their sharers.
fn pss_mb(pid: i32) -> Result<f64> {
    let mut tree = vec![pid];
    let all: Vec<(i32, i32)> = procfs::process::all_processes()?
        .filter_map(|p| p.ok())
        .filter_map(|p| p.stat().ok().map(|s| (s.pid, s.ppid)))
        .collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    let mut kb = 0u64;
    for p in tree {
        let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        kb += text
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(kb as f64 / 1024.0)
}
