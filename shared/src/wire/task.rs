//! Tasks and their results: a subtask as users write it, the task message
//! on a pool queue, the result object in `mesh_results`, and a dead letter.

use super::*;

/// Task priority; the queue subject ends with it (`mesh.queue.<pool>.high`).
/// Read only from its name: MessagePack would otherwise take a number as a
/// variant index, which JSON refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        match name.as_ref() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(serde::de::Error::custom(format_args!(
                "priority {other:?} is not one of high, normal, low"
            ))),
        }
    }
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// The session the task belongs to (default: its plan). Tasks of one
    /// session of a capability that keeps sessions (`web`) share state, such
    /// as a browser page, and run one at a time in plan order on the worker
    /// that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The action's parameters, e.g. `{"args":[1,2,3]}`.
    #[serde(flatten)]
    pub params: Map<String, Value>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// A large output kept in the object store (`mesh_objects`) rather than in
/// a result: a screenshot, a page dump, an archive. A task's output carries
/// it (as `"object"`, or in a list); `jetmesh obj get <key>` fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    /// In bytes.
    pub size: u64,
    /// Lowercase hex of the SHA-256 of the bytes.
    pub sha256: String,
    /// A media type (`image/png`, `text/markdown`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
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
    /// Structured detail (`planning_failed`: the last answer and the errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<Value>>,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        ErrorBody {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
            details: e.details.clone(),
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
            let mut session = None;
            let mut params = Map::new();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                match key.as_ref() {
                    "id" => {
                        let value: String = field(&mut map, "id")?;
                        if value.is_empty() {
                            crate::ids::refuse();
                            return Err(de::Error::custom(format_args!(
                                "field id: \"\" {}; leave the id out to get one",
                                crate::ids::RULE
                            )));
                        }
                        set(&mut id, value, "id")?
                    }
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
                    "session" => set(&mut session, field(&mut map, "session")?, "session")?,
                    "plan_id" if self.queued => {
                        set(&mut plan_id, field(&mut map, "plan_id")?, "plan_id")?
                    }
                    "attempt" if self.queued => {
                        set(&mut attempt, field(&mut map, "attempt")?, "attempt")?
                    }
                    "deadline" if self.queued => {
                        set(&mut deadline, field(&mut map, "deadline")?, "deadline")?
                    }
                    "plan_id" | "attempt" | "deadline" => {
                        return Err(de::Error::custom(format_args!(
                            "{key:?} belongs to a queued task, not to a subtask of a plan"
                        )));
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
                session: session.flatten(),
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
