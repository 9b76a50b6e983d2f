//! The capability interface: what a pool process executes. A capability is a
//! named set of actions; a pool process hosts one or more. The worker runtime
//! knows capabilities only through [`Capability`] and finds them through a
//! [`Catalog`]; the built-in ones live in `jetmesh-capabilities`, each behind
//! a cargo feature, so their dependencies stay out of builds that do not
//! want them.

use crate::{Error, Mesh};
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What a worker can execute.
pub trait Capability: Send + Sync {
    /// The registry name (`math`).
    fn name(&self) -> &'static str;
    /// Every action it offers (`sum`, `divide`, …).
    fn actions(&self) -> &'static [&'static str];
    /// Runs `action` with the task's parameters (`{"args":[1,2,3]}`, …).
    /// Errors carry stable codes: protocol codes such as `invalid_args`, or
    /// the capability's own (`division_by_zero`, …).
    fn execute<'a>(
        &'a self,
        action: &'a str,
        params: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, Error>>;
}

/// Where a pool process finds the capabilities it can serve.
pub trait Catalog: Send + Sync {
    /// The names of every capability this catalog can build.
    fn names(&self) -> Vec<&'static str>;
    /// The capability `name` for the pool process `instance` (capabilities
    /// that coordinate, like `agent`, use the mesh), if the catalog has it.
    fn build(&self, name: &str, mesh: &Mesh, instance: &str) -> Option<Arc<dyn Capability>>;

    /// Whether every capability of `pool` is in this catalog, so a pool
    /// process can serve it (others are served by foreign workers).
    fn serves(&self, config: &crate::Config, pool: &str) -> bool {
        let names = self.names();
        config
            .pool_capabilities(pool)
            .iter()
            .all(|c| names.contains(&c.as_str()))
    }
}
