//! The router role. It follows the capability registry, and
//! - answers `mesh.run.<cap>.<action>`: queues the task and replies with its result;
//! - takes `mesh.tasks.<cap>.<action>` (stream `MESH_INTAKE`) and queues each task;
//! - takes `plan_ready` events, queues every task whose dependencies are done,
//!   and releases dependents as results arrive in `mesh_results`.
//!
//! Its plan state is rebuilt from `mesh_plans` and `mesh_results` at start, and
//! dispatch is de-duplicated by JetStream, so routers can restart or run side by side.

pub mod dispatch;
pub mod gate;
pub mod pick;
pub mod plans;

use async_nats::jetstream::kv;
use async_nats::service::Request;
use dispatch::Dispatcher;
use futures::StreamExt;
use gate::Gate;
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::consume::{self, Durable, Outcome};
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::pools::PoolView;
use jetmesh_shared::registry::Registry;
use jetmesh_shared::supervise::Tasks;
use jetmesh_shared::wire::{
    ErrorBody, PlanReady, PlanRecord, PlanStatus, RouterHeartbeat, SingleTask, Subtask, TaskResult,
};
use jetmesh_shared::{Error, ErrorCode, Mesh, ids, results, service, telemetry, trace};
use pick::Picker;
use plans::{Action, PlanRun};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How `mesh.run` reads again a result it was told about but cannot read
/// yet: 1 ms doubling to 100 ms, for 2 s at most.
const STORED: Policy = Policy {
    min: Duration::from_millis(1),
    max: Duration::from_millis(100),
    attempts: None,
};

#[derive(Clone)]
struct Router {
    mesh: Mesh,
    dispatcher: Dispatcher,
    /// Plans being dispatched, each with the token that stops its result follower.
    plans: Arc<Mutex<HashMap<String, (PlanRun, CancellationToken)>>>,
    /// Dispatches under way, drained at shutdown.
    dispatching: TaskTracker,
    shutdown: CancellationToken,
}

/// Runs the router until `shutdown`, or until one of its loops fails for
/// good (then the error says which, and no loop keeps serving alone).
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Router);
    let mut tasks = Tasks::new(&shutdown);
    let stop = tasks.stop().clone();
    let registry = Registry::follow(mesh.clone(), stop.clone()).await?;
    let view = PoolView::follow(mesh.clone(), stop.clone()).await?;
    let gate = Gate::new(mesh.clone());
    let router = Router {
        dispatcher: Dispatcher {
            mesh: mesh.clone(),
            picker: Picker::new(mesh.clone(), registry, view, gate.clone()),
            stop: stop.clone(),
        },
        mesh: mesh.clone(),
        plans: Arc::default(),
        dispatching: TaskTracker::new(),
        shutdown: stop.clone(),
    };
    router.recover().await?;

    let svc = service::start(&mesh, "jetmesh router").await?;
    let run_endpoint = svc
        .endpoint(mesh.names.run_all())
        .await
        .map_err(|e| Error::unavailable("cannot serve mesh.run", e))?;
    let r = router.clone();
    tasks.spawn("mesh.run", async move { r.run_loop(run_endpoint).await });
    let r = router.clone();
    tasks.spawn("intake", async move { r.intake_loop().await });
    let r = router.clone();
    tasks.spawn("plans", async move { r.plans_loop().await });
    let r = router.clone();
    tasks.spawn("dead letters", async move { r.dead_letter_loop().await });
    tasks.spawn("heartbeat", heartbeat(mesh.clone(), gate, stop.clone()));
    mesh.publish_health("started").await;
    tracing::info!(instance = %mesh.identity.instance, "The router is routing.");
    let result = tasks.join().await;
    router.dispatching.close();
    let _ = tokio::time::timeout(
        mesh.config.runtime.drain_timeout(),
        router.dispatching.wait(),
    )
    .await;
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    result
}

/// Writes `router.<instance>` in `mesh_health` every `health.heartbeat_ms`
/// with the tasks held per pool (the autoscaler counts them into each pool's
/// backlog); deletes it on stop.
async fn heartbeat(mesh: Mesh, gate: Gate, shutdown: CancellationToken) -> Result<()> {
    let instance = mesh.identity.instance.clone();
    {
        let key = mesh.names.router_health_key(&instance);
        let mut tick = tokio::time::interval(Duration::from_millis(
            mesh.config.health.heartbeat_ms.max(50),
        ));
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            let beat = RouterHeartbeat {
                instance: instance.clone(),
                held: gate.held(),
                at: jiff::Timestamp::now(),
            };
            if let Ok(body) = codec::to_json(&beat)
                && let Err(error) = mesh.health.put(&key, body).await
            {
                tracing::debug!(%error, "Cannot write the router heartbeat.");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), mesh.health.delete(&key)).await;
    }
    Ok(())
}

impl Router {
    // ----- plans -----

    async fn recover(&self) -> Result<()> {
        let entries = self
            .mesh
            .scan(&self.mesh.plans, &self.mesh.names.plan_key_all())
            .await?;
        let mut recovered = 0;
        for entry in entries {
            let Ok(record) = codec::from_json::<PlanRecord>(&entry.value) else {
                continue;
            };
            if record.status == PlanStatus::Running {
                let recorded = self.recorded(&record.plan.plan_id).await?;
                self.track(record, recorded).await?;
                recovered += 1;
            }
        }
        if recovered > 0 {
            tracing::info!(plans = recovered, "The router resumed unfinished plans.");
        }
        Ok(())
    }

    /// The results already stored for a plan.
    async fn recorded(&self, plan_id: &str) -> Result<Vec<kv::Entry>> {
        self.mesh
            .scan(&self.mesh.results, &self.mesh.names.task_key_plan(plan_id))
            .await
    }

    /// Starts tracking a plan and dispatches what is ready. The results
    /// already `recorded` are applied first (after a restart, a redelivery,
    /// or a plan announced again), so finished tasks do not run again.
    async fn track(&self, record: PlanRecord, recorded: Vec<kv::Entry>) -> Result<()> {
        let plan_id = record.plan.plan_id.clone();
        if self
            .plans
            .lock()
            .expect("plans lock")
            .contains_key(&plan_id)
        {
            return Ok(());
        }
        let deadline = jetmesh_shared::plan::deadline(record.created_at, record.plan.deadline_ms);
        let trace = record.trace;
        let mut run = PlanRun::new(Arc::new(record.plan));
        run.deadline = deadline;
        run.trace = trace.clone();
        let mut stored = Vec::new();
        for e in &recorded {
            if let Some((_, task)) = names::parse_task_key(&e.key) {
                stored.push((task.to_string(), results::read(&e.value).error));
            }
        }
        // Tasks with a result must not be dispatched again: apply results
        // before `start`, then drop dispatches for tasks already done.
        let done_ids: std::collections::HashSet<&str> =
            stored.iter().map(|(t, _)| t.as_str()).collect();
        let mut actions = Vec::new();
        for (task, failure) in &stored {
            actions.extend(run.on_result(task, failure.as_ref()));
        }
        actions.extend(run.start());
        actions.retain(|a| match a {
            Action::Dispatch(t) => !done_ids.contains(t.id.as_str()),
            Action::Fail { task_id, .. } => !done_ids.contains(task_id.as_str()),
        });
        if !run.has_waiting() {
            // Everything is dispatched (or done): no dependents to release, so
            // there is nothing to follow.
            self.perform(&plan_id, deadline, trace.as_deref(), actions);
            return Ok(());
        }
        metrics::gauge!(telemetry::PLANS_TRACKED).increment(1.0);
        let stop = self.shutdown.child_token();
        self.plans
            .lock()
            .expect("plans lock")
            .insert(plan_id.clone(), (run, stop.clone()));
        let this = self.clone();
        let id = plan_id.clone();
        let followed = self
            .mesh
            .follow_plan_results(&plan_id, stop.clone(), move |task, value| {
                let failure = (!results::succeeded(value)).then(|| results::read(value).error);
                this.on_result(&id, task, failure.flatten().as_ref())
            })
            .await;
        if let Err(e) = followed {
            // Not followed, not tracked: the plan_ready event comes again.
            stop.cancel();
            self.plans.lock().expect("plans lock").remove(&plan_id);
            metrics::gauge!(telemetry::PLANS_TRACKED).decrement(1.0);
            return Err(e);
        }
        self.perform(&plan_id, deadline, trace.as_deref(), actions);
        Ok(())
    }

    /// Dispatches or fails the tasks `actions` name, in the background: one
    /// plan's dispatches (and their retries) never hold up another plan.
    /// They are one `plan.dispatch` span, a child of the plan's stored trace
    /// context `trace` (each release of dependents is another).
    fn perform(
        &self,
        plan_id: &str,
        deadline: Option<jiff::Timestamp>,
        trace: Option<&str>,
        actions: Vec<Action>,
    ) {
        if actions.is_empty() {
            return;
        }
        let span = tracing::info_span!(
            parent: None,
            "plan.dispatch",
            plan_id,
            tasks = actions.len() as i64
        );
        trace::set_parent_from(&span, trace);
        let (dispatcher, plan_id) = (self.dispatcher.clone(), plan_id.to_string());
        // Unbounded here: JetStream's in-flight limit bounds the publishes, and
        // the queue window holds what is beyond it, highest priority first.
        self.dispatching.spawn(
            async move {
                let (dispatcher, plan_id) = (&dispatcher, plan_id.as_str());
                futures::stream::iter(actions)
                    .for_each_concurrent(None, |action| async move {
                        match action {
                            Action::Dispatch(task) => {
                                dispatcher.dispatch(plan_id, &task, deadline).await
                            }
                            Action::Fail { task_id, error } => {
                                dispatcher.record_failure(plan_id, &task_id, &error).await
                            }
                        }
                    })
                    .await;
            }
            .instrument(span),
        );
    }

    /// Takes `plan_ready` events (durable consumer `router_plans`). Plans
    /// are started concurrently; each is acked once it is tracked and its
    /// first dispatches are under way.
    async fn plans_loop(&self) -> Result<()> {
        let durable = Durable::events(
            &self.mesh,
            self.mesh.names.router_plans_consumer(),
            EventKind::PlanReady,
        );
        let this = self.clone();
        consume::durable(&self.mesh, durable, 64, &self.shutdown, move |msg| {
            let this = this.clone();
            async move {
                let event = match codec::from_json::<PlanReady>(&msg.payload) {
                    Ok(e) => e,
                    Err(error) => {
                        tracing::error!(%error, subject = %msg.subject, "A plan_ready event cannot be read; skipped.");
                        return Outcome::Terminate(error.to_string());
                    }
                };
                match this.on_plan_ready(&event.plan_id).await {
                    Ok(()) => Outcome::Ack,
                    Err(error) => {
                        tracing::warn!(%error, plan_id = %event.plan_id, "A plan could not be started; it will be retried.");
                        Outcome::Retry(Duration::from_secs(1))
                    }
                }
            }
        })
        .await
    }

    async fn on_plan_ready(&self, plan_id: &str) -> Result<()> {
        // Always catch up from stored results: a plan announced again (a new
        // chief resuming it, possibly past the de-duplication window) must not
        // run its finished tasks again. Both reads go out at once; a result
        // stored after the scan reaches the plan's result watch.
        let key = self.mesh.names.plan_key(plan_id);
        let (record, recorded) = tokio::join!(
            self.mesh.get_json::<PlanRecord>(&self.mesh.plans, &key),
            self.recorded(plan_id)
        );
        match record? {
            Some(r) if r.status == PlanStatus::Running => self.track(r, recorded?).await,
            Some(_) => Ok(()),
            None => {
                tracing::warn!(
                    plan_id,
                    "A plan_ready event names a plan that is not stored; skipped."
                );
                Ok(())
            }
        }
    }

    /// A result of a tracked plan arrived: release or fail its dependents.
    fn on_result(&self, plan_id: &str, task_id: &str, failure: Option<&ErrorBody>) {
        let actions = {
            let mut plans = self.plans.lock().expect("plans lock");
            let Some((run, stop)) = plans.get_mut(plan_id) else {
                return;
            };
            let actions = (
                run.on_result(task_id, failure),
                run.deadline,
                // Only read when traces are exported.
                trace::enabled().then(|| run.trace.clone()).flatten(),
            );
            if !run.has_waiting() {
                stop.cancel();
                plans.remove(plan_id);
                metrics::gauge!(telemetry::PLANS_TRACKED).decrement(1.0);
            }
            actions
        };
        let (actions, deadline, trace) = actions;
        self.perform(plan_id, deadline, trace.as_deref(), actions);
    }

    // ----- dead letters -----

    /// Turns max-deliveries advisories of the queue stream into dead letters:
    /// the message goes to `MESH_DLQ`, its task is marked failed, and it leaves
    /// the queue.
    async fn dead_letter_loop(&self) -> Result<()> {
        let durable = Durable::new(
            &self.mesh,
            self.mesh.names.events_stream(),
            self.mesh.names.router_dlq_consumer(),
            self.mesh.names.max_deliveries_advisories(),
        );
        let queues = self
            .mesh
            .js
            .get_stream_no_info(self.mesh.names.queues_stream())
            .await
            .context("cannot open the queue stream")?;
        let this = self.clone();
        consume::durable(&self.mesh, durable, 16, &self.shutdown, move |msg| {
            let (this, queues) = (this.clone(), queues.clone());
            async move {
                match this.on_max_deliveries(&queues, &msg.payload).await {
                    Ok(()) => Outcome::Ack,
                    Err(error) => {
                        tracing::warn!(%error, "Cannot dead-letter a task; it will be retried.");
                        Outcome::Retry(Duration::from_secs(1))
                    }
                }
            }
        })
        .await
    }

    async fn on_max_deliveries(
        &self,
        queues: &async_nats::jetstream::stream::Stream<()>,
        advisory: &[u8],
    ) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            consumer: String,
            stream_seq: u64,
            #[serde(default)]
            deliveries: u64,
        }
        let Ok(a) = codec::from_json::<Advisory>(advisory) else {
            return Ok(()); // not ours to understand; nothing to do
        };
        let Ok(msg) = queues.get_raw_message(a.stream_seq).await else {
            return Ok(()); // acked or removed since: nothing is stuck
        };
        let pool = self
            .mesh
            .names
            .pool_of_consumer(&a.consumer)
            .unwrap_or(&a.consumer)
            .to_string();
        let ids = jetmesh_shared::dlq::task_ids(Some(&msg.headers), &msg.payload);
        let letter = jetmesh_shared::wire::DeadLetter {
            reason: "max_deliveries".into(),
            detail: format!(
                "delivered {} times to pool {pool} without a result",
                a.deliveries
            ),
            pool,
            subject: msg.subject.to_string(),
            attempts: a.deliveries,
            plan_id: ids.as_ref().map(|(p, _)| p.clone()),
            task_id: ids.as_ref().map(|(_, t)| t.clone()),
        };
        let content_type = msg
            .headers
            .get(jetmesh_shared::codec::CONTENT_TYPE)
            .map(|v| v.as_str().to_string());
        jetmesh_shared::dlq::send(
            &self.mesh,
            &letter,
            msg.payload.clone(),
            content_type.as_deref(),
            Some(self.mesh.names.dlq_msg_id(a.stream_seq)),
        )
        .await?;
        if let Some((plan, task)) = &ids {
            jetmesh_shared::dlq::fail_task(&self.mesh, plan, task, a.deliveries, &letter.detail)
                .await?;
        }
        queues
            .delete_message(a.stream_seq)
            .await
            .context("cannot remove the dead-lettered task from its queue")?;
        Ok(())
    }

    // ----- single tasks: mesh.tasks (durable) -----

    async fn intake_loop(&self) -> Result<()> {
        let durable = Durable::new(
            &self.mesh,
            self.mesh.names.intake_stream(),
            self.mesh.names.router_intake_consumer(),
            String::new(),
        );
        let limit = self.mesh.config.router.max_inflight.max(1);
        let this = self.clone();
        consume::durable(&self.mesh, durable, limit, &self.shutdown, move |msg| {
            let this = this.clone();
            async move { this.on_intake(msg).await }
        })
        .await
    }

    async fn on_intake(&self, msg: async_nats::jetstream::Message) -> Outcome {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let fallback = format!("tasks-{seq}");
        let parsed = self.parse_single(&msg.subject, msg.headers.as_ref(), &msg.payload, &fallback);
        let outcome = match &parsed {
            Ok((plan_id, task)) => match self.dispatcher.send(plan_id, task, None, true).await {
                Ok(ack) => ack.await.context("task not stored").map(|_| ()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.clone()),
        };
        match outcome {
            Ok(()) => Outcome::Ack,
            // Refused for load: the error (with its retry hint) is the result.
            Err(e) if e.code.is_retryable() && e.code != ErrorCode::Overloaded => {
                tracing::warn!(error = %e, "A submitted task could not be queued; retrying.");
                Outcome::Retry(Duration::from_secs(1))
            }
            Err(e) => {
                metrics::counter!(telemetry::TASKS_REJECTED, "code" => e.code.to_string())
                    .increment(1);
                let (plan_id, task_id) = match &parsed {
                    Ok((p, t)) => (p.clone(), t.id.clone()),
                    Err(_) => (fallback.clone(), fallback.clone()),
                };
                tracing::info!(plan_id = %plan_id, task_id = %task_id, error = %e, "A submitted task was refused; its error is its result.");
                let result = TaskResult::failure(&e).for_task(&plan_id, &task_id);
                match Box::pin(results::record(&self.mesh, &plan_id, &task_id, &result)).await {
                    Ok(_) => Outcome::Ack,
                    // Not recorded: take it again in a moment.
                    Err(_) => Outcome::Retry(Duration::from_secs(1)),
                }
            }
        }
    }

    /// Reads a single-task body. Ids: `plan_id` defaults to `id`, which
    /// defaults to `fallback`; the result lands at `task.<plan_id>.<id>`.
    fn parse_single(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
        fallback: &str,
    ) -> Result<(String, Subtask)> {
        let (cap, action) = self.mesh.names.cap_action_of(subject).ok_or_else(|| {
            Error::bad_request(format!(
                "subject {subject:?} must be {}.run.<capability>.<action>",
                self.mesh.names.prefix()
            ))
        })?;
        ids::validate("capability", cap)?;
        ids::validate("action", action)?;
        codec::check_size(payload.len(), self.mesh.config.mesh.max_request_bytes)?;
        let enc = Encoding::from_headers(headers)?;
        let body: SingleTask = if payload.iter().all(u8::is_ascii_whitespace) {
            SingleTask::default()
        } else {
            // Decoded straight from the body, in its own encoding: a detour
            // through JSON values would turn a MessagePack NaN into null.
            if !enc.is_map(payload) {
                return Err(Error::bad_request(
                    "the body must be an object of the task's parameters, like {\"args\":[1,2,3]}",
                ));
            }
            enc.decode_body(payload)
                .map_err(|e| Error::new(e.code, format!("invalid task: {}", e.message)))?
        };
        jetmesh_shared::wire::check_params(&body.params)?;
        let id = body
            .id
            .clone()
            .unwrap_or_else(|| body.plan_id.clone().unwrap_or_else(|| fallback.to_string()));
        let plan_id = body.plan_id.clone().unwrap_or_else(|| id.clone());
        ids::validate("plan id", &plan_id)?;
        ids::validate("task id", &id)?;
        if let Some(session) = &body.session {
            ids::validate("session", session)?;
        }
        if body.timeout_ms == Some(0) {
            return Err(Error::bad_request("timeout_ms must be greater than 0"));
        }
        Ok((
            plan_id,
            Subtask {
                id,
                capability: cap.to_string(),
                action: action.to_string(),
                depends_on: Vec::new(),
                priority: body.priority,
                timeout_ms: body.timeout_ms,
                retries: body.retries,
                session: body.session,
                params: body.params,
            },
        ))
    }

    // ----- single tasks: mesh.run (request/reply) -----

    async fn run_loop(&self, mut endpoint: async_nats::service::endpoint::Endpoint) -> Result<()> {
        let inflight = TaskTracker::new();
        let ended = loop {
            let request = tokio::select! {
                _ = self.shutdown.cancelled() => break Ok(()),
                r = endpoint.next() => r,
            };
            let Some(request) = request else {
                break Err(Error::new(
                    ErrorCode::Unavailable,
                    "the mesh.run endpoint closed",
                ));
            };
            let this = self.clone();
            inflight.spawn(async move { this.on_run(request).await });
        };
        inflight.close();
        let _ =
            tokio::time::timeout(self.mesh.config.runtime.drain_timeout(), inflight.wait()).await;
        ended
    }

    async fn on_run(&self, request: Request) {
        let started = Instant::now();
        let enc = service::request_encoding(&request).unwrap_or(Encoding::Json);
        let result = self.run_one(&request).await;
        let status = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(telemetry::REQUESTS, "endpoint" => "run", "status" => status)
            .increment(1);
        metrics::histogram!(telemetry::RUN_LATENCY).record(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => service::respond(&request, enc, &Ok(r)).await,
            Err((e, ids)) => {
                let mut reply = jetmesh_shared::wire::ErrorReply::new(&e);
                if let Some((p, t)) = ids {
                    reply.plan_id = Some(p);
                    reply.task_id = Some(t);
                }
                service::respond(&request, enc, &Ok(reply)).await
            }
        }
    }

    async fn run_one(
        &self,
        request: &Request,
    ) -> std::result::Result<TaskResult, (Error, Option<(String, String)>)> {
        let msg = &request.message;
        let fallback = ids::generate();
        let (plan_id, task) = self
            .parse_single(&msg.subject, msg.headers.as_ref(), &msg.payload, &fallback)
            .map_err(|e| (e, None))?;
        let with_ids = |e: Error| (e, Some((plan_id.clone(), task.id.clone())));
        let key = self.mesh.names.task_key(&plan_id, &task.id);
        let mut sub = self
            .mesh
            .client
            .subscribe(self.mesh.names.kv_subject(&self.mesh.results.name, &key))
            .await
            .context("cannot subscribe for the result")
            .map_err(with_ids)?;
        let ack = self
            .dispatcher
            .send(&plan_id, &task, None, true)
            .await
            .map_err(with_ids)?
            .await
            .context("task not stored")
            .map_err(with_ids)?;
        if ack.duplicate {
            // Same ids inside the de-duplication window: answer with the result
            // already recorded, or wait for the one under way.
            if let Ok(Some(existing)) = results::get(&self.mesh, &plan_id, &task.id).await {
                return Ok(existing.for_task(&plan_id, &task.id));
            }
        }
        let wait = Duration::from_millis(
            task.timeout_ms
                .unwrap_or(self.mesh.config.router.run_timeout_ms),
        );
        // Allow for queueing on top of the task's own timeout.
        let wait = wait + Duration::from_millis(500);
        // The notification may be a write JetStream refused (a later duplicate
        // of a recorded result): the answer is what the bucket holds.
        tokio::time::timeout(wait, sub.next())
            .await
            .map_err(|_| {
                with_ids(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "no result within {} ms; the task stays queued and its result will be at {key} in {}",
                        wait.as_millis(),
                        self.mesh.results.name
                    ),
                ))
            })?
            .ok_or_else(|| with_ids(Error::new(ErrorCode::Unavailable, "the result subscription closed")))?;
        let _ = sub.unsubscribe().await;
        // Core subscribers see a write as it is published, which can be a
        // moment before JetStream has stored it: read until it is there.
        let mut delays = STORED.delays();
        let stored_by = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(result) = results::get(&self.mesh, &plan_id, &task.id)
                .await
                .map_err(with_ids)?
            {
                return Ok(result.for_task(&plan_id, &task.id));
            }
            if Instant::now() > stored_by {
                return Err(with_ids(Error::internal(
                    "a result was announced but is not stored",
                )));
            }
            tokio::time::sleep(delays.next_or_max(&STORED)).await;
        }
    }
}
