//! Leader failover of the chief, with real processes and real faults: kill -9,
//! SIGSTOP past the lease TTL, and a chief that died between storing a plan and
//! announcing it. Each test is bounded in time and cleans up on drop.

use futures::StreamExt;
use jetmesh_shared::lease;
use jetmesh_shared::wire::{LeaseRecord, PlanRecord, PlanStatus};
use jetmesh_shared::{CancellationToken, Config, Mesh, codec};
use jetmesh_tests::{
    NatsServer, Proc, SIGCONT, SIGKILL, SIGSTOP, role_pids, test_config, wait_ready,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const TTL_MS: u64 = 2000;

fn config(url: &str) -> Config {
    let mut c = test_config(url);
    c.leases.ttl_ms = TTL_MS;
    c
}

/// Every role but the chief, in this process.
fn start_roles(mesh: &Mesh, stop: &CancellationToken) -> JoinSet<jetmesh_shared::Result<()>> {
    let mut set = JoinSet::new();
    set.spawn(jetmesh_planner::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_router::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_aggregator::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh_summary::run(mesh.clone(), stop.clone()));
    set.spawn(jetmesh::run_pool(
        mesh.clone(),
        "math",
        Some(8),
        stop.clone(),
    ));
    set
}

fn chief(url: &str) -> Proc {
    Proc::jetmesh_env(url, &["chief"], &[("JETMESH_LEASES__TTL_MS", "2000")])
}

async fn leader(mesh: &Mesh) -> Option<LeaseRecord> {
    lease::holder(mesh, jetmesh_shared::Role::Chief)
        .await
        .unwrap()
}

/// Waits until the chief lease is held by someone other than `not`.
async fn new_leader(mesh: &Mesh, not: &str, within: Duration) -> (LeaseRecord, Duration) {
    let started = Instant::now();
    loop {
        if let Some(l) = leader(mesh).await
            && l.holder != not
            && l.term > 0
        {
            return (l, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "no new leader within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn plan(id: &str) -> Value {
    json!({"plan_id": id, "subtasks": [
        {"id": "a", "type": "math", "action": "sum", "args": [1, 2]},
        {"id": "b", "type": "math", "action": "multiply", "args": [2, 3], "depends_on": ["a"]},
        {"id": "c", "type": "math", "action": "average", "args": [2, 4]}
    ]})
}

async fn submit(client: &async_nats::Client, body: &Value) -> Value {
    let reply = client
        .send_request(
            "mesh.plans.submit",
            async_nats::Request::new()
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("a reply");
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn wait_reports(mesh: &Mesh, ids: &[String], within: Duration) {
    let started = Instant::now();
    for id in ids {
        while mesh
            .results
            .get(format!("report.{id}"))
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                started.elapsed() < within,
                "plan {id} has no report after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How many final_report events each plan has in MESH_EVENTS.
async fn final_report_counts(mesh: &Mesh) -> std::collections::HashMap<String, usize> {
    let stream = mesh.js.get_stream("MESH_EVENTS").await.unwrap();
    let info = stream
        .info_with_subjects("mesh.evt.final_report.>")
        .await
        .unwrap();
    let mut subjects = info;
    let mut out = std::collections::HashMap::new();
    while let Some(Ok((subject, count))) = subjects.next().await {
        out.insert(subject.rsplit('.').next().unwrap().to_string(), count);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_active_chief_while_100_plans_run() {
    let server = NatsServer::start();
    let url = server.url();
    let mesh = Mesh::connect(config(&url), "test").await.unwrap();
    let stop = CancellationToken::new();
    let _roles = start_roles(&mesh, &stop);
    let chiefs = [chief(&url), chief(&url)];
    wait_ready(&mesh).await;
    let client = server.client().await;

    let first = leader(&mesh).await.expect("a chief leads");
    let pids = role_pids(&client, "chief").await;
    assert_eq!(pids.len(), 2, "two chiefs run: {pids:?}");
    let victim = pids[&first.holder];

    let ids: Vec<String> = (0..100).map(|i| format!("fo{i}")).collect();
    for id in &ids {
        let r = submit(&client, &plan(id)).await;
        assert_eq!(r["status"], "accepted", "{r}");
    }
    let killed_at = Instant::now();
    chiefs
        .iter()
        .find(|p| p.pid() == victim)
        .unwrap()
        .signal(SIGKILL);

    let (second, _) = new_leader(&mesh, &first.holder, Duration::from_millis(TTL_MS + 1000)).await;
    let failover = killed_at.elapsed();
    assert!(
        failover <= Duration::from_millis(TTL_MS + 1000),
        "failover took {failover:?}"
    );
    assert!(second.term > first.term, "the term grows");
    eprintln!("failover after kill -9: {failover:?}");

    wait_reports(&mesh, &ids, Duration::from_secs(30)).await;
    let counts = final_report_counts(&mesh).await;
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "plan {id}: final reports {:?}",
            counts.get(id)
        );
    }
    // The new leader takes new plans, under its own term.
    let r = submit(&client, &plan("after-failover")).await;
    assert_eq!(r["status"], "accepted", "{r}");
    let rec: PlanRecord = mesh
        .get_json(&mesh.plans, "plan.after-failover")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.term, rec.accepted_by.as_deref()),
        (Some(second.term), Some(second.holder.as_str()))
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_a_plan_stored_but_never_announced() {
    let server = NatsServer::start();
    let mesh = Mesh::connect(config(&server.url()), "test").await.unwrap();
    let stop = CancellationToken::new();
    let mut roles = start_roles(&mesh, &stop);
    jetmesh_shared::service::wait_for_roles(
        &mesh.client,
        &[
            jetmesh_shared::Role::Planner,
            jetmesh_shared::Role::Router,
            jetmesh_shared::Role::Aggregator,
            jetmesh_shared::Role::Summary,
            jetmesh_shared::Role::Worker,
        ],
        &[mesh.names.run_all()],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    // As if a chief stored the plan and died before publishing plan_ready
    // (while the router was already running, so its start-up recovery cannot see it).
    let record: PlanRecord = PlanRecord {
        v: 1,
        plan: serde_json::from_value(plan("orphan")).unwrap(),
        status: PlanStatus::Running,
        created_at: jiff::Timestamp::now(),
        finished_at: None,
        accepted_by: Some("chief-dead".into()),
        term: Some(1),
        llm: Vec::new(),
        trace: None,
    };
    mesh.plans
        .create("plan.orphan", codec::to_json(&record).unwrap())
        .await
        .unwrap();
    // The mesh has seen the record (the aggregator counts it), and nothing
    // runs it: no plan_ready was published, so the router has not queued it.
    let seen = Instant::now();
    while mesh.results.get("plan.orphan").await.unwrap().is_none() {
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "the aggregator counts the plan"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        mesh.scan(&mesh.results, "task.orphan.*")
            .await
            .unwrap()
            .is_empty(),
        "nothing runs it yet"
    );
    let queued = mesh
        .js
        .get_stream("MESH_QUEUES")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(queued, 0, "nothing is queued for it");

    roles.spawn(jetmesh_chief::run(mesh.clone(), stop.clone()));
    wait_reports(&mesh, &["orphan".to_string()], Duration::from_secs(15)).await;
    // And the new leader closes it.
    let started = Instant::now();
    loop {
        let rec: PlanRecord = mesh
            .get_json(&mesh.plans, "plan.orphan")
            .await
            .unwrap()
            .unwrap();
        if rec.status == PlanStatus::Reported {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never marked reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    while let Some(r) = roles.join_next().await {
        r.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_write_after_losing_its_lease() {
    let server = NatsServer::start();
    let url = server.url();
    let mesh = Mesh::connect(config(&url), "test").await.unwrap();
    let stop = CancellationToken::new();
    let _roles = start_roles(&mesh, &stop);
    let chiefs = [chief(&url), chief(&url)];
    wait_ready(&mesh).await;
    let client = server.client().await;
    let first = leader(&mesh).await.expect("a chief leads");
    let pids = role_pids(&client, "chief").await;
    let paused = chiefs
        .iter()
        .find(|p| p.pid() == pids[&first.holder])
        .unwrap();

    paused.signal(SIGSTOP);
    let (second, took) =
        new_leader(&mesh, &first.holder, Duration::from_millis(TTL_MS + 1000)).await;
    eprintln!("failover after SIGSTOP: {took:?}");
    // Past the TTL by a margin, then wake the old leader up and keep submitting:
    // requests that reach it must be refused, never stored under its term.
    tokio::time::sleep(Duration::from_millis(500)).await;
    paused.signal(SIGCONT);
    let mut accepted = Vec::new();
    for i in 0..40 {
        let id = format!("p{i}");
        let r = submit(&client, &plan(&id)).await;
        match r["status"].as_str() {
            Some("accepted") => accepted.push(id),
            _ => assert_eq!(r["error"]["code"], "unavailable", "{r}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!accepted.is_empty());
    let entries = mesh.scan(&mesh.plans, "plan.*").await.unwrap();
    assert_eq!(
        entries.len(),
        accepted.len(),
        "only accepted plans are stored"
    );
    for e in entries {
        let rec: PlanRecord = codec::from_json(&e.value).unwrap();
        assert_eq!(
            rec.term,
            Some(second.term),
            "plan {} stored under term {:?}",
            rec.plan.plan_id,
            rec.term
        );
        assert_eq!(rec.accepted_by.as_deref(), Some(second.holder.as_str()));
    }
    // The old leader stepped down: every submit now reaches the new leader.
    for i in 0..20 {
        let id = format!("q{i}");
        let r = submit(&client, &plan(&id)).await;
        assert_eq!(r["status"], "accepted", "{r}");
        accepted.push(id);
    }
    wait_reports(&mesh, &accepted, Duration::from_secs(20)).await;
    stop.cancel();
}
