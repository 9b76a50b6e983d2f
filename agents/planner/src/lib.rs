//! The planner role: the service endpoint `mesh.planner.plan` (queue group, so
//! planners scale out). It turns a request into a valid plan: an explicit plan
//! is normalized (ids, defaults) and validated — shape, dependencies, cycles,
//! and every capability and action against the live registry. A goal with no
//! subtasks is planned by the LLM providers of `[planner]` ([`goal`]); with
//! none configured the answer is a clear `no_planner_provider` error. A new
//! plan is also refused when a capability it needs has no live worker
//! (`no_workers`) or every pool serving it is past its backlog limit
//! (`overloaded`, with `retry_after_ms`); a dry run skips that check.
//!
//! Goals are planned in tasks of their own (at most `planner.max_concurrent`
//! at once), so a slow provider never holds up explicit plans or other goals.

pub mod goal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetmesh_llm::{Ledger, Llm};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::error::Result;
use jetmesh_shared::pools::{self, PoolView};
use jetmesh_shared::registry::Registry;
use jetmesh_shared::wire::{Plan, PlannerReply, PlannerRequest};
use jetmesh_shared::{Error, ErrorCode, Mesh, plan, service, telemetry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Runs the planner until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Planner);
    let instance = mesh.identity.instance.clone();
    let llm = Llm::from_config(
        &mesh.config.planner,
        Some((mesh.plans.clone(), mesh.names.clone())),
    )?;
    let registry = Registry::follow(mesh.clone(), shutdown.clone()).await?;
    let view = PoolView::follow(mesh.clone(), shutdown.clone()).await?;
    let svc = service::start(&mesh, "jetmesh planner").await?;
    let mut endpoint = svc
        .endpoint(mesh.names.planner_plan())
        .await
        .map_err(|e| Error::unavailable("cannot serve the planner endpoint", e))?;
    let planner = Planner {
        mesh: mesh.clone(),
        registry,
        view,
        llm,
        goals: Arc::new(tokio::sync::Semaphore::new(
            mesh.config.planner.max_concurrent,
        )),
    };
    let goals = TaskTracker::new();
    mesh.publish_health("started").await;
    match &planner.llm {
        Some(llm) => {
            tracing::info!(instance = %instance, providers = ?llm.order(), "The planner is planning, goals too.")
        }
        None => {
            tracing::info!(instance = %instance, "The planner is planning (no LLM provider: goals get no_planner_provider).")
        }
    }
    let result = loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = endpoint.next() => r,
        };
        let Some(request) = request else {
            // Not asked to stop: the endpoint is gone, and a planner that
            // cannot plan must not look alive.
            break Err(Error::new(
                ErrorCode::Unavailable,
                "the planner endpoint closed",
            ));
        };
        let enc = service::request_encoding(&request).unwrap_or(Encoding::Json);
        let req = decode(&mesh, &request);
        match req {
            Ok(req) if planner.llm.is_some() && is_goal(&req.plan) => {
                let planner = planner.clone();
                // A child of the chief's `plan.submit`; the model calls are
                // its children.
                let span = tracing::info_span!(
                    "plan.goal",
                    otel.kind = "server",
                    plan_id = %req.plan.plan_id,
                    dry_run = req.dry_run
                );
                jetmesh_shared::trace::set_parent(&span, request.message.headers.as_ref());
                goals.spawn(
                    async move {
                        let result = planner.goal(req).await;
                        answer(&request, enc, &result).await;
                    }
                    .instrument(span),
                );
            }
            Ok(req) => {
                let result = planner.explicit(req).await;
                answer(&request, enc, &result).await;
            }
            Err(e) => answer(&request, enc, &Err(e)).await,
        }
    };
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    goals.close();
    if tokio::time::timeout(mesh.config.runtime.drain_timeout(), goals.wait())
        .await
        .is_err()
    {
        tracing::warn!("Goals were still being planned when the drain timeout passed.");
    }
    result
}

fn decode(mesh: &Mesh, request: &async_nats::service::Request) -> Result<PlannerRequest> {
    // From a chief: a plan it took from a client, wrapped in one more
    // level, so the limits of messages between roles apply.
    let payload = &request.message.payload;
    codec::check_size(payload.len(), mesh.config.mesh.max_request_bytes * 2)?;
    codec::Encoding::from_headers(request.message.headers.as_ref())?.decode(payload)
}

async fn answer(
    request: &async_nats::service::Request,
    enc: Encoding,
    result: &Result<PlannerReply>,
) {
    let status = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(telemetry::REQUESTS, "endpoint" => "planner", "status" => status)
        .increment(1);
    service::respond(request, enc, result).await;
}

/// A request to plan from a goal alone.
fn is_goal(plan: &Plan) -> bool {
    plan.subtasks.is_empty() && plan.goal.as_deref().is_some_and(|g| !g.trim().is_empty())
}

#[derive(Clone)]
struct Planner {
    mesh: Mesh,
    registry: Registry,
    view: PoolView,
    llm: Option<Llm>,
    goals: Arc<tokio::sync::Semaphore>,
}

impl Planner {
    async fn explicit(&self, req: PlannerRequest) -> Result<PlannerReply> {
        // An explicit plan with every id given comes out of normalizing
        // unchanged: say it is valid rather than send it back.
        let as_sent = !req.plan.subtasks.is_empty()
            && !req.plan.plan_id.is_empty()
            && req.plan.subtasks.iter().all(|t| !t.id.is_empty());
        let (plan, ordered) = make_plan(&self.mesh, &self.registry, req.plan).await?;
        if !req.dry_run {
            admit(&self.registry, &self.view, &plan).await?;
        }
        Ok(PlannerReply {
            plan: (!as_sent || ordered).then_some(plan),
            llm: Vec::new(),
        })
    }

    async fn goal(&self, req: PlannerRequest) -> Result<PlannerReply> {
        let llm = self.llm.as_ref().expect("goals are planned with an LLM");
        // One deadline from the request's arrival, as the chief waits.
        let deadline = Instant::now() + Duration::from_millis(self.mesh.config.planner.timeout_ms);
        let _permit = tokio::time::timeout_at(deadline.into(), self.goals.acquire())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::Overloaded,
                    "the planner is planning as many goals as planner.max_concurrent allows",
                )
                .retry_after(1000)
            })?
            .expect("the semaphore is never closed");
        let mut ledger = Ledger::new(self.mesh.config.planner.budget_per_plan_usd, Vec::new());
        let planned = goal::plan_goal(
            &self.mesh,
            &self.registry,
            llm,
            req.plan,
            &mut ledger,
            deadline,
        )
        .await;
        let admitted = match planned {
            Ok(plan) if !req.dry_run => admit(&self.registry, &self.view, &plan)
                .await
                .map(|()| plan),
            other => other,
        };
        match admitted {
            Ok(plan) => Ok(PlannerReply {
                plan: Some(plan),
                llm: ledger.calls,
            }),
            // The calls a failed goal made (and paid for) are in its error.
            Err(mut e) => {
                let calls = serde_json::to_value(&ledger.calls).unwrap_or_default();
                let mut details = e
                    .details
                    .take()
                    .map_or_else(|| serde_json::json!({}), |d| *d);
                if let Some(d) = details.as_object_mut() {
                    d.insert("llm".into(), calls);
                }
                Err(e.with_details(details))
            }
        }
    }
}

/// Normalizes and validates `plan`, or plans its goal; says whether it
/// added dependencies to order sessions ([`plan::order_sessions`]).
pub async fn make_plan(mesh: &Mesh, registry: &Registry, mut plan: Plan) -> Result<(Plan, bool)> {
    if plan.subtasks.is_empty() {
        return match &plan.goal {
            Some(goal) if !goal.trim().is_empty() => Err(Error::new(
                ErrorCode::NoPlannerProvider,
                "this request has a goal but no subtasks, and no LLM planner provider is \
                 configured; send explicit \"subtasks\" instead",
            )),
            _ => Err(Error::bad_request(
                "the request has neither \"subtasks\" nor a \"goal\"",
            )),
        };
    }
    let (problems, ordered) = validate(mesh, registry, &mut plan).await?;
    match problems.into_iter().next() {
        Some(e) => Err(e),
        None => Ok((plan, ordered)),
    }
}

/// Every check of a plan, explicit or made from a goal: it is normalized
/// (ids, defaults, dependencies, cycles), and each task's capability,
/// action and parameters are checked against the registry; then the tasks
/// of each session (a browser page) are chained to run in turn. Returns
/// the problems in task order (empty: valid) and whether dependencies were
/// added; `Err` only when the registry cannot be read.
pub async fn validate(
    mesh: &Mesh,
    registry: &Registry,
    plan: &mut Plan,
) -> Result<(Vec<Error>, bool)> {
    if let Err(e) = plan::normalize(plan, mesh.config.mesh.max_subtasks) {
        return Ok((vec![e], false));
    }
    let mut problems = Vec::new();
    // Resolve each capability once (the view, or the bucket on a miss).
    let mut known = std::collections::HashMap::new();
    for task in &plan.subtasks {
        if known.contains_key(&task.capability) {
            continue;
        }
        match registry.resolve(&task.capability).await {
            Ok(Some(entry)) => {
                known.insert(task.capability.clone(), entry);
            }
            Ok(None) => {}
            Err(e) if e.code == ErrorCode::BadRegistration => problems.push(e),
            Err(e) => return Err(e),
        }
    }
    let lookup = |c: &str| known.get(c).map(|e| &**e);
    for task in &plan.subtasks {
        match plan::check_one(&task.id, &task.capability, &task.action, lookup) {
            Ok(entry) => {
                if !jetmesh_shared::refs::has_refs(&task.params, &task.depends_on)
                    && let Err(e) = entry.check_params(&task.id, &task.action, &task.params)
                {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Ok((problems, false));
    }
    // Tasks of one session (a browser page) run one at a time, in order.
    match plan::order_sessions(plan, |c| known.get(c).is_some_and(|e| e.sessions)) {
        Ok(added) => Ok((problems, added > 0)),
        Err(e) => Ok((vec![e], false)),
    }
}

/// Backpressure for a new plan: every capability it uses needs a live pool
/// that takes work (`no_workers`, `overloaded` with a retry hint otherwise).
pub async fn admit(registry: &Registry, view: &PoolView, plan: &Plan) -> Result<()> {
    let caps: std::collections::BTreeSet<&str> = plan
        .subtasks
        .iter()
        .map(|t| t.capability.as_str())
        .collect();
    for cap in caps {
        let candidates = registry.candidates(cap).await?;
        pools::admit(view, cap, &candidates).await?;
    }
    Ok(())
}
