//! Pools and health: registry entries, leases, worker and router
//! heartbeats, and what the autoscaler writes to `mesh_scale`.

use super::*;
use std::collections::BTreeMap;

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
    /// Per action: a one-line description and a JSON Schema of its
    /// parameters. Optional: a capability without schemas still routes, and
    /// an action missing here takes any parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas: BTreeMap<String, ActionSchema>,
    /// Whether tasks of one session (the task's `session`, by default its
    /// plan) share state on the worker that holds it, like a browser page:
    /// the router then runs them one at a time, in plan order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sessions: bool,
}

/// What the registry says of one action (`schemas.<action>` of a
/// [`CapabilityEntry`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ActionSchema {
    /// One line, for people and planners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema (draft 2020-12 unless it says otherwise) of the
    /// parameters: the task's fields other than the protocol's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
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
