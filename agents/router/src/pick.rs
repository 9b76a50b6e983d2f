//! Choosing the pool for a task. The candidates are the pools registered for
//! its capability (`cap.<capability>` first, then every `cap.<capability>.<pool>`)
//! that have its action. Then:
//! 1. only live pools count (the autoscaler's status, else the pool's
//!    consumer: a waiting pull, a task in progress, a recent delivery, or a
//!    registration within `health.dead_after_ms`). With none, new work gets
//!    `no_workers` (or is queued anyway with `router.when_no_workers = "wait"`);
//!    work of accepted plans is always queued;
//! 2. the capability's strategy picks one: `match` (the first), `round_robin`,
//!    `least_queue`, or `priority` (least queue among the pools that take the
//!    task's priority);
//! 3. spillover: when more than `spill_at` tasks wait for that pool (or it
//!    refuses work) and its `spill_to` pool serves the task and has room, the
//!    task goes there instead;
//! 4. backpressure: new work for a pool that refuses work (its backlog is past
//!    `max_backlog`) gets `overloaded` with a retry hint. Accepted plans keep
//!    running.

use crate::gate::Gate;
use jetmesh_shared::config::Strategy;
use jetmesh_shared::pools::{self, PoolView};
use jetmesh_shared::registry::Registry;
use jetmesh_shared::wire::{CapabilityEntry, Subtask};
use jetmesh_shared::{Mesh, Result, plan};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone)]
pub struct Picker {
    pub mesh: Mesh,
    pub registry: Registry,
    pub view: PoolView,
    pub gate: Gate,
    turn: Arc<AtomicUsize>,
}

impl Picker {
    pub fn new(mesh: Mesh, registry: Registry, view: PoolView, gate: Gate) -> Picker {
        Picker {
            mesh,
            registry,
            view,
            gate,
            turn: Arc::default(),
        }
    }

    /// The pool entry to queue `task` on. `fresh` is new work (a single task
    /// or a task of a plan being accepted), which may be refused.
    pub async fn pick(&self, task: &Subtask, fresh: bool) -> Result<Arc<CapabilityEntry>> {
        let candidates = self.registry.candidates(&task.capability).await?;
        let first = candidates.first().cloned();
        let serving: Vec<Arc<CapabilityEntry>> = candidates
            .into_iter()
            .filter(|e| e.actions.iter().any(|a| a == &task.action))
            .collect();
        if serving.is_empty() {
            // The error names what is missing (capability or action).
            plan::check_one(&task.id, &task.capability, &task.action, |_| {
                first.as_deref()
            })?;
        }
        let mut live = Vec::new();
        for e in &serving {
            if self.is_live(e).await {
                live.push(e.clone());
            }
        }
        if live.is_empty() {
            if fresh {
                pools::admit(&self.view, &task.capability, &serving).await?;
            }
            live = serving.clone();
        }
        let chosen = match self.mesh.config.router.strategy_for(&task.capability) {
            Strategy::Match => live[0].clone(),
            Strategy::RoundRobin => {
                live[self.turn.fetch_add(1, Ordering::Relaxed) % live.len()].clone()
            }
            Strategy::LeastQueue => self.least_queue(&live).await,
            Strategy::Priority => {
                let takes: Vec<Arc<CapabilityEntry>> = live
                    .iter()
                    .filter(|e| {
                        self.mesh
                            .config
                            .pool(&e.pool)
                            .priorities
                            .contains(&task.priority)
                    })
                    .cloned()
                    .collect();
                self.least_queue(if takes.is_empty() { &live } else { &takes })
                    .await
            }
        };
        let chosen = self.spill(chosen, &serving).await;
        if fresh && self.view.refusing(&chosen.pool).is_some() {
            // The same verdict (and message) the planner gives whole plans.
            pools::admit(&self.view, &task.capability, std::slice::from_ref(&chosen)).await?;
        }
        Ok(chosen)
    }

    async fn least_queue(&self, pools: &[Arc<CapabilityEntry>]) -> Arc<CapabilityEntry> {
        let mut best = pools[0].clone();
        let mut best_wait = u64::MAX;
        for e in pools {
            let wait = self.gate.waiting(&e.pool).await;
            if wait < best_wait {
                best_wait = wait;
                best = e.clone();
            }
        }
        best
    }

    /// The spillover pool instead of `chosen` when `chosen` is past its
    /// threshold (or refusing work) and the spillover pool has room.
    async fn spill(
        &self,
        chosen: Arc<CapabilityEntry>,
        serving: &[Arc<CapabilityEntry>],
    ) -> Arc<CapabilityEntry> {
        let cfg = self.mesh.config.pool(&chosen.pool);
        let Some(backup) = cfg
            .spill_to
            .as_ref()
            .and_then(|b| serving.iter().find(|e| &e.pool == b))
        else {
            return chosen;
        };
        let refusing = |pool: &str| self.view.refusing(pool).is_some();
        let over = refusing(&chosen.pool) || self.gate.waiting(&chosen.pool).await > cfg.spill_at;
        if !over || refusing(&backup.pool) || !self.is_live(backup).await {
            return chosen;
        }
        let room =
            self.gate.waiting(&backup.pool).await <= self.mesh.config.pool(&backup.pool).spill_at;
        if room { backup.clone() } else { chosen }
    }

    async fn is_live(&self, entry: &CapabilityEntry) -> bool {
        self.view.is_live(entry).await
    }
}
