//! The health monitor. It follows `worker.>` in `mesh_health` and keeps, per
//! worker process, its last heartbeat and when it arrived (by this process's
//! clock, so clock skew between hosts does not matter). A worker whose last
//! heartbeat is older than `health.dead_after_ms` is declared dead:
//! - `mesh.health.worker.<instance>` gets a `dead` event, `mesh.alerts.<pool>`
//!   a `worker_dead` alert (both stored in `MESH_EVENTS`);
//! - its heartbeat key is removed;
//! - when the pool's live slots fall below its `min`, the surviving processes
//!   are assigned the difference in `mesh_scale` and grow to match; when none
//!   survives, a `pool_down` alert says so.
//!
//! The tasks a dead worker held need nothing from here: JetStream redelivers
//! them once their ack wait passes. A worker that stops cleanly deletes its
//! heartbeat and is not reported. Workers found when the monitor starts (or
//! takes over) get a full `dead_after` of grace.

use crate::alerts::Alerter;
use crate::scaler::Scaler;
use jetmesh_shared::error::Result;
use jetmesh_shared::follow::{Change, follow};
use jetmesh_shared::lease::Lease;
use jetmesh_shared::names;
use jetmesh_shared::registry::Registry;
use jetmesh_shared::wire::{Alert, HealthEvent, RouterHeartbeat, ScaleDecision, WorkerHeartbeat};
use jetmesh_shared::{Error, Mesh, Role, codec, telemetry};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Seen {
    pub beat: WorkerHeartbeat,
    at: Instant,
}

pub struct Monitor {
    mesh: Mesh,
    lease: Lease,
    alerter: Alerter,
    scaler: Scaler,
    /// By heartbeat key.
    workers: HashMap<String, Seen>,
    /// Router heartbeats (held tasks per pool), by key.
    routers: HashMap<String, RouterHeartbeat>,
    dead_after: Duration,
}

impl Monitor {
    pub fn new(mesh: Mesh, lease: Lease, registry: Registry) -> Monitor {
        let dead_after = Duration::from_millis(mesh.config.health.dead_after_ms.max(100));
        let alerter = Alerter::new(mesh.clone());
        Monitor {
            scaler: Scaler::new(mesh.clone(), lease.clone(), alerter.clone(), registry),
            alerter,
            mesh,
            lease,
            workers: HashMap::new(),
            routers: HashMap::new(),
            dead_after,
        }
    }

    /// Follows heartbeats ([`jetmesh_shared::follow`]) and applies the
    /// rules until `stop`. Fails only if the heartbeats cannot be followed.
    pub async fn run(mut self, stop: CancellationToken) -> Result<()> {
        let (tx, mut beats) = tokio::sync::mpsc::unbounded_channel();
        follow(self.mesh.health.clone(), ">", stop.clone(), move |c| {
            let _ = tx.send(c);
        })
        .await?;
        let mut sweep =
            tokio::time::interval((self.dead_after / 10).max(Duration::from_millis(50)));
        let mut rules = tokio::time::interval(Duration::from_millis(
            self.mesh.config.autoscaler.interval_ms.max(100),
        ));
        rules.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                Some(change) = beats.recv() => self.on_change(change),
                _ = sweep.tick() => self.sweep().await,
                _ = rules.tick() => self.scaler.tick(&self.workers, &self.routers).await,
            }
        }
    }

    fn on_change(&mut self, change: Change) {
        let entry = match change {
            Change::Reset => {
                // Seen again from the start, with a new grace period.
                self.workers.clear();
                self.routers.clear();
                return;
            }
            Change::Delete { key, .. } => {
                // A clean stop.
                self.routers.remove(&key);
                self.workers.remove(&key);
                return;
            }
            Change::Put(entry) => entry,
        };
        if names::is_router_health_key(&entry.key) {
            if let Ok(beat) = codec::from_json::<RouterHeartbeat>(&entry.value) {
                self.routers.insert(entry.key, beat);
            }
            return;
        }
        if names::parse_worker_health_key(&entry.key).is_none() {
            return;
        }
        if let Ok(beat) = codec::from_json::<WorkerHeartbeat>(&entry.value) {
            if !self.workers.contains_key(&entry.key) {
                tracing::info!(pool = %beat.pool, instance = %beat.instance, slots = beat.slots, "A worker is alive.");
            }
            self.workers.insert(
                entry.key,
                Seen {
                    beat,
                    at: Instant::now(),
                },
            );
        }
        self.gauge();
    }

    fn gauge(&self) {
        let mut per_pool: BTreeMap<&str, usize> = BTreeMap::new();
        for s in self.workers.values() {
            *per_pool.entry(&s.beat.pool).or_default() += 1;
        }
        for (pool, n) in per_pool {
            metrics::gauge!(telemetry::WORKERS_LIVE, "pool" => pool.to_string()).set(n as f64);
        }
    }

    async fn sweep(&mut self) {
        let stale = self.dead_after * 2;
        self.routers.retain(|_, r| {
            Duration::try_from(jiff::Timestamp::now().duration_since(r.at))
                .is_ok_and(|age| age < stale)
        });
        let dead: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, s)| s.at.elapsed() > self.dead_after)
            .map(|(k, _)| k.clone())
            .collect();
        for key in dead {
            // Only the lease holder speaks for the mesh.
            let Ok(term) = self.lease.fence() else { return };
            let Some(seen) = self.workers.remove(&key) else {
                continue;
            };
            self.declare_dead(&key, &seen, term).await;
        }
    }

    async fn declare_dead(&self, key: &str, seen: &Seen, term: u64) {
        let beat = &seen.beat;
        let silent = seen.at.elapsed();
        metrics::counter!(telemetry::WORKERS_DEAD, "pool" => beat.pool.clone()).increment(1);
        tracing::warn!(pool = %beat.pool, instance = %beat.instance, pid = ?beat.pid, silent_ms = silent.as_millis() as u64, "A worker stopped heartbeating; it is declared dead.");
        let detail = format!(
            "no heartbeat for {} ms (the limit is {} ms)",
            silent.as_millis(),
            self.dead_after.as_millis()
        );
        let event = HealthEvent {
            role: Role::Worker.as_str().into(),
            instance: beat.instance.clone(),
            state: "dead".into(),
            at: jiff::Timestamp::now(),
            pool: Some(beat.pool.clone()),
            detail: Some(detail.clone()),
        };
        self.store(self.mesh.names.health(Role::Worker, &beat.instance), &event)
            .await;
        let host = beat
            .host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        let pid = beat
            .pid
            .map(|p| format!(" (pid {p}{host})"))
            .unwrap_or_default();
        self.alert(Alert {
            pool: beat.pool.clone(),
            kind: "worker_dead".into(),
            message: format!(
                "worker {}{pid} of pool {} is dead: {detail}; the tasks it held return to the queue after their ack wait",
                beat.instance, beat.pool
            ),
            instance: Some(beat.instance.clone()),
            at: jiff::Timestamp::now(),
        })
        .await;
        if let Err(error) = self.mesh.health.delete(key).await {
            tracing::debug!(%error, "Cannot remove a dead worker's heartbeat; it expires.");
        }
        self.replace(&beat.pool, &beat.instance, term).await;
    }

    /// Brings the pool back to its minimum slots on the surviving processes.
    async fn replace(&self, pool: &str, dead: &str, term: u64) {
        let live: Vec<&WorkerHeartbeat> = self
            .workers
            .values()
            .map(|s| &s.beat)
            .filter(|b| b.pool == pool)
            .collect();
        let min = self.mesh.config.pool(pool).min;
        let have: usize = live.iter().map(|b| b.slots).sum();
        if live.is_empty() {
            self.alert(Alert {
                pool: pool.to_string(),
                kind: "pool_down".into(),
                message: format!(
                    "pool {pool} has no live worker left; its tasks wait in the queue until one starts"
                ),
                instance: None,
                at: jiff::Timestamp::now(),
            })
            .await;
            return;
        }
        if have >= min {
            return;
        }
        let mut slots: BTreeMap<String, usize> =
            live.iter().map(|b| (b.instance.clone(), b.slots)).collect();
        for _ in have..min {
            if let Some(fewest) = slots.values_mut().min() {
                *fewest += 1;
            }
        }
        let decision = ScaleDecision {
            pool: pool.to_string(),
            slots,
            reason: format!(
                "worker {dead} died; {have} slots are live and the pool's minimum is {min}"
            ),
            at: jiff::Timestamp::now(),
            term: Some(term),
        };
        tracing::info!(
            pool,
            have,
            min,
            "Surviving workers take up the dead worker's slots."
        );
        let stored = match codec::to_json(&decision) {
            Ok(body) if self.lease.fence().is_ok() => self
                .mesh
                .scale
                .put(self.mesh.names.scale_key(pool), body)
                .await
                .map(|_| ())
                .map_err(|e| Error::unavailable("cannot write a slot assignment", e)),
            Ok(_) => return,
            Err(e) => Err(e),
        };
        if let Err(error) = stored {
            tracing::warn!(%error, pool, "Cannot reassign slots.");
        }
    }

    async fn alert(&self, alert: Alert) {
        self.alerter.raise(alert).await;
    }

    async fn store<T: serde::Serialize>(&self, subject: String, body: &T) {
        self.alerter.store(subject, body).await;
    }
}
