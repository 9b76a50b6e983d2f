//! What a pool process tells the mesh about itself, and how it is told to
//! resize: task slots that can grow and shrink while tasks run, a heartbeat
//! in `mesh_health` (`worker.<pool>.<instance>`: slots, busy, pid), and the
//! slot assignments the autoscaler writes to `mesh_scale` (`pool.<pool>`).

use jetmesh_shared::follow::{Change, follow};
use jetmesh_shared::wire::{ScaleDecision, WorkerHeartbeat};
use jetmesh_shared::{Mesh, codec};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Task slots whose count can change while tasks run. Shrinking never
/// interrupts a task: the slots are taken back as their tasks finish.
pub struct Slots {
    sem: Arc<Semaphore>,
    target: AtomicUsize,
    busy: AtomicUsize,
}

/// A slot held by the pull loop; it counts as busy once a task [`begin`]s in
/// it. Frees the slot when dropped.
///
/// [`begin`]: Slot::begin
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
    busy: bool,
}

impl Slot {
    /// A task runs in this slot now.
    pub fn begin(&mut self) {
        if !self.busy {
            self.busy = true;
            self.slots.busy.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.busy {
            self.slots.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Slots {
    pub fn new(n: usize) -> Arc<Slots> {
        Arc::new(Slots {
            sem: Arc::new(Semaphore::new(n)),
            target: AtomicUsize::new(n),
            busy: AtomicUsize::new(0),
        })
    }

    /// Waits for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self.sem.clone().acquire_owned().await.expect("slots open");
        Slot {
            _permit: permit,
            slots: self.clone(),
            busy: false,
        }
    }

    pub fn count(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Sets the slot count (at least one).
    pub fn set(&self, n: usize) {
        let n = n.max(1);
        let old = self.target.swap(n, Ordering::SeqCst);
        if n > old {
            self.sem.add_permits(n - old);
        } else if n < old {
            let sem = self.sem.clone();
            let take = u32::try_from(old - n).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(take).await {
                    p.forget();
                }
            });
        }
    }
}

/// Writes the heartbeat every `health.heartbeat_ms` until `shutdown`, then
/// deletes it: a worker that stops cleanly is gone, not dead.
pub fn heartbeat(
    mesh: Mesh,
    pool: String,
    instance: String,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let key = mesh.names.worker_health_key(&pool, &instance);
        let started_at = jiff::Timestamp::now();
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
        let every = Duration::from_millis(mesh.config.health.heartbeat_ms.max(50));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            let beat = WorkerHeartbeat {
                pool: pool.clone(),
                instance: instance.clone(),
                slots: slots.count(),
                busy: slots.busy(),
                pid: Some(std::process::id()),
                host: host.clone(),
                started_at,
                at: jiff::Timestamp::now(),
            };
            let Ok(body) = codec::to_json(&beat) else {
                continue;
            };
            if let Err(error) = mesh.health.put(&key, body).await {
                tracing::warn!(%error, pool, "Cannot write the heartbeat.");
            }
        }
        // Bounded: at shutdown the server may be gone, and the key expires.
        match tokio::time::timeout(Duration::from_secs(2), mesh.health.delete(&key)).await {
            Ok(Ok(())) => {}
            _ => tracing::debug!(pool, "Cannot remove the heartbeat; it expires."),
        }
    })
}

/// Follows `pool.<pool>` in `mesh_scale` ([`jetmesh_shared::follow`]) and
/// applies this process's slot count whenever the autoscaler assigns one.
pub async fn follow_scale(
    mesh: Mesh,
    pool: String,
    instance: String,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
) -> jetmesh_shared::Result<()> {
    let key = mesh.names.scale_key(&pool);
    follow(mesh.scale.clone(), key, shutdown, move |change| {
        let Change::Put(entry) = change else { return };
        let Ok(decision) = codec::from_json::<ScaleDecision>(&entry.value) else {
            return;
        };
        if let Some(&n) = decision.slots.get(&instance)
            && n != slots.count()
        {
            tracing::info!(pool, from = slots.count(), to = n, reason = %decision.reason, "The pool's slots were reassigned.");
            slots.set(n);
        }
    })
    .await?;
    Ok(())
}
