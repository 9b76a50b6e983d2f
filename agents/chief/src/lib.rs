//! The chief role: the front of the mesh. It answers
//! - `mesh.plans.submit`: announce the request (`task_available`), have the
//!   planner turn it into a valid plan (from its goal, with an LLM, when it
//!   has no subtasks), store it in `mesh_plans`, announce `plan_ready`, and
//!   reply `accepted` — or, with `"wait": true`, the final report; with
//!   `"dry_run": true`, only the plan, with nothing announced or stored;
//! - `mesh.plans.get.<plan_id>`: the plan's status with every task's result;
//!
//! and it follows `final_report` events to close each plan's lifecycle.
//!
//! It is also the orchestrator of epics ([`epic`]) and serves agent mail and
//! file reservations to any client ([`mailbox`]).

pub mod epic;
pub mod mailbox;

use async_nats::jetstream::kv;
use async_nats::service::Request;
use futures::StreamExt;
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::consume::{self, Durable, Outcome};
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::lease::Lease;
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::supervise::Tasks;
use jetmesh_shared::wire::{
    self, DryRunReply, LlmUsage, Plan, PlanCounts, PlanReady, PlanRecord, PlanStatus, PlanView,
    PlannerReply, PlannerRequest, Report, SubmitReply, SubmitRequest, TaskAvailable, TaskResult,
};
use jetmesh_shared::{Error, ErrorCode, Mesh, Role, ids, service, telemetry};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Runs the chief until `shutdown`. Any number of chiefs may run: they all
/// answer `mesh.plans.get`, and the one holding the `chief` lease takes
/// plans and closes them. The others stand by and take over when the lease
/// expires or is released.
///
/// Every chief stays in the `mesh.plans.submit` queue group for its whole
/// life, so that membership never changes under a request in flight (the
/// client library's unsubscribe can drop a message already on its way). A
/// chief that does not lead relays what it receives to the leader's own
/// subject `mesh.chief.<instance>.submit` and passes the answer back.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Chief);
    let mut tasks = Tasks::new(&shutdown);
    let stop = tasks.stop().clone();
    let svc = service::start(&mesh, "jetmesh chief").await?;
    let mut get = svc
        .endpoint(mesh.names.plans_get_all())
        .await
        .map_err(|e| Error::unavailable("cannot serve mesh.plans.get", e))?;
    let lease = Lease::campaign(&mesh, Role::Chief, stop.clone());
    mesh.publish_health("started").await;
    tracing::info!(instance = %mesh.identity.instance, "The chief is up; it takes plans while it holds the lease.");

    // Both subscriptions before the first campaign round can make us leader.
    let mut public = mesh
        .client
        .queue_subscribe(mesh.names.plans_submit(), "q".to_string())
        .await
        .map_err(|e| Error::unavailable("cannot serve mesh.plans.submit", e))?;
    let mut own = mesh
        .client
        .subscribe(mesh.names.chief_submit(&mesh.identity.instance))
        .await
        .map_err(|e| Error::unavailable("cannot serve mesh.plans.submit", e))?;
    let inflight = TaskTracker::new();
    {
        let (mesh, lease, inflight, stop) =
            (mesh.clone(), lease.clone(), inflight.clone(), stop.clone());
        tasks.spawn("mesh.plans.submit", async move {
            // After shutdown the lease is released at once; keep relaying for
            // a moment so that requests already routed here reach the next
            // leader.
            let after = async {
                stop.cancelled().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            tokio::pin!(after);
            let ended = loop {
                let msg = tokio::select! {
                    _ = &mut after => break Ok(()),
                    m = public.next() => m,
                    m = own.next() => m,
                };
                let Some(msg) = msg else {
                    break Err(Error::new(
                        ErrorCode::Unavailable,
                        "a submit subscription closed",
                    ));
                };
                if lease.is_leader() {
                    inflight.spawn(on_submit(mesh.clone(), lease.clone(), msg));
                } else {
                    inflight.spawn(relay(mesh.clone(), lease.clone(), msg));
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), public.drain()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), own.drain()).await;
            ended
        });
    }
    {
        let (mesh, inflight, stop) = (mesh.clone(), inflight.clone(), stop.clone());
        tasks.spawn("mesh.plans.get", async move {
            loop {
                match stop.run_until_cancelled(get.next()).await {
                    None => return Ok(()),
                    Some(None) => {
                        return Err(Error::new(
                            ErrorCode::Unavailable,
                            "the mesh.plans.get endpoint closed",
                        ));
                    }
                    Some(Some(request)) => {
                        inflight.spawn(on_get(mesh.clone(), request));
                    }
                }
            }
        });
    }
    tasks.spawn(
        "mailbox",
        mailbox::serve(mesh.clone(), &svc, inflight.clone(), stop.clone()).await?,
    );
    {
        let (mesh, lease, stop) = (mesh.clone(), lease.clone(), stop.clone());
        tasks.spawn("leading", async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = lease.acquired() => {}
                }
                lead(&mesh, &lease, &stop).await?;
                if stop.is_cancelled() {
                    return Ok(());
                }
            }
        });
    }
    let result = tasks.join().await;
    // Waiting submitters keep their plans; they are answered or time out.
    inflight.close();
    let _ = tokio::time::timeout(mesh.config.runtime.drain_timeout(), inflight.wait()).await;
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    result
}

/// Serves as the active chief until the lease is lost or shutdown. Its
/// consumers (final reports, epic threads) failing for good stops the chief.
async fn lead(mesh: &Mesh, lease: &Lease, shutdown: &CancellationToken) -> Result<()> {
    let mut tasks = Tasks::new(shutdown);
    let stop = tasks.stop().clone();
    tasks.spawn(
        "final reports",
        follow_reports(mesh.clone(), lease.clone(), stop.clone()),
    );
    tasks.spawn(
        "epic threads",
        epic::orchestrate(mesh.clone(), lease.clone(), stop.clone()),
    );
    resume_plans(mesh, lease).await;
    {
        let (lease, stop) = (lease.clone(), stop.clone());
        tasks.spawn("lease", async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = lease.lost() => if !stop.is_cancelled() {
                    tracing::warn!("The chief lost its lease; it relays plans to the next leader.");
                    stop.cancel();
                },
            }
            Ok(())
        });
    }
    tasks.join().await
}

/// How many times a submit may be relayed between chiefs (the lease can move
/// while a request is on its way).
const MAX_HOPS: u32 = 2;
const HOPS: &str = "Jetmesh-Hops";

/// Passes a submit to the chief that leads and its answer back to the
/// requester. With no leader (or one that does not answer), the requester
/// gets `unavailable` at once, never silence.
async fn relay(mesh: Mesh, lease: Lease, msg: async_nats::Message) {
    let enc = Encoding::from_headers(msg.headers.as_ref()).unwrap_or(Encoding::Json);
    let hops: u32 = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HOPS))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    let refuse = |why: &str| -> Result<()> { Err(Error::new(ErrorCode::Unavailable, why)) };
    let leader = match jetmesh_shared::lease::holder(&mesh, Role::Chief).await {
        Ok(Some(l)) if l.holder != lease.holder() && hops < MAX_HOPS => l.holder,
        Ok(_) | Err(_) => {
            let no = refuse(
                "no chief leads right now (the lease is changing hands); send the request again",
            );
            return service::reply(&mesh.client, &msg, enc, &no).await;
        }
    };
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert(HOPS, (hops + 1).to_string().as_str());
    // A plan with `"wait": true` is answered when its report is out.
    let patience =
        Duration::from_millis(mesh.config.chief.wait_timeout_ms).max(Duration::from_secs(600));
    let answer = mesh
        .client
        .send_request(
            mesh.names.chief_submit(&leader),
            async_nats::Request::new()
                .payload(msg.payload.clone())
                .headers(headers)
                .timeout(Some(patience)),
        )
        .await;
    let Some(reply_to) = msg.reply.clone() else {
        return;
    };
    match answer {
        Ok(answer) => {
            let sent = match answer.headers {
                Some(h) => {
                    mesh.client
                        .publish_with_headers(reply_to, h, answer.payload)
                        .await
                }
                None => mesh.client.publish(reply_to, answer.payload).await,
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "Cannot pass a relayed answer back.");
            }
        }
        Err(e) => {
            tracing::info!(error = %e, leader, "The leading chief did not answer a relayed submit.");
            let no = refuse(
                "the leading chief did not answer (it may have just stopped); send the request again",
            );
            service::reply(&mesh.client, &msg, enc, &no).await
        }
    }
}

/// A new leader carries on every unfinished plan: it announces each one again
/// (the router ignores plans it already follows, and dispatch is de-duplicated),
/// so a plan stored just before the previous chief died still runs.
async fn resume_plans(mesh: &Mesh, lease: &Lease) {
    let entries = match mesh.scan(&mesh.plans, &mesh.names.plan_key_all()).await {
        Ok(e) => e,
        Err(error) => {
            tracing::warn!(%error, "Cannot read unfinished plans.");
            return;
        }
    };
    let mut resumed = 0;
    for entry in entries {
        let Ok(record) = codec::from_json::<PlanRecord>(&entry.value) else {
            continue;
        };
        if record.status != PlanStatus::Running || lease.fence().is_err() {
            continue;
        }
        let ready = PlanReady {
            plan_id: record.plan.plan_id.clone(),
            total_tasks: record.plan.subtasks.len(),
            at: jiff::Timestamp::now(),
        };
        match mesh
            .publish_event(EventKind::PlanReady, &ready.plan_id, &ready)
            .await
        {
            Ok(()) => resumed += 1,
            Err(error) => tracing::warn!(%error, plan_id = %ready.plan_id, "Cannot resume a plan."),
        }
    }
    if resumed > 0 {
        tracing::info!(plans = resumed, "The new leader resumed unfinished plans.");
    }
}

async fn on_submit(mesh: Mesh, lease: Lease, request: async_nats::Message) {
    let enc = Encoding::from_headers(request.headers.as_ref()).unwrap_or(Encoding::Json);
    // The root of the plan's trace, unless the client sent a `traceparent`.
    let span = tracing::info_span!(
        "plan.submit",
        otel.kind = "server",
        plan_id = tracing::field::Empty
    );
    jetmesh_shared::trace::set_parent(&span, request.headers.as_ref());
    let result = submit(&mesh, &lease, &request).instrument(span).await;
    let status = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(telemetry::REQUESTS, "endpoint" => "submit", "status" => status).increment(1);
    match result {
        Ok(Submitted::Accepted(reply)) => {
            service::reply(&mesh.client, &request, enc, &Ok(reply)).await
        }
        Ok(Submitted::Report(report)) => {
            service::reply_json_bytes(&mesh.client, &request, enc, report).await
        }
        Ok(Submitted::DryRun(reply)) => {
            service::reply(&mesh.client, &request, enc, &Ok(reply)).await
        }
        Err((error, plan_id)) => {
            metrics::counter!(telemetry::PLANS_REJECTED, "code" => error.code.to_string())
                .increment(1);
            let mut reply = wire::ErrorReply::new(&error);
            reply.plan_id = plan_id;
            service::reply(&mesh.client, &request, enc, &Ok(reply)).await
        }
    }
}

/// Whether a submit body is text that is neither JSON nor MessagePack: an
/// execution plan in markdown or YAML, which the coordination layer reads.
/// Everything else is a plain request, decoded by the codec.
fn is_text(msg: &async_nats::Message) -> bool {
    match Encoding::from_headers(msg.headers.as_ref()) {
        Ok(Encoding::Msgpack) => false,
        Ok(Encoding::Json) => {
            let named_text = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(codec::CONTENT_TYPE))
                .is_some_and(|c| c.as_str().contains("markdown") || c.as_str().contains("yaml"));
            let first = msg.payload.iter().find(|b| !b.is_ascii_whitespace());
            named_text || first.is_some_and(|b| *b != b'{')
        }
        // An unknown Content-Type may still name markdown or YAML.
        Err(_) => true,
    }
}

enum Submitted {
    Accepted(SubmitReply),
    /// The final report, as the summary published it (JSON).
    Report(bytes::Bytes),
    /// The plan of a dry run.
    DryRun(DryRunReply),
}

type SubmitError = (Error, Option<String>);

async fn submit(
    mesh: &Mesh,
    lease: &Lease,
    msg: &async_nats::Message,
) -> std::result::Result<Submitted, SubmitError> {
    let max = mesh.config.mesh.max_request_bytes;
    let req: SubmitRequest = if is_text(msg) {
        // An execution plan written as markdown or YAML.
        epic::decode_text(msg, max)
    } else {
        codec::decode_message(msg.headers.as_ref(), &msg.payload, max).map(|(r, _)| r)
    }
    .map_err(|e| (e, None))?;
    let mut plan = req.plan;
    let epic_plan = match plan.epic.is_some() {
        true => Some(epic::prepare(&mut plan).map_err(|e| (e, None))?),
        false => None,
    };
    // Nothing to plan: refused before anything is announced or stored (which
    // also makes `{}` a side-effect-free probe that a leader is serving).
    if plan.subtasks.is_empty() && plan.goal.as_deref().is_none_or(|g| g.trim().is_empty()) {
        return Err((
            Error::bad_request("the request has neither \"subtasks\" nor a \"goal\""),
            None,
        ));
    }
    if plan.plan_id.is_empty() {
        plan.plan_id = ids::generate();
    }
    ids::validate("plan id", &plan.plan_id).map_err(|e| (e, None))?;
    let plan_id = plan.plan_id.clone();
    tracing::Span::current().record("plan_id", plan_id.as_str());
    let fail = |e: Error| (e, Some(plan_id.clone()));

    let announced = TaskAvailable {
        plan_id: plan_id.clone(),
        goal: plan.goal.clone(),
        subtasks: plan.subtasks.len(),
        at: jiff::Timestamp::now(),
    };
    let planning = async {
        if !plan.subtasks.is_empty() {
            jetmesh_shared::plan::normalize(&mut plan, mesh.config.mesh.max_subtasks)?;
        }
        ask_planner(mesh, &plan, req.dry_run).await
    };
    if req.dry_run {
        let reply = planning.await.map_err(fail)?;
        let plan = reply.plan.unwrap_or(plan);
        return Ok(Submitted::DryRun(DryRunReply {
            plan_id,
            status: "planned".into(),
            plan,
            llm: LlmUsage::of(reply.llm),
        }));
    }
    // Announced while the plan is normalized (ids, defaults; so an explicit
    // plan is one the planner only has to confirm) and checked by the planner.
    let (announced, planned) = tokio::join!(
        mesh.publish_event(EventKind::TaskAvailable, &plan_id, &announced),
        planning
    );
    announced.map_err(fail)?;
    let planned = planned.map_err(fail)?;
    let plan = planned.plan.unwrap_or(plan);
    let total = plan.subtasks.len();
    let record = PlanRecord {
        v: wire::PROTOCOL_VERSION,
        plan,
        status: PlanStatus::Running,
        created_at: jiff::Timestamp::now(),
        finished_at: None,
        accepted_by: Some(lease.holder().to_string()),
        // Fenced: only the lease holder stores plans.
        term: Some(lease.fence().map_err(fail)?),
        llm: planned.llm,
        trace: jetmesh_shared::trace::traceparent(),
    };
    match mesh
        .plans
        .create(
            mesh.names.plan_key(&plan_id),
            codec::to_json(&record).map_err(fail)?,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            return Err(fail(Error::new(
                ErrorCode::DuplicatePlan,
                format!(
                    "plan id {plan_id} is already in use; leave plan_id out to get a fresh one"
                ),
            )));
        }
        Err(e) => return Err(fail(Error::unavailable("cannot store the plan", e))),
    }
    let counts = PlanCounts {
        plan_id: plan_id.clone(),
        total_tasks: total,
        completed: 0,
        failed: 0,
        pending: total,
        status: PlanStatus::Running,
        updated_at: Some(jiff::Timestamp::now()),
    };
    mesh.results
        .put(
            mesh.names.plan_key(&plan_id),
            codec::to_json(&counts).map_err(fail)?,
        )
        .await
        .context("cannot write plan counts")
        .map_err(fail)?;
    if let Some(e) = &epic_plan {
        epic::start(mesh, e).await.map_err(fail)?;
    }

    // Subscribe before announcing, so a fast plan's report cannot slip by.
    let mut report_sub = if req.wait {
        Some(
            mesh.client
                .subscribe(mesh.names.event(EventKind::FinalReport, &plan_id))
                .await
                .context("cannot subscribe to the report")
                .map_err(fail)?,
        )
    } else {
        None
    };
    let ready = PlanReady {
        plan_id: plan_id.clone(),
        total_tasks: total,
        at: jiff::Timestamp::now(),
    };
    lease.fence().map_err(fail)?;
    mesh.publish_event(EventKind::PlanReady, &plan_id, &ready)
        .await
        .map_err(fail)?;
    metrics::counter!(telemetry::PLANS_ACCEPTED).increment(1);
    tracing::info!(plan_id = %plan_id, tasks = total, wait = req.wait, "A plan was accepted.");

    let Some(sub) = report_sub.as_mut() else {
        return Ok(Submitted::Accepted(SubmitReply {
            plan_id,
            status: "accepted".into(),
            total_tasks: total,
        }));
    };
    let wait = Duration::from_millis(
        req.wait_timeout_ms
            .unwrap_or(mesh.config.chief.wait_timeout_ms),
    );
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Some(msg)) => Ok(Submitted::Report(msg.payload)),
        Ok(None) => Err(fail(Error::new(
            ErrorCode::Unavailable,
            "the report subscription closed",
        ))),
        Err(_) => Err(fail(Error::new(
            ErrorCode::Timeout,
            format!(
                "the plan is still running after {} ms; follow it with {}",
                wait.as_millis(),
                mesh.names.plans_get(&plan_id)
            ),
        ))),
    }
}

/// Asks the planner for a valid plan. Internal traffic, so MessagePack: a plan
/// of thousands of subtasks crosses twice. The reply's plan is `None` when
/// the plan is valid as sent.
async fn ask_planner(mesh: &Mesh, plan: &Plan, dry_run: bool) -> Result<PlannerReply> {
    let enc = Encoding::Msgpack;
    let body = enc.encode(&PlannerRequest { plan, dry_run })?;
    // A goal takes as long as its LLM calls may, and a little more.
    let timeout = if plan.subtasks.is_empty() {
        Duration::from_millis(mesh.config.planner.timeout_ms + 5_000)
    } else {
        Duration::from_millis(mesh.config.chief.planner_timeout_ms)
    };
    let mut headers = enc.headers().unwrap_or_default();
    jetmesh_shared::trace::inject(&mut headers);
    let request = async_nats::Request::new()
        .payload(body)
        .headers(headers)
        .timeout(Some(timeout));
    let reply = mesh
        .client
        .send_request(mesh.names.planner_plan(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                Error::new(ErrorCode::Unavailable, "no planner is running")
            }
            async_nats::RequestErrorKind::TimedOut => {
                Error::new(ErrorCode::Timeout, "the planner did not answer in time")
            }
            _ => Error::unavailable("cannot reach the planner", e),
        })?;
    let enc = Encoding::from_headers(reply.headers.as_ref())?;
    wire::decode_reply(enc, &reply.payload)
}

async fn on_get(mesh: Mesh, request: Request) {
    let enc = service::request_encoding(&request).unwrap_or(Encoding::Json);
    let plan_id = names::last_token(&request.message.subject).to_string();
    let result = plan_view(&mesh, &plan_id).await;
    service::respond(&request, enc, &result).await;
}

/// The status of a plan (or of a single task's plan of one).
pub async fn plan_view(mesh: &Mesh, plan_id: &str) -> Result<PlanView> {
    ids::validate("plan id", plan_id)?;
    let record: Option<PlanRecord> = mesh
        .get_json(&mesh.plans, &mesh.names.plan_key(plan_id))
        .await?;
    let entries = mesh
        .scan(&mesh.results, &mesh.names.task_key_plan(plan_id))
        .await?;
    // Every stored result read as a result object (`bad_result` when a
    // worker stored junk), so counts always add up.
    let mut results: HashMap<String, TaskResult> = entries
        .iter()
        .filter_map(|e| {
            let (_, task) = names::parse_task_key(&e.key)?;
            Some((task.to_string(), jetmesh_shared::results::read(&e.value)))
        })
        .collect();
    let view = |r: &TaskResult| serde_json::to_value(r).unwrap_or(Value::Null);
    let Some(record) = record else {
        if results.is_empty() {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no plan or task has id {plan_id}"),
            ));
        }
        let completed = results.values().filter(|r| r.is_success()).count();
        let mut tasks: Vec<(&String, &TaskResult)> = results.iter().collect();
        tasks.sort_by_key(|(id, _)| *id);
        return Ok(PlanView {
            plan_id: plan_id.to_string(),
            status: PlanStatus::Completed,
            total_tasks: results.len(),
            completed,
            failed: results.len() - completed,
            pending: 0,
            tasks: tasks
                .into_iter()
                .map(|(id, r)| (id.clone(), view(r)))
                .collect(),
            goal: None,
            llm: None,
            report: None,
        });
    };
    // Only the plan's own tasks count; a result under another id is not one.
    let (mut completed, mut failed) = (0, 0);
    let mut tasks = Map::new();
    for t in &record.plan.subtasks {
        let v = match results.remove(&t.id) {
            Some(r) => {
                if r.is_success() {
                    completed += 1;
                } else {
                    failed += 1;
                }
                view(&r)
            }
            None => json!({"status": "pending"}),
        };
        tasks.insert(t.id.clone(), v);
    }
    let total = record.plan.subtasks.len();
    let pending = total - completed - failed;
    let report: Option<Report> = mesh
        .get_json(&mesh.results, &mesh.names.report_key(plan_id))
        .await?;
    let status = match (record.status, pending) {
        (PlanStatus::Running, 0) => PlanStatus::Completed,
        (s, _) => s,
    };
    Ok(PlanView {
        plan_id: plan_id.to_string(),
        status: if report.is_some() {
            PlanStatus::Reported
        } else {
            status
        },
        total_tasks: total,
        completed,
        failed,
        pending,
        tasks,
        goal: record.plan.goal.clone(),
        // The report's figures include the narrative's calls.
        llm: report
            .as_ref()
            .and_then(|r| r.llm.clone())
            .or_else(|| LlmUsage::of(record.llm.clone())),
        report,
    })
}

/// Marks plans `reported` in `mesh_plans` as their final reports come out
/// (durable consumer `chief_reports`).
async fn follow_reports(mesh: Mesh, lease: Lease, stop: CancellationToken) -> Result<()> {
    let durable = Durable::events(
        &mesh,
        mesh.names.chief_reports_consumer(),
        EventKind::FinalReport,
    );
    let m = mesh.clone();
    let s = stop.clone();
    consume::durable(&mesh, durable, 16, &stop, move |msg| {
        let (mesh, lease, stop) = (m.clone(), lease.clone(), s.clone());
        async move {
            let plan_id = names::last_token(&msg.subject).to_string();
            let closed = match close_plan(&mesh, &lease, &plan_id).await {
                Ok(()) => epic::finish(&mesh, &lease, &plan_id).await,
                Err(e) => Err(e),
            };
            match closed {
                Ok(()) => Outcome::Ack,
                Err(error) => {
                    // At shutdown the lease is already given up: the next
                    // leader marks it, which is no news.
                    if stop.is_cancelled() {
                        tracing::debug!(%error, plan_id, "A plan is left for the next leader to mark reported.");
                    } else {
                        tracing::warn!(%error, plan_id, "Cannot mark a plan reported; it will be retried.");
                    }
                    Outcome::Retry(Duration::from_secs(1))
                }
            }
        }
    })
    .await
}

async fn close_plan(mesh: &Mesh, lease: &Lease, plan_id: &str) -> Result<()> {
    let key = mesh.names.plan_key(plan_id);
    let Some(entry) = mesh.plans.entry(&key).await.context("cannot read plan")? else {
        return Ok(());
    };
    // Only the status changes: the plan itself is carried over unparsed.
    let mut record: PlanRecord<Box<serde_json::value::RawValue>> = codec::from_json(&entry.value)?;
    if record.status == PlanStatus::Reported {
        return Ok(());
    }
    record.status = PlanStatus::Reported;
    record.finished_at = Some(jiff::Timestamp::now());
    lease.fence()?;
    mesh.plans
        .update(&key, codec::to_json(&record)?, entry.revision)
        .await
        .context("cannot update plan")?;
    Ok(())
}
