//! What the mesh knows about its pools: the JetStream figures of a pool's
//! queue ([`queue_stats`]), whether anything serves it ([`QueueStats::live`]),
//! and a live view of the status the autoscaler writes to `mesh_scale`
//! (`status.<pool>`) and of worker heartbeats ([`PoolView`], kept by
//! [`crate::follow`]) that routers and planners read for backpressure and
//! liveness without asking the server each time.

use crate::codec;
use crate::error::{Context, Result};
use crate::follow::{Change, follow};
use crate::mesh::Mesh;
use crate::wire::{CapabilityEntry, PoolStatus};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A pool's queue as JetStream sees it (consumer `pool_<pool>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Tasks not yet delivered to a worker.
    pub pending: u64,
    /// Tasks delivered and not yet acked (running, or held by a dead worker
    /// until their ack wait passes).
    pub ack_pending: u64,
    /// Pull requests waiting on the consumer: an idle worker always has one.
    pub waiting_pulls: usize,
    /// Tasks acked so far (the consumer's ack floor), for drain rates.
    pub acked: u64,
    /// Time since the consumer last delivered a task.
    pub since_delivery: Option<Duration>,
    /// Age of the oldest task not yet delivered.
    pub oldest_wait: Option<Duration>,
}

impl QueueStats {
    /// Whether something serves the pool: a worker waiting for work, a task
    /// in progress, or a delivery within `recent`.
    pub fn live(&self, recent: Duration) -> bool {
        self.waiting_pulls > 0
            || self.ack_pending > 0
            || self.since_delivery.is_some_and(|d| d <= recent)
    }
}

/// The pool's queue figures; `None` when its consumer does not exist (no
/// worker ever started). With `oldest`, also reads the oldest waiting task.
pub async fn queue_stats(mesh: &Mesh, pool: &str, oldest: bool) -> Result<Option<QueueStats>> {
    let stream = mesh
        .js
        .get_stream_no_info(mesh.names.queues_stream())
        .await
        .context("cannot open the queue stream")?;
    // Bounded well under the client's request timeout: callers poll often
    // and a lost answer must not stall them for long.
    let info = tokio::time::timeout(
        Duration::from_secs(2),
        stream.consumer_info(mesh.names.pool_consumer(pool)),
    )
    .await
    .map_err(|_| {
        crate::Error::new(
            crate::ErrorCode::Timeout,
            "the pool's queue figures did not come in 2 s",
        )
    })?;
    let info = match info {
        Ok(info) => info,
        Err(e)
            if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound
                || e.to_string().contains("not found") =>
        {
            return Ok(None);
        }
        Err(e) => return Err(crate::Error::unavailable("cannot read a pool's queue", e)),
    };
    let now = jiff::Timestamp::now();
    let age = |t: i128| {
        jiff::Timestamp::from_nanosecond(t)
            .ok()
            .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
    };
    let since_delivery = info
        .delivered
        .last_active
        .and_then(|t| age(t.unix_timestamp_nanos()));
    let oldest_wait = if oldest && info.num_pending > 0 {
        stream
            .get_first_raw_message_by_subject(
                mesh.names.queue_filter(pool),
                info.delivered.stream_sequence + 1,
            )
            .await
            .ok()
            .and_then(|m| age(m.time.unix_timestamp_nanos()))
    } else {
        None
    };
    Ok(Some(QueueStats {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        waiting_pulls: info.num_waiting,
        acked: info.ack_floor.consumer_sequence,
        since_delivery,
        oldest_wait,
    }))
}

/// A live view of `status.*` in `mesh_scale`.
#[derive(Clone)]
pub struct PoolView {
    mesh: Mesh,
    statuses: Arc<RwLock<HashMap<String, PoolStatus>>>,
    /// A status older than this is ignored (its autoscaler stopped).
    stale_after: Duration,
    /// Direct liveness checks, reused briefly.
    live: Arc<std::sync::Mutex<HashMap<String, (bool, tokio::time::Instant)>>>,
    /// Heartbeating worker processes per pool (`worker.<pool>.<instance>` in
    /// `mesh_health`); a pool absent here never had one.
    beats: Arc<RwLock<HashMap<String, std::collections::BTreeSet<String>>>>,
}

impl PoolView {
    /// Starts following pool status until `shutdown`.
    pub async fn follow(mesh: Mesh, shutdown: CancellationToken) -> Result<PoolView> {
        let interval = mesh.config.autoscaler.interval_ms.max(100);
        let view = PoolView {
            mesh: mesh.clone(),
            statuses: Arc::default(),
            stale_after: Duration::from_millis(interval * 3 + 2000),
            live: Arc::default(),
            beats: Arc::default(),
        };
        let this = view.clone();
        follow(
            mesh.health.clone(),
            mesh.names.worker_health_all(),
            shutdown.clone(),
            move |c| this.apply_beat(c),
        )
        .await?;
        let this = view.clone();
        follow(
            mesh.scale.clone(),
            mesh.names.status_all(),
            shutdown,
            move |c| this.apply(c),
        )
        .await?;
        Ok(view)
    }

    fn apply_beat(&self, change: Change) {
        let mut beats = self.beats.write().expect("pool view lock");
        let (key, put) = match &change {
            Change::Reset => return beats.clear(),
            Change::Put(e) => (e.key.as_str(), true),
            Change::Delete { key, .. } => (key.as_str(), false),
        };
        let Some((pool, instance)) = crate::names::parse_worker_health_key(key) else {
            return;
        };
        let set = beats.entry(pool.to_string()).or_default();
        if put {
            set.insert(instance.to_string());
        } else {
            set.remove(instance);
        }
    }

    fn apply(&self, change: Change) {
        let mut statuses = self.statuses.write().expect("pool view lock");
        match change {
            Change::Reset => statuses.clear(),
            Change::Put(e) => {
                if let Some(pool) = crate::names::parse_status_key(&e.key)
                    && let Ok(s) = codec::from_json::<PoolStatus>(&e.value)
                {
                    statuses.insert(pool.to_string(), s);
                }
            }
            Change::Delete { key, .. } => {
                if let Some(pool) = crate::names::parse_status_key(&key) {
                    statuses.remove(pool);
                }
            }
        }
    }

    /// Reads the pool's status, if an autoscaler wrote it recently.
    pub fn with<T>(&self, pool: &str, f: impl FnOnce(&PoolStatus) -> T) -> Option<T> {
        let statuses = self.statuses.read().expect("pool view lock");
        let s = statuses.get(pool)?;
        let age = jiff::Timestamp::now().duration_since(s.at);
        Duration::try_from(age)
            .is_ok_and(|a| a <= self.stale_after)
            .then(|| f(s))
    }

    /// The pool's status, if an autoscaler wrote it recently.
    pub fn get(&self, pool: &str) -> Option<PoolStatus> {
        self.with(pool, PoolStatus::clone)
    }

    /// `(retry_after_ms, waiting)` when the pool refuses new work.
    pub fn refusing(&self, pool: &str) -> Option<(u64, u64)> {
        self.with(pool, |s| {
            s.refusing
                .then(|| (s.retry_after_ms.unwrap_or(5000), s.pending + s.held))
        })
        .flatten()
    }

    /// Whether anything serves the pool of `entry`: its status says so, it
    /// registered within `health.dead_after_ms`, or its consumer shows a
    /// worker (checked directly, at most once a second per pool).
    pub async fn is_live(&self, entry: &CapabilityEntry) -> bool {
        let beating = self
            .beats
            .read()
            .expect("pool view lock")
            .get(&entry.pool)
            .map(|set| !set.is_empty());
        match beating {
            Some(true) => return true,
            // Its workers heartbeat and none does now (they stopped, or were
            // declared dead): only a worker still pulling counts.
            Some(false) => return Box::pin(self.check(entry, None)).await,
            None => {}
        }
        if self.with(&entry.pool, |s| s.live) == Some(true) {
            return true;
        }
        let recent = Duration::from_millis(self.mesh.config.health.dead_after_ms);
        if entry.registered_at.is_some_and(|t| {
            Duration::try_from(jiff::Timestamp::now().duration_since(t)).is_ok_and(|a| a <= recent)
        }) {
            return true;
        }
        // Boxed: the direct check is the rare path of a hot call.
        Box::pin(self.check(entry, Some(recent))).await
    }

    /// Asks the pool's consumer (at most every 250 ms per pool). With
    /// `recent`, a delivery within it counts as a sign of life.
    async fn check(&self, entry: &CapabilityEntry, recent: Option<Duration>) -> bool {
        if let Some((live, at)) = self.live.lock().expect("live cache").get(&entry.pool)
            && at.elapsed() < Duration::from_millis(250)
        {
            return *live;
        }
        let live = match queue_stats(&self.mesh, &entry.pool, false).await {
            Ok(Some(s)) => match recent {
                Some(recent) => s.live(recent),
                None => s.waiting_pulls > 0 || s.ack_pending > 0,
            },
            Ok(None) => false,
            // Cannot tell: do not refuse work over it.
            Err(_) => true,
        };
        self.live
            .lock()
            .expect("live cache")
            .insert(entry.pool.clone(), (live, tokio::time::Instant::now()));
        live
    }
}

/// Whether new work for `capability` can be taken: some pool serving it is
/// live (else `no_workers`, unless `router.when_no_workers = "wait"`), and
/// not every live one refuses work (else `overloaded`, with the shortest
/// retry hint). A refusing pool whose `spill_to` pool can take work counts
/// as taking it.
pub async fn admit(
    view: &PoolView,
    capability: &str,
    candidates: &[Arc<crate::registry::Registered>],
) -> crate::Result<()> {
    let mesh = &view.mesh;
    let mut live = Vec::new();
    for e in candidates {
        if view.is_live(e).await {
            live.push(e);
        }
    }
    if live.is_empty() {
        if mesh.config.router.when_no_workers == crate::config::WhenNoWorkers::Wait
            || candidates.is_empty()
        {
            return Ok(());
        }
        let pools: Vec<&str> = candidates.iter().map(|e| e.pool.as_str()).collect();
        return Err(crate::Error::new(
            crate::ErrorCode::NoWorkers,
            format!(
                "capability {capability:?} is registered, but no worker of pool {} is running; \
                 start one (jetmesh worker --pool {}) and try again",
                pools.join(" or "),
                pools[0]
            ),
        ));
    }
    let mut refusal: Option<(u64, u64, &str)> = None;
    for e in live {
        let Some((retry, waiting)) = view.refusing(&e.pool) else {
            return Ok(());
        };
        let spill = mesh.config.pool(&e.pool).spill_to.as_deref();
        if spill
            .is_some_and(|b| view.refusing(b).is_none() && candidates.iter().any(|c| c.pool == b))
        {
            return Ok(());
        }
        if refusal.is_none_or(|(r, _, _)| retry < r) {
            refusal = Some((retry, waiting, &e.pool));
        }
    }
    let (retry, waiting, pool) = refusal.expect("a live pool refused");
    Err(crate::Error::new(
        crate::ErrorCode::Overloaded,
        format!(
            "pool {pool} is overloaded: {waiting} tasks wait (the limit is {}); try again in about {} s",
            mesh.config.pool(pool).max_backlog,
            retry.div_ceil(1000)
        ),
    )
    .retry_after(retry))
}
