//! PostgreSQL: one transaction per task (`READ ONLY` where the database is,
//! with `SET LOCAL statement_timeout`), parameters converted to the types the
//! server inferred for them, and rows turned into typed JSON.

use super::{
    DB_ERROR, Failure, INVALID_VALUE, Kind, Limits, Output, PERMISSION_DENIED, READ_ONLY,
    SYNTAX_ERROR, UNDEFINED_OBJECT, UNSUPPORTED_TYPE,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::TryStreamExt;
use jetmesh_shared::{Error, ErrorCode};
use serde_json::{Map, Number, Value};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgTypeInfo};
use sqlx::types::Json;
use sqlx::types::time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
use sqlx::{Arguments, Column, Either, Executor, Row, Statement, TypeInfo, ValueRef};
use std::str::FromStr;
use std::time::Duration;

/// The pool for `url` (no connection is made yet).
pub(super) fn pool(
    name: &str,
    url: &str,
    password: Option<&str>,
    max: u32,
    acquire: Duration,
) -> Result<PgPool, Error> {
    let mut opts = PgConnectOptions::from_str(url).map_err(|_| {
        Error::new(
            DB_ERROR,
            format!("db.databases.{name}.url is not a valid PostgreSQL URL"),
        )
    })?;
    if let Some(pw) = password {
        opts = opts.password(pw);
    }
    opts = opts.application_name("jetmesh");
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire)
        // What a task may leave on its connection (a session setting made
        // with set_config, an advisory lock, a LISTEN) is undone before the
        // next task gets it.
        .after_release(reset)
        .connect_lazy_with(opts))
}

/// Undoes what a task may have left on its connection before it goes back
/// to the pool.
fn reset(
    conn: &mut sqlx::PgConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        // A plain string is sent as a simple query: three statements, one trip.
        conn.execute("RESET ALL; SELECT pg_advisory_unlock_all(); UNLISTEN *")
            .await
            .map(|_| true)
    })
}

/// Runs `sql` with `values` bound, in a transaction of its own.
pub(super) async fn execute(
    pool: &PgPool,
    sql: &str,
    values: &[&Value],
    read_only: bool,
    kind: Kind,
    limits: Limits,
) -> Result<Output, Failure> {
    // On a writable database a SELECT may write (nextval, a function), as
    // PostgreSQL allows; what it may do is the database role's to limit.
    let begin = format!(
        "BEGIN{}; SET LOCAL statement_timeout = {}",
        if read_only { " READ ONLY" } else { "" },
        limits.timeout.as_millis().max(1)
    );
    let mut tx = pool.begin_with(begin).await?;
    let statement = (&mut *tx).prepare(sql).await?;
    let types: Vec<PgTypeInfo> = match statement.parameters() {
        Some(Either::Left(types)) => types.to_vec(),
        _ => Vec::new(),
    };
    if types.len() != values.len() {
        return Err(Error::invalid_args(format!(
            "the statement takes {} parameter{}, and params has {}",
            types.len(),
            if types.len() == 1 { "" } else { "s" },
            values.len()
        ))
        .into());
    }
    let mut args = PgArguments::default();
    for (i, (v, ty)) in values.iter().zip(&types).enumerate() {
        bind(&mut args, v, ty)
            .map_err(|m| Error::invalid_args(format!("params[{i}] ({}): {m}", ty.name())))?;
    }
    let mut out = Output::with_columns(statement.columns());
    let query = sqlx::query_with(sql, args);
    if out.columns.is_empty() {
        out.rows_affected = query.execute(&mut *tx).await?.rows_affected();
    } else {
        // Every row is read, kept or not, so that the statement completes
        // (a write's RETURNING) and the transaction can commit.
        let mut rows = query.fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            if !out.truncated {
                out.push(decode(&row, limits.max_bytes)?, kind, &limits);
            } else {
                out.count(kind);
            }
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// SQLSTATE to a stable code.
pub(super) fn code(sqlstate: &str) -> ErrorCode {
    match sqlstate {
        "57014" => ErrorCode::Timeout,
        "25006" => READ_ONLY,
        "42601" => SYNTAX_ERROR,
        "42P01" | "42703" | "42883" | "42704" | "3F000" => UNDEFINED_OBJECT,
        "42501" => PERMISSION_DENIED,
        "28000" | "28P01" => super::AUTH_FAILED,
        // Serialization failure and deadlock: the same task may succeed again.
        "40001" | "40P01" => ErrorCode::Unavailable,
        s if s.starts_with("23") => super::CONSTRAINT_VIOLATION,
        s if s.starts_with("22") || s == "42804" => INVALID_VALUE,
        s if s.starts_with("08") || s.starts_with("53") || s.starts_with("57P") => {
            ErrorCode::Unavailable
        }
        _ => DB_ERROR,
    }
}

/// Adds `v` to `args` as the type the server expects; the error says why it
/// does not fit.
fn bind(args: &mut PgArguments, v: &Value, ty: &PgTypeInfo) -> Result<(), String> {
    macro_rules! put {
        ($t:ty, $conv:expr) => {{
            let value: Option<$t> = if v.is_null() { None } else { Some($conv(v)?) };
            args.add(value).map_err(|e| e.to_string())
        }};
    }
    macro_rules! put_array {
        ($t:ty, $conv:expr) => {{
            let value: Option<Vec<$t>> = match v {
                Value::Null => None,
                Value::Array(a) => Some(a.iter().map($conv).collect::<Result<_, String>>()?),
                _ => return Err("expected an array".into()),
            };
            args.add(value).map_err(|e| e.to_string())
        }};
    }
    match ty.name() {
        "BOOL" => put!(bool, as_bool),
        "INT2" => put!(i16, |v| int(v).and_then(
            |n| i16::try_from(n).map_err(|_| "out of range for int2".to_string())
        )),
        "INT4" => put!(i32, |v| int(v).and_then(
            |n| i32::try_from(n).map_err(|_| "out of range for int4".to_string())
        )),
        "INT8" => put!(i64, int),
        "FLOAT4" => put!(f32, |v| float(v).map(|f| f as f32)),
        "FLOAT8" => put!(f64, float),
        "NUMERIC" => put!(sqlx::types::Decimal, decimal),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" | "XML" => put!(String, text),
        "JSON" | "JSONB" => put!(Json<&Value>, |v| Ok::<_, String>(Json(v))),
        "TIMESTAMPTZ" => put!(OffsetDateTime, timestamptz),
        "TIMESTAMP" => put!(PrimitiveDateTime, timestamp),
        "DATE" => put!(Date, |v| date(text(v)?.as_str())),
        "TIME" => put!(Time, |v| time(text(v)?.as_str())),
        "UUID" => put!(sqlx::types::Uuid, |v| sqlx::types::Uuid::parse_str(&text(
            v
        )?)
        .map_err(|e| format!("not a UUID: {e}"))),
        "BYTEA" => put!(Vec<u8>, |v| B64
            .decode(text(v)?)
            .map_err(|e| format!("expected base64: {e}"))),
        "BOOL[]" => put_array!(bool, as_bool),
        "INT4[]" => {
            put_array!(i32, |v| int(v).and_then(
                |n| i32::try_from(n).map_err(|_| "out of range for int4".to_string())
            ))
        }
        "INT8[]" => put_array!(i64, int),
        "FLOAT8[]" => put_array!(f64, float),
        "NUMERIC[]" => put_array!(sqlx::types::Decimal, decimal),
        "TEXT[]" | "VARCHAR[]" => put_array!(String, text),
        other => Err(format!(
            "parameters of type {other} are not supported; cast the placeholder in the SQL (for example $1::text)"
        )),
    }
}

fn as_bool(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| "expected true or false".into())
}

fn int(v: &Value) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("expected an integer, got {v}"))
}

fn float(v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("expected a number, got {v}"))
}

fn decimal(v: &Value) -> Result<sqlx::types::Decimal, String> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return Err(format!("expected a number or a numeric string, got {v}")),
    };
    sqlx::types::Decimal::from_str(&s)
        .or_else(|_| sqlx::types::Decimal::from_scientific(&s))
        .map_err(|e| format!("not a number: {e}"))
}

/// Strings as they are; numbers and booleans as their text.
fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
        _ => Err(format!("expected a string, got {v}")),
    }
}

fn timestamptz(v: &Value) -> Result<OffsetDateTime, String> {
    let ts: jiff::Timestamp = text(v)?
        .parse()
        .map_err(|e| format!("expected an RFC 3339 time with an offset: {e}"))?;
    OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond()).map_err(|e| e.to_string())
}

fn timestamp(v: &Value) -> Result<PrimitiveDateTime, String> {
    let dt: jiff::civil::DateTime = text(v)?
        .parse()
        .map_err(|e| format!("expected a date and time like 2026-01-31T12:00:00: {e}"))?;
    Ok(PrimitiveDateTime::new(
        date(&dt.date().to_string())?,
        time(&dt.time().to_string())?,
    ))
}

fn date(s: &str) -> Result<Date, String> {
    let d: jiff::civil::Date = s
        .parse()
        .map_err(|e| format!("expected a date like 2026-01-31: {e}"))?;
    Date::from_ordinal_date(d.year() as i32, d.day_of_year() as u16).map_err(|e| e.to_string())
}

fn time(s: &str) -> Result<Time, String> {
    let t: jiff::civil::Time = s
        .parse()
        .map_err(|e| format!("expected a time like 12:00:00: {e}"))?;
    Time::from_hms_nano(
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.subsec_nanosecond() as u32,
    )
    .map_err(|e| e.to_string())
}

/// A row as a JSON object, each value typed by its column.
fn decode(row: &PgRow, max_bytes: usize) -> Result<Map<String, Value>, Error> {
    let mut out = Map::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = value(row, i, col.type_info().name(), max_bytes).map_err(|e| match e {
            Decode::TooLarge => Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "column {:?} holds a value larger than db.max_result_bytes ({max_bytes})",
                    col.name()
                ),
            ),
            Decode::Unsupported => Error::new(
                UNSUPPORTED_TYPE,
                format!(
                    "column {:?} has type {}, which is not turned into JSON; cast it in the SQL ({}::text)",
                    col.name(),
                    col.type_info().name(),
                    col.name()
                ),
            ),
            Decode::Failed(m) => Error::new(
                UNSUPPORTED_TYPE,
                format!("column {:?} cannot be read: {m}", col.name()),
            ),
        })?;
        out.insert(col.name().to_string(), v);
    }
    Ok(out)
}

enum Decode {
    Unsupported,
    TooLarge,
    Failed(String),
}

fn value(row: &PgRow, i: usize, ty: &str, max_bytes: usize) -> Result<Value, Decode> {
    let raw = row
        .try_get_raw(i)
        .map_err(|e| Decode::Failed(e.to_string()))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // Measured before it is decoded (a gigabyte text would be copied, then
    // base64 or escaped, before the result's byte limit saw it).
    if raw.as_bytes().map_or(0, <[u8]>::len) > max_bytes {
        return Err(Decode::TooLarge);
    }
    macro_rules! get {
        ($t:ty) => {
            row.try_get_unchecked::<$t, _>(i)
                .map_err(|e| Decode::Failed(e.to_string()))?
        };
    }
    let float = |f: f64| Number::from_f64(f).map_or(Value::Null, Value::Number);
    Ok(match ty {
        "BOOL" => Value::Bool(get!(bool)),
        "INT2" => Value::from(get!(i16)),
        "INT4" => Value::from(get!(i32)),
        "INT8" => Value::from(get!(i64)),
        "OID" => Value::from(get!(sqlx::postgres::types::Oid).0),
        "FLOAT4" => float(get!(f32) as f64),
        "FLOAT8" => float(get!(f64)),
        "NUMERIC" => Value::String(get!(sqlx::types::Decimal).to_string()),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CITEXT" | "UNKNOWN" | "XML" => {
            Value::String(get!(String))
        }
        "JSON" | "JSONB" => get!(Json<Value>).0,
        "TIMESTAMPTZ" => {
            let t = get!(OffsetDateTime);
            let ts = jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos())
                .map_err(|e| Decode::Failed(e.to_string()))?;
            Value::String(ts.to_string())
        }
        "TIMESTAMP" => {
            let t = get!(PrimitiveDateTime);
            Value::String(format!("{}T{}", civil_date(t.date()), civil_time(t.time())))
        }
        "DATE" => Value::String(civil_date(get!(Date))),
        "TIME" => Value::String(civil_time(get!(Time))),
        "UUID" => Value::String(get!(sqlx::types::Uuid).to_string()),
        "BYTEA" => Value::String(B64.encode(get!(Vec<u8>))),
        "VOID" => Value::Null,
        "BOOL[]" => Value::from(get!(Vec<Option<bool>>)),
        "INT2[]" => Value::from(get!(Vec<Option<i16>>)),
        "INT4[]" => Value::from(get!(Vec<Option<i32>>)),
        "INT8[]" => Value::from(get!(Vec<Option<i64>>)),
        "FLOAT8[]" => Value::Array(
            get!(Vec<Option<f64>>)
                .into_iter()
                .map(|f| f.map_or(Value::Null, float))
                .collect(),
        ),
        "NUMERIC[]" => Value::Array(
            get!(Vec<Option<sqlx::types::Decimal>>)
                .into_iter()
                .map(|d| d.map_or(Value::Null, |d| Value::String(d.to_string())))
                .collect(),
        ),
        "TEXT[]" | "VARCHAR[]" | "NAME[]" => Value::from(get!(Vec<Option<String>>)),
        "JSON[]" | "JSONB[]" => {
            Value::Array(get!(Vec<Json<Value>>).into_iter().map(|j| j.0).collect())
        }
        _ => return Err(Decode::Unsupported),
    })
}

fn civil_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

fn civil_time(t: Time) -> String {
    let (h, m, s, ns) = t.as_hms_nano();
    if ns == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        let frac = format!("{ns:09}");
        format!("{h:02}:{m:02}:{s:02}.{}", frac.trim_end_matches('0'))
    }
}
