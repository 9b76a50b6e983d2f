//! Putting one ready task on its pool's queue: pick the pool ([`crate::pick`]),
//! wait for room in its queue window ([`crate::gate`]), encode the task
//! message the way the pool asked for, and publish it to
//! `mesh.queue.<pool>.<priority>` with `Nats-Msg-Id = <plan>.<task>` so that a
//! task dispatched twice (retry, restart, two routers) is stored once.
//!
//! Each publish is a `task.dispatch` span (a child of the plan's
//! `plan.dispatch`, or a root for a single task) whose trace context goes in
//! the task message's headers, so the worker's `task.execute` is its child.

use crate::pick::Picker;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::wire::{Subtask, TaskMessageRef, TaskResult};
use jetmesh_shared::{Error, ErrorCode, Mesh, refs, results, telemetry, trace};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Clone)]
pub struct Dispatcher {
    pub mesh: Mesh,
    pub picker: Picker,
    /// The router's shutdown: retries end with it.
    pub stop: CancellationToken,
}

impl Dispatcher {
    /// Publishes the task; the returned future resolves when JetStream stored it.
    /// `fresh` is new work, which may be refused.
    /// Errors: `unknown_capability`, `unknown_action`, `no_workers` and
    /// `overloaded` (fresh work only), `unavailable`.
    pub async fn send(
        &self,
        plan_id: &str,
        task: &Subtask,
        deadline: Option<jiff::Timestamp>,
        fresh: bool,
    ) -> Result<PublishAckFuture> {
        let span = tracing::info_span!(
            "task.dispatch",
            plan_id,
            task_id = %task.id,
            capability = %task.capability,
            action = %task.action,
            pool = tracing::field::Empty,
            otel.kind = "producer",
        );
        self.publish(plan_id, task, deadline, fresh)
            .instrument(span)
            .await
    }

    /// [`Dispatcher::send`] inside its span.
    async fn publish(
        &self,
        plan_id: &str,
        task: &Subtask,
        deadline: Option<jiff::Timestamp>,
        fresh: bool,
    ) -> Result<PublishAckFuture> {
        let (entry, reserved) = self.picker.pick(task, fresh).await?;
        if trace::enabled() {
            tracing::Span::current().record("pool", entry.pool.as_str());
        }
        self.picker
            .gate
            .admit(&entry.pool, task.priority, reserved)
            .await;
        let message = TaskMessageRef {
            plan_id,
            task,
            attempt: 1,
            deadline,
        };
        let mut headers = entry.encoding.headers().unwrap_or_default();
        trace::inject(&mut headers);
        let publish = PublishMessage::build()
            .payload(entry.encoding.encode(&message)?)
            .headers(headers)
            .message_id(self.mesh.names.dispatch_msg_id(plan_id, &task.id));
        let ack = self
            .mesh
            .js
            .send_publish(self.mesh.names.queue(&entry.pool, task.priority), publish)
            .await
            .context("cannot publish a task")?;
        metrics::counter!(telemetry::TASKS_DISPATCHED, "pool" => entry.pool.clone()).increment(1);
        Ok(ack)
    }

    /// Dispatches, retrying transient failures ([`DISPATCH`]) until stored.
    /// A permanent failure (unknown capability or action), or one that
    /// outlasts the retries, is recorded as the task's result, so its plan
    /// still completes.
    pub async fn dispatch(&self, plan_id: &str, task: &Subtask, deadline: Option<jiff::Timestamp>) {
        let uses_outputs = refs::has_refs(&task.params, &task.depends_on);
        let sent = DISPATCH
            .retry(
                "dispatching a task",
                || async {
                    let resolved;
                    let task = if uses_outputs {
                        resolved = self.with_outputs(plan_id, task).await?;
                        &resolved
                    } else {
                        task
                    };
                    self.send(plan_id, task, deadline, false)
                        .await?
                        .await
                        .context("task not stored")
                },
                |e: &Error| e.code.is_retryable() && !self.stop.is_cancelled(),
            )
            .await;
        if let Err(e) = sent {
            tracing::info!(plan_id, task_id = %task.id, error = %e, "A task cannot be dispatched; it is recorded as failed.");
            self.record_failure(plan_id, &task.id, &e).await;
        }
    }

    /// `task` with the outputs of earlier tasks put into its parameters
    /// ([`refs`]), checked against its action's schema. The tasks it uses
    /// are in its `depends_on`, so their results are stored and successful.
    async fn with_outputs(&self, plan_id: &str, task: &Subtask) -> Result<Subtask> {
        let named = |e: Error| Error::new(e.code, format!("task {}: {}", task.id, e.message));
        let mut outputs = HashMap::new();
        for id in refs::referenced(&task.params, &task.depends_on).map_err(named)? {
            match results::get(&self.mesh, plan_id, &id).await? {
                Some(r) if r.is_success() => {
                    outputs.insert(id, r.output.unwrap_or(serde_json::Value::Null));
                }
                _ => {
                    return Err(Error::new(
                        ErrorCode::DependencyFailed,
                        format!("task {}: {id} has no successful result to use", task.id),
                    ));
                }
            }
        }
        let params = refs::resolve(
            &task.params,
            &task.depends_on,
            &|t| outputs.get(t).cloned(),
            self.mesh.config.mesh.max_request_bytes,
        )
        .map_err(named)?;
        let task = Subtask {
            params,
            ..task.clone()
        };
        self.picker.check_params(&task).await?;
        Ok(task)
    }

    /// Records an error result for a task that will not run, kept up until
    /// stored (first result wins; see [`results::record_until_stored`]).
    pub async fn record_failure(&self, plan_id: &str, task_id: &str, error: &Error) {
        let result = TaskResult::failure(error).for_task(plan_id, task_id);
        if let Err(e) =
            results::record_until_stored(&self.mesh, plan_id, task_id, &result, &self.stop).await
        {
            tracing::warn!(error = %e, plan_id, task_id, "A task failure was not recorded before shutdown; the next router records it.");
        }
    }
}

/// Retries of one dispatch: a queue that refuses for a moment (a leader
/// election, the server's in-flight limit) gets about a minute.
const DISPATCH: Policy = Policy {
    min: Duration::from_millis(100),
    max: Duration::from_secs(5),
    attempts: Some(20),
};
