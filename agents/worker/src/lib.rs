//! The worker role: a pool process with N concurrent slots pulling from its
//! pool's durable consumer and executing built-in capabilities (`math`, `date`).

pub mod capability;
pub mod caps;
pub mod liveness;
pub mod pool;

pub use pool::run;
