//! Wire types of protocol v1: the only things jetmesh serializes onto subjects,
//! streams and KV buckets. Readers ignore unknown fields and writers never remove
//! or rename one, so a v1 reader understands any later v1.x message. Fields that
//! can be absent are `Option` or `#[serde(default)]`, which is also what lets a
//! foreign worker write the minimal result object `{"status":"success","output":6}`.

//!
//! One submodule per concern, all re-exported here: [`task`] (tasks,
//! results, dead letters), [`plan`] (requests, records, reports), [`events`]
//! (the event channels, health, alerts) and [`pools`] (registry entries,
//! heartbeats, scaling, leases).

mod events;
mod plan;
mod pools;
mod task;

pub use events::*;
pub use plan::*;
pub use pools::*;
pub use task::*;

use crate::error::{Error, ErrorCode};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The names a task message uses for itself. A task's parameters may not
/// take them: written next to the field, a parameter of the same name would
/// make the message undecodable.
pub const RESERVED: [&str; 11] = [
    "id",
    "plan_id",
    "type",
    "action",
    "depends_on",
    "priority",
    "timeout_ms",
    "retries",
    "session",
    "attempt",
    "deadline",
];

/// Errors (`bad_request`) when a parameter takes a name in [`RESERVED`].
pub fn check_params(params: &Map<String, Value>) -> Result<(), Error> {
    match params.keys().find(|k| RESERVED.contains(&k.as_str())) {
        Some(k) => Err(Error::bad_request(format!(
            "{k:?} is a field of the task, not a parameter of its action (reserved: {})",
            RESERVED.join(", ")
        ))),
        None => Ok(()),
    }
}

/// An id that may be left out, but when given follows the id rule: an
/// empty string is not "no id".
fn given_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if id.is_empty() {
        crate::ids::refuse();
        return Err(serde::de::Error::custom(format_args!(
            "{:?} {}; leave the id out to get one",
            id,
            crate::ids::RULE
        )));
    }
    Ok(id)
}

fn one() -> u32 {
    1
}

/// An error reply: `{"status":"error","error":{...}}`, plus ids when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub status: TaskStatus,
    pub error: ErrorBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

impl ErrorReply {
    pub fn new(error: &Error) -> Self {
        ErrorReply {
            status: TaskStatus::Error,
            error: error.into(),
            plan_id: None,
            task_id: None,
        }
    }
}

/// Decodes a reply that is either `T` or an [`ErrorReply`]. The error probe
/// skips over the body without building it, so a large `T` is decoded once.
pub fn decode_reply<T: serde::de::DeserializeOwned>(
    enc: crate::codec::Encoding,
    payload: &[u8],
) -> Result<T, Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        status: Option<TaskStatus>,
        #[serde(default)]
        error: Option<ErrorBody>,
    }
    let probe: Probe = enc.decode(payload)?;
    if probe.status == Some(TaskStatus::Error)
        && let Some(body) = probe.error
    {
        let code = serde_json::from_value::<ErrorCode>(Value::String(body.code.clone()))
            .unwrap_or(ErrorCode::Internal);
        let mut error = Error::new(code, body.message);
        error.retry_after_ms = body.retry_after_ms;
        error.details = body.details;
        return Err(error);
    }
    enc.decode::<T>(payload)
        .map_err(|e| Error::bad_request(format!("unexpected reply: {}", e.message)))
}

#[cfg(test)]
mod tests;
