//! The planner role: the service endpoint `mesh.planner.plan` (queue group, so
//! planners scale out). It turns a request into a valid plan: an explicit plan
//! is normalized (ids, defaults) and validated — shape, dependencies, cycles,
//! and every capability and action against the live registry. A goal with no
//! subtasks needs an LLM provider; until one is configured the answer is a clear
//! `no_planner_provider` error. A new plan is also refused when a capability
//! it needs has no live worker (`no_workers`) or every pool serving it is
//! past its backlog limit (`overloaded`, with `retry_after_ms`).

use futures::StreamExt;
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::error::Result;
use jetmesh_shared::pools::{self, PoolView};
use jetmesh_shared::registry::Registry;
use jetmesh_shared::wire::{Plan, PlannerReply, PlannerRequest};
use jetmesh_shared::{Error, ErrorCode, Mesh, plan, service, telemetry};
use tokio_util::sync::CancellationToken;

/// Runs the planner until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Planner);
    let instance = mesh.identity.instance.clone();
    let registry = Registry::follow(mesh.clone(), shutdown.clone()).await?;
    let view = PoolView::follow(mesh.clone(), shutdown.clone()).await?;
    let svc = service::start(&mesh, "jetmesh planner").await?;
    let mut endpoint = svc
        .endpoint(mesh.names.planner_plan())
        .await
        .map_err(|e| Error::unavailable("cannot serve the planner endpoint", e))?;
    mesh.publish_health("started").await;
    tracing::info!(instance = %instance, "The planner is planning.");
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = endpoint.next() => r,
        };
        let Some(request) = request else {
            // Not asked to stop: the endpoint is gone, and a planner that
            // cannot plan must not look alive.
            return Err(Error::new(
                ErrorCode::Unavailable,
                "the planner endpoint closed",
            ));
        };
        let enc = service::request_encoding(&request).unwrap_or(Encoding::Json);
        let result = async {
            // From a chief: a plan it took from a client, wrapped in one
            // more level, so the limits of messages between roles apply.
            let payload = &request.message.payload;
            codec::check_size(payload.len(), mesh.config.mesh.max_request_bytes * 2)?;
            let req: PlannerRequest =
                codec::Encoding::from_headers(request.message.headers.as_ref())?.decode(payload)?;
            // An explicit plan with every id given comes out of normalizing
            // unchanged: say it is valid rather than send it back.
            let as_sent = !req.plan.subtasks.is_empty()
                && !req.plan.plan_id.is_empty()
                && req.plan.subtasks.iter().all(|t| !t.id.is_empty());
            let (plan, ordered) = make_plan(&mesh, &registry, req.plan).await?;
            admit(&registry, &view, &plan).await?;
            Ok(PlannerReply {
                plan: (!as_sent || ordered).then_some(plan),
            })
        }
        .await;
        let status = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(telemetry::REQUESTS, "endpoint" => "planner", "status" => status)
            .increment(1);
        service::respond(&request, enc, &result).await;
    }
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    Ok(())
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
    plan::normalize(&mut plan, mesh.config.mesh.max_subtasks)?;
    // Resolve each capability once (the view, or the bucket on a miss).
    let mut known = std::collections::HashMap::new();
    for task in &plan.subtasks {
        if !known.contains_key(&task.capability)
            && let Some(entry) = registry.resolve(&task.capability).await?
        {
            known.insert(task.capability.clone(), entry);
        }
    }
    plan::check_capabilities(&plan, |c| known.get(c).map(|e| &**e))?;
    // Tasks of one session (a browser page) run one at a time, in order.
    let ordered = plan::order_sessions(&mut plan, |c| known.get(c).is_some_and(|e| e.sessions))?;
    Ok((plan, ordered > 0))
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
