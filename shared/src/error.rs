//! Error kinds. Every error a user can see carries an [`ErrorCode`]: a stable
//! snake_case string that scripts match on (`unknown_capability`, `timeout`, …).
//! Infrastructure failures (NATS unreachable, a stream missing) are `unavailable`
//! or `internal`; their detail goes to the message, never a secret.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable error codes of protocol v1. Adding a code is compatible; renaming or
/// removing one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body could not be decoded, or has wrong types or missing fields.
    BadRequest,
    /// An id (plan, task, capability, action, pool) is outside `[A-Za-z0-9_-]{1,64}`.
    InvalidId,
    /// The body is larger than the configured maximum.
    PayloadTooLarge,
    /// The `Content-Type` header names an encoding jetmesh does not speak.
    UnsupportedEncoding,
    /// No pool has registered the capability.
    UnknownCapability,
    /// The capability exists but does not offer the action.
    UnknownAction,
    /// The arguments do not fit the action.
    InvalidArgs,
    /// Two subtasks share an id.
    DuplicateTaskId,
    /// A `depends_on` names a task that is not in the plan.
    UnknownDependency,
    /// The dependencies form a cycle.
    DependencyCycle,
    /// A dependency of the task failed, so the task was not run.
    DependencyFailed,
    /// The plan id is already in use.
    DuplicatePlan,
    /// The request had a goal only, and no planner provider is configured.
    NoPlannerProvider,
    /// No plan or task has that id.
    NotFound,
    /// The task was delivered as often as its pool allows without a result (or
    /// could not be decoded); it is in `MESH_DLQ`.
    DeadLettered,
    /// The task or the wait ran out of time.
    Timeout,
    /// The pool refuses new work until its backlog drains; the error carries
    /// a `retry_after_ms` hint.
    Overloaded,
    /// The capability is registered, but no live worker serves it.
    NoWorkers,
    /// Division by zero in a math action.
    DivisionByZero,
    /// An arithmetic result does not fit.
    Overflow,
    /// An execution plan (epic) is malformed; the message names the line or field.
    InvalidPlan,
    /// Two tracks of an epic may touch the same files at the same time.
    ScopeOverlap,
    /// A glob (file scope, reservation) is not valid.
    InvalidGlob,
    /// A file reservation lies outside its track's file scope.
    OutsideScope,
    /// A file reservation overlaps another holder's; the message names it.
    ReservationConflict,
    /// Mail to a thread that does not exist (unknown epic or track).
    UnknownThread,
    /// Mail to an agent the epic does not have.
    UnknownAgent,
    /// A bead stopped on a blocker that was decided `abort`.
    Blocked,
    /// A NATS or JetStream operation failed; retrying may help.
    Unavailable,
    /// A bug or an unexpected state; the message says what.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::UnknownCapability => "unknown_capability",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::InvalidArgs => "invalid_args",
            ErrorCode::DuplicateTaskId => "duplicate_task_id",
            ErrorCode::UnknownDependency => "unknown_dependency",
            ErrorCode::DependencyCycle => "dependency_cycle",
            ErrorCode::DependencyFailed => "dependency_failed",
            ErrorCode::DuplicatePlan => "duplicate_plan",
            ErrorCode::NoPlannerProvider => "no_planner_provider",
            ErrorCode::NotFound => "not_found",
            ErrorCode::DeadLettered => "dead_lettered",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NoWorkers => "no_workers",
            ErrorCode::DivisionByZero => "division_by_zero",
            ErrorCode::Overflow => "overflow",
            ErrorCode::InvalidPlan => "invalid_plan",
            ErrorCode::ScopeOverlap => "scope_overlap",
            ErrorCode::InvalidGlob => "invalid_glob",
            ErrorCode::OutsideScope => "outside_scope",
            ErrorCode::ReservationConflict => "reservation_conflict",
            ErrorCode::UnknownThread => "unknown_thread",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether a task that failed with this code may succeed if run again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Overloaded
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a stable code and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again, for `overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Adds a retry hint (for `overloaded`).
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::BadRequest, message)
    }

    pub fn invalid_args(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidArgs, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    /// A NATS/JetStream failure: `context` says what jetmesh was doing.
    pub fn unavailable(context: &str, err: impl fmt::Display) -> Self {
        Error::new(ErrorCode::Unavailable, format!("{context}: {err}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for mapping any NATS error into `unavailable` with context.
pub trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::unavailable(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_strings() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownCapability,
            ErrorCode::DependencyCycle,
            ErrorCode::NoPlannerProvider,
            ErrorCode::DivisionByZero,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        let e = Error::new(ErrorCode::Timeout, "too slow");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"code":"timeout","message":"too slow"})
        );
    }
}
