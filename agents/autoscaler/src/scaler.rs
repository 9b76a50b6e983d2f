//! Pool status and the seed's scaling rules, applied every
//! `autoscaler.interval_ms` to every pool (configured, registered or
//! heartbeating), each with its own thresholds from `[pools.<pool>]`:
//!
//! ```text
//! waiting > scale_up_queue AND slots < max                         → +1 slot
//! waiting < scale_down_queue AND slots > min AND idle > idle_secs  → −1 slot
//! every slot busy AND waiting > overload_queue                     → alert "overloaded"
//! ```
//!
//! `waiting` is what has not started: the queue's undelivered tasks plus what
//! routers hold back. A decision goes to `mesh_scale` (`pool.<pool>`, which the
//! pool's processes follow) and to `MESH_AUDIT` (`mesh.audit.scale.<pool>`).
//! The status (`status.<pool>`) also carries the backpressure verdict: a
//! backlog past `max_backlog` makes routers and planners refuse new work
//! with `overloaded` and a retry hint.

use crate::alerts::Alerter;
use crate::health::Seen;
use jetmesh_shared::lease::Lease;
use jetmesh_shared::pools::{self, QueueStats};
use jetmesh_shared::registry::Registry;
use jetmesh_shared::wire::{Alert, PoolStatus, RouterHeartbeat, ScaleDecision, WorkerHeartbeat};
use jetmesh_shared::{Mesh, codec, telemetry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct PoolState {
    idle_since: Option<Instant>,
    overloaded: bool,
    acked: Option<(u64, Instant)>,
    drain_per_sec: f64,
    /// Whether the pool's workers heartbeat (then a pool without heartbeats
    /// is live only while a worker still pulls).
    had_beats: bool,
    /// The last assignment, used until heartbeats show it.
    assigned: Option<(BTreeMap<String, usize>, Instant)>,
}

pub struct Scaler {
    mesh: Mesh,
    lease: Lease,
    alerter: Alerter,
    registry: Registry,
    pools: HashMap<String, PoolState>,
}

/// What the rules decided for one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Stable,
    To(usize),
}

/// The seed's scaling rules for one pool (pure, for tests).
pub fn decide(
    cfg: &jetmesh_shared::config::PoolConfig,
    workers: usize,
    waiting: u64,
    idle_for: Option<Duration>,
) -> Step {
    if workers < cfg.min {
        return Step::To(cfg.min);
    }
    if waiting > cfg.scale_up_queue && workers < cfg.max {
        return Step::To(workers + 1);
    }
    let idle_long = idle_for.is_some_and(|d| d >= Duration::from_secs(cfg.idle_secs));
    if waiting < cfg.scale_down_queue && workers > cfg.min && idle_long {
        return Step::To(workers - 1);
    }
    Step::Stable
}

/// Spreads `target` slots over processes, changing as few as possible: growth
/// goes to the process with the fewest slots, shrinking takes from the most
/// (every process keeps at least one).
pub fn distribute(mut slots: BTreeMap<String, usize>, target: usize) -> BTreeMap<String, usize> {
    let mut total: usize = slots.values().sum();
    while total < target {
        let Some(fewest) = slots.values_mut().min() else {
            break;
        };
        *fewest += 1;
        total += 1;
    }
    while total > target {
        let Some(most) = slots.values_mut().max() else {
            break;
        };
        if *most <= 1 {
            break;
        }
        *most -= 1;
        total -= 1;
    }
    slots
}

impl Scaler {
    pub fn new(mesh: Mesh, lease: Lease, alerter: Alerter, registry: Registry) -> Scaler {
        Scaler {
            mesh,
            lease,
            alerter,
            registry,
            pools: HashMap::new(),
        }
    }

    /// One round over every pool.
    pub async fn tick(
        &mut self,
        workers: &HashMap<String, Seen>,
        routers: &HashMap<String, RouterHeartbeat>,
    ) {
        let mut names: BTreeSet<String> = self.mesh.config.pools.keys().cloned().collect();
        names.extend(self.registry.pools());
        names.extend(workers.values().map(|s| s.beat.pool.clone()));
        for pool in names {
            let beats: Vec<&WorkerHeartbeat> = workers
                .values()
                .map(|s| &s.beat)
                .filter(|b| b.pool == pool)
                .collect();
            let held: u64 = routers.values().filter_map(|r| r.held.get(&pool)).sum();
            let stats = match pools::queue_stats(&self.mesh, &pool, true).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::debug!(%error, pool, "Cannot read a pool's queue.");
                    continue;
                }
            };
            self.pool(&pool, &beats, held, stats).await;
        }
    }

    async fn pool(
        &mut self,
        pool: &str,
        beats: &[&WorkerHeartbeat],
        held: u64,
        stats: Option<QueueStats>,
    ) {
        let cfg = self.mesh.config.pool(pool).clone();
        let now = Instant::now();
        let stats = stats.unwrap_or_default();
        let state = self.pools.entry(pool.to_string()).or_default();

        // Slots per process, as last assigned until the heartbeats catch up.
        let mut slots: BTreeMap<String, usize> = beats
            .iter()
            .map(|b| (b.instance.clone(), b.slots))
            .collect();
        let fresh_for = Duration::from_millis(self.mesh.config.health.heartbeat_ms * 3 + 500);
        if let Some((assigned, at)) = &state.assigned {
            if now.duration_since(*at) < fresh_for {
                for (instance, n) in assigned {
                    if let Some(s) = slots.get_mut(instance) {
                        *s = *n;
                    }
                }
            } else {
                state.assigned = None;
            }
        }
        let workers: usize = slots.values().sum();
        let busy: usize = beats.iter().map(|b| b.busy).sum::<usize>().min(workers);
        let waiting = stats.pending + held;
        let recent = Duration::from_millis(self.mesh.config.health.dead_after_ms);
        state.had_beats |= !beats.is_empty();
        let live = !beats.is_empty()
            || if state.had_beats {
                stats.waiting_pulls > 0 || stats.ack_pending > 0
            } else {
                stats.live(recent)
            };

        if let Some((acked, at)) = state.acked {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 && stats.acked >= acked {
                let rate = (stats.acked - acked) as f64 / secs;
                // Smoothed, so one quiet interval does not zero it.
                state.drain_per_sec = 0.5 * state.drain_per_sec + 0.5 * rate;
            }
        }
        state.acked = Some((stats.acked, now));

        let all_busy = if beats.is_empty() {
            stats.ack_pending > 0 && stats.waiting_pulls == 0
        } else {
            workers > 0 && busy >= workers
        };
        let overloaded = all_busy && waiting > cfg.overload_queue;
        let refusing = cfg.max_backlog > 0 && waiting > cfg.max_backlog;
        let retry_after_ms = refusing.then(|| {
            let excess = (waiting - cfg.max_backlog) as f64;
            let secs = if state.drain_per_sec > 0.1 {
                excess / state.drain_per_sec
            } else {
                5.0
            };
            (secs * 1000.0).clamp(1000.0, 300_000.0) as u64
        });
        if busy < workers && waiting < cfg.scale_down_queue {
            state.idle_since.get_or_insert(now);
        } else {
            state.idle_since = None;
        }
        let idle_for = state.idle_since.map(|t| now.duration_since(t));

        let mut action = if !live {
            "no workers".to_string()
        } else {
            "stable".to_string()
        };
        if self.mesh.config.autoscaler.scale_slots
            && !beats.is_empty()
            && let Step::To(target) = decide(&cfg, workers, waiting, idle_for)
        {
            let assigned = distribute(slots.clone(), target);
            let total: usize = assigned.values().sum();
            if total != workers {
                let reason = if total > workers {
                    format!(
                        "{waiting} tasks wait (more than {}) and the pool has {workers} of at most {} slots",
                        cfg.scale_up_queue, cfg.max
                    )
                } else {
                    format!(
                        "{waiting} tasks wait (fewer than {}) and a slot has been idle for {} s",
                        cfg.scale_down_queue,
                        idle_for.map(|d| d.as_secs()).unwrap_or(0)
                    )
                };
                action = if total > workers {
                    format!("scaling up → {total}")
                } else {
                    format!("scaling down → {total}")
                };
                if self.apply(pool, assigned.clone(), &reason).await {
                    let state = self.pools.get_mut(pool).expect("pool state");
                    state.assigned = Some((assigned, now));
                    if total < workers {
                        // One step per idle period.
                        state.idle_since = Some(now);
                    }
                }
            }
        }
        let state = self.pools.get_mut(pool).expect("pool state");
        if overloaded != state.overloaded {
            state.overloaded = overloaded;
            let (kind, message) = if overloaded {
                (
                    "overloaded",
                    format!(
                        "pool {pool} overloaded: all {workers} slots busy and {waiting} tasks waiting (more than {})",
                        cfg.overload_queue
                    ),
                )
            } else {
                (
                    "overload_cleared",
                    format!("pool {pool} is no longer overloaded: {waiting} tasks waiting"),
                )
            };
            self.alerter
                .raise(Alert {
                    pool: pool.to_string(),
                    kind: kind.into(),
                    message,
                    instance: None,
                    at: jiff::Timestamp::now(),
                })
                .await;
        }
        let state = &self.pools[pool];
        let status = PoolStatus {
            pool: pool.to_string(),
            workers,
            processes: beats.len(),
            healthy: workers,
            busy,
            idle: workers - busy,
            queue_depth: stats.pending + stats.ack_pending,
            pending: stats.pending,
            ack_pending: stats.ack_pending,
            held,
            oldest_wait_ms: stats.oldest_wait.map(|d| d.as_millis() as u64),
            waiting_pulls: stats.waiting_pulls,
            live,
            overloaded,
            refusing,
            retry_after_ms,
            drain_per_sec: (state.drain_per_sec * 10.0).round() / 10.0,
            idle_secs: idle_for.map(|d| d.as_secs()).unwrap_or(0),
            action,
            min: cfg.min,
            max: cfg.max,
            at: jiff::Timestamp::now(),
        };
        let label = || pool.to_string();
        metrics::gauge!(telemetry::POOL_OVERLOADED, "pool" => label())
            .set(f64::from(u8::from(overloaded)));
        metrics::gauge!(telemetry::POOL_REFUSING, "pool" => label())
            .set(f64::from(u8::from(refusing)));
        metrics::gauge!(telemetry::POOL_QUEUE_DEPTH, "pool" => label())
            .set(status.queue_depth as f64);
        metrics::gauge!(telemetry::POOL_WORKERS, "pool" => label()).set(workers as f64);
        metrics::gauge!(telemetry::POOL_BUSY, "pool" => label()).set(busy as f64);
        if self.lease.fence().is_err() {
            return;
        }
        if let Ok(body) = codec::to_json(&status)
            && let Err(error) = self
                .mesh
                .scale
                .put(self.mesh.names.status_key(pool), body)
                .await
        {
            tracing::debug!(%error, pool, "Cannot write a pool's status.");
        }
    }

    /// Writes a slot assignment (fenced) and its audit record.
    async fn apply(&self, pool: &str, slots: BTreeMap<String, usize>, reason: &str) -> bool {
        let Ok(term) = self.lease.fence() else {
            return false;
        };
        let decision = ScaleDecision {
            pool: pool.to_string(),
            slots,
            reason: reason.to_string(),
            at: jiff::Timestamp::now(),
            term: Some(term),
        };
        let Ok(body) = codec::to_json(&decision) else {
            return false;
        };
        if let Err(error) = self
            .mesh
            .scale
            .put(self.mesh.names.scale_key(pool), body)
            .await
        {
            tracing::warn!(%error, pool, "Cannot write a scaling decision.");
            return false;
        }
        let total: usize = decision.slots.values().sum();
        tracing::info!(pool, slots = total, reason, "The pool is rescaled.");
        metrics::counter!(telemetry::SCALE_DECISIONS, "pool" => pool.to_string()).increment(1);
        self.alerter
            .store(self.mesh.names.audit("scale", pool), &decision)
            .await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetmesh_shared::config::PoolConfig;

    fn cfg() -> PoolConfig {
        PoolConfig::new("web", 2).limits(2, 20)
    }

    #[test]
    fn the_seed_rules() {
        let idle = Some(Duration::from_secs(301));
        assert_eq!(decide(&cfg(), 5, 12, None), Step::To(6), "queue > 10 → +1");
        assert_eq!(decide(&cfg(), 5, 10, None), Step::Stable, "10 is not > 10");
        assert_eq!(decide(&cfg(), 20, 50, None), Step::Stable, "at max");
        assert_eq!(
            decide(&cfg(), 32, 50, None),
            Step::Stable,
            "max caps growth only"
        );
        assert_eq!(decide(&cfg(), 5, 1, idle), Step::To(4), "idle → −1");
        assert_eq!(
            decide(&cfg(), 5, 1, Some(Duration::from_secs(10))),
            Step::Stable,
            "not idle long enough"
        );
        assert_eq!(decide(&cfg(), 2, 0, idle), Step::Stable, "at min");
        assert_eq!(decide(&cfg(), 1, 0, None), Step::To(2), "below min");
        assert_eq!(decide(&cfg(), 5, 2, idle), Step::Stable, "2 is not < 2");
    }

    #[test]
    fn distribution_changes_few_processes() {
        let slots: BTreeMap<String, usize> = [("a".to_string(), 3), ("b".to_string(), 1)].into();
        let up = distribute(slots.clone(), 5);
        assert_eq!(up["a"], 3);
        assert_eq!(up["b"], 2);
        let down = distribute(slots.clone(), 3);
        assert_eq!(down["a"], 2);
        assert_eq!(down["b"], 1);
        let floor = distribute(slots, 1);
        assert_eq!(
            floor.values().sum::<usize>(),
            2,
            "each process keeps a slot"
        );
    }
}
