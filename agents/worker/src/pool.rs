//! The pool runtime. One process serves one pool with `workers` concurrent
//! slots, all pulling from the pool's durable consumer `pool_<pool>` (competing
//! consumers: start more processes to scale out), asking only for the tasks it
//! can start soon ([`crate::pull`]). For each task it executes the
//! capability action, writes the result to `mesh_results` with a KV create (the
//! first terminal result of a task wins), then acks. Retryable failures nak with
//! a backoff; permanent ones are recorded and acked. On shutdown it stops pulling,
//! hands back what was still arriving, and finishes what it runs.

use crate::liveness::{self, Slot, Slots};
use crate::pull::Puller;
use crate::sessions::Sessions;
use async_nats::jetstream::{AckKind, Message};
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::capability::{self, Call, Capability, Catalog};
use jetmesh_shared::codec::Encoding;
use jetmesh_shared::consume::{self, Outcome, Source};
use jetmesh_shared::error::{Error, ErrorCode, Result};
use jetmesh_shared::results::{self, Recorded};
use jetmesh_shared::wire::{DeadLetter, TaskMessage, TaskResult};
use jetmesh_shared::{Mesh, dlq, ids, registry, service, telemetry, trace};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A running pool: its name, capabilities and identity.
struct Pool {
    mesh: Mesh,
    name: String,
    instance: String,
    caps: Vec<Arc<dyn Capability>>,
    /// The sessions held here, when a capability keeps them.
    sessions: Option<Arc<Sessions>>,
    ack_wait: Duration,
    max_deliver: u32,
    /// A moving average of how long tasks run here, in µs (`u64::MAX`: none
    /// ran yet).
    task_us: AtomicU64,
}

/// Tasks shorter than this on average are prefetched ([`Pool::prefetch`]).
const SHORT_TASK: Duration = Duration::from_millis(10);
/// Short tasks held beyond the free slots, per slot. Against 1 (and against
/// async-nats' pull stream, which kept up to 1.5 × slots asked), 3 gave
/// +3–5 % plan tasks/s and 1–2 ms less server CPU per 1 000 tasks in two sets
/// of 10–12 interleaved bench runs (docs/BENCHMARKS.md).
const PREFETCH: usize = 3;

/// Runs the pool `pool` (as configured under `[pools.<pool>]`) until
/// `shutdown`, with its capabilities from `catalog`. `workers` overrides the
/// configured slot count.
pub async fn run(
    mesh: Mesh,
    pool: &str,
    workers: Option<usize>,
    catalog: &dyn Catalog,
    shutdown: CancellationToken,
) -> Result<()> {
    ids::validate("pool", pool)?;
    let mesh = mesh.as_worker(pool);
    let config = mesh.config.pool(pool).clone();
    let workers = workers.unwrap_or(config.workers).max(1);
    let instance = mesh.identity.instance.clone();
    let mut caps = Vec::new();
    for name in mesh.config.pool_capabilities(pool) {
        if let Some(why) = catalog.unavailable(&mesh.config, &name) {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!("pool {pool}: capability {name} cannot run here: {why}"),
            ));
        }
        let cap = catalog.build(&name, &mesh, &instance).ok_or_else(|| {
            Error::bad_request(format!(
                "pool {pool}: there is no built-in capability {name:?} (built in: {}); \
                 a foreign worker can serve it instead",
                catalog.names().join(", ")
            ))
        })?;
        caps.push(cap);
    }
    // Created here if absent, with the documented config.
    mesh.pool_consumer(pool).await?;
    for cap in &caps {
        registry::register(&mesh, &capability::entry(&**cap, pool, config.encoding)?).await?;
    }
    let sessions = match caps.iter().any(|c| c.sessions()) {
        true => Some(Sessions::start(mesh.clone(), pool, shutdown.child_token()).await?),
        false => None,
    };
    let svc = service::start(&mesh, &format!("jetmesh worker pool {pool}")).await?;
    mesh.publish_health("started").await;
    tracing::info!(pool, instance = %instance, workers, "The pool is taking tasks.");

    let pool = Arc::new(Pool {
        mesh: mesh.clone(),
        name: pool.to_string(),
        instance: instance.clone(),
        caps,
        sessions,
        ack_wait: Duration::from_secs(config.ack_wait_secs),
        max_deliver: u32::try_from(config.max_deliver).unwrap_or(u32::MAX).max(1),
        task_us: AtomicU64::new(u64::MAX),
    });
    let slots = Slots::new(workers);
    // Heartbeats go on while the pool drains: a draining worker is alive.
    let beating = CancellationToken::new();
    let heart = liveness::heartbeat(
        mesh.clone(),
        pool.name.clone(),
        instance.clone(),
        slots.clone(),
        beating.clone(),
    );
    liveness::follow_scale(
        mesh.clone(),
        pool.name.clone(),
        instance.clone(),
        slots.clone(),
        shutdown.clone(),
    )
    .await?;
    // The pool's consumer, pulled on credit ([`crate::pull`]): a refused
    // pull request (the consumer deleted, a limit) or a lost subscription
    // opens it again, the consumer created again if it is gone.
    let consumer_name = mesh.names.pool_consumer(&pool.name);
    let open = || {
        let (mesh, pool, slots) = (mesh.clone(), pool.clone(), slots.clone());
        async move {
            let consumer = mesh.pool_consumer(&pool.name).await?;
            let puller = Puller::open(&mesh, consumer, pool.ack_wait).await?;
            Ok(Credit {
                puller,
                slots,
                pool,
            })
        }
    };
    let p = pool.clone();
    let consumed = consume::run(
        &mesh,
        &consumer_name,
        consume::Options::new(&mesh, "pool"),
        open,
        &shutdown,
        move |msg| {
            let pool = p.clone();
            async move { pool.handle(msg).await }
        },
    )
    .await;
    beating.cancel();
    let _ = heart.await;
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    tracing::info!(pool = %pool.name, "The pool stopped.");
    consumed
}

/// The pool's [`Source`]: its consumer pulled on credit, each task handed
/// out with the slot it runs in.
struct Credit {
    puller: Puller,
    slots: Arc<Slots>,
    pool: Arc<Pool>,
}

impl Source for Credit {
    type Permit = Slot;

    async fn next(&mut self) -> Result<(Message, Slot)> {
        let prefetch = self.pool.prefetch(&self.slots);
        let (msg, mut slot) = self.puller.next(&self.slots, prefetch).await?;
        slot.begin();
        Ok((msg, slot))
    }

    /// Hands back what was held or still arrives, so another worker takes
    /// it now rather than after the ack wait.
    async fn close(self) {
        let handed_back = self.puller.close().await;
        if handed_back > 0 {
            tracing::info!(pool = %self.pool.name, handed_back, "Tasks held here were handed back.");
        }
    }
}

/// When a retryable failure is tried again: 1 s after the first attempt,
/// doubling to 32 s (JetStream holds the task meanwhile).
const TASK_RETRY: Policy = Policy {
    min: Duration::from_secs(1),
    max: Duration::from_secs(32),
    attempts: None,
};

impl Pool {
    /// How many tasks to hold beyond the free slots: [`PREFETCH`] per slot
    /// while tasks are short (held ones then wait some ms, and throughput
    /// needs tasks in hand as slots free), none otherwise (what waits stays in
    /// the queue for other workers).
    fn prefetch(&self, slots: &Slots) -> usize {
        if self.task_us.load(Ordering::Relaxed) <= SHORT_TASK.as_micros() as u64 {
            slots.count() * PREFETCH
        } else {
            0
        }
    }

    /// Folds a task's run time into the average (weight 1/8).
    fn ran(&self, took: Duration) {
        let took = took.as_micros().min(u64::MAX as u128 / 2) as u64;
        let _ = self
            .task_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == u64::MAX {
                    took
                } else {
                    avg - avg / 8 + took / 8
                })
            });
    }

    async fn handle(&self, msg: Message) -> Outcome {
        let delivered = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let enc = match Encoding::from_headers(msg.headers.as_ref()) {
            Ok(enc) => enc,
            Err(error) => return Box::pin(self.poison(&msg, None, &error)).await,
        };
        let task: TaskMessage = match enc.decode(&msg.payload) {
            Ok(t) => t,
            Err(error) => {
                // Salvage the ids, if readable, so the task's plan still completes.
                let value = enc.decode::<Value>(&msg.payload).ok();
                let error =
                    Error::bad_request(format!("malformed task message: {}", error.message));
                return Box::pin(self.poison(&msg, value.as_ref(), &error)).await;
            }
        };
        if let Err(error) = ids::validate("plan id", &task.plan_id)
            .and_then(|_| ids::validate("task id", &task.task.id))
        {
            return Box::pin(self.poison(&msg, None, &error)).await;
        }
        let attempt = delivered.max(task.attempt);
        // A child of the router's `task.dispatch` when the message carries
        // its trace context; the action runs inside it.
        let span = tracing::info_span!(
            parent: None,
            "task.execute",
            plan_id = %task.plan_id,
            task_id = %task.task.id,
            capability = %task.task.capability,
            action = %task.task.action,
            attempt = i64::from(attempt),
            pool = %self.name,
            otel.kind = "consumer",
            otel.status_description = tracing::field::Empty,
        );
        trace::set_parent(&span, msg.headers.as_ref());
        self.run_task(&msg, &task, attempt).instrument(span).await
    }

    /// Runs a decoded task and records its result (or gives it back for a
    /// retry), inside its `task.execute` span.
    async fn run_task(&self, msg: &Message, task: &TaskMessage, attempt: u32) -> Outcome {
        let started = Instant::now();
        let outcome = self.execute(msg, task).await;
        let elapsed = started.elapsed();
        self.ran(elapsed);
        if let Err(e) = &outcome
            && trace::enabled()
        {
            tracing::Span::current().record("otel.status_description", e.to_string());
        }

        let retries = task.task.retries.unwrap_or(0);
        let past_deadline = task.deadline.is_some_and(|d| d <= jiff::Timestamp::now());
        if let Err(e) = &outcome
            && e.code.is_retryable()
            && !past_deadline
            && attempt <= retries
            && attempt < self.max_deliver
        {
            let delay = TASK_RETRY.nth(attempt);
            tracing::info!(plan_id = %task.plan_id, task_id = %task.task.id, attempt, error = %e, ?delay, "The task failed and will be retried.");
            return Outcome::Retry(delay);
        }
        let status = if outcome.is_ok() { "success" } else { "error" };
        metrics::counter!(telemetry::TASKS_EXECUTED, "pool" => self.name.clone(), "capability" => task.task.capability.clone(), "status" => status).increment(1);
        metrics::histogram!(telemetry::TASK_DURATION, "pool" => self.name.clone())
            .record(elapsed.as_secs_f64());
        let mut result = match &outcome {
            Ok(output) => TaskResult::success(output.clone()),
            Err(e) => TaskResult::failure(e),
        }
        .for_task(&task.plan_id, &task.task.id);
        result.duration_ms = elapsed.as_millis() as u64;
        result.worker = Some(self.instance.clone());
        result.attempt = attempt;
        if let Err(error) = &outcome {
            tracing::debug!(plan_id = %task.plan_id, task_id = %task.task.id, %error, "The task failed.");
        }
        self.record(&task.plan_id, &task.task.id, &result).await
    }

    /// Executes the action, bounded by the task's timeout, with in-progress acks
    /// while it runs so JetStream does not hand it to another worker.
    async fn execute(&self, msg: &Message, task: &TaskMessage) -> Result<Value> {
        let t = &task.task;
        let cap = self
            .caps
            .iter()
            .find(|c| c.name() == t.capability)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::UnknownCapability,
                    format!(
                        "pool {} does not serve capability {:?}",
                        self.name, t.capability
                    ),
                )
            })?;
        if !cap.has_action(&t.action) {
            let names: Vec<&str> = cap.actions().iter().map(|a| a.name).collect();
            return Err(Error::new(
                ErrorCode::UnknownAction,
                format!(
                    "capability {} has no action {:?} (it has: {})",
                    cap.name(),
                    t.action,
                    names.join(", ")
                ),
            ));
        }
        // Bounded by the task's timeout and by its plan's deadline.
        let until_deadline = match task.deadline {
            Some(d) => match jiff::Timestamp::now().duration_until(d).try_into() {
                Ok(left) if left > Duration::ZERO => Some(left),
                _ => {
                    return Err(Error::new(
                        ErrorCode::Timeout,
                        "the plan's deadline passed before this task started",
                    ));
                }
            },
            None => None,
        };
        let limit = match (t.timeout_ms.map(Duration::from_millis), until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let call = Call {
            action: &t.action,
            params: &t.params,
            plan_id: &task.plan_id,
            task_id: &t.id,
            session: t.session.as_deref().unwrap_or(&task.plan_id),
        };
        let work = match (&self.sessions, cap.sessions()) {
            // Run where the session lives ([`crate::sessions`]).
            (Some(sessions), true) => Box::pin(sessions.execute(cap, call, task, limit)),
            _ => cap.execute(call),
        };
        let keepalive = async {
            let mut tick = tokio::time::interval(self.ack_wait / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        };
        let bounded = async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Timeout,
                        match t.timeout_ms {
                            Some(ms) if Duration::from_millis(ms) == limit => {
                                format!("the task ran longer than its timeout_ms ({ms} ms)")
                            }
                            _ => "the plan's deadline passed while the task ran".to_string(),
                        },
                    ))
                }),
                None => work.await,
            }
        };
        tokio::select! {
            r = bounded => r,
            _ = keepalive => unreachable!("keepalive never ends"),
        }
    }

    /// Records the result ([`results::record`]: the first terminal result
    /// wins), then acks; a result that could not be stored gives the task
    /// back to JetStream.
    async fn record(&self, plan_id: &str, task_id: &str, result: &TaskResult) -> Outcome {
        match results::record(&self.mesh, plan_id, task_id, result).await {
            Ok(Recorded::Stored) => Outcome::Ack,
            Ok(Recorded::Duplicate) => {
                tracing::debug!(
                    plan_id,
                    task_id,
                    "A result was already recorded; this one is ignored."
                );
                Outcome::Ack
            }
            Err(error) => {
                tracing::warn!(%error, plan_id, task_id, "Cannot record a result; the task will be redelivered.");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    /// A message that can never run (it cannot be decoded): dead-letter it
    /// with the reason, mark its task failed when its ids are readable (so its
    /// plan still completes), and take it off the queue.
    async fn poison(&self, msg: &Message, value: Option<&Value>, error: &Error) -> Outcome {
        metrics::counter!(telemetry::TASKS_REJECTED, "pool" => self.name.clone(), "code" => error.code.to_string()).increment(1);
        let ids = value.and_then(|v| {
            let plan = v.get("plan_id")?.as_str()?;
            let task = v.get("id")?.as_str()?;
            (ids::is_valid(plan) && ids::is_valid(task))
                .then(|| (plan.to_string(), task.to_string()))
        });
        let attempts = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        let letter = DeadLetter {
            reason: "undecodable".into(),
            detail: error.message.clone(),
            pool: self.name.clone(),
            subject: msg.subject.to_string(),
            attempts,
            plan_id: ids.as_ref().map(|(p, _)| p.clone()),
            task_id: ids.as_ref().map(|(_, t)| t.clone()),
        };
        let content_type = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(jetmesh_shared::codec::CONTENT_TYPE))
            .map(|v| v.as_str().to_string());
        let seq = msg.info().map(|i| i.stream_sequence).ok();
        let stored = dlq::send(
            &self.mesh,
            &letter,
            msg.payload.clone(),
            content_type.as_deref(),
            seq.map(|s| self.mesh.names.dlq_msg_id(s)),
        )
        .await
        .and(match &ids {
            Some((plan, task)) => {
                dlq::fail_task(&self.mesh, plan, task, attempts, &error.message).await
            }
            None => Ok(()),
        });
        match stored {
            // In the dead-letter queue now: off the work queue.
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot dead-letter a task; it will be redelivered.");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }
}
