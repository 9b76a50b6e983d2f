//! The capability interface: what a pool process executes. A capability is a
//! named set of actions; a pool process hosts one or more. The worker runtime
//! knows capabilities only through [`Capability`] and finds them through a
//! [`Catalog`]; the built-in ones live in `jetmesh-capabilities`, each behind
//! a cargo feature, so their dependencies stay out of builds that do not
//! want them.
//!
//! Each action describes itself ([`Action`]): a one-line description and a
//! JSON Schema of its parameters. The worker publishes both in its registry
//! entry, the router refuses a task whose parameters break the schema
//! (`invalid_args`, naming the field), and planners and the gateway read them
//! to learn what a capability takes.

use crate::codec::Encoding;
use crate::wire::{ActionSchema, CapabilityEntry};
use crate::{Error, Mesh};
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One action of a capability, as the registry describes it.
#[derive(Debug, Clone, Copy)]
pub struct Action {
    /// The action's name (`sum`).
    pub name: &'static str,
    /// One line, for people and planners.
    pub description: &'static str,
    /// A JSON Schema (draft 2020-12, as JSON text) of the action's
    /// parameters: the task's fields other than the protocol's own (`id`,
    /// `type`, `action`, `depends_on`, …).
    pub params: &'static str,
}

/// One task handed to a capability.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub action: &'a str,
    /// The task's parameters (`{"args":[1,2,3]}`, …).
    pub params: &'a Map<String, Value>,
    pub plan_id: &'a str,
    pub task_id: &'a str,
    /// The task's session (its `session` field, or else its plan): tasks of
    /// one session share state, such as a browser page.
    pub session: &'a str,
}

impl<'a> Call<'a> {
    /// A call outside any plan (tests, tools).
    pub fn bare(action: &'a str, params: &'a Map<String, Value>) -> Call<'a> {
        Call {
            action,
            params,
            plan_id: "",
            task_id: "",
            session: "",
        }
    }
}

/// What a worker can execute.
pub trait Capability: Send + Sync {
    /// The registry name (`math`).
    fn name(&self) -> &'static str;
    /// Every action it offers, with its description and parameter schema.
    fn actions(&self) -> &'static [Action];
    /// Runs one task. Errors carry stable codes: protocol codes such as
    /// `invalid_args`, or the capability's own (`division_by_zero`, …).
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>>;

    /// Whether the action exists.
    fn has_action(&self, action: &str) -> bool {
        self.actions().iter().any(|a| a.name == action)
    }

    /// Whether tasks of one session share state here (a browser page), so
    /// that they must run in order on the worker holding it. The router
    /// orders them, and the worker runtime sends each to its holder.
    fn sessions(&self) -> bool {
        false
    }

    /// Whether `session` is still open here (a capability closes idle
    /// sessions on its own; the runtime then stops answering for them).
    fn holds(&self, session: &str) -> bool {
        let _ = session;
        false
    }

    /// Closes `session` (its plan ended): frees what it holds. Idempotent.
    fn close_session<'a>(&'a self, session: &'a str) -> BoxFuture<'a, ()> {
        let _ = session;
        Box::pin(async {})
    }
}

/// The registry entry a pool writes for `cap`: its actions with their
/// descriptions and schemas. Errors (`bad_registration`) when a schema is
/// not valid JSON or not a valid JSON Schema: a bug in the capability.
pub fn entry(
    cap: &dyn Capability,
    pool: &str,
    encoding: Encoding,
) -> crate::Result<CapabilityEntry> {
    let mut schemas = BTreeMap::new();
    for a in cap.actions() {
        let params: Value = serde_json::from_str(a.params).map_err(|e| {
            Error::new(
                crate::ErrorCode::BadRegistration,
                format!(
                    "{}.{}: the parameter schema is not JSON: {e}",
                    cap.name(),
                    a.name
                ),
            )
        })?;
        let schema = ActionSchema {
            description: Some(a.description.to_string()),
            params: Some(params),
        };
        crate::registry::compile(cap.name(), a.name, &schema)?;
        schemas.insert(a.name.to_string(), schema);
    }
    Ok(CapabilityEntry {
        capability: cap.name().to_string(),
        actions: cap.actions().iter().map(|a| a.name.to_string()).collect(),
        pool: pool.to_string(),
        encoding,
        description: None,
        registered_at: Some(jiff::Timestamp::now()),
        schemas,
        sessions: cap.sessions(),
    })
}

/// `cap`'s registry entry as the router reads it, schemas compiled: what a
/// capability's tests check their schemas with.
pub fn registered(cap: &dyn Capability) -> crate::Result<crate::registry::Registered> {
    let e = entry(cap, cap.name(), Encoding::default())?;
    let key = format!("cap.{}", cap.name());
    crate::registry::check(&key, &crate::codec::to_json(&e)?)
}

/// Where a pool process finds the capabilities it can serve.
pub trait Catalog: Send + Sync {
    /// The names of every capability this catalog can build.
    fn names(&self) -> Vec<&'static str>;
    /// The capability `name` for the pool process `instance` (capabilities
    /// that coordinate, like `agent`, use the mesh), if the catalog has it.
    fn build(&self, name: &str, mesh: &Mesh, instance: &str) -> Option<Arc<dyn Capability>>;

    /// Why `capability` cannot run on this machine (its browser is not
    /// installed, …), in one line that says how to fix it; `None` when it can.
    fn unavailable(&self, config: &crate::Config, capability: &str) -> Option<String> {
        let _ = (config, capability);
        None
    }

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

/// Reading a task's parameters, with `invalid_args` naming the one that is
/// wrong. `null` counts as absent. (The schema has usually refused bad ones
/// already; these keep a capability honest when called directly.)
pub mod params {
    use crate::Error;
    use serde_json::{Map, Value};

    /// A string parameter that must be there.
    pub fn str<'a>(p: &'a Map<String, Value>, name: &str) -> Result<&'a str, Error> {
        opt_str(p, name)?.ok_or_else(|| Error::invalid_args(format!("{name} is required")))
    }

    /// A string parameter that may be left out.
    pub fn opt_str<'a>(p: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Error> {
        match p.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::invalid_args(format!("{name} must be a string"))),
        }
    }

    /// A boolean parameter that may be left out.
    pub fn opt_bool(p: &Map<String, Value>, name: &str) -> Result<Option<bool>, Error> {
        match p.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::invalid_args(format!("{name} must be true or false"))),
        }
    }
}
