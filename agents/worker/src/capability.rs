//! The capability interface. A capability is a named set of actions; a pool
//! process hosts one or more. Adding a built-in capability is one file under
//! `caps/` plus one line in [`builtin`].

use futures::future::BoxFuture;
use jetmesh_shared::{Error, Mesh};
use serde_json::{Map, Value};
use std::sync::Arc;

/// What a worker can execute.
pub trait Capability: Send + Sync {
    /// The registry name (`math`).
    fn name(&self) -> &'static str;
    /// Every action it offers (`sum`, `divide`, …).
    fn actions(&self) -> &'static [&'static str];
    /// Runs `action` with the task's parameters (`{"args":[1,2,3]}`, …).
    /// Errors carry stable codes: `invalid_args`, `unknown_action`,
    /// `division_by_zero`, `overflow`, …
    fn execute<'a>(
        &'a self,
        action: &'a str,
        params: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, Error>>;
}

/// The names of the built-in capabilities.
pub const BUILTIN: &[&str] = &["math", "date", "sim", "agent"];

/// The built-in capability called `name`, if there is one, for the worker
/// process `worker` (capabilities that coordinate, like `agent`, use the mesh).
pub fn builtin(name: &str, mesh: &Mesh, worker: &str) -> Option<Arc<dyn Capability>> {
    match name {
        "math" => Some(Arc::new(crate::caps::math::Math)),
        "date" => Some(Arc::new(crate::caps::date::Date::default())),
        "sim" => Some(Arc::new(crate::caps::sim::Sim)),
        "agent" => Some(Arc::new(crate::caps::agent::Agent::new(
            mesh.clone(),
            worker.to_string(),
        ))),
        _ => None,
    }
}
