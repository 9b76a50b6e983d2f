//! Result bundles: the aggregator hands a completed plan's results to the
//! summary in parts stored in `mesh_plans`, and the summary reads them instead
//! of scanning `mesh_results`. Without budget there is no bundle; a bundle
//! that is missing, damaged or incomplete is set aside for the scan.

use futures::StreamExt;
use jetmesh_shared::Mesh;
use jetmesh_shared::wire::{AggregationReady, Report, ResultBundle};
use jetmesh_tests::{InProcessMesh, NatsServer, request_json, test_config};
use serde_json::{Value, json};
use std::time::Duration;

/// A plan of `n` sums (task `t{i}` gives i + 1) and one division by zero.
fn plan(plan_id: &str, n: usize) -> Value {
    let mut subtasks: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "type": "math", "action": "sum", "args": [i, 1]}))
        .collect();
    let after: &[&str] = if n > 0 { &["t0"] } else { &[] };
    subtasks.push(json!({"id": "bad", "type": "math", "action": "divide", "args": [1, 0], "depends_on": after}));
    json!({"plan_id": plan_id, "wait": true, "subtasks": subtasks})
}

/// Every task of [`plan`] is in the report with the right outcome.
fn assert_report(report: &Report, n: usize) {
    assert_eq!(
        (report.total_tasks, report.completed, report.failed),
        (n + 1, n, 1)
    );
    for i in 0..n {
        let task = report.tasks.iter().find(|t| t.id == format!("t{i}"));
        assert_eq!(task.and_then(|t| t.output.clone()), Some(json!(i + 1)));
    }
    let bad = report.tasks.iter().find(|t| t.id == "bad").unwrap();
    assert_eq!(
        bad.error.as_ref().unwrap().code.as_str(),
        "division_by_zero"
    );
}

/// Submits [`plan`] and returns its report and its `aggregation_ready` event.
async fn run_plan(
    mesh: &Mesh,
    client: &async_nats::Client,
    plan_id: &str,
    n: usize,
) -> (Report, AggregationReady) {
    let mut ready = client
        .subscribe(format!("mesh.evt.aggregation_ready.{plan_id}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let report = request_json(
        client,
        &mesh.names.plans_submit(),
        &plan(plan_id, n),
        Duration::from_secs(30),
    )
    .await;
    let report: Report = serde_json::from_value(report).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), ready.next())
        .await
        .expect("aggregation_ready seen")
        .unwrap();
    (report, serde_json::from_slice(&event.payload).unwrap())
}

/// The mesh on a fresh server, its aggregator configured by `aggregator`.
async fn start(
    aggregator: impl FnOnce(&mut jetmesh_shared::config::AggregatorConfig),
) -> (NatsServer, InProcessMesh, async_nats::Client) {
    let server = NatsServer::start();
    let mut config = test_config(&server.url());
    aggregator(&mut config.aggregator);
    let mesh = InProcessMesh::start(config).await;
    let client = server.client().await;
    (server, mesh, client)
}

/// The report stored in `report.<plan_id>`.
async fn stored_report(mesh: &Mesh, plan_id: &str) -> Option<Report> {
    mesh.get_json(&mesh.results, &mesh.names.report_key(plan_id))
        .await
        .unwrap()
}

/// Waits until no part of the plan's bundle is left in `mesh_plans`.
async fn assert_bundle_gone(mesh: &Mesh, plan_id: &str, parts: u32) {
    for _ in 0..100 {
        let mut left = 0;
        for n in 0..parts.max(1) {
            if mesh
                .plans
                .get(mesh.names.bundle_key(plan_id, n))
                .await
                .unwrap()
                .is_some()
            {
                left += 1;
            }
        }
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the result bundle of {plan_id} was not removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_built_from_the_aggregators_bundle_in_parts() {
    let (_server, mesh, client) = start(|a| a.bundle_part_bytes = 600).await;

    let (report, event) = run_plan(&mesh.mesh, &client, "bundled", 40).await;
    assert_report(&report, 40);
    // 41 results of ~150 bytes in parts of at most 600 bytes.
    assert!(
        event.bundle_parts >= 8,
        "{} bundle parts",
        event.bundle_parts
    );
    assert_eq!((event.completed, event.failed), (40, 1));
    // The parts are removed once the report is out; the report is stored.
    assert_bundle_gone(&mesh.mesh, "bundled", event.bundle_parts).await;
    let stored = stored_report(&mesh.mesh, "bundled").await.unwrap();
    assert_eq!(stored.tasks, report.tasks);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_past_the_bundle_budget_is_reported_from_the_bucket() {
    // Room for two results, not for a plan of 21.
    let (_server, mesh, client) = start(|a| a.bundle_budget_bytes = 300).await;

    let (report, event) = run_plan(&mesh.mesh, &client, "unbundled", 20).await;
    assert_report(&report, 20);
    assert_eq!(event.bundle_parts, 0);
    assert_bundle_gone(&mesh.mesh, "unbundled", 1).await;
    // The budget is given back: a plan that fits gets a bundle afterwards.
    let (report, event) = run_plan(&mesh.mesh, &client, "small", 0).await;
    assert_eq!(report.failed, 1);
    assert_eq!(event.bundle_parts, 1);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_damaged_or_incomplete_bundle_is_set_aside_for_the_scan() {
    let (_server, mesh, client) = start(|a| a.bundle_budget_bytes = 0).await;
    let m = &mesh.mesh;
    let (report, event) = run_plan(m, &client, "damaged", 10).await;
    assert_report(&report, 10);
    assert_eq!(event.bundle_parts, 0, "bundles are off");

    // A bundle with 9 of the 11 results, each with a wrong output.
    let mut short = ResultBundle::default();
    for i in 1..10 {
        short.push(&format!("t{i}"), br#"{"status":"success","output":-1}"#);
    }
    let short = short.parts(1 << 20).unwrap().remove(0);
    let cases: [(&str, u32, Vec<bytes::Bytes>); 4] = [
        ("missing parts", 3, vec![]),
        ("more parts than a plan may have tasks", u32::MAX, vec![]),
        (
            "a malformed part",
            1,
            vec![bytes::Bytes::from_static(b"\x02junk")],
        ),
        ("a bundle that lacks tasks", 1, vec![short]),
    ];
    for (case, parts, bodies) in cases {
        for (n, body) in bodies.into_iter().enumerate() {
            m.plans
                .put(m.names.bundle_key("damaged", n as u32), body)
                .await
                .unwrap();
        }
        m.results.purge("report.damaged").await.unwrap();
        jetmesh_summary::summarize(m, None, "damaged", parts)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let rebuilt = stored_report(m, "damaged")
            .await
            .unwrap_or_else(|| panic!("{case}: no report"));
        assert_report(&rebuilt, 10);
        assert_bundle_gone(m, "damaged", parts.min(3)).await;
    }

    // A complete bundle is read instead of the bucket: its results are the
    // ones reported.
    let mut whole = ResultBundle::default();
    for id in (0..10).map(|i| format!("t{i}")).chain(["bad".to_string()]) {
        whole.push(&id, br#"{"status":"success","output":7}"#);
    }
    for (n, part) in whole.parts(300).unwrap().into_iter().enumerate() {
        m.plans
            .put(m.names.bundle_key("damaged", n as u32), part)
            .await
            .unwrap();
    }
    let parts = whole.parts(300).unwrap().len() as u32;
    assert!(parts > 1);
    jetmesh_summary::summarize(m, None, "damaged", parts)
        .await
        .unwrap();
    let rebuilt = stored_report(m, "damaged").await.unwrap();
    assert_eq!((rebuilt.completed, rebuilt.failed), (11, 0));
    assert!(rebuilt.tasks.iter().all(|t| t.output == Some(json!(7))));
    assert_bundle_gone(m, "damaged", parts).await;
    mesh.stop().await;
}
