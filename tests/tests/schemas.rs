//! Action schemas in the registry: every built-in capability publishes, per
//! action, a description and a JSON Schema of its parameters; the router
//! refuses a task that breaks it with `invalid_args` naming the field (single
//! tasks and plans alike); a foreign worker's own schema is enforced the same
//! way; a capability without schemas still routes; an entry whose schema does
//! not compile is ignored as `bad_registration`; and `jetmesh caps --actions`
//! prints them.

use jetmesh_shared::registry;
use jetmesh_shared::wire::{ActionSchema, CapabilityEntry};
use jetmesh_tests::{InProcessMesh, NatsServer, request_json, test_config};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn foreign(cap: &str, schema: Option<Value>) -> CapabilityEntry {
    let mut schemas = std::collections::BTreeMap::new();
    if let Some(params) = schema {
        schemas.insert(
            "go".to_string(),
            ActionSchema {
                description: Some("Goes.".into()),
                params: Some(params),
            },
        );
    }
    CapabilityEntry {
        capability: cap.into(),
        actions: vec!["go".into()],
        pool: cap.into(),
        encoding: Default::default(),
        description: None,
        registered_at: Some(jiff::Timestamp::now()),
        schemas,
        sessions: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_published_enforced_and_printed() {
    let server = NatsServer::start();
    let m = InProcessMesh::start(test_config(&server.url())).await;
    let mesh = m.mesh.clone();
    let c = server.client().await;

    // Published: every action of math and date has a description and a schema.
    for cap in ["math", "date"] {
        let raw = mesh
            .registry
            .get(mesh.names.cap_key(cap))
            .await
            .unwrap()
            .unwrap();
        let entry: CapabilityEntry = serde_json::from_slice(&raw).unwrap();
        assert!(!entry.actions.is_empty());
        for a in &entry.actions {
            let s = &entry.schemas[a];
            assert!(
                s.description.as_deref().is_some_and(|d| !d.is_empty()),
                "{cap}.{a}"
            );
            assert_eq!(s.params.as_ref().unwrap()["type"], "object", "{cap}.{a}");
        }
    }

    // A single task that breaks the schema: invalid_args, naming the field.
    let v = request_json(&c, "mesh.run.math.divide", &json!({"args": [1]}), T).await;
    assert_eq!(v["error"]["code"], "invalid_args", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("math.divide") && msg.contains("args"), "{msg}");
    let v = request_json(
        &c,
        "mesh.run.date.add_days",
        &json!({"date": "2024-01-01", "days": "x"}),
        T,
    )
    .await;
    assert_eq!(v["error"]["code"], "invalid_args", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("days:"),
        "{v}"
    );

    // A plan: refused as a whole before anything runs, naming task and field.
    let v = request_json(
        &c,
        "mesh.plans.submit",
        &json!({"subtasks": [
            {"id": "ok", "type": "math", "action": "sum", "args": [1, 2]},
            {"id": "bad", "type": "math", "action": "sum", "args": [1, {"n": 2}]}
        ]}),
        T,
    )
    .await;
    assert_eq!(v["error"]["code"], "invalid_args", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("task bad") && msg.contains("args[1]"), "{msg}");

    // A foreign capability's own schema is enforced by the router: nothing
    // reaches its queue (no worker runs here).
    registry::register(
        &mesh,
        &foreign(
            "ext",
            Some(
                json!({"type": "object", "required": ["n"], "additionalProperties": false,
                        "properties": {"n": {"type": "integer", "maximum": 10}}}),
            ),
        ),
    )
    .await
    .unwrap();
    jetmesh_tests::wait_for_capability(&mesh, "ext").await;
    for (body, needle) in [
        (json!({"n": 11}), "n:"),
        (json!({}), "n is required"),
        (json!({"n": 1, "m": 2}), "\"m\" is not a parameter"),
    ] {
        let v = request_json(&c, "mesh.run.ext.go", &body, T).await;
        assert_eq!(v["error"]["code"], "invalid_args", "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }

    // Without schemas, anything routes: the task reaches the queue and waits
    // there for a worker (the reply is the run timeout, not a refusal).
    registry::register(&mesh, &foreign("loose", None))
        .await
        .unwrap();
    jetmesh_tests::wait_for_capability(&mesh, "loose").await;
    let consumer = mesh.pool_consumer("loose").await.unwrap();
    let v = request_json(
        &c,
        "mesh.run.loose.go",
        &json!({"anything": [1, "x"], "timeout_ms": 300}),
        T,
    )
    .await;
    assert_ne!(v["error"]["code"], "invalid_args", "{v}");
    let mut consumer = consumer;
    let info = consumer.info().await.unwrap();
    assert!(
        info.num_pending + info.num_ack_pending as u64 >= 1,
        "{info:?}"
    );

    // A schema that does not compile makes the entry invalid: the capability
    // is unknown, and the reason is bad_registration.
    let bad = json!({"capability": "broken", "actions": ["go"], "pool": "broken",
                     "schemas": {"go": {"params": {"type": 5}}}});
    mesh.registry
        .put(mesh.names.cap_key("broken"), bad.to_string().into())
        .await
        .unwrap();
    let v = request_json(&c, "mesh.run.broken.go", &json!({}), T).await;
    assert_eq!(v["error"]["code"], "bad_registration", "{v}");
    // A pathological pattern compiles with a linear-time engine and checks fast.
    registry::register(
        &mesh,
        &foreign("regex", Some(json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}))),
    )
    .await
    .unwrap();
    jetmesh_tests::wait_for_capability(&mesh, "regex").await;
    let started = std::time::Instant::now();
    let v = request_json(
        &c,
        "mesh.run.regex.go",
        &json!({"s": format!("{}b", "a".repeat(5000))}),
        T,
    )
    .await;
    assert_eq!(v["error"]["code"], "invalid_args", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // `jetmesh caps --actions` prints descriptions and parameters.
    let text = jetmesh_tests::jetmesh_ok(&server.url(), &["caps".as_ref(), "--actions".as_ref()]);
    for needle in [
        "divide",
        "Divides args[0]",
        "args*",
        "array of number",
        "add_days",
        "ext",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    m.stop().await;
}
