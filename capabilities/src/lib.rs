//! The built-in capabilities, one module each, each behind a cargo feature
//! of the same name (all on by default): a build without `agent` leaves git
//! worktrees and the coordination crate out, and the capabilities still to
//! come keep their heavy dependencies (a browser driver, mail, databases)
//! behind theirs. The worker runtime sees them only through
//! [`jetmesh_shared::capability::Capability`], found through [`Builtin`].

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "date")]
pub mod date;
#[cfg(feature = "db")]
pub mod db;
#[cfg(feature = "email")]
pub mod email;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "math")]
pub mod math;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "web")]
pub mod web;

use jetmesh_shared::Mesh;
use jetmesh_shared::capability::{Capability, Catalog};
use std::sync::Arc;

/// The capabilities built into this binary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

impl Catalog for Builtin {
    fn names(&self) -> Vec<&'static str> {
        vec![
            #[cfg(feature = "math")]
            "math",
            #[cfg(feature = "date")]
            "date",
            #[cfg(feature = "sim")]
            "sim",
            #[cfg(feature = "agent")]
            "agent",
            #[cfg(feature = "file")]
            "file",
            #[cfg(feature = "web")]
            "web",
            #[cfg(feature = "db")]
            "db",
            #[cfg(feature = "email")]
            "email",
        ]
    }

    fn unavailable(&self, config: &jetmesh_shared::Config, capability: &str) -> Option<String> {
        let _ = config;
        match capability {
            #[cfg(feature = "web")]
            "web" => web::Web::available(&config.web).err().map(|e| e.message),
            #[cfg(feature = "email")]
            "email" => email::Email::available(&config.email)
                .err()
                .map(|e| e.message),
            _ => None,
        }
    }

    fn build(&self, name: &str, mesh: &Mesh, instance: &str) -> Option<Arc<dyn Capability>> {
        let _ = (mesh, instance);
        match name {
            #[cfg(feature = "math")]
            "math" => Some(Arc::new(math::Math)),
            #[cfg(feature = "date")]
            "date" => Some(Arc::new(date::Date::default())),
            #[cfg(feature = "sim")]
            "sim" => Some(Arc::new(sim::Sim)),
            #[cfg(feature = "agent")]
            "agent" => Some(Arc::new(agent::Agent::new(
                mesh.clone(),
                instance.to_string(),
            ))),
            #[cfg(feature = "file")]
            "file" => Some(Arc::new(file::File::new(mesh.clone()))),
            #[cfg(feature = "web")]
            "web" => Some(Arc::new(web::Web::new(mesh.clone()))),
            #[cfg(feature = "db")]
            "db" => Some(Arc::new(db::Db::new(mesh))),
            #[cfg(feature = "email")]
            "email" => Some(Arc::new(email::Email::new(mesh.clone()))),
            _ => None,
        }
    }
}
