//! The `db` capability on a running mesh, against a real SQLite file and a
//! real PostgreSQL server (Debian's package, started by the harness): CRUD,
//! typed values, injection attempts as values and as identifiers, one
//! statement per task, read-only databases enforced by the database itself,
//! DDL refusal, statement timeouts, constraint violations, credentials kept
//! out of errors, and a connection pool smaller than the worker's slots.

use jetmesh_shared::config::{DatabaseConfig, PoolConfig};
use jetmesh_tests::{InProcessMesh, NatsServer, Postgres, request_json, test_config};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn run(c: &async_nats::Client, action: &str, params: Value) -> Value {
    request_json(c, &format!("mesh.run.db.{action}"), &params, T).await
}

/// The output of a task that must succeed.
async fn ok(c: &async_nats::Client, action: &str, params: Value) -> Value {
    let v = run(c, action, params.clone()).await;
    assert_eq!(v["status"], "success", "{action} {params}: {v}");
    v["output"].clone()
}

/// The error code of a task that must fail.
async fn fails(c: &async_nats::Client, action: &str, params: Value) -> (String, String) {
    let v = run(c, action, params.clone()).await;
    assert_eq!(v["status"], "error", "{action} {params}: {v}");
    (
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn database(url: &str, read_only: bool, allow_ddl: bool) -> DatabaseConfig {
    DatabaseConfig {
        url: url.into(),
        read_only,
        allow_ddl,
        ..DatabaseConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crud_types_and_every_refusal() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data/main.db");
    let url = format!("sqlite:{}", file.display());
    let mut config = test_config(&server.url());
    config.pools.insert("db".into(), PoolConfig::new("db", 4));
    config
        .db
        .databases
        .insert("main".into(), database(&url, false, true));
    config
        .db
        .databases
        .insert("ro".into(), database(&url, true, false));
    config
        .db
        .databases
        .insert("noddl".into(), database(&url, false, false));
    config.db.statement_timeout_ms = 500;
    config.db.max_rows = 50;
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;

    // The file and its folder are made on first use; DDL is allowed on main.
    ok(&c, "query", json!({"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price REAL, qty INTEGER, ok BOOLEAN, at TIMESTAMP, meta JSON)"})).await;
    assert!(file.exists());

    // Insert one row and several, values of every JSON type, bound.
    let out = ok(&c, "insert", json!({"table": "items", "values": {"name": "pen", "price": 1.5, "qty": 10, "ok": true, "at": "2026-12-07T10:00:00Z", "meta": {"color": "blue"}}, "returning": ["id"]})).await;
    assert_eq!(out["rows_affected"], 1, "{out}");
    assert_eq!(out["rows"][0]["id"], 1, "{out}");
    let out = ok(&c, "insert", json!({"table": "items", "values": [
        {"name": "ink", "price": 2.25, "qty": 3, "ok": false, "at": null, "meta": null},
        {"name": "x'); DROP TABLE items; --", "price": 0, "qty": 0, "ok": null, "at": null, "meta": [1, 2]}
    ]})).await;
    assert_eq!(out["rows_affected"], 2, "{out}");
    assert_eq!(out["rows"], json!([]));

    // Typed values back, with the declared column types.
    let out = ok(&c, "query", json!({"sql": "SELECT id, name, price, qty, ok, at, meta FROM items WHERE qty >= ? ORDER BY id", "params": [1]})).await;
    assert_eq!(out["row_count"], 2, "{out}");
    assert_eq!(
        out["rows"][0],
        json!({"id": 1, "name": "pen", "price": 1.5, "qty": 10, "ok": true, "at": "2026-12-07T10:00:00Z", "meta": "{\"color\":\"blue\"}"})
    );
    assert_eq!(out["rows"][1]["ok"], false);
    assert_eq!(out["rows"][1]["at"], Value::Null);
    assert_eq!(out["columns"][4], json!({"name": "ok", "type": "BOOLEAN"}));
    // The injection attempt is a name like any other.
    let out = ok(
        &c,
        "query",
        json!({"sql": "SELECT name FROM items WHERE name LIKE ?", "params": ["x'%"]}),
    )
    .await;
    assert_eq!(out["rows"][0]["name"], "x'); DROP TABLE items; --");

    // Update and delete by column equalities (null is IS NULL).
    let out = ok(
        &c,
        "update",
        json!({"table": "items", "values": {"qty": 5}, "where": {"name": "ink"}}),
    )
    .await;
    assert_eq!(out["rows_affected"], 1);
    let out = ok(&c, "update", json!({"table": "items", "values": {"qty": 1}, "where": {"at": null}, "returning": ["name"]})).await;
    assert_eq!(out["rows_affected"], 2, "{out}");
    let out = ok(
        &c,
        "delete",
        json!({"table": "items", "where": {"name": "x'); DROP TABLE items; --"}}),
    )
    .await;
    assert_eq!(out["rows_affected"], 1);
    let out = ok(
        &c,
        "query",
        json!({"sql": "SELECT sum(qty) AS total, count(*) AS n FROM items"}),
    )
    .await;
    assert_eq!(out["rows"][0], json!({"total": 11, "n": 2}), "{out}");

    // Identifiers that are not plain names are refused before any SQL is made.
    for (table, col) in [
        ("items; DROP TABLE items", "qty"),
        ("items", "qty\" = 0 OR \"1"),
        ("items", "a b"),
    ] {
        let (code, _) = fails(
            &c,
            "update",
            json!({"table": table, "values": {col: 1}, "where": {"id": 1}}),
        )
        .await;
        assert_eq!(code, "invalid_identifier", "{table} {col}");
    }
    // One statement per task, wherever the second hides.
    let (code, _) = fails(&c, "query", json!({"sql": "SELECT 1; DELETE FROM items"})).await;
    assert_eq!(code, "multiple_statements");
    let (code, _) = fails(
        &c,
        "query",
        json!({"sql": "SELECT '1'';' ; DELETE FROM items --"}),
    )
    .await;
    assert_eq!(code, "multiple_statements");
    for sql in [
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "BEGIN",
        "VACUUM INTO '/tmp/copy.db'",
    ] {
        let (code, _) = fails(&c, "query", json!({"sql": sql})).await;
        assert_eq!(code, "statement_refused", "{sql}");
    }
    let out = ok(
        &c,
        "query",
        json!({"sql": "SELECT count(*) AS n FROM items"}),
    )
    .await;
    assert_eq!(out["rows"][0]["n"], 2, "nothing ran: {out}");

    // Read-only: refused early, and by SQLite itself for the same file.
    let (code, _) = fails(
        &c,
        "insert",
        json!({"database": "ro", "table": "items", "values": {"name": "z"}}),
    )
    .await;
    assert_eq!(code, "read_only");
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "ro", "sql": "WITH x AS (SELECT 1) DELETE FROM items"}),
    )
    .await;
    assert_eq!(code, "read_only");
    let out = ok(
        &c,
        "query",
        json!({"database": "ro", "sql": "SELECT count(*) AS n FROM items"}),
    )
    .await;
    assert_eq!(out["rows"][0]["n"], 2);
    // DDL where it is not allowed.
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "noddl", "sql": "DROP TABLE items"}),
    )
    .await;
    assert_eq!(code, "ddl_refused");
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "noddl", "sql": "PRAGMA foreign_keys = OFF"}),
    )
    .await;
    assert_eq!(code, "ddl_refused");

    // Stable codes for the database's own errors.
    let (code, _) = fails(
        &c,
        "insert",
        json!({"table": "items", "values": {"name": "pen"}}),
    )
    .await;
    assert_eq!(code, "constraint_violation");
    let (code, _) = fails(
        &c,
        "insert",
        json!({"table": "items", "values": {"qty": 1}}),
    )
    .await;
    assert_eq!(code, "constraint_violation", "NOT NULL");
    let (code, _) = fails(&c, "query", json!({"sql": "SELEC 1"})).await;
    assert_eq!(code, "syntax_error");
    let (code, _) = fails(&c, "query", json!({"sql": "SELECT * FROM nope"})).await;
    assert_eq!(code, "undefined_object");
    let (code, msg) = fails(&c, "query", json!({"sql": "SELECT ? + ?", "params": [1]})).await;
    assert_eq!(code, "invalid_args");
    assert!(msg.contains("takes 2 parameters"), "{msg}");
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "elsewhere", "sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(code, "unknown_database");
    let (code, _) = fails(&c, "query", json!({"sql": 7})).await;
    assert_eq!(code, "invalid_args");

    // A statement past the timeout is interrupted, and the pool carries on.
    let (code, msg) = fails(&c, "query", json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"})).await;
    assert_eq!(code, "timeout", "{msg}");
    // Row limits: the task's max_rows, and db.max_rows above it.
    let out = ok(&c, "query", json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i FROM n", "max_rows": 7})).await;
    assert_eq!(
        (out["row_count"].clone(), out["truncated"].clone()),
        (json!(7), json!(true))
    );
    let out = ok(&c, "query", json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i FROM n"})).await;
    assert_eq!(out["row_count"], 50);
    let out = ok(
        &c,
        "query",
        json!({"sql": "SELECT x'00ff' AS b, 2.5 AS f, NULL AS n"}),
    )
    .await;
    assert_eq!(out["rows"][0], json!({"b": "AP8=", "f": 2.5, "n": null}));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_read_only_timeouts_credentials_and_a_small_pool() {
    let pg = Postgres::start();
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let pw_file = tmp.path().join("pw");
    std::fs::write(&pw_file, format!("{}\n", jetmesh_tests::postgres::PASSWORD)).unwrap();
    let mut config = test_config(&server.url());
    config.pools.insert("db".into(), PoolConfig::new("db", 8));
    let mut main = database(&pg.url_without_password(), false, true);
    main.password_file = Some(pw_file);
    main.max_connections = Some(2);
    config.db.databases.insert("pg".into(), main);
    config
        .db
        .databases
        .insert("pgro".into(), database(&pg.url(), true, false));
    let mut one = database(&pg.url(), false, false);
    one.max_connections = Some(1);
    config.db.databases.insert("one".into(), one);
    let wrong = "postgres://postgres:not-the-password-42@127.0.0.1:{port}/postgres"
        .replace("{port}", &pg.port.to_string());
    config
        .db
        .databases
        .insert("wrong".into(), database(&wrong, false, false));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.db.databases.insert(
        "down".into(),
        database(
            &format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
            false,
            false,
        ),
    );
    config.db.statement_timeout_ms = 2000;
    config.db.acquire_timeout_ms = 1500;
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;
    let q = |sql: &str, params: Value| json!({"database": "pg", "sql": sql, "params": params});

    ok(&c, "query", q("CREATE TABLE things (id SERIAL PRIMARY KEY, n INT4, big INT8, f FLOAT8, price NUMERIC(10,2), name TEXT UNIQUE, ok BOOL, at TIMESTAMPTZ, local TIMESTAMP, day DATE, doc JSONB, tags TEXT[], raw BYTEA, uid UUID)", json!([]))).await;
    ok(&c, "query", q("CREATE SEQUENCE s", json!([]))).await;

    // Strings become the types the server expects; results come back typed.
    let out = ok(&c, "insert", json!({"database": "pg", "table": "things", "returning": ["id", "at"], "values": {
        "n": 7, "big": 9007199254740993i64, "f": 0.25, "price": "19.99", "name": "a", "ok": true,
        "at": "2026-12-07T10:00:00+01:00", "local": "2026-12-07T10:00:00", "day": "2026-12-07",
        "doc": {"k": [1, "two", null]}, "tags": ["x", "y"], "raw": "AP8=", "uid": "67e55044-10b1-426f-9247-bb680e5fe0c8"
    }})).await;
    assert_eq!(
        out["rows"][0],
        json!({"id": 1, "at": "2026-12-07T09:00:00Z"}),
        "{out}"
    );
    ok(&c, "insert", json!({"database": "pg", "table": "things", "values": {"n": null, "name": "x'); DROP TABLE things; --", "price": 3}})).await;
    let out = ok(&c, "query", q("SELECT n, big, f, price, name, ok, at, local, day, doc, tags, raw, uid FROM things WHERE id = $1", json!([1]))).await;
    assert_eq!(
        out["rows"][0],
        json!({"n": 7, "big": 9007199254740993i64, "f": 0.25, "price": "19.99", "name": "a", "ok": true,
               "at": "2026-12-07T09:00:00Z", "local": "2026-12-07T10:00:00", "day": "2026-12-07",
               "doc": {"k": [1, "two", null]}, "tags": ["x", "y"], "raw": "AP8=", "uid": "67e55044-10b1-426f-9247-bb680e5fe0c8"}),
        "{out}"
    );
    let types: Vec<&str> = out["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[..4], ["INT4", "INT8", "FLOAT8", "NUMERIC"]);
    let out = ok(
        &c,
        "query",
        q(
            "SELECT n, price FROM things WHERE name = $1",
            json!(["x'); DROP TABLE things; --"]),
        ),
    )
    .await;
    assert_eq!(out["rows"][0], json!({"n": null, "price": "3.00"}));
    let out = ok(&c, "update", json!({"database": "pg", "table": "public.things", "values": {"ok": false}, "where": {"n": null}, "returning": ["name"]})).await;
    assert_eq!(out["rows_affected"], 1, "{out}");
    let out = ok(&c, "delete", json!({"database": "pg", "table": "things", "where": {"name": "x'); DROP TABLE things; --"}})).await;
    assert_eq!(out["rows_affected"], 1);
    assert_eq!(pg.psql("SELECT count(*) FROM things"), "1");

    // A value of the wrong type is the task's error, naming the parameter.
    let (code, msg) = fails(
        &c,
        "query",
        q(
            "SELECT * FROM things WHERE at > $1",
            json!(["yesterday-ish"]),
        ),
    )
    .await;
    assert_eq!(code, "invalid_args");
    assert!(msg.contains("params[0] (TIMESTAMPTZ)"), "{msg}");
    // Identifiers and statements.
    let (code, _) = fails(
        &c,
        "delete",
        json!({"database": "pg", "table": "things\"; DROP TABLE things; --", "where": {"id": 1}}),
    )
    .await;
    assert_eq!(code, "invalid_identifier");
    let (code, _) = fails(&c, "query", q("SELECT 1; DROP TABLE things", json!([]))).await;
    assert_eq!(code, "multiple_statements");
    let (code, _) = fails(
        &c,
        "query",
        q("SELECT $x$;$x$; DROP TABLE things", json!([])),
    )
    .await;
    assert_eq!(code, "multiple_statements");
    for sql in [
        "SET statement_timeout = 0",
        "COPY things TO STDOUT",
        "DO $$ BEGIN PERFORM 1; END $$",
    ] {
        let (code, _) = fails(&c, "query", q(sql, json!([]))).await;
        assert_eq!(code, "statement_refused", "{sql}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM things"), "1");

    // Read-only is the server's: a SELECT that writes (nextval) is refused too.
    let (code, msg) = fails(
        &c,
        "query",
        json!({"database": "pgro", "sql": "SELECT nextval('s')"}),
    )
    .await;
    assert_eq!(code, "read_only", "{msg}");
    let (code, _) = fails(
        &c,
        "insert",
        json!({"database": "pgro", "table": "things", "values": {"name": "z"}}),
    )
    .await;
    assert_eq!(code, "read_only");
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "pgro", "sql": "CREATE TABLE z (a int)"}),
    )
    .await;
    assert_eq!(code, "ddl_refused");
    let (code, _) = fails(
        &c,
        "query",
        json!({"database": "one", "sql": "SELECT * INTO copy FROM things"}),
    )
    .await;
    assert_eq!(code, "ddl_refused");
    let out = ok(
        &c,
        "query",
        json!({"database": "pgro", "sql": "SELECT count(*) AS n FROM things"}),
    )
    .await;
    assert_eq!(out["rows"][0]["n"], 1);

    // The server's errors, as stable codes.
    let (code, _) = fails(
        &c,
        "insert",
        json!({"database": "pg", "table": "things", "values": {"name": "a"}}),
    )
    .await;
    assert_eq!(code, "constraint_violation");
    let (code, _) = fails(&c, "query", q("SELEC 1", json!([]))).await;
    assert_eq!(code, "syntax_error");
    let (code, _) = fails(&c, "query", q("SELECT nope FROM things", json!([]))).await;
    assert_eq!(code, "undefined_object");
    let (code, msg) = fails(&c, "query", q("SELECT pg_sleep(5)", json!([]))).await;
    assert_eq!(code, "timeout", "{msg}");
    let (code, msg) = fails(&c, "query", q("SELECT interval '1 day' AS i", json!([]))).await;
    assert_eq!(code, "unsupported_type");
    assert!(msg.contains("::text"), "{msg}");
    let out = ok(
        &c,
        "query",
        q("SELECT (interval '1 day')::text AS i", json!([])),
    )
    .await;
    assert_eq!(out["rows"][0]["i"], "1 day");

    // Credentials: a wrong password is auth_failed, and no error shows it.
    let (code, msg) = fails(&c, "query", json!({"database": "wrong", "sql": "SELECT 1"})).await;
    assert_eq!(code, "auth_failed", "{msg}");
    assert!(
        !msg.contains("not-the-password-42") && !msg.contains("postgres://"),
        "{msg}"
    );
    let (code, msg) = fails(&c, "query", json!({"database": "down", "sql": "SELECT 1"})).await;
    assert_eq!(code, "unavailable", "{msg}");

    // Sixteen tasks on eight slots share two connections: all succeed, and
    // the server never sees more than two from the pool.
    let watcher = {
        let port = pg.port;
        tokio::task::spawn_blocking(move || {
            let mut most = 0usize;
            let stop = std::time::Instant::now() + Duration::from_secs(4);
            while std::time::Instant::now() < stop {
                let out = std::process::Command::new(
                    jetmesh_tests::postgres::bin_dir().unwrap().join("psql"),
                )
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-tA", "-c"])
                .arg("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jetmesh' AND query LIKE '%pg_sleep(0.1)%' AND state = 'active'")
                .env("PGPASSWORD", jetmesh_tests::postgres::PASSWORD)
                .output()
                .unwrap();
                let n: usize = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let runs = (0..16).map(|_| run(&c, "query", q("SELECT pg_sleep(0.1)", json!([]))));
    let results = futures::future::join_all(runs).await;
    for r in &results {
        assert_eq!(r["status"], "success", "{r}");
    }
    let most = watcher.await.unwrap();
    assert!((1..=2).contains(&most), "{most} connections at once");

    // With one connection and a short acquire timeout, tasks that cannot get
    // it in time fail as unavailable (retryable) instead of hanging.
    let runs = (0..3).map(|_| {
        run(
            &c,
            "query",
            json!({"database": "one", "sql": "SELECT pg_sleep(1.0)"}),
        )
    });
    let results = futures::future::join_all(runs).await;
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert!(codes.contains(&"ok"), "{results:?}");
    assert!(codes.contains(&"unavailable"), "{results:?}");
    m.stop().await;
}
