//! The worker role: a pool process with N concurrent slots pulling from its
//! pool's durable consumer and executing capabilities. The runtime (pulling
//! on credit, slots, liveness, the pool loop) knows a capability only through
//! [`jetmesh_shared::capability::Capability`]; which ones a process has comes
//! from the [`jetmesh_shared::capability::Catalog`] it is given.

pub mod liveness;
pub mod pool;
pub mod pull;
pub mod sessions;

pub use pool::run;
