//! The one way to record a task's result, and the one way to read one.
//!
//! **Recording.** A result is written to `task.<plan_id>.<task_id>` in
//! `mesh_results` with a KV *create*: the first terminal result of a task
//! wins, and a later one (a redelivery, a second router) finds the key and
//! is dropped ([`Recorded::Duplicate`]). A write that fails for a reason that
//! may pass is retried with [`Policy::WRITE`]; when it still fails, the
//! process raises an alert on `mesh.alerts.results` and reports itself
//! `degraded`, and the caller gets the error to act on (a worker naks so
//! JetStream delivers the task again; the router keeps the write going in
//! the background with [`record_until_stored`]). Nothing fails silently.
//!
//! **Reading.** A result is outside input: a foreign worker writes it. Every
//! reader goes through [`read`], which turns what is stored into a
//! [`TaskResult`] that always says success or error, with an error code:
//! anything else (not JSON, an unknown status, an error without a code, a
//! number JSON cannot hold) becomes an error with code `bad_result`.

use crate::backoff::Policy;
use crate::codec;
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Mesh;
use crate::wire::{ErrorBody, TaskResult, TaskStatus};
use async_nats::jetstream::kv;

/// What a [`record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// This result is the task's.
    Stored,
    /// The task already had a result; that one stands.
    Duplicate,
}

/// Records `result` as the result of `task_id` of `plan_id` (see the module
/// docs). Errors: `unavailable` once [`Policy::WRITE`] is spent.
pub async fn record(
    mesh: &Mesh,
    plan_id: &str,
    task_id: &str,
    result: &TaskResult,
) -> Result<Recorded> {
    let key = mesh.names.task_key(plan_id, task_id);
    let body = codec::to_json(result)?;
    let written = Policy::WRITE
        .retry(
            "recording a result",
            || mesh.results.create(&key, body.clone()),
            |e| e.kind() != kv::CreateErrorKind::AlreadyExists,
        )
        .await;
    match written {
        Ok(_) => {
            if mesh.status.is_degraded("results") {
                Box::pin(mesh.status.clear("results")).await;
            }
            Ok(Recorded::Stored)
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            metrics::counter!(crate::telemetry::RESULTS_DUPLICATE).increment(1);
            Ok(Recorded::Duplicate)
        }
        Err(e) => {
            let error = Error::unavailable(&format!("cannot record the result of {key}"), e);
            // Boxed: the rare path stays out of every caller's future.
            Box::pin(unrecorded(mesh, &error)).await;
            Err(error)
        }
    }
}

/// Says that a result could not be recorded: a metric, an alert, and this
/// process's status.
async fn unrecorded(mesh: &Mesh, error: &Error) {
    metrics::counter!(crate::telemetry::RESULTS_UNRECORDED).increment(1);
    mesh.alert("results", "result_unrecorded", &error.to_string())
        .await;
    mesh.status.degrade("results", &error.message).await;
}

/// Records `result`, and keeps trying in the background after [`record`]
/// gave up (with [`Policy::PERSIST`], until stored or `stop`): for a writer
/// with nothing to nak, like the router failing a task it cannot dispatch.
/// The alert and the `degraded` status stay until the write lands.
pub async fn record_until_stored(
    mesh: &Mesh,
    plan_id: &str,
    task_id: &str,
    result: &TaskResult,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Recorded> {
    let mut delays = Policy::PERSIST.delays();
    loop {
        match record(mesh, plan_id, task_id, result).await {
            Ok(r) => return Ok(r),
            Err(e) if stop.is_cancelled() => return Err(e),
            Err(_) => {
                let delay = delays.next_or_max(&Policy::PERSIST);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The stored result of a task, read with [`read`]; `None` when it has none.
pub async fn get(mesh: &Mesh, plan_id: &str, task_id: &str) -> Result<Option<TaskResult>> {
    let stored = mesh
        .results
        .get(mesh.names.task_key(plan_id, task_id))
        .await
        .map_err(|e| Error::unavailable("cannot read a result", e))?;
    Ok(stored.map(|v| read(&v)))
}

/// Reads a stored result as a well-formed [`TaskResult`] (see the module
/// docs). Never fails: what cannot be read is a `bad_result` error.
pub fn read(stored: &[u8]) -> TaskResult {
    match codec::from_json::<TaskResult>(stored) {
        Ok(r) => normalize(r),
        Err(e) => bad(format!("the stored result cannot be read: {}", e.message)),
    }
}

/// Whether a stored result is a success, without decoding its output.
pub fn succeeded(stored: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Status {
        status: TaskStatus,
    }
    // A success must also be well formed; `read` decides that, so only a
    // body that claims success is read whole.
    match codec::from_json::<Status>(stored) {
        Ok(s) if s.status == TaskStatus::Success => read(stored).is_success(),
        _ => false,
    }
}

fn bad(message: String) -> TaskResult {
    TaskResult::failure(&Error::new(ErrorCode::BadResult, message))
}

fn normalize(mut r: TaskResult) -> TaskResult {
    match r.status {
        TaskStatus::Success => {
            r.error = None;
            r
        }
        TaskStatus::Error => {
            match &r.error {
                Some(e) if crate::error::is_code(&e.code) => {}
                Some(e) => {
                    let message = format!(
                        "the worker's error has an invalid code {:?}: {}",
                        e.code, e.message
                    );
                    r.error = Some(ErrorBody::from(&Error::new(ErrorCode::BadResult, message)));
                }
                None => {
                    r.error = Some(ErrorBody::from(&Error::new(
                        ErrorCode::BadResult,
                        "the worker reported an error without saying which",
                    )))
                }
            }
            r.output = None;
            r
        }
        TaskStatus::Pending | TaskStatus::Unknown => {
            let mut b = bad("the stored result has no terminal status (success or error)".into());
            b.worker = r.worker;
            b.plan_id = r.plan_id;
            b.task_id = r.task_id;
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: &TaskResult) -> Option<&str> {
        r.error.as_ref().map(|e| e.code.as_str())
    }

    #[test]
    fn what_a_foreign_worker_may_write_reads_as_success_or_a_coded_error() {
        let ok = read(br#"{"status":"success","output":6}"#);
        assert!(ok.is_success());
        assert_eq!(ok.output, Some(serde_json::json!(6)));
        let e = read(br#"{"status":"error","error":{"code":"division_by_zero","message":"x"}}"#);
        assert_eq!(code(&e), Some("division_by_zero"));
        for junk in [
            &br#"{"status":"error"}"#[..],
            br#"{"status":"weird"}"#,
            br#"{"status":"pending"}"#,
            br#"{"status":"success","output":1e999}"#,
            br#"{"status":"error","error":{"code":"Not A Code","message":"x"}}"#,
            br#"{"status":"error","error":{"code":"","message":"x"}}"#,
            b"not json",
            b"[]",
            b"",
        ] {
            let r = read(junk);
            assert_eq!(
                r.status,
                TaskStatus::Error,
                "{}",
                String::from_utf8_lossy(junk)
            );
            assert_eq!(
                code(&r),
                Some("bad_result"),
                "{}",
                String::from_utf8_lossy(junk)
            );
            assert!(!succeeded(junk));
        }
        assert!(succeeded(br#"{"status":"success","output":6}"#));
    }
}
