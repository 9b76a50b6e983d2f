//! The worker role: a pool process with N concurrent slots pulling from its
//! pool's durable consumer and executing built-in capabilities (`math`, `date`).

pub mod capability;
pub mod caps;
pub mod liveness;
pub mod pool;
pub mod pull;

pub use pool::run;

/// Whether every capability of `pool` is built in, so a pool process of
/// this binary can serve it (others are served by foreign workers).
pub fn serves_builtin(config: &jetmesh_shared::Config, pool: &str) -> bool {
    config
        .pool_capabilities(pool)
        .iter()
        .all(|c| capability::BUILTIN.contains(&c.as_str()))
}
