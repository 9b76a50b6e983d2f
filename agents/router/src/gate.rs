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
//!
//! [`Gate`] does the measuring; every decision is made by `Pools`, which
//! does no I/O.

use jetmesh_shared::error::Result;
use jetmesh_shared::wire::Priority;
use jetmesh_shared::{Mesh, pools};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often a pool with held tasks is measured.
const PUMP_EVERY: Duration = Duration::from_millis(5);
/// How long a measured depth is trusted for routing decisions.
const FRESH: Duration = Duration::from_millis(50);
/// How long the pump waits after a measurement failed.
const RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Gate {
    mesh: Mesh,
    pools: Arc<Mutex<Pools>>,
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

/// What [`Pools::admit`] decided for one task.
enum Admission {
    /// Publish it now.
    Now,
    /// Wait for `release`. `pump`: no pump runs for the pool yet; start one.
    Held {
        release: oneshot::Receiver<()>,
        pump: bool,
    },
}

/// The gate's figures for every pool and every decision made on them. It
/// does no I/O: [`Gate`] measures and hands the figures in.
#[derive(Default)]
struct Pools(HashMap<String, PoolGate>);

impl Pools {
    /// Admits a task of `priority` to `pool` now, or holds it.
    /// `reserved`: [`decide`](Pools::decide) reserved its place.
    fn admit(&mut self, pool: &str, priority: Priority, reserved: bool, window: u64) -> Admission {
        if !self.0.contains_key(pool) {
            self.0.insert(pool.to_string(), PoolGate::default());
        }
        let g = self.0.get_mut(pool).expect("just inserted");
        if reserved {
            g.reserved = g.reserved.saturating_sub(1);
        }
        if g.held.is_empty() && g.queued < window {
            g.queued += 1;
            return Admission::Now;
        }
        let (tx, rx) = oneshot::channel();
        g.seq += 1;
        let rank = Reverse((priority, g.seq));
        g.held.push(Held { rank, release: tx });
        metrics::gauge!(jetmesh_shared::telemetry::TASKS_HELD, "pool" => pool.to_string())
            .set(g.held.len() as f64);
        let pump = !g.pumping;
        g.pumping = true;
        Admission::Held { release: rx, pump }
    }

    /// Takes the pump's measurement of `pool`'s queue (`None`: the pool has
    /// no consumer yet) and releases the held tasks that fit in the window.
    /// Returns whether tasks are still held, that is whether the pump goes on.
    fn measured(&mut self, pool: &str, depth: Option<u64>, window: u64) -> bool {
        let g = self.0.entry(pool.to_string()).or_default();
        let room = match depth {
            Some(d) => {
                g.queued = d;
                g.measured_at = Some(Instant::now());
                window.saturating_sub(d)
            }
            // No consumer yet: nothing competes for order; let it all go.
            None => u64::MAX,
        };
        let mut released = 0;
        while released < room {
            let Some(h) = g.held.pop() else { break };
            // A task whose admit was dropped takes no room.
            if h.release.send(()).is_ok() {
                released += 1;
            }
        }
        g.queued += released;
        metrics::gauge!(jetmesh_shared::telemetry::TASKS_HELD, "pool" => pool.to_string())
            .set(g.held.len() as f64);
        if g.held.is_empty() {
            g.pumping = false;
            return false;
        }
        true
    }

    /// Whether `pool`'s figures are recent enough to route by.
    fn fresh(&self, pool: &str) -> bool {
        self.0
            .get(pool)
            .and_then(|g| g.measured_at)
            .is_some_and(|t| t.elapsed() < FRESH)
    }

    /// Takes a measurement made for routing: the pool consumer's undelivered
    /// count, `Ok(None)` when the pool has no consumer yet (nothing waits in
    /// its queue). A failed one keeps the count of what was published, which
    /// is then the best figure there is (an empty queue would open the
    /// window and draw the choices to the pool), and is not retried for
    /// [`FRESH`] either.
    fn refreshed(&mut self, pool: &str, measured: &Result<Option<u64>>) {
        let g = self.0.entry(pool.to_string()).or_default();
        if let Ok(pending) = measured {
            g.queued = pending.unwrap_or(0);
        }
        g.measured_at = Some(Instant::now());
    }

    fn held(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .map(|(p, g)| (p.clone(), g.held.len() as u64))
            .collect()
    }

    fn decide(&mut self, names: &[&str], f: impl FnOnce(&[u64]) -> usize) -> usize {
        let waiting: Vec<u64> = names
            .iter()
            .map(|p| {
                self.0
                    .get(*p)
                    .map(|g| g.queued + g.held.len() as u64 + g.reserved)
                    .unwrap_or(0)
            })
            .collect();
        let i = f(&waiting).min(names.len().saturating_sub(1));
        if let Some(name) = names.get(i) {
            match self.0.get_mut(*name) {
                Some(g) => g.reserved += 1,
                None => {
                    let g = PoolGate {
                        reserved: 1,
                        ..PoolGate::default()
                    };
                    self.0.insert(name.to_string(), g);
                }
            }
        }
        i
    }

    fn unreserve(&mut self, pool: &str) {
        if let Some(g) = self.0.get_mut(pool) {
            g.reserved = g.reserved.saturating_sub(1);
        }
    }
}

/// The pump: measures `pool` with `measure` every [`PUMP_EVERY`] and
/// releases held tasks as its queue drains, until none is held.
async fn drain<M, F>(pools: &Mutex<Pools>, pool: &str, window: u64, mut measure: M)
where
    M: FnMut() -> F,
    F: Future<Output = Result<Option<u64>>>,
{
    loop {
        let depth = match measure().await {
            Ok(depth) => depth,
            Err(error) => {
                tracing::debug!(%error, pool, "Cannot measure a pool's queue.");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        };
        if !pools
            .lock()
            .expect("gate lock")
            .measured(pool, depth, window)
        {
            return;
        }
        tokio::time::sleep(PUMP_EVERY).await;
    }
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
        let admission = self
            .pools
            .lock()
            .expect("gate lock")
            .admit(pool, priority, reserved, window);
        let Admission::Held { release, pump } = admission else {
            return;
        };
        if pump {
            let this = self.clone();
            let pool = pool.to_string();
            tokio::spawn(async move { this.pump(pool, window).await });
        }
        // The pump only drops a sender when the router stops.
        let _ = release.await;
    }

    /// Releases held tasks of `pool` as its queue drains, until none is held.
    async fn pump(&self, pool: String, window: u64) {
        let (mesh, name) = (&self.mesh, pool.as_str());
        drain(&self.pools, name, window, move || async move {
            pools::queue_stats(mesh, name, false)
                .await
                .map(|s| s.map(|s| s.pending))
        })
        .await;
    }

    /// Tasks held per pool (for the router's heartbeat).
    pub fn held(&self) -> BTreeMap<String, u64> {
        self.pools.lock().expect("gate lock").held()
    }

    /// Measures the pools whose figures are older than 50 ms.
    pub async fn refresh(&self, names: &[&str]) {
        for pool in names {
            if self.pools.lock().expect("gate lock").fresh(pool) {
                continue;
            }
            let measured = pools::queue_stats(&self.mesh, pool, false)
                .await
                .map(|s| s.map(|s| s.pending));
            if let Err(error) = &measured {
                tracing::debug!(%error, pool, "Cannot measure a pool's queue.");
            }
            self.pools
                .lock()
                .expect("gate lock")
                .refreshed(pool, &measured);
        }
    }

    /// Chooses among `names` with `f`, given what waits for each (queued,
    /// held, and chosen but not yet admitted), and reserves a place in the
    /// chosen one at once, so choices made at the same time see each other.
    /// The reservation is used by the next [`admit`](Gate::admit) there, or
    /// given back with [`unreserve`](Gate::unreserve).
    pub fn decide(&self, names: &[&str], f: impl FnOnce(&[u64]) -> usize) -> usize {
        self.pools.lock().expect("gate lock").decide(names, f)
    }

    pub fn unreserve(&self, pool: &str) {
        self.pools.lock().expect("gate lock").unreserve(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Low, Normal};
    use jetmesh_shared::error::{Error, ErrorCode};
    use oneshot::error::TryRecvError;
    use std::collections::VecDeque;

    const POOL: &str = "p";

    /// Admits a task that the gate must hold; returns its release.
    fn hold(pools: &mut Pools, priority: Priority, window: u64) -> oneshot::Receiver<()> {
        match pools.admit(POOL, priority, false, window) {
            Admission::Held { release, .. } => release,
            Admission::Now => panic!("a {priority:?} task went at once"),
        }
    }

    fn goes_now(pools: &mut Pools, window: u64) -> bool {
        matches!(pools.admit(POOL, Normal, false, window), Admission::Now)
    }

    fn released(rx: &mut oneshot::Receiver<()>) -> bool {
        match rx.try_recv() {
            Ok(()) => true,
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Closed) => panic!("a held task was dropped, not released"),
        }
    }

    fn waiting(pools: &mut Pools, pool: &str) -> u64 {
        let mut seen = 0;
        pools.decide(&[pool], |w| {
            seen = w[0];
            0
        });
        pools.unreserve(pool);
        seen
    }

    #[test]
    fn under_the_window_tasks_go_at_once_and_are_counted() {
        let mut pools = Pools::default();
        for _ in 0..3 {
            assert!(goes_now(&mut pools, 3));
        }
        assert_eq!(waiting(&mut pools, POOL), 3);
        assert_eq!(pools.held()[POOL], 0);
    }

    #[test]
    fn at_the_window_a_task_is_held_and_only_the_first_hold_starts_a_pump() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 1));
        let first = pools.admit(POOL, Normal, false, 1);
        assert!(matches!(first, Admission::Held { pump: true, .. }));
        let second = pools.admit(POOL, High, false, 1);
        assert!(matches!(second, Admission::Held { pump: false, .. }));
        assert_eq!(pools.held()[POOL], 2);
        // Held tasks count as waiting for the pool.
        assert_eq!(waiting(&mut pools, POOL), 3);
    }

    #[test]
    fn a_measurement_releases_what_fits_highest_priority_first_then_oldest() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 2));
        assert!(goes_now(&mut pools, 2));
        let mut low = hold(&mut pools, Low, 2);
        let mut normal1 = hold(&mut pools, Normal, 2);
        let mut high1 = hold(&mut pools, High, 2);
        let mut normal2 = hold(&mut pools, Normal, 2);
        let mut high2 = hold(&mut pools, High, 2);

        // The queue is still full: nothing fits.
        assert!(pools.measured(POOL, Some(2), 2));
        assert!(!released(&mut high1));

        // Two places: both high tasks, the older one first.
        assert!(pools.measured(POOL, Some(0), 2));
        assert!(released(&mut high1) && released(&mut high2));
        assert!(!released(&mut normal1) && !released(&mut normal2) && !released(&mut low));

        // One place: the older normal task.
        assert!(pools.measured(POOL, Some(1), 2));
        assert!(released(&mut normal1));
        assert!(!released(&mut normal2) && !released(&mut low));

        // Two places for the last two: the pump is done.
        assert!(!pools.measured(POOL, Some(0), 2));
        assert!(released(&mut normal2) && released(&mut low));
        assert_eq!(pools.held()[POOL], 0);
    }

    #[test]
    fn released_tasks_count_as_queued_until_the_next_measurement() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 3));
        assert!(goes_now(&mut pools, 3));
        assert!(goes_now(&mut pools, 3));
        let _held: Vec<_> = (0..4).map(|_| hold(&mut pools, Normal, 3)).collect();
        // One left the queue: one is released, and the queue is full again.
        assert!(pools.measured(POOL, Some(2), 3));
        assert_eq!(waiting(&mut pools, POOL), 3 + 3);
        assert_eq!(pools.held()[POOL], 3);
    }

    #[test]
    fn a_pool_without_a_consumer_releases_everything_held() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 1));
        let mut held: Vec<_> = (0..5).map(|_| hold(&mut pools, Low, 1)).collect();
        assert!(!pools.measured(POOL, None, 1));
        assert!(held.iter_mut().all(released));
        assert_eq!(waiting(&mut pools, POOL), 1 + 5);
    }

    #[test]
    fn a_task_whose_admit_was_dropped_takes_no_room() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 1));
        let gone = hold(&mut pools, High, 1);
        let mut next = hold(&mut pools, Normal, 1);
        let mut last = hold(&mut pools, Normal, 1);
        drop(gone);
        // One place: the dropped high task is skipped and the next one goes.
        assert!(pools.measured(POOL, Some(0), 1));
        assert!(released(&mut next));
        assert!(!released(&mut last));
        assert_eq!(waiting(&mut pools, POOL), 1 + 1);
    }

    #[test]
    fn a_new_task_does_not_overtake_held_ones_when_the_queue_drains() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 1));
        let mut low = hold(&mut pools, Low, 1);
        // A routing measurement sees the queue empty before the pump does.
        pools.refreshed(POOL, &Ok(Some(0)));
        // There is room, but a task waits: the new one waits too, and the
        // pump lets the higher priority go first.
        let mut high = hold(&mut pools, High, 1);
        assert!(pools.measured(POOL, Some(0), 1));
        assert!(released(&mut high));
        assert!(!released(&mut low));
    }

    #[test]
    fn when_nothing_is_held_the_pump_stops_and_the_next_hold_starts_another() {
        let mut pools = Pools::default();
        assert!(goes_now(&mut pools, 1));
        let mut a = hold(&mut pools, Normal, 1);
        assert!(!pools.measured(POOL, Some(0), 1));
        assert!(released(&mut a));
        // The window is full again (the released task counts).
        let b = pools.admit(POOL, Normal, false, 1);
        assert!(matches!(b, Admission::Held { pump: true, .. }));
    }

    #[test]
    fn decide_sees_queued_held_and_reserved_and_reserves_its_choice() {
        let mut pools = Pools::default();
        pools.admit("a", Normal, false, 1);
        let _held = pools.admit("a", Normal, false, 1);
        let mut seen = Vec::new();
        let i = pools.decide(&["a", "b"], |w| {
            seen = w.to_vec();
            1
        });
        assert_eq!((i, seen.clone()), (1, vec![2, 0]));
        // The reservation is seen by the next choice, before any admit.
        let i = pools.decide(&["a", "b"], |w| {
            seen = w.to_vec();
            0
        });
        assert_eq!((i, seen.clone()), (0, vec![2, 1]));
        pools.decide(&["a", "b"], |w| {
            seen = w.to_vec();
            0
        });
        assert_eq!(seen, vec![3, 1]);
    }

    #[test]
    fn an_admit_uses_up_its_reservation_and_unreserve_gives_one_back() {
        let mut pools = Pools::default();
        pools.decide(&["a"], |_| 0);
        pools.decide(&["a"], |_| 0);
        assert_eq!(waiting(&mut pools, "a"), 2);
        // The reserved place becomes a queued one: still 2 waiting.
        assert!(matches!(pools.admit("a", Normal, true, 10), Admission::Now));
        assert_eq!(waiting(&mut pools, "a"), 2);
        pools.unreserve("a");
        assert_eq!(waiting(&mut pools, "a"), 1);
        // Never below zero.
        pools.unreserve("a");
        pools.admit("a", Normal, true, 10);
        assert_eq!(waiting(&mut pools, "a"), 2);
        // Unknown pools are ignored.
        pools.unreserve("nowhere");
        assert!(!pools.held().contains_key("nowhere"));
    }

    #[test]
    fn decide_clamps_a_choice_past_the_end_and_reserves_nothing_without_pools() {
        let mut pools = Pools::default();
        assert_eq!(pools.decide(&["a", "b"], |_| 7), 1);
        assert_eq!(waiting(&mut pools, "b"), 1);
        assert_eq!(waiting(&mut pools, "a"), 0);
        assert_eq!(pools.decide(&[], |w| w.len() + 3), 0);
    }

    #[test]
    fn held_counts_each_pools_held_tasks() {
        let mut pools = Pools::default();
        pools.admit("a", Normal, false, 1);
        let _a = pools.admit("a", Normal, false, 1);
        let _b1 = pools.admit("b", Normal, false, 0);
        let _b2 = pools.admit("b", Normal, false, 0);
        assert_eq!(
            pools.held(),
            BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 2)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_measurement_is_trusted_for_50_ms() {
        let mut pools = Pools::default();
        assert!(!pools.fresh(POOL));
        pools.refreshed(POOL, &Ok(Some(4)));
        assert_eq!(waiting(&mut pools, POOL), 4);
        tokio::time::advance(FRESH - Duration::from_millis(1)).await;
        assert!(pools.fresh(POOL));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!pools.fresh(POOL));
        // The pump's measurements count too.
        pools.measured(POOL, Some(1), 5);
        assert!(pools.fresh(POOL));
        // A pool without a consumer was not measured by the pump.
        tokio::time::advance(FRESH).await;
        pools.measured(POOL, None, 5);
        assert!(!pools.fresh(POOL));
    }

    #[test]
    fn a_routing_measurement_of_a_pool_without_a_consumer_is_an_empty_queue() {
        let mut pools = Pools::default();
        pools.admit(POOL, Normal, false, 10);
        pools.refreshed(POOL, &Ok(None));
        assert_eq!(waiting(&mut pools, POOL), 0);
    }

    #[test]
    fn a_failed_routing_measurement_keeps_the_count_of_what_was_published() {
        let mut pools = Pools::default();
        for _ in 0..3 {
            assert!(goes_now(&mut pools, 3));
        }
        pools.refreshed(POOL, &Err(Error::new(ErrorCode::Timeout, "no figures")));
        assert_eq!(waiting(&mut pools, POOL), 3);
        // So the window stays closed.
        assert!(!goes_now(&mut pools, 3));
    }

    /// A pump measurement scripted by a test, and when it was taken.
    struct Script {
        depths: VecDeque<Result<Option<u64>>>,
        at: Vec<Duration>,
    }

    #[tokio::test(start_paused = true)]
    async fn the_pump_measures_every_5_ms_retries_failures_after_100_ms_and_stops_when_empty() {
        let pools = Arc::new(Mutex::new(Pools::default()));
        let (mut a, mut b) = {
            let mut p = pools.lock().unwrap();
            assert!(matches!(p.admit(POOL, Normal, false, 2), Admission::Now));
            assert!(matches!(p.admit(POOL, Normal, false, 2), Admission::Now));
            (hold(&mut p, Normal, 2), hold(&mut p, Normal, 2))
        };
        let script = Arc::new(Mutex::new(Script {
            depths: VecDeque::from([
                Ok(Some(2)),
                Err(Error::new(ErrorCode::Timeout, "no figures")),
                Ok(Some(1)),
                Ok(Some(2)),
                Ok(Some(0)),
            ]),
            at: Vec::new(),
        }));
        let start = Instant::now();
        let s = script.clone();
        let measure = move || {
            let s = s.clone();
            async move {
                let mut s = s.lock().unwrap();
                s.at.push(start.elapsed());
                s.depths
                    .pop_front()
                    .expect("the pump measured once too often")
            }
        };
        drain(&pools, POOL, 2, measure).await;
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            script.lock().unwrap().at,
            vec![ms(0), ms(5), ms(105), ms(110), ms(115)]
        );
        assert!(script.lock().unwrap().depths.is_empty());
        assert!(released(&mut a) && released(&mut b));
        let p = pools.lock().unwrap();
        assert!(!p.0[POOL].pumping);
        assert_eq!(p.held()[POOL], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pump_releases_a_waiting_task_once_its_queue_has_room() {
        let pools = Arc::new(Mutex::new(Pools::default()));
        let mut task = {
            let mut p = pools.lock().unwrap();
            p.admit(POOL, Normal, false, 1);
            hold(&mut p, High, 1)
        };
        // The queue drains 20 ms from now.
        let start = Instant::now();
        let measure = move || async move {
            Ok(Some(if start.elapsed() < Duration::from_millis(20) {
                1
            } else {
                0
            }))
        };
        let pump = tokio::spawn({
            let pools = pools.clone();
            async move { drain(&pools, POOL, 1, measure).await }
        });
        tokio::time::sleep(Duration::from_millis(19)).await;
        assert!(!released(&mut task));
        pump.await.unwrap();
        assert!(released(&mut task));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }
}
