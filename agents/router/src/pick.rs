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
use jetmesh_shared::registry::Registered;
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

    /// Checks `task`'s parameters against its action's schema: a plan's task
    /// whose parameters were completed with earlier outputs at dispatch.
    pub async fn check_params(&self, task: &Subtask) -> Result<()> {
        let candidates = self.registry.candidates(&task.capability).await?;
        if let Some(e) = candidates
            .iter()
            .find(|e| e.actions.iter().any(|a| a == &task.action))
        {
            e.check_params(&task.id, &task.action, &task.params)?;
        }
        Ok(())
    }

    /// The pool entry to queue `task` on, and whether a place was reserved
    /// for it in the gate. `fresh` is new work (a single task), which may be
    /// refused.
    pub async fn pick(&self, task: &Subtask, fresh: bool) -> Result<(Arc<Registered>, bool)> {
        let candidates = self.registry.candidates(&task.capability).await?;
        let first = candidates.first().cloned();
        let serving: Vec<Arc<Registered>> = candidates
            .into_iter()
            .filter(|e| e.actions.iter().any(|a| a == &task.action))
            .collect();
        if serving.is_empty() {
            // The error names what is missing (capability or action).
            plan::check_one(&task.id, &task.capability, &task.action, |_| {
                first.as_deref()
            })?;
        }
        if fresh {
            // A single task meets its action's schema here; a plan's tasks
            // met it when the plan was accepted.
            serving[0].check_params(&task.id, &task.action, &task.params)?;
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
        let config = &self.mesh.config;
        let strategy = config.router.strategy_for(&task.capability);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        // The pools to weigh: the live ones, and their spillover pools.
        let mut pools: Vec<Arc<Registered>> = live.clone();
        for e in &live {
            if let Some(b) = config.pool(&e.pool).spill_to.as_deref()
                && let Some(backup) = serving.iter().find(|s| s.pool == b)
                && !pools.iter().any(|p| p.pool == b)
                && self.view.is_live(backup).await
            {
                pools.push(backup.clone());
            }
        }
        let spills = pools.iter().any(|p| {
            (config.pool(&p.pool).spill_to.as_deref())
                .is_some_and(|b| pools.iter().any(|q| q.pool == b))
        });
        if !spills && matches!(strategy, Strategy::Match | Strategy::RoundRobin) {
            // Nothing to weigh: no counts, no reservation.
            let chosen = match strategy {
                Strategy::RoundRobin => live[turn % live.len()].clone(),
                _ => live[0].clone(),
            };
            if fresh && self.view.refusing(&chosen.pool).is_some() {
                pools::admit(&self.view, &task.capability, std::slice::from_ref(&chosen)).await?;
            }
            return Ok((chosen, false));
        }
        let names: Vec<&str> = pools.iter().map(|e| e.pool.as_str()).collect();
        self.gate.refresh(&names).await;
        let refusing: Vec<bool> = names
            .iter()
            .map(|p| self.view.refusing(p).is_some())
            .collect();
        let least = |w: &[u64], among: &mut dyn Iterator<Item = usize>| {
            among.min_by_key(|&i| w[i]).unwrap_or(0)
        };
        let i = self.gate.decide(&names, |w| {
            let base = match strategy {
                Strategy::Match => 0,
                Strategy::RoundRobin => turn % live.len(),
                Strategy::LeastQueue => least(w, &mut (0..live.len())),
                Strategy::Priority => {
                    let takes =
                        |i: &usize| config.pool(names[*i]).priorities.contains(&task.priority);
                    if (0..live.len()).any(|i| takes(&i)) {
                        least(w, &mut (0..live.len()).filter(takes))
                    } else {
                        least(w, &mut (0..live.len()))
                    }
                }
            };
            tracing::trace!(task = %task.id, ?names, waiting = ?w, base, "Choosing a pool.");
            // Spillover: past the threshold (or refusing), to a backup with room.
            let cfg = config.pool(names[base]);
            if let Some(b) = cfg.spill_to.as_deref()
                && let Some(j) = names.iter().position(|n| *n == b)
                && (refusing[base] || w[base] > cfg.spill_at)
                && !refusing[j]
                && w[j] <= config.pool(b).spill_at
            {
                return j;
            }
            base
        });
        let chosen = pools[i].clone();
        if fresh && refusing[i] {
            self.gate.unreserve(&chosen.pool);
            // The same verdict (and message) the planner gives whole plans.
            pools::admit(&self.view, &task.capability, std::slice::from_ref(&chosen)).await?;
        }
        Ok((chosen, true))
    }

    async fn is_live(&self, entry: &CapabilityEntry) -> bool {
        self.view.is_live(entry).await
    }
}
