//! Trace export: `jetmesh up` with `telemetry.otlp_endpoint` set sends its
//! spans to a real OTLP receiver (tests/src/otlp.rs), over HTTP and over
//! gRPC, and the trace context travels with the task messages, so that a
//! worker's `task.execute` is a child of the router's `task.dispatch`.

use jetmesh_shared::Mesh;
use jetmesh_shared::wire::PlanRecord;
use jetmesh_tests::otlp::{OtlpReceiver, Span};
use jetmesh_tests::{NatsServer, Proc, request_json, test_config, wait_for_capability};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A pool of math only: what the plan needs, and quick to start.
const CONFIG: &str = r#"
[pools.math]
capabilities = ["math"]
workers = 2
"#;

fn of_plan<'a>(spans: &'a [Span], name: &str, plan_id: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attributes.get("plan_id") == Some(&json!(plan_id)))
        .collect()
}

fn by_task<'a>(spans: &[&'a Span], task_id: &str) -> &'a Span {
    let found: Vec<&&Span> = spans
        .iter()
        .filter(|s| s.attributes.get("task_id") == Some(&json!(task_id)))
        .collect();
    assert_eq!(found.len(), 1, "one span for task {task_id}: {found:#?}");
    found[0]
}

/// Runs a plan of two dependent math tasks on `jetmesh up` exporting over
/// `protocol`, and checks the spans the receiver got.
async fn one_plan_is_one_trace(protocol: &str) {
    let server = NatsServer::start();
    let url = server.url();
    let rx = Arc::new(OtlpReceiver::start());
    let endpoint = match protocol {
        "grpc" => rx.grpc_url(),
        _ => rx.http_url(),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jetmesh.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut up = Proc::jetmesh_env(
        &url,
        &["--config", config.to_str().unwrap(), "up"],
        &[
            ("JETMESH_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("JETMESH_TELEMETRY__OTLP_PROTOCOL", protocol),
            // Batches go out every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mesh = Mesh::connect(test_config(&url), "test").await.unwrap();
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("jetmesh up is not ready: {e}\n{}", up.stderr()));
    wait_for_capability(&mesh, "math").await;

    let plan_id = format!("traced_{protocol}");
    let client = server.client().await;
    let report = request_json(
        &client,
        "mesh.plans.submit",
        &json!({"plan_id": plan_id, "wait": true, "subtasks": [
            {"id": "a", "type": "math", "action": "sum", "args": [1, 2]},
            {"id": "b", "type": "math", "action": "multiply", "args": [3, 4], "depends_on": ["a"]}
        ]}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report["completed"], 2, "{report}");

    // Two dispatches of the plan (a, then b once a succeeded), a publish and
    // a run per task, and the plan's completion.
    let complete = {
        let (rx, plan_id, protocol) = (rx.clone(), plan_id.clone(), protocol.to_string());
        move |spans: &[Span]| {
            of_plan(spans, "plan.dispatch", &plan_id).len() >= 2
                && of_plan(spans, "task.dispatch", &plan_id).len() >= 2
                && of_plan(spans, "task.execute", &plan_id).len() >= 2
                && !of_plan(spans, "plan.complete", &plan_id).is_empty()
                && rx.requests(&protocol) > 0
        }
    };
    let spans = {
        let rx = rx.clone();
        let complete = complete.clone();
        tokio::task::spawn_blocking(move || rx.wait_for(Duration::from_secs(30), complete))
            .await
            .unwrap()
    };
    assert!(
        complete(&spans),
        "spans missing: {spans:#?}\n{}",
        up.stderr()
    );
    let other = if protocol == "grpc" { "http" } else { "grpc" };
    assert_eq!(rx.requests(other), 0, "nothing over {other}");

    let plan_dispatch = of_plan(&spans, "plan.dispatch", &plan_id);
    let task_dispatch = of_plan(&spans, "task.dispatch", &plan_id);
    let task_execute = of_plan(&spans, "task.execute", &plan_id);
    let plan_complete = of_plan(&spans, "plan.complete", &plan_id);
    let all: Vec<&Span> = [
        &plan_dispatch,
        &task_dispatch,
        &task_execute,
        &plan_complete,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    for s in &all {
        assert_eq!(s.service, "jetmesh-up", "{s:#?}");
        assert_eq!(s.trace_id.len(), 32, "{s:#?}");
    }
    assert_eq!(plan_dispatch.len(), 2, "{plan_dispatch:#?}");
    assert_eq!(plan_complete.len(), 1, "{plan_complete:#?}");

    for task in ["a", "b"] {
        let dispatched = by_task(&task_dispatch, task);
        let executed = by_task(&task_execute, task);
        // The worker's span is the child of the router's publish, across
        // the queue: the context came in the task message's headers.
        assert_eq!(executed.trace_id, dispatched.trace_id, "task {task}");
        assert_eq!(executed.parent_span_id, dispatched.span_id, "task {task}");
        assert_eq!(
            (dispatched.kind, executed.kind),
            (4, 5),
            "producer, consumer"
        );
        assert_eq!(dispatched.attributes["capability"], json!("math"));
        assert_eq!(dispatched.attributes["pool"], json!("math"));
        assert_eq!(executed.attributes["capability"], json!("math"));
        assert_eq!(
            executed.attributes["action"],
            json!(if task == "a" { "sum" } else { "multiply" })
        );
        assert_eq!(executed.status_code, 0, "task {task} succeeded");
        // Each publish is inside one of the plan's dispatches.
        let parent = plan_dispatch
            .iter()
            .find(|p| p.span_id == dispatched.parent_span_id)
            .unwrap_or_else(|| panic!("task.dispatch of {task} is not under a plan.dispatch"));
        assert_eq!(parent.trace_id, dispatched.trace_id);
        // The run ends after its publish began.
        assert!(executed.start_unix_nano >= dispatched.start_unix_nano);
    }
    let complete = plan_complete[0];
    assert_eq!(complete.attributes["tasks"], json!(2));
    assert_eq!(complete.attributes["completed"], json!(2));
    assert_eq!(complete.attributes["failed"], json!(0));
    assert_eq!(by_task(&task_execute, "a").attributes["attempt"], json!(1));

    // The plan's own trace context, stored by the chief in its record: every
    // span of the plan is in that one trace, the plan's dispatches and
    // completion its children.
    let record: PlanRecord = mesh
        .get_json(&mesh.plans, &mesh.names.plan_key(&plan_id))
        .await
        .unwrap()
        .expect("the plan record");
    let traceparent = record.trace.expect("the chief stores the plan's trace");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, root_span) = (parts[1], parts[2]);
    for s in &all {
        assert_eq!(s.trace_id, trace_id, "one plan, one trace: {s:#?}");
    }
    for s in plan_dispatch.iter().chain(&plan_complete) {
        assert_eq!(s.parent_span_id, root_span, "{s:#?}");
    }
    // The root, the chief's `plan.submit`, is exported too.
    let root = root_span.to_string();
    let spans = tokio::task::spawn_blocking({
        let rx = rx.clone();
        move || {
            rx.wait_for(Duration::from_secs(10), |s| {
                s.iter().any(|s| s.span_id == root)
            })
        }
    })
    .await
    .unwrap();
    let root = spans
        .iter()
        .find(|s| s.span_id == root_span)
        .expect("the root span");
    assert_eq!(
        (
            root.name.as_str(),
            root.trace_id.as_str(),
            root.parent_span_id.as_str(),
            root.kind
        ),
        ("plan.submit", trace_id, "", 2),
        "{root:#?}"
    );

    // A graceful stop exports what is left and ends in time.
    let status = up.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "jetmesh up exits cleanly: {status}\n{}",
        up.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plan_is_one_trace_over_http() {
    one_plan_is_one_trace("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plan_is_one_trace_over_grpc() {
    one_plan_is_one_trace("grpc").await;
}

/// A goal, planned by a model (the provider emulator), run and reported
/// with a narrative: one trace from the chief's `plan.submit` through the
/// planner's `plan.goal` and its model call to the summary's `plan.report`
/// and its model call, with the GenAI attributes Langfuse and other OTLP
/// backends read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_is_one_trace_with_genai_spans() {
    use jetmesh_tests::llm::{LlmEmulator, OPENAI_KEY, Reply};
    let server = NatsServer::start();
    let url = server.url();
    let rx = Arc::new(OtlpReceiver::start());
    let emu = LlmEmulator::start();
    emu.script(
        "gpt-trace",
        vec![
            Reply::Json(json!({"subtasks": [
                {"id": "a", "type": "math", "action": "sum", "args": [1, 2]},
                {"id": "b", "type": "math", "action": "multiply", "args": [3, 4], "depends_on": ["a"]}
            ]})),
            Reply::Text("Three, then twelve.".into()),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jetmesh.toml");
    std::fs::write(
        &config,
        format!(
            r#"{CONFIG}
[planner]
order = ["emu"]
[planner.providers.emu]
kind = "openai"
base_url = "{}"
model = "gpt-trace"
api_key_env = "TRACE_TEST_KEY"
"#,
            emu.openai_url()
        ),
    )
    .unwrap();
    let endpoint = rx.http_url();
    let mut up = Proc::jetmesh_env(
        &url,
        &["--config", config.to_str().unwrap(), "up"],
        &[
            ("JETMESH_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("TRACE_TEST_KEY", OPENAI_KEY),
        ],
    );
    let mesh = Mesh::connect(test_config(&url), "test").await.unwrap();
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("jetmesh up is not ready: {e}\n{}", up.stderr()));
    wait_for_capability(&mesh, "math").await;
    let client = server.client().await;
    let report = request_json(
        &client,
        "mesh.plans.submit",
        &json!({"plan_id": "goal_traced", "goal": "sum, then multiply", "wait": true}),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(report["narrative"], "Three, then twelve.", "{report}");
    let record: PlanRecord = mesh
        .get_json(&mesh.plans, &mesh.names.plan_key("goal_traced"))
        .await
        .unwrap()
        .expect("the plan record");
    let traceparent = record.trace.expect("the plan's trace");
    let trace_id = traceparent.split('-').nth(1).unwrap().to_string();
    let spans = tokio::task::spawn_blocking({
        let (rx, trace_id) = (rx.clone(), trace_id.clone());
        move || {
            rx.wait_for(Duration::from_secs(30), |s| {
                let of = |name: &str| {
                    s.iter()
                        .filter(|x| x.name == name && x.trace_id == trace_id)
                        .count()
                };
                of("chat gpt-trace") == 2 && of("plan.report") == 1 && of("plan.complete") == 1
            })
        }
    })
    .await
    .unwrap();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let one = |name: &str| {
        let found: Vec<&&Span> = in_trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} in {in_trace:#?}\n{}",
            up.stderr()
        );
        *found[0]
    };
    // Every span that names the plan is in its trace: one plan, one trace.
    for s in spans
        .iter()
        .filter(|s| s.attributes.get("plan_id") == Some(&json!("goal_traced")))
    {
        assert_eq!(s.trace_id, trace_id, "{s:#?}");
    }
    let root = one("plan.submit");
    assert_eq!(root.parent_span_id, "");
    let goal = one("plan.goal");
    assert_eq!(
        goal.parent_span_id, root.span_id,
        "the planner's span is the chief's child"
    );
    let report_span = one("plan.report");
    assert_eq!(report_span.parent_span_id, root.span_id);
    let chats: Vec<&&Span> = in_trace
        .iter()
        .filter(|s| s.name == "chat gpt-trace")
        .collect();
    let planning = chats
        .iter()
        .find(|s| s.parent_span_id == goal.span_id)
        .expect("the planning call");
    let narrating = chats
        .iter()
        .find(|s| s.parent_span_id == report_span.span_id)
        .expect("the narrative call");
    let received = emu.received().await;
    for (span, call) in [(planning, &received[0]), (narrating, &received[1])] {
        let a = &span.attributes;
        assert_eq!(span.kind, 3, "client");
        assert_eq!(a["gen_ai.operation.name"], json!("chat"));
        assert_eq!(a["gen_ai.system"], json!("openai"));
        assert_eq!(a["gen_ai.request.model"], json!("gpt-trace"));
        assert_eq!(a["gen_ai.response.model"], json!("gpt-trace"));
        assert_eq!(a["gen_ai.usage.input_tokens"], json!(call.input_tokens));
        assert_eq!(a["gen_ai.usage.output_tokens"], json!(call.output_tokens));
        assert_eq!(a["server.address"], json!("127.0.0.1"));
    }
    assert_eq!(planning.attributes["jetmesh.llm.purpose"], json!("plan"));
    assert_eq!(
        narrating.attributes["jetmesh.llm.purpose"],
        json!("narrative")
    );
    // The plan's dispatches, runs and completion are in the same trace.
    assert!(in_trace.iter().filter(|s| s.name == "task.execute").count() == 2);
    assert_eq!(one("plan.complete").parent_span_id, root.span_id);
    let status = up.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", up.stderr());
}
