//! Hostile input, tried as a new user (or a broken foreign worker) would:
//! registry entries nobody validated, bodies nested a thousand deep, junk
//! results, empty ids, MessagePack that JSON would refuse, and tasks larger
//! than the mesh takes. Each gets a stable code within its subject's timeout,
//! and none blocks other work.

use futures::StreamExt;
use jetmesh_shared::codec::{CONTENT_TYPE, MSGPACK};
use jetmesh_tests::{InProcessMesh, NatsServer, request_json, test_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A reply to `body` on `subject`, decoded from JSON or MessagePack, within `within`.
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
    msgpack: bool,
    within: Duration,
) -> Value {
    let mut headers = async_nats::HeaderMap::new();
    if msgpack {
        headers.insert(CONTENT_TYPE, MSGPACK);
    }
    let request = async_nats::Request::new()
        .payload(body.into())
        .headers(headers)
        .timeout(Some(within));
    let reply = client
        .send_request(subject.to_string(), request)
        .await
        .unwrap_or_else(|e| panic!("{subject}: no reply within {within:?}: {e}"));
    let is_msgpack = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(CONTENT_TYPE))
        .is_some_and(|v| v.as_str() == MSGPACK);
    if is_msgpack {
        rmp_serde::from_slice(&reply.payload).unwrap()
    } else {
        serde_json::from_slice(&reply.payload).unwrap()
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// `{"args": [[[…1…]]]}` nested `depth` deep, as bytes in either encoding
/// (a `Value` that deep would overflow a stack on its way through serde).
fn deep_body(prefix: &str, depth: usize, msgpack: bool) -> Vec<u8> {
    if msgpack {
        // A map of one entry `args` (or the plan's `subtasks` wrapper), then
        // arrays of one element.
        let mut b = rmp_serde::to_vec(&prefix).unwrap();
        b.splice(0..0, [0x81u8]);
        b.extend(std::iter::repeat_n(0x91u8, depth));
        b.push(0x01);
        b
    } else {
        format!(
            "{{\"{prefix}\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_registry_entry_is_refused_by_name_and_blocks_nothing() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let m = &mesh.mesh;
    let c = server.client().await;
    let mut alerts = c.subscribe("mesh.alerts.registry").await.unwrap();
    c.flush().await.unwrap();
    // What a careless or hostile writer can put into the bucket by hand.
    let hostile = [
        (
            "cap.spaced",
            r#"{"capability":"spaced","actions":["x"],"pool":"a b"}"#,
        ),
        (
            "cap.wild",
            r#"{"capability":"wild","actions":["x"],"pool":">"}"#,
        ),
        (
            "cap.star",
            r#"{"capability":"star","actions":["x"],"pool":"*"}"#,
        ),
        (
            "cap.dotted",
            r#"{"capability":"dotted","actions":["x"],"pool":"math.x"}"#,
        ),
        (
            "cap.noact",
            r#"{"capability":"noact","actions":[],"pool":"p"}"#,
        ),
        ("cap.junk", "this is not JSON"),
    ];
    for (key, value) in hostile {
        m.registry.put(key, value.into()).await.unwrap();
    }
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .expect("an invalid entry raises an alert")
        .unwrap();
    let alert: Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(alert["kind"], "bad_registration", "{alert}");

    // Healthy plans keep completing while the hostile ones are tried.
    let healthy = tokio::spawn({
        let c = c.clone();
        async move {
            let mut answers = Vec::new();
            for i in 0..8 {
                let plan = json!({"wait": true, "subtasks": [
                    {"id": "a", "type": "math", "action": "sum", "args": [i, 1]},
                    {"id": "b", "type": "math", "action": "multiply", "args": [2, 3], "depends_on": ["a"]}
                ]});
                answers.push(
                    request_json(&c, "mesh.plans.submit", &plan, Duration::from_secs(20)).await,
                );
            }
            answers
        }
    });
    for (key, _) in hostile {
        let cap = key.strip_prefix("cap.").unwrap();
        let started = Instant::now();
        let v = ask(
            &c,
            &format!("mesh.run.{cap}.x"),
            b"{}".to_vec(),
            false,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(code(&v), "bad_registration", "mesh.run.{cap}.x: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(key),
            "the message names the entry: {v}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{cap}: answered at once"
        );
        let plan = json!({"subtasks": [{"type": cap, "action": "x"}]});
        let v = request_json(&c, "mesh.plans.submit", &plan, Duration::from_secs(10)).await;
        assert_eq!(code(&v), "bad_registration", "a plan using {cap}: {v}");
    }
    // A task published for one of them gets its error as its result.
    let ack = c
        .request("mesh.tasks.wild.x", r#"{"id":"w1"}"#.into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&ack.payload).contains("seq"));
    let r = jetmesh_tests::stored_result(m, "task.w1.w1").await;
    assert_eq!(r.error.unwrap().code, "bad_registration");

    for answer in healthy.await.unwrap() {
        assert_eq!(answer["completed"], 2, "a healthy plan completed: {answer}");
    }
    // Nothing reached another pool's queue: math's is drained.
    let queues = m.js.get_stream("MESH_QUEUES").await.unwrap();
    assert_eq!(queues.cached_info().state.messages, 0);
    // `jetmesh caps` names what it ignores.
    let (valid, invalid) = jetmesh_shared::registry::list(m).await.unwrap();
    assert!(valid.iter().any(|e| e.capability == "math"));
    assert_eq!(invalid.len(), hostile.len(), "{invalid:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_nested_a_thousand_deep_are_refused_at_once_in_either_encoding() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let c = server.client().await;
    for depth in [100, 127, 1000] {
        for msgpack in [false, true] {
            let started = Instant::now();
            let v = ask(
                &c,
                "mesh.run.math.sum",
                deep_body("args", depth, msgpack),
                msgpack,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(
                code(&v),
                "bad_request",
                "depth {depth} msgpack {msgpack}: {v}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            // As a plan: `{"subtasks": [[[…]]]}` is refused before its shape is read.
            let v = ask(
                &c,
                "mesh.plans.submit",
                deep_body("subtasks", depth, msgpack),
                msgpack,
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(
                code(&v),
                "bad_request",
                "plan, depth {depth} msgpack {msgpack}: {v}"
            );
        }
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_is_read_as_strictly_as_json_and_empty_ids_are_invalid() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let c = server.client().await;
    // A priority given as a number: JSON refuses it, and so does MessagePack
    // (which would otherwise read it as a variant index).
    let v = ask(
        &c,
        "mesh.run.math.sum",
        rmp_serde::to_vec_named(&json!({"args": [1, 2], "priority": 1})).unwrap(),
        true,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "bad_request", "{v}");
    let plan = json!({"subtasks": [{"type": "math", "action": "sum", "args": [1], "priority": 0}]});
    let v = ask(
        &c,
        "mesh.plans.submit",
        rmp_serde::to_vec_named(&plan).unwrap(),
        true,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "bad_request", "{v}");
    // A NaN timeout is not "no timeout".
    #[derive(serde::Serialize)]
    struct NanTimeout {
        args: Vec<i32>,
        timeout_ms: f64,
    }
    let v = ask(
        &c,
        "mesh.run.math.sum",
        rmp_serde::to_vec_named(&NanTimeout {
            args: vec![1, 2],
            timeout_ms: f64::NAN,
        })
        .unwrap(),
        true,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "bad_request", "{v}");
    // Empty ids are refused as mesh.run refuses them.
    let v = request_json(
        &c,
        "mesh.plans.submit",
        &json!({"plan_id": "", "subtasks": [{"type": "math", "action": "sum", "args": [1]}]}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "invalid_id", "{v}");
    let v = request_json(
        &c,
        "mesh.plans.submit",
        &json!({"subtasks": [{"id": "", "type": "math", "action": "sum", "args": [1]}]}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "invalid_id", "{v}");
    let v = request_json(
        &c,
        "mesh.run.math.sum",
        &json!({"id": "", "args": [1]}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "invalid_id", "{v}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_results_from_a_foreign_worker_read_as_bad_result_and_counts_add_up() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let m = mesh.mesh.clone();
    let c = server.client().await;
    // A foreign worker for capability `odd` that stores junk as results.
    jetmesh_shared::registry::register(
        &m,
        &jetmesh_shared::wire::CapabilityEntry {
            capability: "odd".into(),
            actions: vec!["x".into()],
            pool: "odd".into(),
            encoding: Default::default(),
            description: None,
            registered_at: Some(jiff::Timestamp::now()),
            schemas: Default::default(),
            sessions: false,
        },
    )
    .await
    .unwrap();
    let consumer = m.pool_consumer("odd").await.unwrap();
    let junk = [
        ("e", r#"{"status":"error"}"#),
        ("w", r#"{"status":"weird","output":3}"#),
        ("n", r#"{"status":"success","output":1e999}"#),
        (
            "c",
            r#"{"status":"error","error":{"code":"Not A Code","message":"x"}}"#,
        ),
    ];
    let worker = tokio::spawn({
        let m = m.clone();
        async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(Ok(msg)) = messages.next().await {
                let task: Value = serde_json::from_slice(&msg.payload).unwrap();
                let (plan, id) = (
                    task["plan_id"].as_str().unwrap(),
                    task["id"].as_str().unwrap(),
                );
                let body = junk
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map(|(_, v)| *v)
                    .unwrap_or(r#"{"status":"error"}"#);
                m.results
                    .create(format!("task.{plan}.{id}"), body.into())
                    .await
                    .unwrap();
                msg.ack().await.unwrap();
            }
        }
    });
    let mut subtasks: Vec<Value> = junk
        .iter()
        .map(|(id, _)| json!({"id": id, "type": "odd", "action": "x"}))
        .collect();
    subtasks.push(json!({"id": "ok", "type": "math", "action": "sum", "args": [1, 2]}));
    let report = request_json(
        &c,
        "mesh.plans.submit",
        &json!({"plan_id": "junk1", "wait": true, "subtasks": subtasks}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report["completed"], 1, "{report}");
    assert_eq!(report["failed"], 4, "{report}");
    assert_eq!(report["pending"], 0, "{report}");
    let view = request_json(
        &c,
        "mesh.plans.get.junk1",
        &json!({}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(view["pending"], 0, "{view}");
    assert_eq!(view["failed"], 4, "{view}");
    for (id, _) in junk {
        assert_eq!(
            view["tasks"][id]["error"]["code"], "bad_result",
            "{id}: {view}"
        );
    }
    let counts: Value =
        serde_json::from_slice(&m.results.get("plan.junk1").await.unwrap().unwrap()).unwrap();
    assert_eq!(counts["pending"], 0, "{counts}");
    assert_eq!(counts["failed"], 4, "{counts}");
    // mesh.run answers with the normalized result, with a code.
    let v = request_json(
        &c,
        "mesh.run.odd.x",
        &json!({"id": "e"}),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(code(&v), "bad_result", "{v}");
    worker.abort();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_larger_than_the_mesh_takes_gets_payload_too_large_as_its_result() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.mesh.max_request_bytes = 1024 * 1024;
    let mesh = InProcessMesh::start(config).await;
    let c = server.client().await;
    let js = async_nats::jetstream::new(c.clone());
    // 3 MiB: more than the mesh takes, less than the server (8 MB) allows.
    let big = format!(
        r#"{{"id":"big","args":[1],"pad":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    let ack = js
        .publish("mesh.tasks.math.sum", big.into())
        .await
        .unwrap()
        .await
        .expect("the intake stream stores it");
    let key = format!("task.tasks-{0}.tasks-{0}", ack.sequence);
    let r = jetmesh_tests::stored_result(&mesh.mesh, &key).await;
    assert_eq!(r.error.unwrap().code, "payload_too_large");
    mesh.stop().await;
}
