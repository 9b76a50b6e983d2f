//! Putting one ready task on its pool's queue: pick the pool ([`crate::pick`]),
//! wait for room in its queue window ([`crate::gate`]), encode the task
//! message the way the pool asked for, and publish it to
//! `mesh.queue.<pool>.<priority>` with `Nats-Msg-Id = <plan>.<task>` so that a
//! task dispatched twice (retry, restart, two routers) is stored once.
//! The tasks of plans go out in fast-ingest batches ([`Ingest`]); a task a
//! batch did not confirm is published again on its own.

use crate::pick::Picker;
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::ingest::Ingest;
use jetmesh_shared::wire::{Subtask, TaskMessageRef, TaskResult};
use jetmesh_shared::{Error, Mesh, codec, telemetry};
use std::time::Duration;

#[derive(Clone)]
pub struct Dispatcher {
    pub mesh: Mesh,
    pub picker: Picker,
    pub bulk: Ingest,
}

/// A task message ready for its queue.
struct Queued {
    pool: String,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
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
        let queued = self.prepare(plan_id, task, deadline, fresh).await?;
        self.publish(queued).await
    }

    /// Picks the pool, waits for room in its queue window and encodes.
    async fn prepare(
        &self,
        plan_id: &str,
        task: &Subtask,
        deadline: Option<jiff::Timestamp>,
        fresh: bool,
    ) -> Result<Queued> {
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
        let mut headers = entry.encoding.headers().unwrap_or_default();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            self.mesh.names.dispatch_msg_id(plan_id, &task.id).as_str(),
        );
        Ok(Queued {
            pool: entry.pool.clone(),
            subject: self.mesh.names.queue(&entry.pool, task.priority),
            headers,
            payload: entry.encoding.encode(&message)?,
        })
    }

    /// The ordinary publish: one JetStream ack for this message.
    async fn publish(&self, queued: Queued) -> Result<PublishAckFuture> {
        let message = PublishMessage::build()
            .payload(queued.payload)
            .headers(queued.headers);
        let ack = self
            .mesh
            .js
            .send_publish(queued.subject, message)
            .await
            .context("cannot publish a task")?;
        metrics::counter!(telemetry::TASKS_DISPATCHED, "pool" => queued.pool).increment(1);
        Ok(ack)
    }

    /// Queues a plan's task in the current fast-ingest batch, or on its own
    /// when the batch does not confirm it.
    async fn send_bulk(
        &self,
        plan_id: &str,
        task: &Subtask,
        deadline: Option<jiff::Timestamp>,
    ) -> Result<()> {
        let queued = self.prepare(plan_id, task, deadline, false).await?;
        let stored = self
            .bulk
            .publish(
                queued.subject.clone().into(),
                queued.headers.clone(),
                queued.payload.clone(),
            )
            .await;
        if stored {
            metrics::counter!(telemetry::TASKS_DISPATCHED, "pool" => queued.pool).increment(1);
        } else {
            self.publish(queued)
                .await?
                .await
                .context("task not stored")?;
        }
        Ok(())
    }

    /// Dispatches, retrying transient failures until stored or `give_up` passes.
    /// A permanent failure (unknown capability or action) is recorded as the
    /// task's result, so its plan still completes.
    pub async fn dispatch(&self, plan_id: &str, task: &Subtask, deadline: Option<jiff::Timestamp>) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=20 {
            let outcome = if attempt == 1 && self.bulk.enabled() {
                self.send_bulk(plan_id, task, deadline).await
            } else {
                match self.send(plan_id, task, deadline, false).await {
                    Ok(ack) => ack.await.context("task not stored").map(|_| ()),
                    Err(e) => Err(e),
                }
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
