//! Dead letters: tasks that cannot run land in `MESH_DLQ` with the reason, the
//! pool, the attempts and the original body, and their task is marked failed
//! (`dead_lettered`) so that its plan still completes. Two ways in:
//! - the router turns JetStream's max-deliveries advisories (captured durably in
//!   `MESH_EVENTS`) into dead letters and removes the message from its queue;
//! - a worker dead-letters a message it cannot decode.
//!
//! `jetmesh dlq ls | show | replay | purge` browse, replay and clear them. A
//! replay clears the task's failed result first (the first result wins), then
//! puts the original body back on its queue subject.

use crate::codec::{CONTENT_TYPE, Encoding};
use crate::error::{Context, Error, ErrorCode, Result};
use crate::mesh::Mesh;
use crate::wire::{DeadLetter, TaskMessage, TaskResult};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

async fn stream(mesh: &Mesh) -> Result<jetstream::stream::Stream<()>> {
    mesh.js
        .get_stream_no_info(mesh.names.dlq_stream())
        .await
        .context("cannot open the dead-letter stream")
}

/// One dead letter as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its sequence in `MESH_DLQ`: the id `show`/`replay` take.
    pub seq: u64,
    pub at: jiff::Timestamp,
    pub letter: DeadLetter,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Stores a dead letter. `dedupe` makes a repeated call (two routers handling
/// the same advisory) store it once.
pub async fn send(
    mesh: &Mesh,
    letter: &DeadLetter,
    body: Bytes,
    content_type: Option<&str>,
    dedupe: Option<String>,
) -> Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    letter.to_headers(&mut headers);
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, ct);
    }
    let mut msg = jetstream::message::PublishMessage::build()
        .payload(body)
        .headers(headers);
    if let Some(id) = dedupe {
        msg = msg.message_id(id);
    }
    mesh.js
        .send_publish(mesh.names.dlq(&letter.pool), msg)
        .await
        .context("cannot publish a dead letter")?
        .await
        .context("dead letter not stored")?;
    metrics::counter!(crate::telemetry::DEAD_LETTERS, "pool" => letter.pool.clone(), "reason" => letter.reason.clone()).increment(1);
    tracing::warn!(pool = %letter.pool, reason = %letter.reason, plan_id = ?letter.plan_id, task_id = ?letter.task_id, detail = %letter.detail, "A task was dead-lettered.");
    Ok(())
}

/// Reads the plan and task ids of a task message, if it can be decoded.
pub fn task_ids(headers: Option<&async_nats::HeaderMap>, body: &[u8]) -> Option<(String, String)> {
    let enc = Encoding::from_headers(headers).ok()?;
    if let Ok(t) = enc.decode::<TaskMessage>(body) {
        return Some((t.plan_id, t.task.id));
    }
    let v: serde_json::Value = enc.decode(body).ok()?;
    let plan = v.get("plan_id")?.as_str()?;
    let task = v.get("id")?.as_str()?;
    (crate::ids::is_valid(plan) && crate::ids::is_valid(task))
        .then(|| (plan.to_string(), task.to_string()))
}

/// Records the task as failed with `dead_lettered` ([`crate::results::record`]:
/// the first result wins).
pub async fn fail_task(
    mesh: &Mesh,
    plan_id: &str,
    task_id: &str,
    attempts: u64,
    detail: &str,
) -> Result<()> {
    let error = Error::new(
        ErrorCode::DeadLettered,
        format!(
            "{detail}; it is in {} (jetmesh dlq ls)",
            mesh.names.dlq_stream()
        ),
    );
    let mut result = TaskResult::failure(&error).for_task(plan_id, task_id);
    result.attempt = attempts.min(u32::MAX as u64) as u32;
    crate::results::record(mesh, plan_id, task_id, &result).await?;
    Ok(())
}

/// Every dead letter, oldest first (at most `limit`).
pub async fn list(mesh: &Mesh, limit: usize) -> Result<Vec<Entry>> {
    let stream = stream(mesh).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .context("cannot read dead letters")?;
    let pending = (consumer.cached_info().num_pending as usize).min(limit);
    let mut out = Vec::with_capacity(pending);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read dead letters")?;
    while out.len() < pending {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let msg = msg.context("cannot read dead letters")?;
        let info = msg.info().map_err(|e| Error::internal(e.to_string()))?;
        let (seq, at) = (info.stream_sequence, info.published);
        out.push(entry(
            seq,
            at.unix_timestamp_nanos(),
            msg.headers.as_ref(),
            msg.payload.clone(),
        ));
    }
    Ok(out)
}

fn entry(seq: u64, at_nanos: i128, headers: Option<&async_nats::HeaderMap>, body: Bytes) -> Entry {
    Entry {
        seq,
        at: jiff::Timestamp::from_nanosecond(at_nanos).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        letter: DeadLetter::from_headers(headers),
        content_type: headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .map(|v| v.as_str().to_string()),
        body,
    }
}

/// One dead letter by its `MESH_DLQ` sequence.
pub async fn get(mesh: &Mesh, seq: u64) -> Result<Entry> {
    let stream = stream(mesh).await?;
    let msg = stream
        .get_raw_message(seq)
        .await
        .map_err(|_| Error::new(ErrorCode::NotFound, format!("no dead letter {seq}")))?;
    Ok(entry(
        msg.sequence,
        msg.time.unix_timestamp_nanos(),
        Some(&msg.headers),
        msg.payload,
    ))
}

/// Puts a dead letter's task back on its queue and removes the dead letter.
/// The task's failed result is cleared first, so its new result is recorded.
pub async fn replay(mesh: &Mesh, seq: u64) -> Result<()> {
    let e = get(mesh, seq).await?;
    if e.letter.subject.is_empty() {
        return Err(Error::bad_request(format!(
            "dead letter {seq} does not say its queue subject"
        )));
    }
    if let (Some(plan), Some(task)) = (&e.letter.plan_id, &e.letter.task_id) {
        mesh.results
            .delete(mesh.names.task_key(plan, task))
            .await
            .context("cannot clear the failed result")?;
    }
    let mut headers = async_nats::HeaderMap::new();
    if let Some(ct) = &e.content_type {
        headers.insert(CONTENT_TYPE, ct.as_str());
    }
    let msg = jetstream::message::PublishMessage::build()
        .payload(e.body)
        .headers(headers)
        .message_id(mesh.names.replay_msg_id(seq));
    mesh.js
        .send_publish(e.letter.subject.clone(), msg)
        .await
        .context("cannot replay")?
        .await
        .context("replay not stored")?;
    remove(mesh, seq).await
}

/// Removes one dead letter.
pub async fn remove(mesh: &Mesh, seq: u64) -> Result<()> {
    let stream = stream(mesh).await?;
    stream
        .delete_message(seq)
        .await
        .context("cannot remove the dead letter")?;
    Ok(())
}

/// Removes every dead letter; returns how many there were.
pub async fn purge(mesh: &Mesh) -> Result<u64> {
    let stream = stream(mesh).await?;
    let r = stream.purge().await.context("cannot purge dead letters")?;
    Ok(r.purged)
}
