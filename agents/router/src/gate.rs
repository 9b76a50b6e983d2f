//! The queue window: how the router keeps priorities meaningful under a
//! backlog. JetStream delivers a pool's queue in order, so a task can only
//! overtake what is not in the queue yet. The router therefore lets at most
//! `queue_window` tasks wait in a pool's JetStream queue; ready tasks beyond
//! that are held here and released highest priority first (then oldest
//! first) as the queue drains. Under the window nothing is held and a task
//! is published at once.
//!
//! The router counts what it publishes and learns the queue's real depth
//! (the pool consumer's undelivered count) from the server: once its count
//! reaches the window, and every few milliseconds while it holds tasks. Held
//! tasks belong to accepted plans (rebuilt from `mesh_plans` after a
//! restart), to unacked `MESH_INTAKE` messages, or to waiting `mesh.run`
//! requesters, so nothing held is lost with the router. With several
//! routers each keeps its own window.

use jetmesh_shared::wire::Priority;
use jetmesh_shared::{Mesh, pools};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often a pool with held tasks is measured.
const PUMP_EVERY: Duration = Duration::from_millis(5);
/// How long a measured depth is trusted for routing decisions.
const FRESH: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct Gate {
    mesh: Mesh,
    pools: Arc<Mutex<HashMap<String, PoolGate>>>,
}

struct Held {
    rank: Reverse<(Priority, u64)>,
    release: oneshot::Sender<()>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank.cmp(&other.rank)
    }
}

#[derive(Default)]
struct PoolGate {
    /// Undelivered tasks as last measured, plus those published since.
    queued: u64,
    measured_at: Option<Instant>,
    held: BinaryHeap<Held>,
    /// Chosen for this pool, not yet admitted.
    reserved: u64,
    seq: u64,
    pumping: bool,
}

impl Gate {
    pub fn new(mesh: Mesh) -> Gate {
        Gate {
            mesh,
            pools: Arc::default(),
        }
    }

    /// Waits until a task of `priority` may be published to `pool`'s queue.
    /// `reserved`: [`decide`](Gate::decide) reserved its place.
    pub async fn admit(&self, pool: &str, priority: Priority, reserved: bool) {
        let window = self.mesh.config.pool(pool).queue_window.max(1);
        let rx = {
            let mut pools = self.pools.lock().expect("gate lock");
            if !pools.contains_key(pool) {
                pools.insert(pool.to_string(), PoolGate::default());
            }
            let g = pools.get_mut(pool).expect("just inserted");
            if reserved {
                g.reserved = g.reserved.saturating_sub(1);
            }
            if g.held.is_empty() && g.queued < window {
                g.queued += 1;
                return;
            }
            let (tx, rx) = oneshot::channel();
            g.seq += 1;
            let rank = Reverse((priority, g.seq));
            g.held.push(Held { rank, release: tx });
            metrics::gauge!(jetmesh_shared::telemetry::TASKS_HELD, "pool" => pool.to_string())
                .set(g.held.len() as f64);
            if !g.pumping {
                g.pumping = true;
                let this = self.clone();
                let pool = pool.to_string();
                tokio::spawn(async move { this.pump(pool, window).await });
            }
            rx
        };
        // The pump only drops a sender when the router stops.
        let _ = rx.await;
    }

    /// Releases held tasks of `pool` as its queue drains, until none is held.
    async fn pump(&self, pool: String, window: u64) {
        loop {
            let depth = match pools::queue_stats(&self.mesh, &pool, false).await {
                Ok(Some(s)) => Some(s.pending),
                // No consumer yet: nothing competes for order; let it all go.
                Ok(None) => None,
                Err(error) => {
                    tracing::debug!(%error, pool, "Cannot measure a pool's queue.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            {
                let mut pools = self.pools.lock().expect("gate lock");
                let g = pools.entry(pool.clone()).or_default();
                let room = match depth {
                    Some(d) => {
                        g.queued = d;
                        g.measured_at = Some(Instant::now());
                        window.saturating_sub(d)
                    }
                    None => u64::MAX,
                };
                let mut released = 0;
                while released < room {
                    let Some(h) = g.held.pop() else { break };
                    if h.release.send(()).is_ok() {
                        released += 1;
                    }
                }
                g.queued += released;
                metrics::gauge!(jetmesh_shared::telemetry::TASKS_HELD, "pool" => pool.clone())
                    .set(g.held.len() as f64);
                if g.held.is_empty() {
                    g.pumping = false;
                    return;
                }
            }
            tokio::time::sleep(PUMP_EVERY).await;
        }
    }

    /// Tasks held per pool (for the router's heartbeat).
    pub fn held(&self) -> BTreeMap<String, u64> {
        self.pools
            .lock()
            .expect("gate lock")
            .iter()
            .map(|(p, g)| (p.clone(), g.held.len() as u64))
            .collect()
    }

    /// Measures the pools whose figures are older than 50 ms.
    pub async fn refresh(&self, names: &[&str]) {
        for pool in names {
            let fresh = self
                .pools
                .lock()
                .expect("gate lock")
                .get(*pool)
                .and_then(|g| g.measured_at)
                .is_some_and(|t| t.elapsed() < FRESH);
            if fresh {
                continue;
            }
            let pending = match pools::queue_stats(&self.mesh, pool, false).await {
                Ok(Some(s)) => s.pending,
                _ => 0,
            };
            let mut pools = self.pools.lock().expect("gate lock");
            let g = pools.entry(pool.to_string()).or_default();
            g.queued = pending;
            g.measured_at = Some(Instant::now());
        }
    }

    /// Chooses among `names` with `f`, given what waits for each (queued,
    /// held, and chosen but not yet admitted), and reserves a place in the
    /// chosen one at once, so choices made at the same time see each other.
    /// The reservation is used by the next [`admit`](Gate::admit) there, or
    /// given back with [`unreserve`](Gate::unreserve).
    pub fn decide(&self, names: &[&str], f: impl FnOnce(&[u64]) -> usize) -> usize {
        let mut pools = self.pools.lock().expect("gate lock");
        let waiting: Vec<u64> = names
            .iter()
            .map(|p| {
                pools
                    .get(*p)
                    .map(|g| g.queued + g.held.len() as u64 + g.reserved)
                    .unwrap_or(0)
            })
            .collect();
        let i = f(&waiting).min(names.len().saturating_sub(1));
        if let Some(name) = names.get(i) {
            match pools.get_mut(*name) {
                Some(g) => g.reserved += 1,
                None => {
                    let g = PoolGate {
                        reserved: 1,
                        ..PoolGate::default()
                    };
                    pools.insert(name.to_string(), g);
                }
            }
        }
        i
    }

    pub fn unreserve(&self, pool: &str) {
        if let Some(g) = self.pools.lock().expect("gate lock").get_mut(pool) {
            g.reserved = g.reserved.saturating_sub(1);
        }
    }
}
