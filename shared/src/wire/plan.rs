//! Plans: the submit request and reply, the planner exchange, the plan
//! record in `mesh_plans`, its counts in `mesh_results`, the result bundle,
//! the final report and the `mesh.plans.get` view.

use super::*;

/// A plan: a goal, explicit subtasks, or both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// Generated when absent; when given, it follows the id rule.
    #[serde(
        default,
        deserialize_with = "given_id",
        skip_serializing_if = "String::is_empty"
    )]
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
    /// An execution plan (seed 2), opaque here: the coordination layer
    /// (`jetmesh-coord`) reads it, compiles it into `subtasks` (one
    /// `agent.bead` task per bead) and keeps it here for the workers.
    /// `null` is no epic, in either encoding (MessagePack's nil would
    /// otherwise read as `Some(Null)`, and JSON's `null` as `None`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_null"
    )]
    pub epic: Option<Value>,
}

/// An optional value where `null` means absent.
fn non_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()))
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
    /// Plan (and validate) only: the reply is the plan, nothing is stored or run.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dry_run: bool,
}

/// How a submit request is read: the same fields, flat, so that a plan of
/// thousands of subtasks is decoded in one pass (`flatten` would buffer it).
#[derive(Deserialize)]
struct SubmitRequestWire {
    #[serde(default, deserialize_with = "given_id")]
    plan_id: String,
    #[serde(default)]
    goal: Option<String>,
    #[serde(default)]
    subtasks: Vec<Subtask>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default, deserialize_with = "non_null")]
    epic: Option<Value>,
    #[serde(default)]
    wait: bool,
    #[serde(default)]
    wait_timeout_ms: Option<u64>,
    #[serde(default)]
    dry_run: bool,
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
            dry_run: w.dry_run,
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
    /// The plan will not run: it is planned and validated, but not admitted
    /// (no live workers are needed).
    #[serde(default, skip_serializing_if = "is_default")]
    pub dry_run: bool,
}

/// The planner's answer. `plan` is left out when the plan it was sent is
/// valid exactly as sent (an explicit, normalized plan), so a plan of
/// thousands of subtasks does not cross back.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlannerReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// The LLM calls planning made (none for an explicit plan).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub llm: Vec<LlmCall>,
}

/// The reply of `mesh.plans.submit` with `dry_run`: the plan as it would
/// run, and what planning it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunReply {
    pub plan_id: String,
    /// `planned`.
    pub status: String,
    pub plan: Plan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmUsage>,
}

/// One call to an LLM provider (or one provider skipped), as recorded with
/// the plan and the report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LlmCall {
    /// The provider's name in `[planner.providers]`.
    pub provider: String,
    pub model: String,
    /// `plan`, `repair` or `narrative`.
    pub purpose: String,
    /// `ok`, or why the chain moved on: `rate_limited`, `server_error`,
    /// `timeout`, `unreachable`, `refused`, `unusable`, `client_error`, and
    /// for a provider not called at all `circuit_open`, `cooling_down`,
    /// `busy`, `local_rate_limit`, `budget_exceeded`.
    pub outcome: String,
    /// The HTTP status, when there was an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub latency_ms: u64,
    /// In US dollars, from `[planner.prices]`; 0 when the model has no price.
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: Timestamp,
}

impl LlmCall {
    /// Whether the provider was called (as opposed to skipped).
    pub fn called(&self) -> bool {
        self.http_status.is_some() || self.latency_ms > 0 || self.outcome == "ok"
    }
}

/// The LLM calls of a plan and their totals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LlmUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub calls: Vec<LlmCall>,
}

impl LlmUsage {
    /// The totals of `calls`; `None` when there are none.
    pub fn of(calls: Vec<LlmCall>) -> Option<LlmUsage> {
        if calls.is_empty() {
            return None;
        }
        Some(LlmUsage {
            input_tokens: calls.iter().map(|c| c.input_tokens).sum(),
            output_tokens: calls.iter().map(|c| c.output_tokens).sum(),
            cost_usd: calls.iter().map(|c| c.cost_usd).sum(),
            calls,
        })
    }
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
    /// The LLM calls that planned it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub llm: Vec<LlmCall>,
    /// The plan's trace context (W3C `traceparent`), so that every role's
    /// spans for it join one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
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
    /// An LLM-written account of the results, when a provider is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrative: Option<String>,
    /// Why there is no narrative although a provider is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrative_error: Option<ErrorBody>,
    /// The LLM calls of the plan: planning, repairs and the narrative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmUsage>,
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
    /// The LLM calls of the plan so far, with their totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}
