//! Wire types of protocol v1: the only things jetmesh serializes onto subjects,
//! streams and KV buckets. Readers ignore unknown fields and writers never remove
//! or rename one, so a v1 reader understands any later v1.x message. Fields that
//! can be absent are `Option` or `#[serde(default)]`, which is also what lets a
//! foreign worker write the minimal result object `{"status":"success","output":6}`.

use crate::error::{Error, ErrorCode};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn one() -> u32 {
    1
}

/// Task priority; the queue subject ends with it (`mesh.queue.<pool>.high`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// One unit of work as users write it. Everything that is not a known field
/// (`args`, `url`, `to`, …) is kept in `params` and handed to the capability.
/// Deserialized by hand (see [`task_de`]) rather than with `#[serde(flatten)]`,
/// which buffers every field: plans of thousands of subtasks are decoded by
/// several roles, and every task by a worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subtask {
    /// Unique within its plan; defaults to `t<n>` (1-based position) when absent.
    #[serde(default)]
    pub id: String,
    /// The capability (`math`, `date`, …); the seed calls it `type`.
    #[serde(rename = "type")]
    pub capability: String,
    pub action: String,
    /// Ids of tasks of the same plan that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: Priority,
    /// How long one attempt may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How many times a retryable failure is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The action's parameters, e.g. `{"args":[1,2,3]}`.
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// A plan: a goal, explicit subtasks, or both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// Generated when absent.
    #[serde(default)]
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<Subtask>,
    /// The plan's deadline, in milliseconds after it is accepted: tasks
    /// without a result by then are recorded as `timeout`, and the plan
    /// completes with them counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// An execution plan (seed 2). The chief compiles it into `subtasks`
    /// (one `agent.bead` task per bead) and keeps it here for the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epic: Option<Epic>,
}

/// A plan without its tasks' parameters (see [`PlanRecord`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlanOutline {
    #[serde(default)]
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<SubtaskOutline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// A subtask's id, capability, action and dependencies; the other fields of
/// the stored subtask are skipped unread.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SubtaskOutline {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type")]
    pub capability: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// The body of `mesh.plans.submit`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "SubmitRequestWire")]
pub struct SubmitRequest {
    #[serde(flatten)]
    pub plan: Plan,
    /// Reply with the final report instead of `accepted`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub wait: bool,
    /// With `wait`: how long to wait for the report, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<u64>,
}

/// How a submit request is read: the same fields, flat, so that a plan of
/// thousands of subtasks is decoded in one pass (`flatten` would buffer it).
#[derive(Deserialize)]
struct SubmitRequestWire {
    #[serde(default)]
    plan_id: String,
    #[serde(default)]
    goal: Option<String>,
    #[serde(default)]
    subtasks: Vec<Subtask>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    epic: Option<Epic>,
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    wait_timeout_ms: Option<u64>,
}

impl From<SubmitRequestWire> for SubmitRequest {
    fn from(w: SubmitRequestWire) -> Self {
        SubmitRequest {
            plan: Plan {
                plan_id: w.plan_id,
                goal: w.goal,
                subtasks: w.subtasks,
                deadline_ms: w.deadline_ms,
                epic: w.epic,
            },
            wait: w.wait,
            wait_timeout_ms: w.wait_timeout_ms,
        }
    }
}

/// The reply of `mesh.plans.submit` without `wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub plan_id: String,
    /// `accepted`.
    pub status: String,
    #[serde(default)]
    pub total_tasks: usize,
}

/// What the chief asks the planner: turn a goal into subtasks, or validate them.
/// (`P` is `&Plan` when sending, so the chief keeps its plan.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerRequest<P = Plan> {
    pub plan: P,
}

/// The planner's answer. `plan` is left out when the plan it was sent is
/// valid exactly as sent (an explicit, normalized plan), so a plan of
/// thousands of subtasks does not cross back.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlannerReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// A task as it sits on a pool queue: the subtask plus its plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskMessage {
    pub plan_id: String,
    #[serde(flatten)]
    pub task: Subtask,
    /// 1 on first dispatch; a worker takes the larger of this and the delivery count.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The plan's deadline: a worker does not start the task after it, and
    /// stops running it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

/// The same wire shape as [`TaskMessage`], borrowed, for encoding without a copy.
#[derive(Debug, Serialize)]
pub struct TaskMessageRef<'a> {
    pub plan_id: &'a str,
    #[serde(flatten)]
    pub task: &'a Subtask,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

/// The body of `mesh.run.<cap>.<action>` and `mesh.tasks.<cap>.<action>`: the
/// task's parameters, plus optional ids and options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SingleTask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// `success` or `error`; anything else a foreign worker writes reads as `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Success,
    Error,
    /// Not a terminal state: shown for tasks without a result yet.
    Pending,
    #[serde(other)]
    Unknown,
}

/// An error inside a result. `code` is a string, not [`ErrorCode`], because a
/// foreign worker may use codes of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// For `overloaded`: how long to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        ErrorBody {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// The result object of one task: the value of `task.<plan_id>.<task_id>` in
/// `mesh_results` and the reply of `mesh.run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default = "one")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

impl TaskResult {
    pub fn success(output: Value) -> Self {
        TaskResult {
            status: TaskStatus::Success,
            output: Some(output),
            error: None,
            duration_ms: 0,
            worker: None,
            attempt: 1,
            plan_id: None,
            task_id: None,
            finished_at: Some(Timestamp::now()),
        }
    }

    pub fn failure(error: &Error) -> Self {
        TaskResult {
            status: TaskStatus::Error,
            output: None,
            error: Some(error.into()),
            ..TaskResult::success(Value::Null)
        }
    }

    pub fn for_task(mut self, plan_id: &str, task_id: &str) -> Self {
        self.plan_id = Some(plan_id.to_string());
        self.task_id = Some(task_id.to_string());
        self
    }

    pub fn is_success(&self) -> bool {
        self.status == TaskStatus::Success
    }

    /// Whether the task is finished (success or any error).
    pub fn is_terminal(&self) -> bool {
        self.status != TaskStatus::Pending
    }
}

/// Only the status of a result object: what dependency tracking and counting
/// need, without decoding outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ResultStatus {
    pub status: TaskStatus,
}

/// Lifecycle of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    /// Accepted, tasks running.
    Running,
    /// Every task finished (some may have failed); the report follows.
    Completed,
    /// The final report was published.
    Reported,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Running => "running",
            PlanStatus::Completed => "completed",
            PlanStatus::Reported => "reported",
        }
    }
}

/// `plan.<plan_id>` in `mesh_results`: the seed's result-store counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCounts {
    pub plan_id: String,
    pub total_tasks: usize,
    pub completed: usize,
    pub failed: usize,
    pub pending: usize,
    pub status: PlanStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// `plan.<plan_id>` in `mesh_plans`: the definition and lifecycle of a plan, the
/// state a chief (or a router, or an aggregator) needs to carry on after a restart.
///
/// Generic over how much of the plan a reader decodes: the whole [`Plan`]
/// (the default; the router dispatches from it), its [`PlanOutline`] (ids and
/// shape, without parameters: the aggregator and the summary), or the raw JSON
/// (a chief changing only the status). A plan of thousands of subtasks is read
/// by several roles, so each decodes no more than it uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord<P = Plan> {
    #[serde(default = "one")]
    pub v: u32,
    pub plan: P,
    pub status: PlanStatus,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The chief instance that accepted the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
    /// That chief's lease term (fencing token) when it stored the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// `mesh.evt.task_available.<plan_id>`: a request was received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAvailable {
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    pub subtasks: usize,
    pub at: Timestamp,
}

/// `mesh.evt.plan_ready.<plan_id>`: the plan is stored in `mesh_plans`; the router
/// may dispatch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReady {
    pub plan_id: String,
    pub total_tasks: usize,
    pub at: Timestamp,
}

/// `mesh.evt.aggregation_ready.<plan_id>`: every task of the plan is terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregationReady {
    pub plan_id: String,
    pub total_tasks: usize,
    pub completed: usize,
    pub failed: usize,
    pub at: Timestamp,
    /// How many parts of the plan's [`ResultBundle`] the aggregator stored in
    /// `mesh_plans` (`bundle.<plan_id>.<n>`, n from 0); 0 when there is none
    /// and the results are read from `mesh_results`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub bundle_parts: u32,
}

/// The results of one plan as the aggregator counted them, handed to the
/// summary so that it needs no scan of `task.<plan_id>.*`. The first result
/// counted for each task is the one kept, as in the plan's counts.
///
/// Each part starts with a version byte (1), then frames: task id length
/// (u16, little-endian), task id, value length (u32, little-endian), the
/// result as stored. A part holds whole frames, so each decodes alone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResultBundle {
    frames: Vec<u8>,
    /// Where each frame starts in `frames`.
    starts: Vec<usize>,
}

impl ResultBundle {
    const VERSION: u8 = 1;

    /// Bytes one result adds.
    pub fn frame_len(task_id: &str, value: &[u8]) -> usize {
        6 + task_id.len() + value.len()
    }

    pub fn push(&mut self, task_id: &str, value: &[u8]) {
        self.starts.push(self.frames.len());
        self.frames
            .extend_from_slice(&(task_id.len() as u16).to_le_bytes());
        self.frames.extend_from_slice(task_id.as_bytes());
        self.frames
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.frames.extend_from_slice(value);
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.frames.len()
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Splits into parts of at most `max` bytes; `None` when one result alone
    /// does not fit.
    pub fn parts(&self, max: usize) -> Option<Vec<bytes::Bytes>> {
        let mut parts = Vec::new();
        let mut part = vec![Self::VERSION];
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.frames.len());
            let frame = &self.frames[start..end];
            if 1 + frame.len() > max {
                return None;
            }
            if part.len() + frame.len() > max {
                parts.push(std::mem::replace(&mut part, vec![Self::VERSION]).into());
            }
            part.extend_from_slice(frame);
        }
        if part.len() > 1 || parts.is_empty() {
            parts.push(part.into());
        }
        Some(parts)
    }

    /// The (task id, stored result) pairs of one part. Errors: `bad_request`
    /// when the part is not a well-formed version 1 part.
    pub fn decode(part: &[u8]) -> Result<Vec<(&str, &[u8])>, Error> {
        let bad = |what: &str| {
            Error::new(
                ErrorCode::BadRequest,
                format!("a result bundle part is malformed: {what}"),
            )
        };
        let Some((&version, mut rest)) = part.split_first() else {
            return Err(bad("it is empty"));
        };
        if version != Self::VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            *rest = tail;
            Some(head)
        }
        let cut = || bad("a frame is cut short");
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = take(&mut rest, 2).ok_or_else(cut)?;
            let n = u16::from_le_bytes([n[0], n[1]]) as usize;
            let id = std::str::from_utf8(take(&mut rest, n).ok_or_else(cut)?)
                .map_err(|_| bad("a task id is not UTF-8"))?;
            let n = take(&mut rest, 4).ok_or_else(cut)?;
            let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
            out.push((id, take(&mut rest, n).ok_or_else(cut)?));
        }
        Ok(out)
    }
}

/// One task in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportTask {
    pub id: String,
    #[serde(rename = "type")]
    pub capability: String,
    pub action: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default = "one")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// The final report: `report.<plan_id>` in `mesh_results`, the body of
/// `mesh.evt.final_report.<plan_id>`, and the reply of a waiting submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// `completed` (every task finished, some may have failed).
    pub status: PlanStatus,
    pub total_tasks: usize,
    pub completed: usize,
    pub failed: usize,
    pub pending: usize,
    /// Wall time from acceptance to the last result.
    pub duration_ms: u64,
    pub created_at: Timestamp,
    pub finished_at: Timestamp,
    /// Per task, in plan order. Empty when `truncated`.
    #[serde(default)]
    pub tasks: Vec<ReportTask>,
    /// The same report as markdown, for people.
    pub markdown: String,
    /// Set when the per-task list was left out to fit the server's payload limit;
    /// every result is still in `mesh_results`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub truncated: bool,
}

/// The reply of `mesh.plans.get.<plan_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub plan_id: String,
    pub status: PlanStatus,
    pub total_tasks: usize,
    pub completed: usize,
    pub failed: usize,
    pub pending: usize,
    /// Per task id: its result, or `{"status":"pending"}`.
    pub tasks: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// `cap.<capability>` in `mesh_registry`: a pool serves this capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityEntry {
    pub capability: String,
    pub actions: Vec<String>,
    pub pool: String,
    /// How the pool wants its task messages encoded (`json` or `msgpack`).
    #[serde(default)]
    pub encoding: crate::codec::Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<Timestamp>,
}

/// The value of a lease key in `mesh_leases` (`chief`, …): who holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's instance id (`chief-3fa2c1`).
    pub holder: String,
    /// The revision at which the holder acquired the lease: its fencing token.
    pub term: u64,
    pub acquired_at: Timestamp,
    pub renewed_at: Timestamp,
    pub ttl_ms: u64,
}

/// A dead letter in `MESH_DLQ`: the message is the original body (with its
/// `Content-Type`), and these fields ride in `Jetmesh-Dlq-*` headers, so that
/// `nats stream view MESH_DLQ` shows both and a replay is byte for byte.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeadLetter {
    /// `max_deliveries` or `undecodable`.
    pub reason: String,
    /// What went wrong, for people.
    pub detail: String,
    pub pool: String,
    /// The queue subject the task was on (where a replay goes).
    pub subject: String,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u64,
    pub plan_id: Option<String>,
    pub task_id: Option<String>,
}

impl DeadLetter {
    pub const REASON: &'static str = "Jetmesh-Dlq-Reason";
    pub const DETAIL: &'static str = "Jetmesh-Dlq-Detail";
    pub const POOL: &'static str = "Jetmesh-Dlq-Pool";
    pub const SUBJECT: &'static str = "Jetmesh-Dlq-Subject";
    pub const ATTEMPTS: &'static str = "Jetmesh-Dlq-Attempts";
    pub const PLAN: &'static str = "Jetmesh-Dlq-Plan-Id";
    pub const TASK: &'static str = "Jetmesh-Dlq-Task-Id";

    pub fn to_headers(&self, headers: &mut async_nats::HeaderMap) {
        // Header values are single lines.
        let detail: String = self
            .detail
            .replace(['\r', '\n'], " ")
            .chars()
            .take(1000)
            .collect();
        headers.insert(Self::REASON, self.reason.as_str());
        headers.insert(Self::DETAIL, detail.as_str());
        headers.insert(Self::POOL, self.pool.as_str());
        headers.insert(Self::SUBJECT, self.subject.as_str());
        headers.insert(Self::ATTEMPTS, self.attempts.to_string().as_str());
        if let Some(p) = &self.plan_id {
            headers.insert(Self::PLAN, p.as_str());
        }
        if let Some(t) = &self.task_id {
            headers.insert(Self::TASK, t.as_str());
        }
    }

    pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> DeadLetter {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        DeadLetter {
            reason: get(Self::REASON).unwrap_or_default(),
            detail: get(Self::DETAIL).unwrap_or_default(),
            pool: get(Self::POOL).unwrap_or_default(),
            subject: get(Self::SUBJECT).unwrap_or_default(),
            attempts: get(Self::ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            plan_id: get(Self::PLAN),
            task_id: get(Self::TASK),
        }
    }
}

/// `mesh.health.<role>.<instance>`: a role started, is stopping, or (said by
/// the health monitor about a worker that stopped heartbeating) is `dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    pub role: String,
    pub instance: String,
    /// `started`, `stopping` or `dead`.
    pub state: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Why, for `dead`: how long no heartbeat came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `worker.<pool>.<instance>` in `mesh_health`: a worker process's heartbeat,
/// rewritten every `health.heartbeat_ms`. A foreign worker may write one too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub pool: String,
    pub instance: String,
    /// Concurrent task slots the process runs now.
    pub slots: usize,
    /// Slots executing a task now.
    pub busy: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub started_at: Timestamp,
    pub at: Timestamp,
}

/// `mesh.alerts.<pool>`: something an operator should know about a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub pool: String,
    /// `worker_dead`, `pool_down`, …
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub at: Timestamp,
}

/// `pool.<pool>` in `mesh_scale`: how many task slots each live process of the
/// pool should run. A process not named keeps its own count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecision {
    pub pool: String,
    pub slots: std::collections::BTreeMap<String, usize>,
    pub reason: String,
    pub at: Timestamp,
    /// The autoscaler's lease term when it decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// `status.<pool>` in `mesh_scale`: a pool's live status (the seed's
/// `agent:pool:status`), written by the autoscaler every interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pool: String,
    /// Task slots across the pool's live processes.
    pub workers: usize,
    /// Live processes (heartbeating).
    pub processes: usize,
    /// Slots in processes that heartbeat (equal to `workers`; kept apart for
    /// the seed's table).
    pub healthy: usize,
    pub busy: usize,
    pub idle: usize,
    /// Tasks in the JetStream queue: waiting (`pending`) plus delivered and
    /// not yet acked (`ack_pending`).
    pub queue_depth: u64,
    pub pending: u64,
    pub ack_pending: u64,
    /// Ready tasks routers hold back beyond the pool's queue window.
    pub held: u64,
    /// Age of the oldest task not yet delivered to a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_wait_ms: Option<u64>,
    /// Pull requests workers have waiting on the pool's consumer (foreign
    /// workers without heartbeats show up here).
    pub waiting_pulls: usize,
    /// Whether anything serves the pool: a heartbeat, a waiting pull, a task
    /// in progress, or a delivery within `health.dead_after_ms`.
    pub live: bool,
    /// Every slot busy and more than `overload_queue` tasks waiting.
    pub overloaded: bool,
    /// Backlog (`pending + held`) past `max_backlog`: new work is refused.
    pub refusing: bool,
    /// For refusals: about when the backlog will be under the limit again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Tasks acked per second over the last interval.
    pub drain_per_sec: f64,
    /// Seconds the pool has had an idle slot and a short queue.
    pub idle_secs: u64,
    /// The last scaling action: `stable`, `scaling up → 6`, …
    pub action: String,
    pub min: usize,
    pub max: usize,
    pub at: Timestamp,
}

/// `router.<instance>` in `mesh_health`: a router's heartbeat, with the ready
/// tasks it holds per pool (beyond the pools' queue windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterHeartbeat {
    pub instance: String,
    pub held: std::collections::BTreeMap<String, u64>,
    pub at: Timestamp,
}

// ---------------------------------------------------------------------------
// Coordination (seed 2): epics, tracks, beads, claims, reservations, mail.
// ---------------------------------------------------------------------------

/// An execution plan: an epic made of parallel tracks of beads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Epic {
    /// The epic id; it is also the plan id and the mail threads' first token.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The working tree the tracks share; it must lie under one of the agent
    /// workers' `agent.roots`. Absent: the workers' `agent.workdir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The allowlisted command (a key of `[agent.commands]`) that works on
    /// each bead. Absent: `agent.default_command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub tracks: Vec<Track>,
    /// "Track 2 starts after bd-11", "bd-30 depends on bd-21".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<TrackDependency>,
}

/// A track: one agent working through its beads in order, inside its scope.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    /// `1`, `2`, `sdk`: a subject token (`mesh.mail.<epic>.track.<id>`).
    pub id: String,
    /// The track's agent name (`BlueLake`); mail to it goes to its inbox.
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Globs of the files this track may change.
    pub scope: Vec<String>,
    /// Run in this order.
    pub beads: Vec<Bead>,
}

/// A bead: one unit of an agent's work.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bead {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Globs the bead reserves while it runs (inside the track's scope).
    /// Absent: the whole scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// A cross-track dependency: `bead` (or the first bead of `track`) starts
/// only after `after` completed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackDependency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bead: Option<String>,
    pub after: String,
}

/// The parameters of an `agent.bead` task, as the chief compiles them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeadTask {
    pub epic: String,
    pub track: String,
    pub bead: String,
}

/// The live state of an epic (`epic.<id>` in `mesh_plans`), kept by the
/// chief: paused tracks, scope granted by decisions, open blockers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EpicState {
    #[serde(default = "one")]
    pub v: u32,
    pub epic: String,
    #[serde(default)]
    pub complete: bool,
    /// Track id → why it is paused. A paused track starts no new bead.
    #[serde(default)]
    pub paused: std::collections::BTreeMap<String, String>,
    /// Track id → globs added to its scope by decisions.
    #[serde(default)]
    pub grants: std::collections::BTreeMap<String, Vec<String>>,
    /// Blockers by the sequence number of their message.
    #[serde(default)]
    pub blockers: std::collections::BTreeMap<u64, BlockerState>,
    /// Beads whose completion the chief has seen on the epic thread.
    #[serde(default)]
    pub done: std::collections::BTreeSet<String>,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// A blocker as the chief tracks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockerState {
    pub bead: String,
    pub track: String,
    pub kind: BlockerKind,
    pub at: Timestamp,
    /// Tracks paused because of it.
    #[serde(default)]
    pub paused: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionAction>,
    #[serde(default)]
    pub escalated: bool,
}

/// A bead's claim (`claim.<epic>.<bead>` in `mesh_coord`): a lease renewed
/// by the claiming worker while it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub epic: String,
    pub track: String,
    pub bead: String,
    pub agent: String,
    /// The worker instance holding it.
    pub worker: String,
    pub at: Timestamp,
}

/// A file reservation (`res.<epic>.<id>` in `mesh_coord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub epic: String,
    /// The track whose scope bounds it; `None` for an operator's reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    /// Who holds it (an agent name, or `operator`).
    pub agent: String,
    /// The worker instance renewing it, when a worker holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bead: Option<String>,
    pub patterns: Vec<String>,
    /// Exclusive reservations conflict with any overlapping one; shared ones
    /// only with exclusive ones.
    #[serde(default = "yes")]
    pub exclusive: bool,
    pub at: Timestamp,
}

fn yes() -> bool {
    true
}

/// A reservation request (`mesh.coord.reserve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    pub epic: String,
    pub agent: String,
    /// The track whose scope bounds the reservation (default: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    pub patterns: Vec<String>,
    #[serde(default = "yes")]
    pub exclusive: bool,
    /// Renews this reservation instead of making a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A release request (`mesh.coord.release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub epic: String,
    pub id: String,
}

/// What a message on a mail thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    #[default]
    Note,
    /// A progress report.
    Progress,
    /// Bead context for a track.
    Context,
    BeadStarted,
    BeadCompleted,
    Learning,
    Blocker,
    /// An answer to a blocker (`data` is a [`Decision`]).
    Decision,
    /// A blocker nobody answered in time.
    Escalation,
    EpicComplete,
    /// Acknowledges the message `reply_to`.
    Ack,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

/// A message of agent mail, stored in `MESH_MAIL` on its thread's subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mail {
    #[serde(default = "one")]
    pub v: u32,
    /// Unique; also the `Nats-Msg-Id`, so a retried send is stored once.
    #[serde(default)]
    pub id: String,
    /// Readers take the epic and thread from the subject, so a plain
    /// `nats pub mesh.mail.E1.epic '{"from":"me","subject":"hi"}'` reads too.
    #[serde(default)]
    pub epic: String,
    /// `epic`, `track.<track>` or `inbox.<agent>`.
    #[serde(default)]
    pub thread: String,
    #[serde(default)]
    pub from: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    #[serde(default)]
    pub kind: MailKind,
    #[serde(default)]
    pub subject: String,
    /// Markdown.
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub importance: Importance,
    #[serde(default)]
    pub ack_required: bool,
    /// The stream sequence of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Structured content: a [`Blocker`], a [`Decision`], a bead's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default = "Timestamp::now")]
    pub at: Timestamp,
    /// The message's stream sequence (its number); set by readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A mail as a sender writes it (`mesh.mailbox.send`, `jetmesh mail send`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailDraft {
    /// The epic and thread, or a thread address `<epic>.epic`,
    /// `<epic>.track.<track>`, `<epic>.inbox.<agent>` in `thread` alone.
    #[serde(default)]
    pub epic: String,
    pub thread: String,
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub kind: MailKind,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub importance: Importance,
    #[serde(default)]
    pub ack_required: bool,
    #[serde(default)]
    pub reply_to: Option<u64>,
    #[serde(default)]
    pub data: Option<Value>,
}

/// A reply (`mesh.mailbox.reply`): it goes to the thread of `reply_to`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailReply {
    pub reply_to: u64,
    pub from: String,
    #[serde(default)]
    pub kind: Option<MailKind>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub importance: Importance,
    #[serde(default)]
    pub data: Option<Value>,
}

/// An acknowledgement (`mesh.mailbox.ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailAck {
    pub seq: u64,
    pub agent: String,
}

/// The answer to a send, reply or ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailSent {
    pub seq: u64,
    pub id: String,
    pub subject: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    /// The bead changed files outside its track's scope.
    ScopeViolation,
    /// It changed files in scope it had not reserved, or could not reserve.
    ReservationConflict,
    /// The agent command failed (non-zero exit, timeout).
    AgentFailed,
    /// The agent itself said it is stuck.
    AgentBlocked,
}

impl BlockerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockerKind::ScopeViolation => "scope_violation",
            BlockerKind::ReservationConflict => "reservation_conflict",
            BlockerKind::AgentFailed => "agent_failed",
            BlockerKind::AgentBlocked => "agent_blocked",
        }
    }
}

/// The `data` of a blocker message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub kind: BlockerKind,
    pub bead: String,
    pub track: String,
    pub agent: String,
    pub worker: String,
    /// Files involved (changed outside scope, or contested).
    #[serde(default)]
    pub files: Vec<String>,
    /// Other holders involved, for conflicts.
    #[serde(default)]
    pub holders: Vec<String>,
    /// How many blockers this bead has raised, this one included.
    pub attempt: u32,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    /// Run the bead again here (with the decision's note as guidance).
    Retry,
    /// Give the bead back so that another worker takes it.
    Reassign,
    /// Mark the bead done without it; the track goes on.
    Skip,
    /// Fail the bead (`blocked`); what depends on it fails too.
    Abort,
}

impl DecisionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Retry => "retry",
            DecisionAction::Reassign => "reassign",
            DecisionAction::Skip => "skip",
            DecisionAction::Abort => "abort",
        }
    }
}

/// The `data` of a decision message: what the worker must do about a blocker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub action: DecisionAction,
    /// Guidance handed to the agent on a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A plan change: globs added to the track's scope (then the changes
    /// that were outside it are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant: Vec<String>,
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
        return Err(error);
    }
    enc.decode::<T>(payload)
        .map_err(|e| Error::bad_request(format!("unexpected reply: {}", e.message)))
}

/// Hand-written decoding of [`Subtask`] and [`TaskMessage`]: one pass over the
/// map, known fields into their slots, everything else into `params`.
mod task_de {
    use super::{Subtask, TaskMessage};
    use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::{Map, Value};
    use std::fmt;

    /// A map key, borrowed when the format allows it.
    struct Key<'de>(std::borrow::Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(v.into()))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(v.to_owned().into()))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                    Ok(Key(v.into()))
                }
            }
            d.deserialize_str(V)
        }
    }

    struct TaskVisitor {
        /// Whether `plan_id` and `attempt` are fields (a queue message) or params.
        queued: bool,
    }

    type Decoded = (
        Subtask,
        Option<String>,
        Option<u32>,
        Option<jiff::Timestamp>,
    );

    /// The next value, with the field's name in any error ("depends_on: …").
    fn field<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
        map: &mut A,
        name: &str,
    ) -> Result<T, A::Error> {
        map.next_value::<T>()
            .map_err(|e| de::Error::custom(format_args!("field {name}: {e}")))
    }

    fn set<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
        if slot.replace(value).is_some() {
            return Err(E::duplicate_field(name));
        }
        Ok(())
    }

    impl<'de> Visitor<'de> for TaskVisitor {
        type Value = Decoded;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a task object with \"type\" and \"action\"")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
            let (mut id, mut capability, mut action) = (None, None, None);
            let (mut depends_on, mut priority, mut timeout_ms, mut retries) =
                (None, None, None, None);
            let (mut plan_id, mut attempt, mut deadline) = (None, None, None);
            let mut params = Map::new();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                match key.as_ref() {
                    "id" => set(&mut id, field(&mut map, "id")?, "id")?,
                    "type" => set(&mut capability, field(&mut map, "type")?, "type")?,
                    "action" => set(&mut action, field(&mut map, "action")?, "action")?,
                    "depends_on" => set(
                        &mut depends_on,
                        field(&mut map, "depends_on")?,
                        "depends_on",
                    )?,
                    "priority" => set(&mut priority, field(&mut map, "priority")?, "priority")?,
                    "timeout_ms" => set(
                        &mut timeout_ms,
                        field(&mut map, "timeout_ms")?,
                        "timeout_ms",
                    )?,
                    "retries" => set(&mut retries, field(&mut map, "retries")?, "retries")?,
                    "plan_id" if self.queued => {
                        set(&mut plan_id, field(&mut map, "plan_id")?, "plan_id")?
                    }
                    "attempt" if self.queued => {
                        set(&mut attempt, field(&mut map, "attempt")?, "attempt")?
                    }
                    "deadline" if self.queued => {
                        set(&mut deadline, field(&mut map, "deadline")?, "deadline")?
                    }
                    _ => {
                        let value = map.next_value::<Value>()?;
                        if params.insert(key.into_owned(), value).is_some() {
                            return Err(de::Error::custom("duplicate parameter"));
                        }
                    }
                }
            }
            let task = Subtask {
                id: id.unwrap_or_default(),
                capability: capability.ok_or_else(|| de::Error::missing_field("type"))?,
                action: action.ok_or_else(|| de::Error::missing_field("action"))?,
                depends_on: depends_on.unwrap_or_default(),
                priority: priority.unwrap_or_default(),
                timeout_ms: timeout_ms.flatten(),
                retries: retries.flatten(),
                params,
            };
            Ok((task, plan_id, attempt, deadline.flatten()))
        }
    }

    impl<'de> Deserialize<'de> for Subtask {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(TaskVisitor { queued: false })
                .map(|(t, _, _, _)| t)
        }
    }

    impl<'de> Deserialize<'de> for TaskMessage {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (task, plan_id, attempt, deadline) =
                d.deserialize_map(TaskVisitor { queued: true })?;
            Ok(TaskMessage {
                plan_id: plan_id.ok_or_else(|| de::Error::missing_field("plan_id"))?,
                task,
                attempt: attempt.unwrap_or(1),
                deadline,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;
    use serde_json::json;

    #[test]
    fn result_bundle_splits_on_whole_frames_and_decodes() {
        let mut bundle = ResultBundle::default();
        let values: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    format!("t{i}"),
                    format!(r#"{{"status":"success","output":{i}}}"#),
                )
            })
            .collect();
        for (id, v) in &values {
            bundle.push(id, v.as_bytes());
        }
        assert_eq!(bundle.len(), 50);
        let one = bundle.parts(1 << 20).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].len(), 1 + bundle.size());
        let parts = bundle.parts(200).unwrap();
        assert!(parts.len() > 5, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= 200));
        let decoded: Vec<(String, String)> = parts
            .iter()
            .flat_map(|p| ResultBundle::decode(p).unwrap())
            .map(|(id, v)| (id.to_string(), String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        assert_eq!(decoded, values);
        // A frame that fits no part: no bundle.
        assert_eq!(bundle.parts(20), None);
        // An empty bundle is one part with no frames.
        let empty = ResultBundle::default().parts(100).unwrap();
        assert_eq!(ResultBundle::decode(&empty[0]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_result_bundle_parts_are_refused() {
        let mut bundle = ResultBundle::default();
        bundle.push("t1", b"{}");
        let part = bundle.parts(100).unwrap().remove(0);
        for bad in [
            &b""[..],
            &[2u8, 0, 0][..],
            &part[..part.len() - 1],
            &part[..3],
            &[1u8, 2, 0, 0xff, 0xfe, 0, 0, 0, 0][..],
        ] {
            let e = ResultBundle::decode(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn seed_plan_parses_with_params_kept() {
        let plan: Plan = serde_json::from_value(json!({
            "plan_id": "abc123",
            "subtasks": [
                {"id": "t1", "type": "math", "action": "sum", "args": [1, 2, 3]},
                {"id": "t2", "type": "date", "action": "today"},
                {"id": "t3", "type": "web", "action": "navigate", "url": "https://x"},
                {"id": "t4", "type": "math", "action": "multiply", "args": [5, 6],
                 "depends_on": ["t1"], "priority": "high", "timeout_ms": 5000}
            ]
        }))
        .unwrap();
        assert_eq!(plan.subtasks.len(), 4);
        assert_eq!(plan.subtasks[0].params["args"], json!([1, 2, 3]));
        assert_eq!(plan.subtasks[2].params["url"], json!("https://x"));
        assert_eq!(plan.subtasks[3].depends_on, vec!["t1"]);
        assert_eq!(plan.subtasks[3].priority, Priority::High);
        assert!(!plan.subtasks[3].params.contains_key("priority"));
    }

    #[test]
    fn task_message_is_subtask_plus_plan_in_both_encodings() {
        let msg: TaskMessage = serde_json::from_value(json!({
            "plan_id":"abc123","id":"t1","type":"math","action":"sum","args":[1,2,3],"attempt":1
        }))
        .unwrap();
        assert_eq!(msg.task.capability, "math");
        assert_eq!(msg.task.params.len(), 1);
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let back: TaskMessage = enc.decode(&enc.encode(&msg).unwrap()).unwrap();
            assert_eq!(back, msg);
        }
        let v = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            v,
            json!({"plan_id":"abc123","id":"t1","type":"math","action":"sum","args":[1,2,3],"attempt":1})
        );
    }

    #[test]
    fn hand_written_decoding_matches_the_wire_shape() {
        // plan_id and attempt are params of a subtask, fields of a queue message.
        let t: Subtask = serde_json::from_value(json!({
            "type":"m","action":"a","plan_id":"p","attempt":3,"timeout_ms":null
        }))
        .unwrap();
        assert_eq!(t.params["plan_id"], json!("p"));
        assert_eq!(t.params["attempt"], json!(3));
        assert_eq!(t.timeout_ms, None);
        let m: TaskMessage =
            serde_json::from_value(json!({"plan_id":"p","id":"t","type":"m","action":"a"}))
                .unwrap();
        assert_eq!((m.plan_id.as_str(), m.attempt, m.deadline), ("p", 1, None));
        assert!(m.task.params.is_empty());
        // A queue message's deadline is a field, in both encodings; a subtask's is a param.
        let m: TaskMessage = serde_json::from_value(json!({
            "plan_id":"p","id":"t","type":"m","action":"a","deadline":"2026-11-21T12:00:00Z"
        }))
        .unwrap();
        assert_eq!(m.deadline, Some("2026-11-21T12:00:00Z".parse().unwrap()));
        for enc in [Encoding::Json, Encoding::Msgpack] {
            assert_eq!(
                enc.decode::<TaskMessage>(&enc.encode(&m).unwrap()).unwrap(),
                m
            );
        }
        let t: Subtask =
            serde_json::from_value(json!({"type":"m","action":"a","deadline":1})).unwrap();
        assert_eq!(t.params["deadline"], json!(1));
        let e = serde_json::from_value::<TaskMessage>(json!({"id":"t","type":"m","action":"a"}))
            .unwrap_err();
        assert!(e.to_string().contains("plan_id"), "{e}");
        let e =
            serde_json::from_str::<Subtask>(r#"{"type":"m","type":"n","action":"a"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e = serde_json::from_value::<Subtask>(json!({"type":"m","action":"a","retries":-1}))
            .unwrap_err();
        assert!(e.to_string().contains("invalid value"), "{e}");
        // Escaped keys (owned, not borrowed) work too.
        let t: Subtask =
            serde_json::from_str(r#"{"t\u0079pe":"m","action":"a","\u0061rgs":[1]}"#).unwrap();
        assert_eq!(
            (t.capability.as_str(), &t.params["args"]),
            ("m", &json!([1]))
        );
    }

    #[test]
    fn minimal_foreign_results_parse() {
        let r: TaskResult = serde_json::from_str(r#"{"status":"success","output":6}"#).unwrap();
        assert!(r.is_success());
        assert_eq!(r.attempt, 1);
        let r: TaskResult =
            serde_json::from_str(r#"{"status":"failed","error":{"code":"smtp_down"}}"#).unwrap();
        assert_eq!(r.status, TaskStatus::Unknown);
        assert!(r.is_terminal() && !r.is_success());
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(serde_json::from_value::<Plan>(json!({"subtasks": "t1"})).is_err());
        assert!(
            serde_json::from_value::<Plan>(json!({"subtasks":[{"id":"t1","type":"math"}]}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<Plan>(
                json!({"subtasks":[{"id":"t1","type":"math","action":"sum","depends_on":"t0"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn error_replies_decode_to_errors() {
        let body = serde_json::to_vec(&ErrorReply::new(&Error::new(
            ErrorCode::UnknownCapability,
            "no pool serves x",
        )))
        .unwrap();
        let err = decode_reply::<SubmitReply>(Encoding::Json, &body).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownCapability);
        let ok = serde_json::to_vec(&json!({"plan_id":"p","status":"accepted"})).unwrap();
        assert_eq!(
            decode_reply::<SubmitReply>(Encoding::Json, &ok)
                .unwrap()
                .plan_id,
            "p"
        );
    }
}
