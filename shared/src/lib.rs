//! The library every jetmesh role uses. It owns what the roles share and nothing
//! else: the wire types of protocol v1 ([`wire`]), their encodings ([`codec`]),
//! every subject and bucket name ([`names`]), error codes ([`error`]), id rules
//! ([`ids`]), leader leases ([`lease`]), plan validation ([`plan`]), configuration ([`config`]), the
//! connection and stream setup ([`mesh`]), the live capability view
//! ([`registry`]), service API registration ([`service`]), telemetry and trace
//! context across roles ([`trace`]).
//! Roles depend on this crate and never on each other.

pub mod backoff;
pub mod capability;
pub mod codec;
pub mod config;
pub mod consume;
pub mod dlq;
pub mod error;
pub mod follow;
pub mod ids;
pub mod lease;
pub mod mesh;
pub mod names;
pub mod objects;
pub mod plan;
pub mod pools;
pub mod provision;
pub mod refs;
pub mod registry;
pub mod results;
pub mod service;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod trace;
pub mod wire;

pub use config::Config;
pub use error::{Error, ErrorCode, Result};
pub use mesh::{Identity, Mesh};
pub use names::{EventKind, Names, Role};
pub use tokio_util::sync::CancellationToken;
