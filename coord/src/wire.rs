//! Wire types of the coordination protocol (seed 2): epics, tracks, beads,
//! their live state, claims, file reservations, agent mail, blockers and
//! decisions. Like `jetmesh_shared::wire`, these are the only coordination
//! types serialized onto subjects, streams and buckets; readers ignore unknown
//! fields (except in an [`Epic`], which people write and which is checked
//! strictly) and writers never rename or remove one.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn one() -> u32 {
    1
}

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
