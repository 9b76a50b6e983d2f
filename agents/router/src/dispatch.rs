//! Putting one ready task on its pool's queue: pick the pool ([`crate::pick`]),
//! wait for room in its queue window ([`crate::gate`]), encode the task
//! message the way the pool asked for, and publish it to
//! `mesh.queue.<pool>.<priority>` with `Nats-Msg-Id = <plan>.<task>` so that a
//! task dispatched twice (retry, restart, two routers) is stored once.

use crate::pick::Picker;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::wire::{Subtask, TaskMessageRef, TaskResult};
use jetmesh_shared::{Error, Mesh, codec, telemetry};
use std::time::Duration;

#[derive(Clone)]
pub struct Dispatcher {
    pub mesh: Mesh,
    pub picker: Picker,
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
        let (entry, reserved) = self.picker.pick(task, fresh).await?;
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
        let mut publish = PublishMessage::build()
            .payload(entry.encoding.encode(&message)?)
            .message_id(self.mesh.names.dispatch_msg_id(plan_id, &task.id));
        if let Some(headers) = entry.encoding.headers() {
            for (name, values) in headers.iter() {
                for v in values {
                    publish = publish.header(name.clone(), v.clone());
                }
            }
        }
        let ack = self
            .mesh
            .js
            .send_publish(self.mesh.names.queue(&entry.pool, task.priority), publish)
            .await
            .context("cannot publish a task")?;
        metrics::counter!(telemetry::TASKS_DISPATCHED, "pool" => entry.pool.clone()).increment(1);
        Ok(ack)
    }

    /// Dispatches, retrying transient failures until stored or `give_up` passes.
    /// A permanent failure (unknown capability or action) is recorded as the
    /// task's result, so its plan still completes.
    pub async fn dispatch(&self, plan_id: &str, task: &Subtask, deadline: Option<jiff::Timestamp>) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=20 {
            let outcome = match self.send(plan_id, task, deadline, false).await {
                Ok(ack) => ack.await.context("task not stored").map(|_| ()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => return,
                Err(e) if !e.code.is_retryable() => {
                    tracing::info!(plan_id, task_id = %task.id, error = %e, "A task cannot be dispatched; it is recorded as failed.");
                    self.record_failure(plan_id, &task.id, &e).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(plan_id, task_id = %task.id, attempt, error = %e, "Dispatch failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let e = Error::new(
            jetmesh_shared::ErrorCode::Unavailable,
            "the task could not be queued",
        );
        self.record_failure(plan_id, &task.id, &e).await;
    }

    /// Records an error result for a task that will not run. First result wins.
    pub async fn record_failure(&self, plan_id: &str, task_id: &str, error: &Error) {
        let result = TaskResult::failure(error).for_task(plan_id, task_id);
        let Ok(body) = codec::to_json(&result) else {
            return;
        };
        let key = self.mesh.names.task_key(plan_id, task_id);
        if let Err(e) = self.mesh.results.create(&key, body).await
            && e.kind() != async_nats::jetstream::kv::CreateErrorKind::AlreadyExists
        {
            tracing::error!(error = %e, plan_id, task_id, "Cannot record a task failure.");
        }
    }
}
