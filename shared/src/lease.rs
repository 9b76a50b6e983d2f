//! Leader leases for singleton roles (the chief, later the autoscaler): one
//! key per role in `mesh_leases`, whose entries expire after the lease TTL.
//!
//! - Acquire: KV create — it succeeds for exactly one contender.
//! - Renew: KV update at the last revision, every third of the TTL; a failed
//!   update (someone else holds it, or it expired) means the lease is lost.
//! - Standbys watch the key and try to create it whenever it is deleted, and
//!   poll, so an expired lease is taken over within the TTL plus one poll.
//! - Release: a clean shutdown deletes the key at the held revision, and a
//!   standby takes over at once.
//!
//! The revision at which a holder acquired the lease is its *term*, the fencing
//! token. A holder must check [`Lease::fence`] before every write that only the
//! leader may make: it fails once the local deadline — the last successful
//! renewal plus the TTL minus a fifth of it — has passed. The server cannot
//! expire the key before the TTL has run from that renewal, so a holder that was
//! paused or cut off stops writing before any standby can have taken over.
//!
//! `Tenure` holds what the holder knows and answers `fence`, `acquired`
//! and `lost` from it without I/O; the campaign task feeds it.

use crate::codec;
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Mesh;
use crate::wire::LeaseRecord;
use async_nats::jetstream::kv;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a holder knows about its lease.
#[derive(Debug, Clone, Copy)]
struct Held {
    term: u64,
    revision: u64,
    deadline: Instant,
    acquired_at: jiff::Timestamp,
}

/// Until when a holder may act on a lease written at `sent` (a time taken
/// before the write, so before the server stamped it): a fifth of the TTL
/// before the server may expire it.
fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 5
}

/// The holder's side of a lease: what it holds, and a signal of every
/// change. Set by the campaign task; read by everyone else.
struct Tenure {
    held: Mutex<Option<Held>>,
    leading: watch::Sender<bool>,
}

impl Tenure {
    fn new() -> Tenure {
        Tenure {
            held: Mutex::new(None),
            leading: watch::channel(false).0,
        }
    }

    fn held(&self) -> Option<Held> {
        *self.held.lock().expect("lease lock")
    }

    /// The term while the deadline has not passed.
    fn term(&self) -> Option<u64> {
        match self.held() {
            Some(h) if Instant::now() < h.deadline => Some(h.term),
            _ => None,
        }
    }

    fn set(&self, held: Option<Held>) {
        let leading = held.is_some();
        *self.held.lock().expect("lease lock") = held;
        self.leading.send_replace(leading);
    }

    /// A renewal of `h` sent at `sent` succeeded at `revision`. A step-down
    /// made meanwhile stays in force.
    fn renewed(&self, h: Held, revision: u64, sent: Instant, ttl: Duration) {
        let mut held = self.held.lock().expect("lease lock");
        if held.is_some() {
            *held = Some(Held {
                revision,
                deadline: deadline(sent, ttl),
                ..h
            });
            drop(held);
            // Wakes an `acquired` that waits on a deadline this one moved.
            self.leading.send_replace(true);
        }
    }

    /// Waits until the lease is held and its deadline is ahead. Past the
    /// deadline the holder leads no more, though the campaign task may not
    /// have stepped down yet (its renewal is late, or it is starved).
    async fn acquired(&self) {
        let mut rx = self.leading.subscribe();
        loop {
            if *rx.borrow_and_update() && self.term().is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn lost(&self) {
        let mut rx = self.leading.subscribe();
        loop {
            let deadline = match self.held() {
                Some(h) => h.deadline,
                None => return,
            };
            tokio::select! {
                r = rx.wait_for(|l| !*l) => { let _ = r; return; }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.term().is_none() {
                        return;
                    }
                }
            }
        }
    }
}

struct Inner {
    mesh: Mesh,
    key: String,
    holder: String,
    ttl: Duration,
    tenure: Tenure,
}

/// A campaign for one lease. Cheap to clone.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<Inner>,
}

impl Lease {
    /// Starts campaigning for the lease of `role` as this process until
    /// `shutdown`, when a held lease is released.
    pub fn campaign(mesh: &Mesh, role: crate::Role, shutdown: CancellationToken) -> Lease {
        let name = mesh.names.lease_key(role);
        let holder = mesh.identity.instance.as_str();
        let lease = Lease {
            inner: Arc::new(Inner {
                mesh: mesh.clone(),
                key: name,
                holder: holder.to_string(),
                ttl: Duration::from_millis(mesh.config.leases.ttl_ms.max(1000)),
                tenure: Tenure::new(),
            }),
        };
        let this = lease.clone();
        tokio::spawn(async move { this.run(shutdown).await });
        lease
    }

    /// The fencing token (term) while this holder may act as leader.
    /// Errors with `unavailable` once it may not.
    pub fn fence(&self) -> Result<u64> {
        self.inner.tenure.term().ok_or_else(|| {
            Error::new(
                ErrorCode::Unavailable,
                format!(
                    "{} does not hold the {} lease",
                    self.inner.holder, self.inner.key
                ),
            )
        })
    }

    /// This campaigner's instance id.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    pub fn is_leader(&self) -> bool {
        self.fence().is_ok()
    }

    /// Waits until this holder leads.
    pub async fn acquired(&self) {
        self.inner.tenure.acquired().await
    }

    /// Waits until this holder no longer leads (lost, expired or released).
    /// Also wakes at the local deadline, even if the campaign task is starved.
    pub async fn lost(&self) {
        self.inner.tenure.lost().await
    }

    fn record(&self, term: u64, acquired_at: jiff::Timestamp) -> Result<bytes::Bytes> {
        codec::to_json(&LeaseRecord {
            holder: self.inner.holder.clone(),
            term,
            acquired_at,
            renewed_at: jiff::Timestamp::now(),
            ttl_ms: self.inner.ttl.as_millis() as u64,
        })
    }

    fn set(&self, held: Option<Held>) {
        self.inner.tenure.set(held);
    }

    async fn run(self, shutdown: CancellationToken) {
        let store = self.inner.mesh.leases.clone();
        let key = self.inner.key.clone();
        let poll =
            (self.inner.ttl / 20).clamp(Duration::from_millis(100), Duration::from_millis(500));
        let renew_every = self.inner.ttl / 3;
        // Standbys wake when the key is deleted (a release), and poll too:
        // a key that expires leaves no delete marker.
        let released = Arc::new(tokio::sync::Notify::new());
        let wake = released.clone();
        let follower =
            crate::follow::follow(store.clone(), key.clone(), shutdown.clone(), move |c| {
                if let crate::follow::Change::Delete { .. } = c {
                    wake.notify_one();
                }
            })
            .await;
        if let Err(error) = follower {
            tracing::debug!(lease = %key, %error, "Cannot follow the lease key; polling only.");
        }
        loop {
            match self.inner.tenure.held() {
                None => {
                    if shutdown.is_cancelled() {
                        return;
                    }
                    if let Some(h) = self.try_acquire(&store).await {
                        tracing::info!(lease = %key, holder = %self.inner.holder, term = h.term, "This instance leads.");
                        self.set(Some(h));
                        continue;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = released.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Some(h) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            self.set(None);
                            match store.delete_expect_revision(&key, Some(h.revision)).await {
                                Ok(()) => tracing::info!(lease = %key, "The lease is released."),
                                Err(error) => tracing::warn!(lease = %key, %error, "Could not release the lease; it expires instead."),
                            }
                            return;
                        }
                        _ = tokio::time::sleep(renew_every) => {}
                    }
                    if Instant::now() >= h.deadline {
                        // Paused or starved past the deadline: someone else may lead now.
                        tracing::warn!(lease = %key, term = h.term, "The lease deadline passed before renewal; stepping down.");
                        self.set(None);
                        continue;
                    }
                    let sent = Instant::now();
                    let renewed = match self.record(h.term, h.acquired_at) {
                        Ok(value) => store.update(&key, value, h.revision).await,
                        Err(_) => continue,
                    };
                    match renewed {
                        Ok(revision) => {
                            // From before the request: the server stamped it later.
                            self.inner.tenure.renewed(h, revision, sent, self.inner.ttl);
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            tracing::warn!(lease = %key, term = h.term, "The lease was taken over; stepping down.");
                            self.set(None);
                        }
                        Err(error) => {
                            tracing::warn!(lease = %key, %error, "Cannot renew the lease; retrying until its deadline.");
                        }
                    }
                }
            }
        }
    }

    async fn try_acquire(&self, store: &kv::Store) -> Option<Held> {
        let acquired_at = jiff::Timestamp::now();
        let started = Instant::now();
        // The term is the revision of the create, which the create cannot know:
        // the record is rewritten with it right away.
        let value = self.record(0, acquired_at).ok()?;
        match store.create(&self.inner.key, value).await {
            Ok(term) => {
                let mut held = Held {
                    term,
                    revision: term,
                    deadline: deadline(started, self.inner.ttl),
                    acquired_at,
                };
                let sent = Instant::now();
                if let Ok(value) = self.record(term, acquired_at)
                    && let Ok(revision) = store.update(&self.inner.key, value, term).await
                {
                    held.revision = revision;
                    held.deadline = deadline(sent, self.inner.ttl);
                }
                Some(held)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
            Err(error) => {
                tracing::debug!(lease = %self.inner.key, %error, "Cannot try for the lease.");
                None
            }
        }
    }
}

/// Who holds the lease of `role` now, if anyone.
pub async fn holder(mesh: &Mesh, role: crate::Role) -> Result<Option<LeaseRecord>> {
    mesh.get_json(&mesh.leases, &mesh.names.lease_key(role))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::time::advance;

    const TTL: Duration = Duration::from_secs(10);
    const MS: Duration = Duration::from_millis(1);

    fn held(term: u64, sent: Instant) -> Held {
        Held {
            term,
            revision: term,
            deadline: deadline(sent, TTL),
            acquired_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    /// Whether `f` finishes while the clock stands still.
    async fn done_now(f: impl Future<Output = ()>) -> bool {
        let before = Instant::now();
        let done = tokio::select! {
            biased;
            _ = f => true,
            _ = async {
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
            } => false,
        };
        assert_eq!(Instant::now(), before, "the clock moved");
        done
    }

    /// Waits for [`Tenure::lost`] on a task of its own; the handle says when
    /// it returned.
    fn spawn_lost(tenure: &Arc<Tenure>) -> tokio::task::JoinHandle<Instant> {
        let tenure = tenure.clone();
        tokio::spawn(async move {
            tenure.lost().await;
            Instant::now()
        })
    }

    /// The same for [`Tenure::acquired`].
    fn spawn_acquired(tenure: &Arc<Tenure>) -> tokio::task::JoinHandle<Instant> {
        let tenure = tenure.clone();
        tokio::spawn(async move {
            tenure.acquired().await;
            Instant::now()
        })
    }

    /// When the task finished; fails if it never does.
    async fn finished(task: tokio::task::JoinHandle<Instant>) -> Instant {
        tokio::time::timeout(Duration::from_secs(3600), task)
            .await
            .expect("it never finished")
            .expect("it panicked")
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_send_time_plus_the_ttl_less_a_fifth() {
        let t = Instant::now();
        assert_eq!(deadline(t, TTL), t + Duration::from_secs(8));
        assert_eq!(
            deadline(t, Duration::from_millis(1000)),
            t + Duration::from_millis(800)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fence_gives_the_term_until_the_deadline_and_fails_from_it() {
        let tenure = Tenure::new();
        assert_eq!(tenure.term(), None);
        tenure.set(Some(held(7, Instant::now())));
        assert_eq!(tenure.term(), Some(7));
        advance(Duration::from_secs(8) - MS).await;
        assert_eq!(tenure.term(), Some(7));
        advance(MS).await;
        assert_eq!(tenure.term(), None);
        // Nobody stepped down: the holder still thinks it leads, but may
        // not write.
        assert!(*tenure.leading.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_counts_from_when_it_was_sent_not_from_its_answer() {
        let tenure = Tenure::new();
        let t0 = Instant::now();
        let h = held(3, t0);
        tenure.set(Some(h));
        advance(Duration::from_secs(3)).await;
        let sent = Instant::now();
        // The answer takes a second.
        advance(Duration::from_secs(1)).await;
        tenure.renewed(h, 9, sent, TTL);
        let now = tenure.held().unwrap();
        assert_eq!((now.term, now.revision), (3, 9));
        assert_eq!(now.deadline, t0 + Duration::from_secs(3 + 8));
        advance(Duration::from_secs(7) - MS).await;
        assert_eq!(tenure.term(), Some(3));
        advance(MS).await;
        assert_eq!(tenure.term(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_answered_after_a_step_down_does_not_bring_the_lease_back() {
        let tenure = Tenure::new();
        let h = held(3, Instant::now());
        tenure.set(Some(h));
        let sent = Instant::now();
        tenure.set(None);
        tenure.renewed(h, 4, sent, TTL);
        assert!(tenure.held().is_none());
        assert_eq!(tenure.term(), None);
        assert!(!*tenure.leading.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_returns_at_once_when_nothing_is_held() {
        let tenure = Tenure::new();
        assert!(done_now(tenure.lost()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_wakes_at_the_deadline_though_the_campaign_never_steps_down() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        tenure.set(Some(held(1, t0)));
        // No campaign task runs at all: only the deadline can end this.
        let lost = spawn_lost(&tenure);
        assert_eq!(finished(lost).await, t0 + Duration::from_secs(8));
        assert!(*tenure.leading.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_sleeps_on_past_a_deadline_that_a_renewal_moved() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        let h = held(1, t0);
        tenure.set(Some(h));
        let lost = spawn_lost(&tenure);
        advance(Duration::from_secs(3)).await;
        tenure.renewed(h, 2, Instant::now(), TTL);
        assert_eq!(finished(lost).await, t0 + Duration::from_secs(3 + 8));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_wakes_at_a_step_down_before_the_deadline() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        tenure.set(Some(held(1, t0)));
        let lost = spawn_lost(&tenure);
        advance(Duration::from_secs(2)).await;
        tenure.set(None);
        assert_eq!(finished(lost).await, t0 + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn acquired_waits_until_the_lease_is_held() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        let acquired = spawn_acquired(&tenure);
        advance(Duration::from_secs(5)).await;
        assert!(!acquired.is_finished());
        tenure.set(Some(held(2, Instant::now())));
        assert_eq!(finished(acquired).await, t0 + Duration::from_secs(5));
        // And returns at once while it is.
        assert!(done_now(tenure.acquired()).await);
    }

    /// A holder whose renewal is late (the server does not answer, the
    /// campaign task is starved) is past its deadline before it steps down.
    /// Roles run `loop { acquired().await; …; lost().await }`: if
    /// `acquired` returned then, that loop would spin until the step-down.
    #[tokio::test(start_paused = true)]
    async fn acquired_does_not_return_past_the_deadline_before_the_step_down() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        let h = held(1, t0);
        tenure.set(Some(h));
        advance(Duration::from_secs(8)).await;
        assert!(done_now(tenure.lost()).await);
        assert!(!done_now(tenure.acquired()).await);

        let acquired = spawn_acquired(&tenure);
        advance(Duration::from_secs(1)).await;
        assert!(!acquired.is_finished());
        // The campaign steps down, then wins the lease again.
        tenure.set(None);
        advance(Duration::from_secs(1)).await;
        assert!(!acquired.is_finished());
        tenure.set(Some(held(5, Instant::now())));
        assert_eq!(finished(acquired).await, t0 + Duration::from_secs(10));
    }

    /// The other way out of a late renewal: it succeeds after all, and the
    /// deadline it brings (from its send time) is still ahead.
    #[tokio::test(start_paused = true)]
    async fn acquired_returns_when_a_late_renewal_succeeds() {
        let tenure = Arc::new(Tenure::new());
        let t0 = Instant::now();
        let h = held(1, t0);
        tenure.set(Some(h));
        advance(Duration::from_secs(7)).await;
        let sent = Instant::now();
        advance(Duration::from_secs(2)).await;
        let acquired = spawn_acquired(&tenure);
        tokio::task::yield_now().await;
        assert!(!acquired.is_finished());
        tenure.renewed(h, 2, sent, TTL);
        assert_eq!(finished(acquired).await, t0 + Duration::from_secs(9));
        assert_eq!(tenure.term(), Some(1));
    }
}
