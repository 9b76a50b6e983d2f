//! Events on `MESH_EVENTS`: the seed's message-bus channels
//! (`task_available`, `plan_ready`, `aggregation_ready`; the final report is
//! a [`super::Report`]), role health and alerts.

use super::*;

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
