//! Bad input gets a reply with a stable error code and a readable message;
//! nothing crashes, hangs, or is silently dropped — and the mesh still works
//! afterwards.

use futures::StreamExt;
use jetmesh_shared::codec::{CONTENT_TYPE, MSGPACK};
use jetmesh_shared::wire::TaskResult;
use jetmesh_tests::{InProcessMesh, NatsServer, stored_result, test_config};
use serde_json::Value;
use std::time::Duration;

async fn req_raw(
    client: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
    headers: Option<async_nats::HeaderMap>,
) -> Value {
    let request = async_nats::Request::new()
        .payload(body.into())
        .headers(headers.unwrap_or_default());
    let fut = client.send_request(subject.to_string(), request);
    let reply = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("{subject}: no reply in time"))
        .expect("reply");
    if reply
        .headers
        .as_ref()
        .and_then(|h| h.get(CONTENT_TYPE))
        .map(|v| v.as_str() == MSGPACK)
        .unwrap_or(false)
    {
        rmp_serde::from_slice(&reply.payload).unwrap()
    } else {
        serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{subject}: reply not JSON: {e}"))
    }
}

async fn expect_code(client: &async_nats::Client, subject: &str, body: &str, code: &str) {
    let v = req_raw(client, subject, body.as_bytes().to_vec(), None).await;
    assert_eq!(v["status"], "error", "{subject} {body}: {v}");
    assert_eq!(v["error"]["code"], code, "{subject} {body}: {v}");
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_run_refuses_bad_input_with_stable_codes() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.mesh.max_request_bytes = 2048;
    let mesh = InProcessMesh::start(config).await;
    let c = server.client().await;

    expect_code(&c, "mesh.run.math.sum", "{not json", "bad_request").await;
    expect_code(&c, "mesh.run.math.sum", "[1,2,3]", "bad_request").await;
    expect_code(
        &c,
        "mesh.run.math.sum",
        r#"{"args":[1],"timeout_ms":"soon"}"#,
        "bad_request",
    )
    .await;
    expect_code(
        &c,
        "mesh.run.math.sum",
        r#"{"args":[1],"priority":"urgent"}"#,
        "bad_request",
    )
    .await;
    expect_code(&c, "mesh.run.math.sum", r#"{"args":"1,2"}"#, "invalid_args").await;
    expect_code(
        &c,
        "mesh.run.math.sum",
        r#"{"args":[1,"x"]}"#,
        "invalid_args",
    )
    .await;
    expect_code(&c, "mesh.run.math.sum", r#"{}"#, "invalid_args").await;
    expect_code(
        &c,
        "mesh.run.date.add_days",
        r#"{"args":["2024-13-45",1]}"#,
        "invalid_args",
    )
    .await;
    expect_code(
        &c,
        "mesh.run.date.today",
        r#"{"timezone":"Mars/Olympus"}"#,
        "invalid_args",
    )
    .await;
    expect_code(&c, "mesh.run.email.send", r#"{}"#, "unknown_capability").await;
    expect_code(
        &c,
        "mesh.run.math.pow",
        r#"{"args":[2,3]}"#,
        "unknown_action",
    )
    .await;
    expect_code(
        &c,
        "mesh.run.math.sum",
        r#"{"id":"a.b","args":[1]}"#,
        "invalid_id",
    )
    .await;
    expect_code(
        &c,
        "mesh.run.math.sum",
        r#"{"plan_id":"has space","args":[1]}"#,
        "invalid_id",
    )
    .await;
    expect_code(
        &c,
        &format!("mesh.run.{}.sum", "x".repeat(65)),
        "{}",
        "invalid_id",
    )
    .await;
    expect_code(&c, "mesh.run.math.sum.extra", "{}", "bad_request").await;
    let big = format!(r#"{{"args":[1],"pad":"{}"}}"#, "x".repeat(4000));
    expect_code(&c, "mesh.run.math.sum", &big, "payload_too_large").await;

    // Malformed MessagePack, and an unknown Content-Type.
    let mut h = async_nats::HeaderMap::new();
    h.insert(CONTENT_TYPE, MSGPACK);
    let v = req_raw(&c, "mesh.run.math.sum", vec![0xc1, 0xff], Some(h)).await;
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let mut h = async_nats::HeaderMap::new();
    h.insert(CONTENT_TYPE, "application/xml");
    let v = req_raw(&c, "mesh.run.math.sum", b"<a/>".to_vec(), Some(h)).await;
    assert_eq!(v["error"]["code"], "unsupported_encoding", "{v}");

    // Still healthy.
    let v = req_raw(
        &c,
        "mesh.run.math.sum",
        br#"{"args":[1,2,3]}"#.to_vec(),
        None,
    )
    .await;
    assert_eq!(v["output"], 6);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_submit_refuses_bad_plans_with_stable_codes() {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    config.mesh.max_request_bytes = 8192;
    config.mesh.max_subtasks = 5;
    let mesh = InProcessMesh::start(config).await;
    let c = server.client().await;
    let s = "mesh.plans.submit";
    let t = |extra: &str| format!(r#"{{"subtasks":[{extra}]}}"#);

    expect_code(&c, s, "{\"subtasks\": [", "bad_request").await;
    expect_code(&c, s, r#"{"subtasks":"t1"}"#, "bad_request").await;
    expect_code(&c, s, &t(r#"{"id":"t1","type":"math"}"#), "bad_request").await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"t1","type":"math","action":"sum","depends_on":"t0"}"#),
        "bad_request",
    )
    .await;
    expect_code(&c, s, r#"{}"#, "bad_request").await;
    expect_code(&c, s, r#"{"subtasks":[]}"#, "bad_request").await;
    expect_code(
        &c,
        s,
        r#"{"goal":"book me a flight"}"#,
        "no_planner_provider",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"t1","type":"email","action":"send"}"#),
        "unknown_capability",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"t1","type":"math","action":"pow"}"#),
        "unknown_action",
    )
    .await;
    expect_code(
        &c,
        s,
        r#"{"plan_id":"bad.id","subtasks":[{"type":"math","action":"sum"}]}"#,
        "invalid_id",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"t*","type":"math","action":"sum"}"#),
        "invalid_id",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"a","type":"math","action":"sum"},{"id":"a","type":"math","action":"sum"}"#),
        "duplicate_task_id",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"a","type":"math","action":"sum","depends_on":["ghost"]}"#),
        "unknown_dependency",
    )
    .await;
    expect_code(
        &c,
        s,
        &t(r#"{"id":"a","type":"math","action":"sum","depends_on":["b"]},{"id":"b","type":"math","action":"sum","depends_on":["a"]}"#),
        "dependency_cycle",
    )
    .await;
    let six = (0..6)
        .map(|i| format!(r#"{{"id":"t{i}","type":"math","action":"sum","args":[1]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    expect_code(&c, s, &t(&six), "payload_too_large").await;
    let big = format!(
        r#"{{"goal":"{}","subtasks":[{{"type":"math","action":"sum"}}]}}"#,
        "x".repeat(9000)
    );
    expect_code(&c, s, &big, "payload_too_large").await;

    // A plan id can be used once.
    let ok = r#"{"plan_id":"once","subtasks":[{"type":"math","action":"sum","args":[1]}]}"#;
    let v = req_raw(&c, s, ok.as_bytes().to_vec(), None).await;
    assert_eq!(v["status"], "accepted", "{v}");
    expect_code(&c, s, ok, "duplicate_plan").await;

    // Unknown plans are not_found; refused plans left nothing behind.
    expect_code(&c, "mesh.plans.get.nope", "", "not_found").await;
    assert!(mesh.mesh.plans.get("plan.bad").await.unwrap().is_none());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_on_mesh_tasks_become_error_results() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let c = server.client().await;
    let m = &mesh.mesh;
    let mut results = c.subscribe("$KV.mesh_results.task.>").await.unwrap();
    c.flush().await.unwrap();
    c.publish("mesh.tasks.email.send", r#"{"id":"nocap"}"#.into())
        .await
        .unwrap();
    c.publish("mesh.tasks.math.pow", r#"{"id":"noact","args":[1]}"#.into())
        .await
        .unwrap();
    c.publish(
        "mesh.tasks.math.sum",
        r#"{"id":"badargs","args":"x"}"#.into(),
    )
    .await
    .unwrap();
    let ack: Value = serde_json::from_slice(
        &c.request("mesh.tasks.math.sum", "{oops".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    let seq = ack["seq"].as_u64().unwrap();
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("every bad task gets a result");
    }
    let code = |key: String| async move {
        let r: TaskResult = stored_result(m, &key).await;
        r.error.unwrap().code
    };
    assert_eq!(code("task.nocap.nocap".into()).await, "unknown_capability");
    assert_eq!(code("task.noact.noact".into()).await, "unknown_action");
    assert_eq!(code("task.badargs.badargs".into()).await, "invalid_args");
    assert_eq!(
        code(format!("task.tasks-{seq}.tasks-{seq}")).await,
        "bad_request"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queue_messages_fail_their_task_instead_of_vanishing() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let m = &mesh.mesh;
    let js = async_nats::jetstream::new(server.client().await);
    // A buggy publisher puts a task with a wrong type straight on the queue.
    js.publish(
        "mesh.queue.math.normal",
        r#"{"plan_id":"raw1","id":"t1","type":"math","action":"sum","args":[1],"depends_on":"x"}"#
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut result = None;
    for _ in 0..100 {
        result = m
            .get_json::<TaskResult>(&m.results, "task.raw1.t1")
            .await
            .unwrap();
        if result.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = result.expect("the malformed task got a result");
    assert_eq!(result.error.unwrap().code, "dead_lettered");
    // It is in the dead-letter queue with the reason and the original body.
    let letters = jetmesh_shared::dlq::list(m, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].letter.reason, "undecodable");
    assert_eq!(letters[0].letter.task_id.as_deref(), Some("t1"));
    assert!(
        letters[0].letter.detail.contains("depends_on"),
        "{:?}",
        letters[0].letter
    );
    // The queue is empty: the message was not left to be redelivered forever.
    let mut stream = js.get_stream("MESH_QUEUES").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    mesh.stop().await;
}
