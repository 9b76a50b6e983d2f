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

struct Inner {
    mesh: Mesh,
    key: String,
    holder: String,
    ttl: Duration,
    held: Mutex<Option<Held>>,
    leading: watch::Sender<bool>,
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
        let (leading, _) = watch::channel(false);
        let lease = Lease {
            inner: Arc::new(Inner {
                mesh: mesh.clone(),
                key: name,
                holder: holder.to_string(),
                ttl: Duration::from_millis(mesh.config.leases.ttl_ms.max(1000)),
                held: Mutex::new(None),
                leading,
            }),
        };
        let this = lease.clone();
        tokio::spawn(async move { this.run(shutdown).await });
        lease
    }

    /// The fencing token (term) while this holder may act as leader.
    /// Errors with `unavailable` once it may not.
    pub fn fence(&self) -> Result<u64> {
        match *self.inner.held.lock().expect("lease lock") {
            Some(h) if Instant::now() < h.deadline => Ok(h.term),
            _ => Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "{} does not hold the {} lease",
                    self.inner.holder, self.inner.key
                ),
            )),
        }
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
        let mut rx = self.inner.leading.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Waits until this holder no longer leads (lost, expired or released).
    /// Also wakes at the local deadline, even if the campaign task is starved.
    pub async fn lost(&self) {
        let mut rx = self.inner.leading.subscribe();
        loop {
            let deadline = match *self.inner.held.lock().expect("lease lock") {
                Some(h) => h.deadline,
                None => return,
            };
            tokio::select! {
                r = rx.wait_for(|l| !*l) => { let _ = r; return; }
                _ = tokio::time::sleep_until(deadline) => {
                    if !self.is_leader() {
                        return;
                    }
                }
            }
        }
    }

    fn margin(&self) -> Duration {
        self.inner.ttl / 5
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
        let leading = held.is_some();
        *self.inner.held.lock().expect("lease lock") = held;
        self.inner.leading.send_replace(leading);
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
            let held = *self.inner.held.lock().expect("lease lock");
            match held {
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
                            let deadline = sent + self.inner.ttl - self.margin();
                            let mut held = self.inner.held.lock().expect("lease lock");
                            // Keep a concurrent step-down (deadline passed) in force.
                            if held.is_some() {
                                *held = Some(Held {
                                    revision,
                                    deadline,
                                    ..h
                                });
                            }
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
                    deadline: started + self.inner.ttl - self.margin(),
                    acquired_at,
                };
                let sent = Instant::now();
                if let Ok(value) = self.record(term, acquired_at)
                    && let Ok(revision) = store.update(&self.inner.key, value, term).await
                {
                    held.revision = revision;
                    held.deadline = sent + self.inner.ttl - self.margin();
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
