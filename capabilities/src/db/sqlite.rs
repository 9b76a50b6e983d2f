//! SQLite: a file opened read-only where the database is, WAL otherwise; the
//! statement timeout is a progress handler that interrupts the statement
//! past its deadline. Values come back as SQLite stored them (integer, real,
//! text, blob as base64), with `BOOLEAN` columns as booleans.

use super::{
    DB_ERROR, Failure, INVALID_VALUE, Kind, Limits, Output, READ_ONLY, SYNTAX_ERROR,
    UNDEFINED_OBJECT,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::TryStreamExt;
use jetmesh_shared::{Error, ErrorCode};
use serde_json::{Map, Number, Value};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Arguments, Column, Either, Executor, Row, Statement, TypeInfo, ValueRef};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The pool for `url`; its folder is made now, the file on first use.
pub(super) fn pool(
    name: &str,
    url: &str,
    read_only: bool,
    max: u32,
    acquire: Duration,
    max_value_bytes: usize,
) -> Result<SqlitePool, Error> {
    let max_value_bytes = i32::try_from(max_value_bytes.max(1024)).unwrap_or(i32::MAX);
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| {
        Error::new(
            DB_ERROR,
            format!("db.databases.{name}.url is not a valid SQLite URL: {e}"),
        )
    })?;
    let opts = if read_only {
        opts.read_only(true)
    } else {
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    DB_ERROR,
                    format!("db.databases.{name}: cannot create {}: {e}", dir.display()),
                )
            })?;
        }
        opts.create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
    };
    let opts = opts.foreign_keys(true).busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        // No value larger than a result may hold: SQLite refuses to make one
        // (SQLITE_TOOBIG) instead of handing over a gigabyte to be cut.
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                // SAFETY: the handle is a live connection, held locked for the
                // call; sqlite3_limit only reads and sets an integer on it.
                unsafe {
                    libsqlite3_sys::sqlite3_limit(
                        handle.as_raw_handle().as_ptr(),
                        libsqlite3_sys::SQLITE_LIMIT_LENGTH,
                        max_value_bytes,
                    );
                }
                Ok(())
            })
        })
        .connect_lazy_with(opts))
}

/// Runs `sql` with `values` bound (one statement is atomic on its own),
/// interrupted past the statement timeout.
pub(super) async fn execute(
    pool: &SqlitePool,
    sql: &str,
    values: &[&Value],
    kind: Kind,
    limits: Limits,
) -> Result<Output, Failure> {
    let mut conn = pool.acquire().await?;
    let deadline = Instant::now() + limits.timeout;
    conn.lock_handle()
        .await?
        .set_progress_handler(1000, move || Instant::now() < deadline);
    let statement = (&mut *conn).prepare(sql).await?;
    let expected = match statement.parameters() {
        Some(Either::Right(n)) => n,
        Some(Either::Left(types)) => types.len(),
        None => 0,
    };
    if expected != values.len() {
        return Err(Error::invalid_args(format!(
            "the statement takes {expected} parameter{}, and params has {}",
            if expected == 1 { "" } else { "s" },
            values.len()
        ))
        .into());
    }
    let mut args = SqliteArguments::default();
    for (i, v) in values.iter().enumerate() {
        bind(&mut args, v).map_err(|m| Error::invalid_args(format!("params[{i}]: {m}")))?;
    }
    let mut out = Output::with_columns(statement.columns());
    let query = sqlx::query_with(sql, args);
    if out.columns.is_empty() {
        out.rows_affected = query.execute(&mut *conn).await?.rows_affected();
    } else {
        // A write's RETURNING rows are counted to the end (SQLite made every
        // change on the first step); a read stops at the first row not kept.
        let mut rows = query.fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            if !out.truncated {
                out.push(decode(&row), kind, &limits);
            } else if kind == Kind::Read {
                break;
            } else {
                out.count(kind);
            }
        }
    }
    Ok(out)
}

/// SQLite's extended result code (and message) to a stable code.
pub(super) fn code(code: &str, message: &str) -> ErrorCode {
    let primary = code.parse::<i32>().unwrap_or(1) & 0xff;
    match primary {
        9 => ErrorCode::Timeout,
        8 => READ_ONLY,
        5 | 6 => ErrorCode::Unavailable,
        19 => super::CONSTRAINT_VIOLATION,
        18 => ErrorCode::PayloadTooLarge,
        20 | 25 => INVALID_VALUE,
        23 => super::PERMISSION_DENIED,
        1 if message.contains("syntax error") || message.contains("incomplete input") => {
            SYNTAX_ERROR
        }
        1 if message.starts_with("no such") => UNDEFINED_OBJECT,
        _ => DB_ERROR,
    }
}

fn bind(args: &mut SqliteArguments<'_>, v: &Value) -> Result<(), String> {
    let r = match v {
        Value::Null => args.add(None::<String>),
        Value::Bool(b) => args.add(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => args.add(i),
            None if n.is_u64() => return Err(format!("{n} does not fit a 64-bit integer")),
            None => args.add(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => args.add(s.clone()),
        // Objects and arrays are stored as JSON text (SQLite's JSON functions read it).
        Value::Array(_) | Value::Object(_) => args.add(v.to_string()),
    };
    r.map_err(|e| e.to_string())
}

/// A row as a JSON object, each value as SQLite stored it.
fn decode(row: &SqliteRow) -> Map<String, Value> {
    let mut out = Map::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        out.insert(
            col.name().to_string(),
            value(row, i, col.type_info().name()),
        );
    }
    out
}

fn value(row: &SqliteRow, i: usize, declared: &str) -> Value {
    let Ok(raw) = row.try_get_raw(i) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let stored = raw.type_info().name().to_string();
    match stored.as_str() {
        "INTEGER" | "BOOLEAN" => {
            let n: i64 = row.try_get_unchecked(i).unwrap_or_default();
            if declared == "BOOLEAN" {
                Value::Bool(n != 0)
            } else {
                Value::from(n)
            }
        }
        "REAL" => Number::from_f64(row.try_get_unchecked(i).unwrap_or_default())
            .map_or(Value::Null, Value::Number),
        "BLOB" => {
            Value::String(B64.encode(row.try_get_unchecked::<Vec<u8>, _>(i).unwrap_or_default()))
        }
        _ => Value::String(row.try_get_unchecked(i).unwrap_or_default()),
    }
}
