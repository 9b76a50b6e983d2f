//! The archiver role: JetStream stays the system of record, and where
//! `[archive] url` names a PostgreSQL database a copy of it goes there, for
//! SQL and for keeping longer than the streams do:
//!
//! - `jetmesh_plans` from `plan.*` in `mesh_plans`,
//! - `jetmesh_task_results` from `task.*.*` and `jetmesh_reports` from
//!   `report.*` in `mesh_results`,
//! - `jetmesh_audit` from the `MESH_AUDIT` stream.
//!
//! Each source is a durable consumer on the stream (a KV bucket is a
//! stream), so a restarted archiver goes on where the last one acked, and
//! several archivers share the work. A message is acked only after its row
//! is committed: nothing is skipped. Every row carries the stream sequence it
//! came from and is only replaced by a newer one, so a message copied twice
//! (redelivered after a crash between commit and ack) or out of order changes
//! nothing. The tables are made by migrations (sqlx's `_sqlx_migrations`),
//! embedded in the binary.

use async_nats::jetstream::Message;
use jetmesh_shared::consume::{self, Durable, Outcome};
use jetmesh_shared::error::Result;
use jetmesh_shared::{Error, ErrorCode, Mesh, Role, backoff, names::Names, service};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The migrations, in order: (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "archive", include_str!("../migrations/0001_archive.sql"))];

/// Messages copied at once per source.
const CONCURRENCY: usize = 32;

/// How long a delivered message may go unacked before it comes again.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Runs the archiver until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(Role::Archiver);
    let pool = connect(&mesh)?;
    migrate(&pool, &shutdown).await?;
    let svc = service::start(&mesh, "jetmesh archiver").await?;
    mesh.publish_health("started").await;
    tracing::info!(instance = %mesh.identity.instance, "The archiver is copying plans, results, reports and the audit log to PostgreSQL.");
    let names = mesh.names.clone();
    let plans_bucket = names.plans_bucket();
    let results_bucket = names.results_bucket();
    let plans = Durable::new(
        &mesh,
        names.kv_stream(&plans_bucket),
        names.archiver_consumer("plans"),
        Names::kv_subject_of(&plans_bucket, "plan.*"),
    );
    let mut results = Durable::new(
        &mesh,
        names.kv_stream(&results_bucket),
        names.archiver_consumer("results"),
        String::new(),
    );
    results.config.filter_subjects = vec![
        Names::kv_subject_of(&results_bucket, "task.*.*"),
        Names::kv_subject_of(&results_bucket, "report.*"),
    ];
    let audit = Durable::new(
        &mesh,
        names.audit_stream(),
        names.archiver_consumer("audit"),
        String::new(),
    );
    // A copy takes milliseconds: what a killed archiver held comes again
    // after seconds, not the default half minute. A copy that is slower than
    // this is simply done twice, which changes nothing.
    let (mut plans, mut audit) = (plans, audit);
    for d in [&mut plans, &mut results, &mut audit] {
        d.config.ack_wait = ACK_WAIT;
    }
    let handler = |pool: PgPool| {
        move |msg: Message| {
            let pool = pool.clone();
            async move { copy(&pool, &msg).await }
        }
    };
    let consumed = tokio::try_join!(
        consume::durable(&mesh, plans, CONCURRENCY, &shutdown, handler(pool.clone())),
        consume::durable(
            &mesh,
            results,
            CONCURRENCY,
            &shutdown,
            handler(pool.clone())
        ),
        consume::durable(&mesh, audit, CONCURRENCY, &shutdown, handler(pool.clone())),
    );
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    pool.close().await;
    consumed.map(|_| ())
}

/// The pool for `[archive] url` (no connection yet).
fn connect(mesh: &Mesh) -> Result<PgPool> {
    let cfg = &mesh.config.archive;
    if cfg.url.is_empty() {
        return Err(Error::bad_request(
            "archive.url is not set: name the PostgreSQL database to archive to",
        ));
    }
    let mut opts = PgConnectOptions::from_str(&cfg.url)
        .map_err(|_| Error::bad_request("archive.url is not a valid PostgreSQL URL"))?
        .application_name("jetmesh-archiver");
    if let Some(pw) = jetmesh_shared::config::password(
        "archive",
        cfg.password_env.as_deref(),
        cfg.password_file.as_deref(),
    )
    .map_err(Error::bad_request)?
    {
        opts = opts.password(&pw);
    }
    let max = if cfg.max_connections == 0 {
        8
    } else {
        cfg.max_connections
    };
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(opts))
}

/// The embedded migrations, as sqlx's migrator takes them.
#[derive(Debug)]
struct Embedded;

impl<'s> sqlx::migrate::MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<
        's,
        std::result::Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*description).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Applies the migrations, waiting for the database while it is not there
/// (a database started with the mesh may come up later).
async fn migrate(pool: &PgPool, shutdown: &CancellationToken) -> Result<()> {
    let migrator = sqlx::migrate::Migrator::new(Embedded)
        .await
        .map_err(|e| Error::internal(format!("the archive's migrations: {e}")))?;
    let mut delays = backoff::Policy::RESTART.delays();
    loop {
        let error = match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            // Only a database that cannot be reached is waited for; a
            // migration that fails, or a schema that does not match the
            // migrations (dirty, changed), needs a person.
            Err(sqlx::migrate::MigrateError::Execute(
                e @ (sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)),
            )) => e,
            Err(e) => {
                return Err(Error::internal(format!(
                    "the archive's migrations fail: {}",
                    redact(&e.to_string())
                )));
            }
        };
        let wait = delays.next_or_max(&backoff::Policy::RESTART);
        tracing::warn!(error = %redact(&error.to_string()), ?wait, "The archive database is not reachable yet.");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Connection errors can quote the URL's host part but never its password;
/// this keeps any `user:password@` out of a log line anyway.
fn redact(s: &str) -> String {
    match (s.find("://"), s.find('@')) {
        (Some(a), Some(b)) if a < b => format!("{}://***{}", &s[..a], &s[b..]),
        _ => s.to_string(),
    }
}

/// Replaces NUL characters (which jsonb cannot hold) with U+FFFD.
fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        Value::Array(a) => a.iter_mut().for_each(strip_nul),
        Value::Object(o) => {
            if o.keys().any(|k| k.contains('\0')) {
                *o = std::mem::take(o)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{fffd}"), v))
                    .collect();
            }
            o.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

/// Copies one message into its table; acked only once the row is committed.
async fn copy(pool: &PgPool, msg: &Message) -> Outcome {
    match write(pool, msg).await {
        Ok(()) => Outcome::Ack,
        Err(e) if e.code == ErrorCode::BadRequest => {
            tracing::error!(subject = %msg.subject, error = %e, "A message cannot be archived; it is left out of the archive (it stays in its stream).");
            Outcome::Terminate(e.to_string())
        }
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "A message could not be archived yet; it comes again.");
            Outcome::Retry(Duration::from_secs(1))
        }
    }
}

async fn write(pool: &PgPool, msg: &Message) -> Result<()> {
    let info = msg
        .info()
        .map_err(|e| Error::bad_request(format!("not a JetStream message: {e}")))?;
    let seq = info.stream_sequence as i64;
    let at = info.published;
    let stream = info.stream.to_string();
    // A KV delete or purge marker: the archive keeps what was there.
    if msg
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some()
    {
        return Ok(());
    }
    let mut body: Value = serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
    // jsonb holds no NUL character (a string a task returned may).
    strip_nul(&mut body);
    let subject = msg.subject.as_str();
    let db = |e: sqlx::Error| {
        // A row the database refuses for its content will be refused every
        // time (data, constraint, syntax): it is not retried forever.
        let permanent = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("42"));
        let code = if permanent {
            ErrorCode::BadRequest
        } else {
            ErrorCode::Unavailable
        };
        Error::new(code, redact(&e.to_string()))
    };
    if !stream.starts_with("KV_") {
        sqlx::query(
            "INSERT INTO jetmesh_audit (stream_seq, subject, body, published_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_seq) DO NOTHING",
        )
        .bind(seq)
        .bind(subject)
        .bind(Json(&body))
        .bind(at)
        .execute(pool)
        .await
        .map_err(db)?;
        return Ok(());
    }
    // `$KV.<bucket>.<key>`
    let key = subject.splitn(3, '.').nth(2).unwrap_or_default();
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["plan", plan_id] => {
            sqlx::query(
                "INSERT INTO jetmesh_plans (plan_id, body, stream_seq, stored_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (plan_id) DO UPDATE SET body = excluded.body, stream_seq = excluded.stream_seq,
                   stored_at = excluded.stored_at
                 WHERE jetmesh_plans.stream_seq < excluded.stream_seq",
            )
            .bind(*plan_id)
            .bind(Json(&body))
            .bind(seq)
            .bind(at)
            .execute(pool)
            .await
            .map_err(db)?;
        }
        ["task", plan_id, task_id] => {
            let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
            let int = |k: &str| body.get(k).and_then(Value::as_i64);
            sqlx::query(
                "INSERT INTO jetmesh_task_results (plan_id, task_id, status, output, error_code, error, worker,
                   attempt, duration_ms, finished_at, body, stream_seq, stored_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::timestamptz, $11, $12, $13)
                 ON CONFLICT (plan_id, task_id) DO UPDATE SET status = excluded.status, output = excluded.output,
                   error_code = excluded.error_code, error = excluded.error, worker = excluded.worker,
                   attempt = excluded.attempt, duration_ms = excluded.duration_ms,
                   finished_at = excluded.finished_at, body = excluded.body,
                   stream_seq = excluded.stream_seq, stored_at = excluded.stored_at
                 WHERE jetmesh_task_results.stream_seq < excluded.stream_seq",
            )
            .bind(*plan_id)
            .bind(*task_id)
            .bind(text("status").unwrap_or_else(|| "unknown".into()))
            .bind(body.get("output").map(Json))
            .bind(body.pointer("/error/code").and_then(Value::as_str))
            .bind(body.get("error").map(Json))
            .bind(text("worker"))
            .bind(int("attempt").map(|n| n as i32))
            .bind(int("duration_ms"))
            .bind(
                text("finished_at")
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.to_string()),
            )
            .bind(Json(&body))
            .bind(seq)
            .bind(at)
            .execute(pool)
            .await
            .map_err(db)?;
        }
        ["report", plan_id] => {
            let int = |k: &str| body.get(k).and_then(Value::as_i64).map(|n| n as i32);
            sqlx::query(
                "INSERT INTO jetmesh_reports (plan_id, status, total_tasks, completed, failed, body, stream_seq, stored_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (plan_id) DO UPDATE SET status = excluded.status, total_tasks = excluded.total_tasks,
                   completed = excluded.completed, failed = excluded.failed, body = excluded.body,
                   stream_seq = excluded.stream_seq, stored_at = excluded.stored_at
                 WHERE jetmesh_reports.stream_seq < excluded.stream_seq",
            )
            .bind(*plan_id)
            .bind(body.get("status").and_then(Value::as_str))
            .bind(int("total_tasks"))
            .bind(int("completed"))
            .bind(int("failed"))
            .bind(Json(&body))
            .bind(seq)
            .bind(at)
            .execute(pool)
            .await
            .map_err(db)?;
        }
        // Another key of the bucket (a result bundle): not archived.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("error connecting to postgres://u:secret@h:5432/db"),
            "error connecting to postgres://***@h:5432/db"
        );
        assert_eq!(redact("connection refused"), "connection refused");
    }

    #[test]
    fn nul_characters_are_replaced() {
        let mut v = serde_json::json!({"a": "x\0y", "b\0": ["\0"]});
        strip_nul(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": "x\u{fffd}y", "b\u{fffd}": ["\u{fffd}"]})
        );
    }

    #[tokio::test]
    async fn the_migrations_resolve() {
        let m = sqlx::migrate::Migrator::new(Embedded).await.unwrap();
        assert_eq!(m.iter().count(), MIGRATIONS.len());
    }
}
