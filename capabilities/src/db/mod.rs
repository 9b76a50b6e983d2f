//! The `db` capability: SQL on named databases, `[db.databases.<name>]`,
//! SQLite (embedded, the default `main`) or PostgreSQL.
//!
//! | action   | parameters                                              | result |
//! |----------|---------------------------------------------------------|--------|
//! | `query`  | `sql` (one statement, the database's placeholders), `params` | `{columns, rows, row_count, rows_affected, truncated}` |
//! | `insert` | `table`, `values` (an object, or an array of them), `returning` | the same |
//! | `update` | `table`, `values`, `where` (column equalities), `returning` | the same |
//! | `delete` | `table`, `where`, `returning`                           | the same |
//!
//! Every action takes `database` (default `main`) and `max_rows`.
//!
//! Values are only ever bound, never spliced into SQL: `query` binds
//! `params`, and the other actions build their statement from identifiers
//! that are checked and quoted ([`sql::ident`]) with a placeholder per value.
//! One statement runs per task ([`sql::check`] reads the SQL as the database
//! does and refuses a second one, transaction control and session settings),
//! DDL only where `allow_ddl`, and writes not at all where `read_only`: on
//! PostgreSQL in a `READ ONLY` transaction, on SQLite on a read-only
//! connection, so the database itself enforces it. Each statement runs under
//! `statement_timeout_ms` (PostgreSQL's `statement_timeout`, SQLite's
//! progress handler), and results stop at `max_rows` and `max_result_bytes`.
//!
//! On PostgreSQL, parameters take the types the server infers for them (a
//! string bound where a `timestamptz` is expected is read as one); results
//! come back as typed JSON (numbers, booleans, strings, JSON, RFC 3339 times,
//! `numeric` as an exact string, `bytea` as base64).

mod pg;
pub mod sql;
mod sqlite;

use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability, params};
use jetmesh_shared::config::{DatabaseConfig, DbConfig};
use jetmesh_shared::{Error, ErrorCode, Mesh};
use serde_json::{Map, Value, json};
use sql::{Dialect, Kind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A second statement after the first (`SELECT 1; DROP TABLE t`).
pub const MULTIPLE_STATEMENTS: ErrorCode = ErrorCode::capability("multiple_statements");
/// A statement tasks may not run: transaction control, SET, COPY, ATTACH, DO, ….
pub const STATEMENT_REFUSED: ErrorCode = ErrorCode::capability("statement_refused");
/// DDL on a database without `allow_ddl`.
pub const DDL_REFUSED: ErrorCode = ErrorCode::capability("ddl_refused");
/// A write on a read-only database.
pub const READ_ONLY: ErrorCode = ErrorCode::capability("read_only");
/// A table or column name that is not a plain identifier.
pub const INVALID_IDENTIFIER: ErrorCode = ErrorCode::capability("invalid_identifier");
/// The task names a database this pool does not have.
pub const UNKNOWN_DATABASE: ErrorCode = ErrorCode::capability("unknown_database");
/// A unique, foreign key, not-null or check constraint refused the write.
pub const CONSTRAINT_VIOLATION: ErrorCode = ErrorCode::capability("constraint_violation");
/// The database could not parse the statement.
pub const SYNTAX_ERROR: ErrorCode = ErrorCode::capability("syntax_error");
/// A table, column or function that does not exist.
pub const UNDEFINED_OBJECT: ErrorCode = ErrorCode::capability("undefined_object");
/// A value the database cannot take for its column or parameter (a string
/// that is no number, a number out of range, …).
pub const INVALID_VALUE: ErrorCode = ErrorCode::capability("invalid_value");
/// A column of a type jetmesh does not turn into JSON; cast it (`::text`).
pub const UNSUPPORTED_TYPE: ErrorCode = ErrorCode::capability("unsupported_type");
/// The database refused the connection's credentials.
pub const AUTH_FAILED: ErrorCode = ErrorCode::capability("auth_failed");
/// The database's role may not do this.
pub const PERMISSION_DENIED: ErrorCode = ErrorCode::capability("permission_denied");
/// Any other error the database reported; the message has its code.
pub const DB_ERROR: ErrorCode = ErrorCode::capability("db_error");

const DATABASE: &str = r#""database":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","description":"A database of [db.databases] (default main)."},
  "max_rows":{"type":"integer","minimum":1,"description":"Return at most this many rows (at most db.max_rows)."}"#;
const RETURNING: &str = r#""returning":{"type":"array","maxItems":1000,"items":{"type":"string","minLength":1,"maxLength":63},"description":"Columns of the written rows to return, or [\"*\"]."}"#;
const ROW: &str =
    r#"{"type":"object","minProperties":1,"maxProperties":1000,"description":"Column to value."}"#;

fn schema(required: &str, props: &str) -> &'static str {
    Box::leak(
        format!(
            r#"{{"type":"object","required":[{required}],"additionalProperties":false,"properties":{{{props},
  {DATABASE}}}}}"#
        )
        .into_boxed_str(),
    )
}

fn actions() -> &'static [Action] {
    static ACTIONS: std::sync::OnceLock<Vec<Action>> = std::sync::OnceLock::new();
    ACTIONS.get_or_init(|| {
        vec![
            Action {
                name: "query",
                description: "Runs one SQL statement with bound parameters (? on SQLite, $1 on PostgreSQL); returns rows as JSON objects.",
                params: schema(
                    r#""sql""#,
                    r#""sql":{"type":"string","minLength":1,"maxLength":1048576,"description":"One statement."},
  "params":{"type":"array","maxItems":65535,"description":"Values for the placeholders, in order."}"#,
                ),
            },
            Action {
                name: "insert",
                description: "Inserts one row or several; values are bound, table and column names checked and quoted.",
                params: schema(
                    r#""table","values""#,
                    &format!(
                        r#""table":{{"type":"string","minLength":1,"maxLength":127,"description":"table or schema.table"}},
  "values":{{"oneOf":[{ROW},{{"type":"array","minItems":1,"maxItems":10000,"items":{ROW}}}]}},
  {RETURNING}"#
                    ),
                ),
            },
            Action {
                name: "update",
                description: "Sets columns of the rows matching where (column equalities, null as IS NULL).",
                params: schema(
                    r#""table","values","where""#,
                    &format!(
                        r#""table":{{"type":"string","minLength":1,"maxLength":127}},
  "values":{ROW},
  "where":{ROW},
  {RETURNING}"#
                    ),
                ),
            },
            Action {
                name: "delete",
                description: "Deletes the rows matching where (column equalities, null as IS NULL).",
                params: schema(
                    r#""table","where""#,
                    &format!(
                        r#""table":{{"type":"string","minLength":1,"maxLength":127}},
  "where":{ROW},
  {RETURNING}"#
                    ),
                ),
            },
        ]
    })
}

/// The built-in `db` capability: one connection pool per database, opened on
/// first use.
pub struct Db {
    cfg: DbConfig,
    open: Mutex<HashMap<String, Arc<Database>>>,
}

/// One configured database and its connections.
struct Database {
    name: String,
    backend: Backend,
    read_only: bool,
    allow_ddl: bool,
    /// How long a task may wait for a connection.
    acquire: Duration,
    /// The URL and password, cut out of every error message.
    secrets: Vec<String>,
}

enum Backend {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The limits one statement runs under.
#[derive(Debug, Clone, Copy)]
struct Limits {
    timeout: Duration,
    max_rows: usize,
    max_bytes: usize,
}

/// What a statement gave back.
#[derive(Debug, Default)]
struct Output {
    columns: Vec<(String, String)>,
    rows: Vec<Value>,
    rows_affected: u64,
    truncated: bool,
    bytes: usize,
}

impl Output {
    /// An empty result with the statement's columns (known before any row).
    fn with_columns<C: sqlx::Column>(columns: &[C]) -> Output {
        use sqlx::TypeInfo;
        Output {
            columns: columns
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect(),
            ..Output::default()
        }
    }

    /// Keeps `row` unless a limit is reached: then the result is truncated,
    /// and the caller stops keeping rows.
    fn push(&mut self, row: Map<String, Value>, kind: Kind, limits: &Limits) {
        let size = row
            .iter()
            .map(|(k, v)| k.len() + approx_size(v))
            .sum::<usize>();
        if self.rows.len() >= limits.max_rows || self.bytes + size > limits.max_bytes {
            self.truncated = true;
            self.count(kind);
            return;
        }
        self.bytes += size;
        self.rows.push(Value::Object(row));
        self.count(kind);
    }

    /// A row a write returned is a row it changed.
    fn count(&mut self, kind: Kind) {
        if kind != Kind::Read {
            self.rows_affected += 1;
        }
    }

    fn into_json(self) -> Value {
        json!({
            "columns": self.columns.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "row_count": self.rows.len(),
            "rows": self.rows,
            "rows_affected": self.rows_affected,
            "truncated": self.truncated,
        })
    }
}

/// Roughly the bytes `v` takes as JSON.
fn approx_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(approx_size).sum::<usize>(),
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| k.len() + 3 + approx_size(v))
                .sum::<usize>()
        }
    }
}

impl Db {
    pub fn new(mesh: &Mesh) -> Db {
        Db {
            cfg: mesh.config.db.clone(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The database `name`, its pool made on first use (no connection is
    /// opened until a statement needs one).
    fn database(&self, name: &str) -> Result<Arc<Database>, Error> {
        if let Some(db) = self.open.lock().expect("db map").get(name) {
            return Ok(db.clone());
        }
        let Some(cfg) = self.cfg.databases.get(name) else {
            let names: Vec<&str> = self.cfg.databases.keys().map(String::as_str).collect();
            return Err(Error::new(
                UNKNOWN_DATABASE,
                format!(
                    "this pool has no database {name:?} (it has: {})",
                    names.join(", ")
                ),
            ));
        };
        let db = Arc::new(Database::open(name, cfg, &self.cfg)?);
        Ok(self
            .open
            .lock()
            .expect("db map")
            .entry(name.to_string())
            .or_insert(db)
            .clone())
    }

    async fn run(&self, call: &Call<'_>) -> Result<Value, Error> {
        let p = call.params;
        let db = self.database(params::opt_str(p, "database")?.unwrap_or("main"))?;
        let max_rows = match p.get("max_rows") {
            None | Some(Value::Null) => self.cfg.max_rows,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::invalid_args("max_rows must be a positive integer"))?
                .min(self.cfg.max_rows as u64) as usize,
        };
        let limits = Limits {
            timeout: Duration::from_millis(self.cfg.statement_timeout_ms),
            max_rows,
            max_bytes: self.cfg.max_result_bytes,
        };
        let dialect = db.dialect();
        let returning = string_list(p, "returning")?;
        let no_params: Vec<&Value> = Vec::new();
        let (statement, values, kind) = match call.action {
            "query" => {
                let sql = params::str(p, "sql")?;
                let kind = sql::check(sql, dialect, db.allow_ddl)?;
                let values: Vec<&Value> = match p.get("params") {
                    None | Some(Value::Null) => no_params,
                    Some(Value::Array(a)) => a.iter().collect(),
                    Some(_) => return Err(Error::invalid_args("params must be an array")),
                };
                (sql.to_string(), values, kind)
            }
            "insert" => {
                let rows: Vec<&Map<String, Value>> = match p.get("values") {
                    Some(Value::Object(o)) => vec![o],
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|r| {
                            r.as_object()
                                .ok_or_else(|| Error::invalid_args("values[] must be objects"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(Error::invalid_args(
                            "values must be an object or an array of objects",
                        ));
                    }
                };
                let b = sql::insert(dialect, params::str(p, "table")?, &rows, &returning)?;
                (b.sql, b.values, Kind::Write)
            }
            "update" => {
                let b = sql::update(
                    dialect,
                    params::str(p, "table")?,
                    object(p, "values")?,
                    object(p, "where")?,
                    &returning,
                )?;
                (b.sql, b.values, Kind::Write)
            }
            "delete" => {
                let b = sql::delete(
                    dialect,
                    params::str(p, "table")?,
                    object(p, "where")?,
                    &returning,
                )?;
                (b.sql, b.values, Kind::Write)
            }
            other => {
                return Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!("db has no action {other:?}"),
                ));
            }
        };
        if db.read_only && kind != Kind::Read {
            return Err(Error::new(
                READ_ONLY,
                format!("database {} is read-only", db.name),
            ));
        }
        db.execute(&statement, &values, kind, limits)
            .await
            .map(Output::into_json)
    }
}

fn object<'a>(p: &'a Map<String, Value>, name: &str) -> Result<&'a Map<String, Value>, Error> {
    p.get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid_args(format!("{name} must be an object of column to value")))
}

fn string_list(p: &Map<String, Value>, name: &str) -> Result<Vec<String>, Error> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid_args(format!("{name} must hold strings")))
            })
            .collect(),
        Some(_) => Err(Error::invalid_args(format!(
            "{name} must be an array of column names"
        ))),
    }
}

impl Database {
    fn open(name: &str, cfg: &DatabaseConfig, all: &DbConfig) -> Result<Database, Error> {
        let read_only = cfg.read_only || all.read_only;
        let password = jetmesh_shared::config::password(
            &format!("db.databases.{name}"),
            cfg.password_env.as_deref(),
            cfg.password_file.as_deref(),
        )
        .map_err(|e| Error::new(DB_ERROR, e))?;
        let mut secrets = vec![cfg.url.clone()];
        secrets.extend(password.clone());
        if let Some(pw) = url_password(&cfg.url) {
            secrets.push(percent_decode(&pw));
            secrets.push(pw);
        }
        let max = cfg.max_connections.unwrap_or(all.max_connections);
        let acquire = Duration::from_millis(all.acquire_timeout_ms);
        let backend = if cfg.url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::pool(
                name,
                &cfg.url,
                read_only,
                max,
                acquire,
                all.max_result_bytes,
            )?)
        } else {
            Backend::Postgres(pg::pool(name, &cfg.url, password.as_deref(), max, acquire)?)
        };
        Ok(Database {
            name: name.to_string(),
            backend,
            read_only,
            allow_ddl: cfg.allow_ddl && !read_only,
            acquire,
            secrets,
        })
    }

    fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    async fn execute(
        &self,
        sql: &str,
        values: &[&Value],
        kind: Kind,
        limits: Limits,
    ) -> Result<Output, Error> {
        let run = async {
            match &self.backend {
                Backend::Sqlite(pool) => sqlite::execute(pool, sql, values, kind, limits).await,
                Backend::Postgres(pool) => {
                    pg::execute(pool, sql, values, self.read_only, kind, limits).await
                }
            }
        };
        // The server's statement timeout, and this one for a database that
        // stops answering at all: a task never holds its slot for good.
        let bound = limits.timeout + self.acquire + Duration::from_secs(5);
        let result = tokio::time::timeout(bound, run).await.unwrap_or_else(|_| {
            Err(Failure::Task(Error::new(
                ErrorCode::Timeout,
                format!(
                    "database {} did not answer within {} ms",
                    self.name,
                    bound.as_millis()
                ),
            )))
        });
        let mut out = result.map_err(|e| self.error(e, &limits))?;
        if kind == Kind::Ddl {
            // SQLite's change count is the last write's, whatever DDL ran since.
            out.rows_affected = 0;
        }
        Ok(out)
    }

    /// A failure as a stable code, with the URL and password cut out.
    fn error(&self, e: Failure, limits: &Limits) -> Error {
        let mut err = match e {
            Failure::Task(e) => e,
            Failure::Sql(e) => classify(&self.name, e, limits),
        };
        for s in self.secrets.iter().filter(|s| s.len() >= 4) {
            err.message = err.message.replace(s.as_str(), "***");
        }
        err
    }
}

/// Why a statement failed: the task's fault, found before the database saw
/// it, or the database's answer.
enum Failure {
    Task(Error),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Task(e)
    }
}

/// The database's error as a stable code.
fn classify(db: &str, e: sqlx::Error, limits: &Limits) -> Error {
    use sqlx::error::ErrorKind as K;
    let unavailable = |what: String| Error::new(ErrorCode::Unavailable, what);
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let mut message = d.message().to_string();
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    message = format!("{message} ({detail})");
                }
                message = format!("{message} [SQLSTATE {code}]");
            }
            let kind = match d.kind() {
                K::UniqueViolation
                | K::ForeignKeyViolation
                | K::NotNullViolation
                | K::CheckViolation => Some(CONSTRAINT_VIOLATION),
                _ => None,
            };
            let kind = kind.unwrap_or_else(|| {
                if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    pg::code(&code)
                } else {
                    sqlite::code(&code, &message)
                }
            });
            match kind {
                ErrorCode::Timeout => Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "the statement ran past db.statement_timeout_ms ({} ms) and was cancelled",
                        limits.timeout.as_millis()
                    ),
                ),
                k => Error::new(k, message),
            }
        }
        sqlx::Error::PoolTimedOut => unavailable(format!(
            "no connection to database {db} came free within db.acquire_timeout_ms"
        )),
        sqlx::Error::Io(e) => unavailable(format!("database {db} is unreachable: {e}")),
        sqlx::Error::Tls(e) => unavailable(format!("TLS to database {db} failed: {e}")),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            unavailable(format!("the connections to database {db} were closed"))
        }
        sqlx::Error::ColumnDecode { index, source } => Error::new(
            UNSUPPORTED_TYPE,
            format!("column {index} cannot be read: {source}; cast it in the SQL (::text)"),
        ),
        sqlx::Error::Encode(e) => Error::invalid_args(format!("a parameter cannot be sent: {e}")),
        sqlx::Error::Configuration(e) => {
            Error::new(DB_ERROR, format!("database {db} is misconfigured: {e}"))
        }
        other => Error::new(DB_ERROR, format!("database {db}: {other}")),
    }
}

/// `%XX` escapes decoded (as a URL's password is sent).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password part of `scheme://user:password@host/…`, to redact.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_string()).filter(|p| !p.is_empty())
}

impl Capability for Db {
    fn name(&self) -> &'static str {
        "db"
    }

    fn actions(&self) -> &'static [Action] {
        actions()
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { self.run(&call).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_compile() {
        let db = Db {
            cfg: DbConfig::default(),
            open: Mutex::new(HashMap::new()),
        };
        let reg = jetmesh_shared::capability::registered(&db).unwrap();
        let ok = serde_json::json!({"sql": "SELECT 1", "params": [1, "a"]});
        reg.check_params("t", "query", ok.as_object().unwrap())
            .unwrap();
        let bad = serde_json::json!({"table": "t"});
        let e = reg
            .check_params("t", "insert", bad.as_object().unwrap())
            .unwrap_err();
        assert!(e.message.contains("values"), "{e}");
    }

    #[test]
    fn passwords_in_urls_are_found() {
        assert_eq!(
            url_password("postgres://u:s3cret@h:5432/d").as_deref(),
            Some("s3cret")
        );
        assert_eq!(url_password("postgres://u@h/d"), None);
        assert_eq!(url_password("sqlite:x.db"), None);
    }
}
