//! (h) Planning figures, against the LLM provider emulator of the tests
//! (`tests/llm_emulator.py`, a real HTTP server) answering every call after
//! a fixed delay:
//!
//! - the planner's own overhead per goal: a dry-run goal submitted through
//!   the chief (prompt from the registry, the call, validation, accounting,
//!   two NATS hops), next to the same chat-completions call made straight
//!   with reqwest, sequentially, in the same run;
//! - goals per second with 4 at once, each planned, run and reported, next
//!   to 4 concurrent loops of the straight call.

use super::Figure;
use anyhow::{Context, Result};
use jetmesh_shared::config::ProviderConfig;
use jetmesh_shared::{CancellationToken, Config, Mesh};
use jetmesh_tests::llm::{LlmEmulator, OPENAI_KEY, Reply};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The emulator's answer delay: the model's "thinking".
const DELAY: Duration = Duration::from_millis(50);
const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 4;
const PER_LOOP: usize = 40;
const MODEL: &str = "bench-model";

pub async fn measure(config: &Config) -> Result<Vec<Figure>> {
    let emu = LlmEmulator::start();
    let plan = json!({"subtasks": [
        {"id": "total", "type": "math", "action": "sum", "args": [1, 2, 3, 4]},
        {"id": "scaled", "type": "math", "action": "multiply",
         "args": [{"$ref": "total"}, 10], "depends_on": ["total"]}
    ]});
    emu.default_reply(MODEL, Reply::Delay(DELAY, Box::new(Reply::Json(plan))))
        .await;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("key");
    std::fs::write(&key_file, OPENAI_KEY)?;
    let mut config = config.clone();
    config
        .pools
        .retain(|name, _| name == "math" || name == "date");
    config.planner.order = vec!["emu".into()];
    config.planner.providers.insert(
        "emu".into(),
        ProviderConfig {
            base_url: emu.openai_url(),
            model: MODEL.into(),
            api_key_file: Some(key_file),
            max_concurrent: 16,
            ..ProviderConfig::default()
        },
    );
    // Planning only: the narrative would be a second call per plan.
    config.summary.narrative = false;
    let mesh = Mesh::connect(config, "bench-planning").await?;
    let shutdown = CancellationToken::new();
    let roles = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(30)).await?;
    let out = figures(&mesh, &emu).await;
    shutdown.cancel();
    roles.await??;
    out
}

async fn figures(mesh: &Mesh, emu: &LlmEmulator) -> Result<Vec<Figure>> {
    // The straight call: what the planner sent for one goal, replayed.
    goal(mesh, true).await.context("warm-up goal")?;
    let sent = emu
        .received()
        .await
        .into_iter()
        .last()
        .context("the emulator saw no call")?;
    let http = reqwest_client()?;
    let url = format!("{}/chat/completions", emu.openai_url());
    let raw_call = || {
        let (http, url, body) = (http.clone(), url.clone(), sent.body.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(OPENAI_KEY)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
            r.bytes().await?;
            anyhow::Ok(())
        }
    };
    for _ in 0..5 {
        raw_call().await?;
        goal(mesh, true).await?;
    }

    eprintln!(
        "(h) planning: {SEQUENTIAL} sequential goals (dry run) and straight calls, interleaved ..."
    );
    let (mut raw, mut planned) = (Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        raw_call().await?;
        raw.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        goal(mesh, true).await?;
        planned.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (raw50, plan50) = (pct(&mut raw, 0.5), pct(&mut planned, 0.5));
    let (raw99, plan99) = (pct(&mut raw, 0.99), pct(&mut planned, 0.99));
    eprintln!("    p50 {plan50:.2} ms against {raw50:.2} ms straight");

    eprintln!("(h) planning: {CONCURRENT} goals at once, planned, run and reported ...");
    let t = Instant::now();
    let loops = (0..CONCURRENT).map(|_| async {
        for _ in 0..PER_LOOP {
            goal(mesh, false).await?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(loops).await?;
    let goals_rate = (CONCURRENT * PER_LOOP) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loops = (0..CONCURRENT).map(|_| async {
        for _ in 0..PER_LOOP {
            raw_call().await?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(loops).await?;
    let raw_rate = (CONCURRENT * PER_LOOP) as f64 / t.elapsed().as_secs_f64();
    eprintln!("    {goals_rate:.1} goals/s against {raw_rate:.1} calls/s straight");

    Ok(vec![
        Figure {
            name: "planner overhead per goal, dry run, emulator answering after 50 ms (ms, p50 / p99)",
            value: format!(
                "{plan50:.2} / {plan99:.2}; +{:.2} ms at p50",
                plan50 - raw50
            ),
            baseline: format!("{raw50:.2} / {raw99:.2} (the same call, straight)"),
            ratio: format!("{:.2}", plan50 / raw50),
        },
        Figure {
            name: "goals planned, run and reported, 4 at once (goals/s)",
            value: format!("{goals_rate:.1}"),
            baseline: format!("{raw_rate:.1} (4 loops of the straight call)"),
            ratio: format!("{:.2}", goals_rate / raw_rate),
        },
    ])
}

/// One goal through `mesh.plans.submit`: a dry run, or planned, run and
/// reported (`wait`).
async fn goal(mesh: &Mesh, dry_run: bool) -> Result<()> {
    let body = json!({"goal": "Add 1, 2, 3 and 4, then multiply the total by 10.",
        "dry_run": dry_run, "wait": !dry_run});
    let reply = mesh
        .client
        .send_request(
            mesh.names.plans_submit(),
            async_nats::Request::new()
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_secs(60))),
        )
        .await?;
    let v: Value = serde_json::from_slice(&reply.payload)?;
    let ok = if dry_run {
        v["status"] == "planned"
    } else {
        v["completed"] == 2
    };
    anyhow::ensure!(ok, "goal failed: {v}");
    Ok(())
}

fn reqwest_client() -> Result<jetmesh_tests::llm::reqwest::Client> {
    Ok(jetmesh_tests::llm::reqwest::Client::builder()
        .no_proxy()
        .build()?)
}

/// The `q` quantile of `v` (sorted in place).
fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}
