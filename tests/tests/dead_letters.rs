//! Dead letters: poison tasks land in MESH_DLQ with their reason while every
//! other task succeeds; tasks that exhaust their deliveries are dead-lettered
//! from JetStream's advisories; a replay after the fix completes the task.

use futures::StreamExt;
use jetmesh_shared::dlq;
use jetmesh_shared::wire::TaskResult;
use jetmesh_tests::{
    InProcessMesh, NatsServer, jetmesh_bin, report_task, request_json, spawn_echo_worker,
    stored_results, test_config,
};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_poison_among_10000_tasks() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.pools.get_mut("math").unwrap().workers = 32;
    let mesh = InProcessMesh::start(config).await;
    let m = &mesh.mesh;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut results = client
        .subscribe("$KV.mesh_results.task.bulk.*")
        .await
        .unwrap();
    client.flush().await.unwrap();

    // 9 900 good tasks through mesh.tasks, 100 poison messages straight onto
    // the queue: half with readable ids (a field of the wrong type), half garbage.
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..10_000u32 {
        let ack = if i % 100 == 0 {
            let (subject, body) = if i % 200 == 0 {
                (
                    "mesh.queue.math.normal".to_string(),
                    format!(
                        r#"{{"plan_id":"bulk","id":"t{i}","type":"math","action":"sum","args":[1],"depends_on":7}}"#
                    ),
                )
            } else {
                (
                    "mesh.queue.math.normal".to_string(),
                    format!("not json {i}"),
                )
            };
            js.publish(subject, body.into()).await.unwrap()
        } else {
            let body = json!({"plan_id": "bulk", "id": format!("t{i}"), "args": [i, 1]});
            js.publish("mesh.tasks.math.sum", body.to_string().into())
                .await
                .unwrap()
        };
        acks.push(std::future::IntoFuture::into_future(ack));
        if acks.len() > 500 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    // 9 900 successes + 50 dead-lettered tasks with readable ids.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = 0;
    while seen < 9_950 {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, results.next())
            .await
            .expect("every readable task gets a result");
        seen += 1;
    }
    let letters = dlq::list(m, 1000).await.unwrap();
    assert_eq!(letters.len(), 100, "every poison message is a dead letter");
    assert!(
        letters
            .iter()
            .all(|l| l.letter.reason == "undecodable" && !l.letter.detail.is_empty())
    );
    assert!(
        letters
            .iter()
            .all(|l| l.letter.pool == "math" && l.letter.subject == "mesh.queue.math.normal")
    );
    let entries = stored_results(m, "task.bulk.*", 9_950).await;
    let (mut ok, mut dead) = (0, 0);
    for e in entries {
        let r: TaskResult = jetmesh_shared::codec::from_json(&e.value).unwrap();
        match r.error {
            None => ok += 1,
            Some(err) => {
                assert_eq!(err.code, "dead_lettered");
                dead += 1;
            }
        }
    }
    assert_eq!((ok, dead), (9_900, 50));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_are_dead_lettered_and_a_replay_after_the_fix_completes_it() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let m = &mesh.mesh;
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "x").unwrap();

    let mut worker = spawn_echo_worker(
        &server.url(),
        &[
            ("ECHO_MAX_DELIVER", "3".as_ref()),
            ("ECHO_BROKEN_FILE", broken.as_os_str()),
        ],
    )
    .await;
    jetmesh_tests::wait_for_capability(m, "echo").await;

    let plan = json!({"plan_id": "dl1", "wait": true, "subtasks": [
        {"id": "flaky", "type": "echo", "action": "flaky"},
        {"id": "after", "type": "math", "action": "sum", "args": [1, 1], "depends_on": ["flaky"]},
        {"id": "ok", "type": "math", "action": "sum", "args": [2, 2]}
    ]});
    let report = request_json(&client, "mesh.plans.submit", &plan, Duration::from_secs(30)).await;
    let task = |id: &str| report_task(&report, id);
    assert_eq!(task("flaky")["error"]["code"], "dead_lettered", "{report}");
    assert_eq!(task("flaky")["attempt"], 3);
    assert_eq!(task("after")["error"]["code"], "dependency_failed");
    assert_eq!(task("ok")["output"], 4);

    let letters = dlq::list(m, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(
        (
            l.letter.reason.as_str(),
            l.letter.pool.as_str(),
            l.letter.attempts
        ),
        ("max_deliveries", "echo", 3)
    );
    assert_eq!(
        (l.letter.plan_id.as_deref(), l.letter.task_id.as_deref()),
        (Some("dl1"), Some("flaky"))
    );
    // It left the queue.
    let mut queues = m.js.get_stream("MESH_QUEUES").await.unwrap();
    assert_eq!(queues.info().await.unwrap().state.messages, 0);

    // The operator sees it, fixes the cause, and replays it with the CLI.
    let out = Command::new(jetmesh_bin())
        .args(["dlq", "ls"])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("max_deliveries") && listing.contains("dl1.flaky"),
        "{listing}"
    );
    let out = Command::new(jetmesh_bin())
        .args(["dlq", "show", &l.seq.to_string()])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["body"]["action"], "flaky");
    std::fs::remove_file(&broken).unwrap();
    let out = Command::new(jetmesh_bin())
        .args(["dlq", "replay", &l.seq.to_string()])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    loop {
        if let Some(r) = m
            .get_json::<TaskResult>(&m.results, "task.dl1.flaky")
            .await
            .unwrap()
            && r.is_success()
        {
            assert_eq!(r.output, Some(json!("fixed")));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the replayed task never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dlq::list(m, 10).await.unwrap().is_empty(),
        "a replayed dead letter is removed"
    );
    let out = Command::new(jetmesh_bin())
        .args(["dlq", "purge"])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    assert!(out.status.success());
    worker.terminate(Duration::from_secs(10));
    mesh.stop().await;
}
