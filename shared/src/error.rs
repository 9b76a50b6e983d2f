//! Error kinds. Every error a user can see carries an [`ErrorCode`]: a stable
//! snake_case string that scripts match on (`unknown_capability`, `timeout`, …).
//! Infrastructure failures (NATS unreachable, a stream missing) are `unavailable`
//! or `internal`; their detail goes to the message, never a secret.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The stable error codes. The protocol's own codes are the variants; a
/// capability's codes (`division_by_zero`, `navigation_failed`, …) are
/// [`ErrorCode::Capability`], defined by the capability, not here. Adding a
/// protocol code is compatible; renaming or removing one needs an ADR.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// The LLM planner's answers did not make a valid plan within its repair
    /// rounds; the error's `details` hold the last answer and the errors.
    PlanningFailed,
    /// The model declined the goal (it cannot be done with the registered
    /// capabilities, or the provider refused it); the message says why.
    GoalRefused,
    /// No configured LLM provider could answer (rate limits, errors,
    /// timeouts, open circuit breakers); `retry_after_ms` when one is known.
    LlmUnavailable,
    /// An LLM budget (per plan, or per provider per day) is spent.
    BudgetExceeded,
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
    /// A worker stored a result that is not a result object (no terminal
    /// status, an error without a valid code, a number JSON cannot hold).
    BadResult,
    /// The capability's registry entry is invalid (pool, actions, encoding);
    /// the router ignores it until it is fixed.
    BadRegistration,
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
    /// A capability's own code.
    Capability(CapabilityCode),
}

/// A capability's own error code: snake_case, `[a-z][a-z0-9_]{0,63}`, and
/// not a protocol code. Capabilities define theirs as constants:
/// `pub const DIVISION_BY_ZERO: ErrorCode = ErrorCode::capability("division_by_zero");`
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CapabilityCode(Cow<'static, str>);

impl CapabilityCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` has the shape of an error code: `[a-z][a-z0-9_]{0,63}`.
pub fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl ErrorCode {
    /// Every protocol code, in the order the README lists them.
    pub const PROTOCOL: [ErrorCode; 34] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidId,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedEncoding,
        ErrorCode::UnknownCapability,
        ErrorCode::UnknownAction,
        ErrorCode::InvalidArgs,
        ErrorCode::DuplicateTaskId,
        ErrorCode::UnknownDependency,
        ErrorCode::DependencyCycle,
        ErrorCode::DependencyFailed,
        ErrorCode::DuplicatePlan,
        ErrorCode::NoPlannerProvider,
        ErrorCode::PlanningFailed,
        ErrorCode::GoalRefused,
        ErrorCode::LlmUnavailable,
        ErrorCode::BudgetExceeded,
        ErrorCode::NotFound,
        ErrorCode::DeadLettered,
        ErrorCode::Timeout,
        ErrorCode::Overloaded,
        ErrorCode::NoWorkers,
        ErrorCode::BadResult,
        ErrorCode::BadRegistration,
        ErrorCode::InvalidPlan,
        ErrorCode::ScopeOverlap,
        ErrorCode::InvalidGlob,
        ErrorCode::OutsideScope,
        ErrorCode::ReservationConflict,
        ErrorCode::UnknownThread,
        ErrorCode::UnknownAgent,
        ErrorCode::Blocked,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// A capability's code (see [`CapabilityCode`]).
    pub const fn capability(code: &'static str) -> ErrorCode {
        ErrorCode::Capability(CapabilityCode(Cow::Borrowed(code)))
    }

    pub fn as_str(&self) -> &str {
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
            ErrorCode::PlanningFailed => "planning_failed",
            ErrorCode::GoalRefused => "goal_refused",
            ErrorCode::LlmUnavailable => "llm_unavailable",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::DeadLettered => "dead_lettered",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NoWorkers => "no_workers",
            ErrorCode::BadResult => "bad_result",
            ErrorCode::BadRegistration => "bad_registration",
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
            ErrorCode::Capability(c) => c.as_str(),
        }
    }

    /// The code named `s`: a protocol code, or any other well-formed code as
    /// a capability's. `None` when `s` is not a code at all.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        if let Some(c) = ErrorCode::PROTOCOL.iter().find(|c| c.as_str() == s) {
            return Some(c.clone());
        }
        is_code(s).then(|| ErrorCode::Capability(CapabilityCode(Cow::Owned(s.to_string()))))
    }

    /// Whether this is one of the protocol's own codes.
    pub fn is_protocol(&self) -> bool {
        !matches!(self, ErrorCode::Capability(_))
    }

    /// Whether a task that failed with this code may succeed if run again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::Overloaded
                | ErrorCode::LlmUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        ErrorCode::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not an error code ([a-z][a-z0-9_]{{0,63}})"
            ))
        })
    }
}

/// An error with a stable code and a readable message. An infrastructure
/// error (`unavailable`) keeps the error behind it as its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again, for `overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Structured detail for the caller (`planning_failed`: the model's
    /// last answer and the validation errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<serde_json::Value>>,
    #[serde(skip)]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        (&self.code, &self.message, self.retry_after_ms)
            == (&other.code, &other.message, other.retry_after_ms)
    }
}

impl Eq for Error {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after_ms: None,
            details: None,
            source: None,
        }
    }

    /// Adds structured detail (see [`Error::details`]).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// Adds a retry hint (for `overloaded`).
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub fn code(&self) -> &ErrorCode {
        &self.code
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

    /// A NATS/JetStream failure: `context` says what jetmesh was doing; the
    /// failure is kept as the error's source.
    pub fn unavailable(context: &str, err: impl Into<BoxError>) -> Self {
        let err: BoxError = err.into();
        let mut e = Error::new(ErrorCode::Unavailable, format!("{context}: {err}"));
        e.source = Some(Arc::from(err));
        e
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error an infrastructure call may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shorthand for mapping any NATS error into `unavailable` with context.
pub trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
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
            ErrorCode::capability("division_by_zero"),
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        for code in ErrorCode::PROTOCOL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code.clone()));
            assert!(code.is_protocol());
        }
        let own = ErrorCode::parse("navigation_failed").unwrap();
        assert!(!own.is_protocol());
        assert_eq!(own, ErrorCode::capability("navigation_failed"));
        for bad in ["", "Timeout", "a b", "1abc", &"x".repeat(65)] {
            assert_eq!(ErrorCode::parse(bad), None, "{bad:?}");
            assert!(serde_json::from_str::<ErrorCode>(&format!("{bad:?}")).is_err());
        }
        let e = Error::new(ErrorCode::Timeout, "too slow");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"code":"timeout","message":"too slow"})
        );
    }
}
