//! The archiver against a real PostgreSQL: plans, task results, reports and
//! `MESH_AUDIT` copied into tables; the archiver process killed with SIGKILL
//! mid-stream and started again as two processes sharing the work; then
//! every table compared with what JetStream holds: the same rows, the same
//! contents, no duplicates, no gaps.

use futures::StreamExt;
use jetmesh_tests::{InProcessMesh, NatsServer, Postgres, Proc, request_json, test_config};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PLANS: usize = 40;
const TASKS: usize = 5;
const AUDIT: usize = 10_000;

fn count(pg: &Postgres, table: &str) -> usize {
    pg.psql(&format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_matches_the_streams_after_the_archiver_is_killed() {
    let pg = Postgres::start();
    let server = NatsServer::start();
    let m = InProcessMesh::start(test_config(&server.url())).await;
    let c = server.client().await;

    // Work for the archive: plans with results and reports, and a long audit log.
    for p in 0..PLANS {
        let subtasks: Vec<Value> = (0..TASKS)
            .map(
                |t| json!({"id": format!("t{t}"), "type": "math", "action": "sum", "args": [p, t]}),
            )
            .collect();
        let plan = json!({"plan_id": format!("arch{p}"), "subtasks": subtasks, "wait": true});
        let report = request_json(&c, "mesh.plans.submit", &plan, Duration::from_secs(30)).await;
        assert_eq!(report["completed"], TASKS, "{report}");
    }
    let js = async_nats::jetstream::new(c.clone());
    for chunk in 0..AUDIT / 1000 {
        let acks = futures::stream::iter(0..1000)
            .then(|i| {
                let js = js.clone();
                async move {
                    js.publish(
                        format!("mesh.audit.test.a{}", chunk * 1000 + i),
                        json!({"n": chunk * 1000 + i, "what": "test"})
                            .to_string()
                            .into(),
                    )
                    .await
                    .unwrap()
                }
            })
            .collect::<Vec<_>>()
            .await;
        for ack in acks {
            ack.await.unwrap();
        }
    }
    // The mesh stops: nothing new is written while the archive catches up.
    let names = m.mesh.names.clone();
    m.stop().await;
    let audit_info = js
        .get_stream(names.audit_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    let audit_total = audit_info.messages as usize;
    assert!(audit_total >= AUDIT);

    // The archiver, killed mid-stream.
    let env = [("JETMESH_ARCHIVE__URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut archiver = Proc::jetmesh_env(&server.url(), &["archiver"], &env);
    let started = Instant::now();
    let mut copied;
    loop {
        copied = pg
            .psql("SELECT count(*) FROM pg_tables WHERE tablename = 'jetmesh_audit'")
            .parse::<usize>()
            .unwrap();
        if copied == 1 {
            copied = count(&pg, "jetmesh_audit");
            if copied >= 1000 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the archiver copied {copied} audit records in 60 s: {}",
            archiver.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    archiver.signal(Signal::SIGKILL);
    let _ = archiver.child.wait();
    let at_kill = count(&pg, "jetmesh_audit");
    eprintln!(
        "killed the archiver at {at_kill} of {audit_total} audit records, {:?} after it started",
        started.elapsed()
    );
    assert!(
        at_kill < audit_total,
        "the archiver finished before it was killed ({at_kill} of {audit_total}); nothing was proved"
    );

    // Started again, twice: the two share the durable consumers and go on
    // where they stand.
    let archiver = Proc::jetmesh_env(&server.url(), &["archiver"], &env);
    let second = Proc::jetmesh_env(&server.url(), &["archiver"], &env);
    let started = Instant::now();
    while count(&pg, "jetmesh_audit") < audit_total
        || count(&pg, "jetmesh_task_results") < PLANS * TASKS
        || count(&pg, "jetmesh_reports") < PLANS
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the archive did not catch up: {}\n{}",
            archiver.stderr(),
            second.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("caught up {:?} after the restart", started.elapsed());
    // Settled: a moment more changes nothing (no late duplicates).
    std::thread::sleep(Duration::from_millis(500));

    // The audit log: every sequence of the stream, once.
    assert_eq!(count(&pg, "jetmesh_audit"), audit_total);
    let range = pg.psql("SELECT min(stream_seq) || ' ' || max(stream_seq) || ' ' || count(DISTINCT stream_seq) FROM jetmesh_audit");
    assert_eq!(
        range,
        format!(
            "{} {} {audit_total}",
            audit_info.first_sequence, audit_info.last_sequence
        )
    );
    let bodies = pg.psql("SELECT count(*) FROM jetmesh_audit WHERE subject LIKE 'mesh.audit.test.%' AND body->>'what' = 'test' AND subject = 'mesh.audit.test.a' || (body->>'n')");
    assert_eq!(
        bodies,
        AUDIT.to_string(),
        "each record holds its own message"
    );

    // Results, reports and plans: one row per key, holding the key's value.
    assert_eq!(count(&pg, "jetmesh_task_results"), PLANS * TASKS);
    assert_eq!(count(&pg, "jetmesh_reports"), PLANS);
    assert_eq!(count(&pg, "jetmesh_plans"), PLANS);
    let results = js.get_key_value(names.results_bucket()).await.unwrap();
    let rows =
        pg.psql("SELECT plan_id || '.' || task_id || ' ' || body::text FROM jetmesh_task_results");
    let archived: BTreeMap<String, Value> = rows
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), serde_json::from_str(v).unwrap())
        })
        .collect();
    for p in 0..PLANS {
        for t in 0..TASKS {
            let key = format!("arch{p}.t{t}");
            let stored = results.get(format!("task.{key}")).await.unwrap().unwrap();
            let stored: Value = serde_json::from_slice(&stored).unwrap();
            assert_eq!(archived.get(&key), Some(&stored), "{key}");
            assert_eq!(stored["output"], json!(p + t));
        }
    }
    let statuses = pg.psql("SELECT DISTINCT status || ' ' || completed FROM jetmesh_reports");
    assert_eq!(statuses, format!("completed {TASKS}"));
    let errors = pg.psql("SELECT count(*) FROM jetmesh_task_results WHERE status <> 'success' OR finished_at IS NULL");
    assert_eq!(errors, "0");
    drop((archiver, second));
}
