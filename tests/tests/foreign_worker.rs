//! A worker written in another language joins with the foreign-worker contract
//! alone: the Python script in tests/python registers capability `echo` and the
//! router routes to it with no change and no restart.

use jetmesh_tests::{
    InProcessMesh, NatsServer, report_task, request_json, spawn_echo_worker, test_config,
};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_registers_echo_and_gets_routed_tasks() {
    let server = NatsServer::start();
    let mesh = InProcessMesh::start(test_config(&server.url())).await;
    let client = server.client().await;

    // Before the worker exists, echo is unknown.
    let r: Value = serde_json::from_slice(
        &client
            .request("mesh.run.echo.say", "{}".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(r["error"]["code"], "unknown_capability");

    let mut worker = spawn_echo_worker(&server.url(), &[]).await;

    // mesh.run and a plan that mixes the foreign pool with a built-in one.
    let mut r = Value::Null;
    for _ in 0..50 {
        r = serde_json::from_slice(
            &client
                .request("mesh.run.echo.say", r#"{"text":"hi"}"#.into())
                .await
                .unwrap()
                .payload,
        )
        .unwrap();
        if r["status"] == "success" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r["output"], json!({"echo": "hi"}), "{r}");
    assert!(r["worker"].as_str().unwrap().starts_with("echo-py"));

    let plan = json!({"wait": true, "subtasks": [
        {"id": "a", "type": "echo", "action": "say", "args": [1, 2]},
        {"id": "b", "type": "math", "action": "sum", "args": [1, 2], "depends_on": ["a"]},
        {"id": "c", "type": "echo", "action": "say", "text": "after b", "depends_on": ["b"]},
        {"id": "d", "type": "echo", "action": "fail"}
    ]});
    let report = request_json(&client, "mesh.plans.submit", &plan, Duration::from_secs(30)).await;
    let task = |id: &str| report_task(&report, id);
    assert_eq!(task("a")["output"], json!({"echo": [1, 2]}), "{report}");
    assert_eq!(task("b")["output"], 3);
    assert_eq!(task("c")["output"], json!({"echo": "after b"}));
    assert_eq!(task("d")["error"]["code"], "echo_failed");
    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(1))
    );

    let status = worker.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "the worker stops cleanly on SIGTERM: {status}"
    );
    mesh.stop().await;
}
