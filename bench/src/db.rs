//! (g) Database figures: point queries per second against slots through the
//! mesh's `db` pool, on SQLite and on PostgreSQL, next to the same query run
//! straight with sqlx in the same run (a pool of as many connections as
//! slots, as many concurrent loops): the mesh's overhead per db task.
//! PostgreSQL is a throw-away server started like the tests start it
//! (skipped when Debian's package is not installed).

use super::Figure;
use anyhow::{Context, Result};
use jetmesh_shared::config::{DatabaseConfig, PoolConfig};
use jetmesh_shared::wire::{Plan, ScaleDecision, SubmitRequest, Subtask};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec};
use serde_json::json;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SLOTS: [usize; 4] = [1, 2, 4, 8];
/// Queries per slot in one measurement.
const PER_SLOT: usize = 400;
/// Rows of the table queried.
const ROWS: i64 = 1000;

pub async fn measure(config: &Config) -> Result<Vec<Figure>> {
    let tmp = tempfile::tempdir()?;
    let mut figures = Vec::new();
    let sqlite = format!("sqlite:{}", tmp.path().join("bench.db").display());
    figures.extend(backend(config, "SQLite", &sqlite, "?").await?);
    if jetmesh_tests::postgres::bin_dir().is_some() {
        let pg = jetmesh_tests::Postgres::start();
        figures.extend(backend(config, "PostgreSQL", &pg.url(), "$1").await?);
    } else {
        eprintln!("(g) PostgreSQL figures skipped: no PostgreSQL (apt-get install postgresql)");
    }
    Ok(figures)
}

/// The figures of one database: raw sqlx, then the mesh, against slots.
async fn backend(config: &Config, label: &str, url: &str, mark: &str) -> Result<Vec<Figure>> {
    let query = format!("SELECT id, name, qty FROM items WHERE id = {mark}");
    setup(url).await?;
    eprintln!("(g) {label}: point queries against slots, raw sqlx ...");
    let mut raw = Vec::new();
    for slots in SLOTS {
        raw.push(raw_rate(url, &query, slots).await?);
        eprintln!("    {slots} slots: {:.0} queries/s", raw.last().unwrap());
    }
    eprintln!("(g) {label}: ... and through the mesh (db pool, one process) ...");
    let mesh = mesh_rates(config, url, &query).await?;
    let mut figures = Vec::new();
    for ((slots, raw), mesh) in SLOTS.iter().zip(&raw).zip(&mesh) {
        let overhead_us = (*slots as f64 / mesh - *slots as f64 / raw) * 1e6;
        figures.push(Figure {
            name: if label == "SQLite" {
                "db (SQLite): point queries on N slots (queries/s; overhead per task)"
            } else {
                "db (PostgreSQL): point queries on N slots (queries/s; overhead per task)"
            },
            value: format!("{slots} slots: {mesh:.0}; +{overhead_us:.0} µs"),
            baseline: format!("{raw:.0} (sqlx, N connections)"),
            ratio: format!("{:.2}", mesh / raw),
        });
    }
    Ok(figures)
}

/// The table: `ROWS` rows, made with sqlx.
async fn setup(url: &str) -> Result<()> {
    let create = "CREATE TABLE IF NOT EXISTS items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL)";
    if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        let pool = sqlx::SqlitePool::connect_with(
            opts.create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
        )
        .await?;
        sqlx::query(create).execute(&pool).await?;
        for id in 1..=ROWS {
            sqlx::query("INSERT OR REPLACE INTO items VALUES (?, ?, ?)")
                .bind(id)
                .bind(format!("item {id}"))
                .bind(id % 17)
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query(create).execute(&pool).await?;
        sqlx::query("INSERT INTO items SELECT i, 'item ' || i, i % 17 FROM generate_series(1, $1) i ON CONFLICT DO NOTHING")
            .bind(ROWS)
            .execute(&pool)
            .await?;
        pool.close().await;
    }
    Ok(())
}

/// Queries per second straight through sqlx: `slots` loops on a pool of
/// `slots` connections, each running the query `PER_SLOT` times.
async fn raw_rate(url: &str, query: &str, slots: usize) -> Result<f64> {
    macro_rules! run {
        ($pool:expr) => {{
            let pool = $pool;
            // Warm: every connection open and the statement prepared.
            futures::future::try_join_all(
                (0..slots).map(|_| sqlx::query(query).bind(1i64).fetch_one(&pool)),
            )
            .await?;
            let started = Instant::now();
            futures::future::try_join_all((0..slots).map(|s| {
                let pool = &pool;
                async move {
                    for i in 0..PER_SLOT {
                        let id = ((s * PER_SLOT + i) as i64 % ROWS) + 1;
                        let row = sqlx::query(query).bind(id).fetch_one(pool).await?;
                        let got: i64 = row.try_get("id")?;
                        anyhow::ensure!(got == id, "row {got} for id {id}");
                    }
                    anyhow::Ok(())
                }
            }))
            .await?;
            let rate = (slots * PER_SLOT) as f64 / started.elapsed().as_secs_f64();
            pool.close().await;
            rate
        }};
    }
    Ok(if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        run!(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(slots as u32)
                .connect_with(opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal))
                .await?
        )
    } else {
        run!(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(slots as u32)
                .connect(url)
                .await?
        )
    })
}

/// The same through the mesh: a plan of `PER_SLOT × slots` `db.query`
/// tasks on a db pool whose one process has `slots` slots and `slots`
/// connections.
async fn mesh_rates(config: &Config, url: &str, query: &str) -> Result<Vec<f64>> {
    let mut config = config.clone();
    let mut pool = PoolConfig::new("db", 1).limits(1, 1);
    pool.capabilities = vec!["db".into()];
    config.pools = BTreeMap::from([("db".to_string(), pool)]);
    config.db.databases = BTreeMap::from([(
        "bench".to_string(),
        DatabaseConfig {
            url: url.to_string(),
            max_connections: Some(*SLOTS.iter().max().unwrap() as u32),
            ..DatabaseConfig::default()
        },
    )]);
    let mesh = Mesh::connect(config, "bench-db").await?;
    let shutdown = CancellationToken::new();
    let roles = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(30)).await?;
    let out = async {
        let instance = super::web::process(&mesh, "db").await?;
        let mut out = Vec::new();
        for slots in SLOTS {
            let decision = ScaleDecision {
                pool: "db".into(),
                slots: BTreeMap::from([(instance.clone(), slots)]),
                reason: "benchmark".into(),
                at: jiff::Timestamp::now(),
                term: None,
            };
            mesh.scale
                .put(mesh.names.scale_key("db"), codec::to_json(&decision)?)
                .await?;
            let warm = plan(query, slots * 4)?;
            let report =
                jetmesh::client::submit_and_wait(&mesh, warm, Duration::from_secs(120)).await?;
            anyhow::ensure!(report.failed == 0, "warm-up failed: {}", report.markdown);
            let n = slots * PER_SLOT;
            let request = plan(query, n)?;
            let started = Instant::now();
            let report =
                jetmesh::client::submit_and_wait(&mesh, request, Duration::from_secs(300)).await?;
            anyhow::ensure!(
                report.completed == n,
                "{} of {n} completed: {}",
                report.completed,
                report.markdown
            );
            let rate = n as f64 / started.elapsed().as_secs_f64();
            eprintln!("    {slots} slots: {rate:.0} queries/s");
            out.push(rate);
        }
        anyhow::Ok(out)
    }
    .await;
    shutdown.cancel();
    roles.await??;
    out
}

/// A plan of `n` independent point queries.
fn plan(query: &str, n: usize) -> Result<SubmitRequest> {
    let subtasks = (0..n)
        .map(|i| {
            serde_json::from_value::<Subtask>(json!({
                "id": format!("q{i}"), "type": "db", "action": "query",
                "database": "bench", "sql": query, "params": [(i as i64 % ROWS) + 1],
            }))
            .context("a subtask")
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SubmitRequest {
        plan: Plan {
            epic: None,
            plan_id: String::new(),
            goal: Some("db benchmark".into()),
            subtasks,
            deadline_ms: None,
        },
        wait: true,
        wait_timeout_ms: Some(300_000),
        dry_run: false,
    })
}
