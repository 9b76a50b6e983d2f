//! A live view of the capability registry (`mesh_registry`, keys `cap.*`). A pool
//! registers a capability by putting its key; this view follows the bucket with
//! a KV watch, so the router and planner see a new capability the moment it is
//! written, with no restart and no code change. A miss falls back to a direct
//! read, which covers the instant between a registration and its watch delivery.
//!
//! Several pools may serve one capability: each writes `cap.<capability>.<pool>`,
//! and `cap.<capability>` (the v1 key) keeps naming the first. The router picks
//! among them with the capability's routing strategy.

use crate::codec;
use crate::error::{Context, Result};
use crate::mesh::Mesh;

use crate::wire::CapabilityEntry;
use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Registry {
    mesh: Mesh,
    /// `cap.<capability>`: the pool a capability was first registered by.
    caps: Arc<RwLock<HashMap<String, Arc<CapabilityEntry>>>>,
    /// `cap.<capability>.<pool>`: every pool offering it.
    offers: Arc<RwLock<HashMap<String, Offers>>>,
}

/// The pools offering one capability, by pool name.
type Offers = BTreeMap<String, Arc<CapabilityEntry>>;

impl Registry {
    /// Starts following the registry until `shutdown`.
    pub async fn follow(mesh: Mesh, shutdown: CancellationToken) -> Result<Registry> {
        let registry = Registry {
            mesh: mesh.clone(),
            caps: Arc::default(),
            offers: Arc::default(),
        };
        let watch = mesh
            .registry
            .watch_with_history(mesh.names.cap_keys_all())
            .await
            .context("cannot watch the registry")?;
        let this = registry.clone();
        tokio::spawn(async move { this.run(watch, shutdown).await });
        Ok(registry)
    }

    async fn run(self, mut watch: async_nats::jetstream::kv::Watch, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = watch.next() => match next {
                    Some(Ok(entry)) => self.apply(entry),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "The registry watch failed; it resumes.");
                    }
                    None => {
                        // The watch ended (server restart, consumer gone): start a new one.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match self.mesh.registry.watch_with_history(self.mesh.names.cap_keys_all()).await {
                            Ok(w) => watch = w,
                            Err(error) => tracing::warn!(%error, "Cannot re-watch the registry."),
                        }
                    }
                }
            }
        }
    }

    fn apply(&self, entry: async_nats::jetstream::kv::Entry) {
        if let Some((cap, pool)) = crate::names::parse_cap_pool_key(&entry.key) {
            let mut offers = self.offers.write().expect("registry lock");
            match entry.operation {
                Operation::Put => match codec::from_json::<CapabilityEntry>(&entry.value) {
                    Ok(e) if e.capability == cap && e.pool == pool => {
                        offers
                            .entry(cap.to_string())
                            .or_default()
                            .insert(pool.to_string(), Arc::new(e));
                    }
                    _ => {
                        tracing::warn!(key = %entry.key, "A registry offer does not match its key; ignored.")
                    }
                },
                Operation::Delete | Operation::Purge => {
                    if let Some(o) = offers.get_mut(cap) {
                        o.remove(pool);
                    }
                }
            }
            return;
        }
        let Some(cap) = crate::names::parse_cap_key(&entry.key) else {
            return;
        };
        let mut caps = self.caps.write().expect("registry lock");
        match entry.operation {
            Operation::Put => match codec::from_json::<CapabilityEntry>(&entry.value) {
                Ok(e) if e.capability == cap => {
                    tracing::info!(capability = cap, pool = %e.pool, actions = ?e.actions, "A capability is registered.");
                    caps.insert(cap.to_string(), Arc::new(e));
                }
                Ok(e) => {
                    tracing::warn!(key = %entry.key, capability = %e.capability, "A registry entry names another capability than its key; ignored.")
                }
                Err(error) => {
                    tracing::warn!(key = %entry.key, %error, "A registry entry cannot be read; ignored.")
                }
            },
            Operation::Delete | Operation::Purge => {
                tracing::info!(capability = cap, "A capability is unregistered.");
                caps.remove(cap);
            }
        }
    }

    /// The capability, from the view or, on a miss, straight from the bucket.
    pub async fn resolve(&self, capability: &str) -> Result<Option<Arc<CapabilityEntry>>> {
        if let Some(e) = self.get(capability) {
            return Ok(Some(e));
        }
        if !crate::ids::is_valid(capability) {
            return Ok(None);
        }
        let entry: Option<CapabilityEntry> = self
            .mesh
            .get_json(&self.mesh.registry, &self.mesh.names.cap_key(capability))
            .await?;
        let entry = entry.map(Arc::new);
        if let Some(e) = &entry {
            self.caps
                .write()
                .expect("registry lock")
                .insert(capability.to_string(), e.clone());
        }
        Ok(entry)
    }

    pub fn get(&self, capability: &str) -> Option<Arc<CapabilityEntry>> {
        self.caps
            .read()
            .expect("registry lock")
            .get(capability)
            .cloned()
    }

    /// Every pool some capability is registered for.
    pub fn pools(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> = self
            .caps
            .read()
            .expect("registry lock")
            .values()
            .map(|e| e.pool.clone())
            .collect();
        for offers in self.offers.read().expect("registry lock").values() {
            out.extend(offers.keys().cloned());
        }
        out
    }

    /// Every pool serving the capability: the one `cap.<capability>` names
    /// first, then the other offers by pool name. Empty when unknown (after
    /// a direct read of `cap.<capability>`).
    pub async fn candidates(&self, capability: &str) -> Result<Vec<Arc<CapabilityEntry>>> {
        let primary = self.resolve(capability).await?;
        let mut out: Vec<Arc<CapabilityEntry>> = primary.into_iter().collect();
        if let Some(offers) = self.offers.read().expect("registry lock").get(capability) {
            for e in offers.values() {
                if !out.iter().any(|o| o.pool == e.pool) {
                    out.push(e.clone());
                }
            }
        }
        Ok(out)
    }
}

/// What a pool does when it starts: writes its offer `cap.<capability>.<pool>`,
/// and `cap.<capability>` (the v1 key, which names one pool) unless another
/// pool registered the capability first.
pub async fn register(mesh: &Mesh, entry: &CapabilityEntry) -> Result<()> {
    crate::ids::validate("capability", &entry.capability)?;
    crate::ids::validate("pool", &entry.pool)?;
    let body = codec::to_json(entry)?;
    mesh.registry
        .put(
            mesh.names.cap_pool_key(&entry.capability, &entry.pool),
            body.clone(),
        )
        .await
        .context("cannot register capability")?;
    let key = mesh.names.cap_key(&entry.capability);
    let first: Option<CapabilityEntry> = mesh.get_json(&mesh.registry, &key).await?;
    if first.is_none_or(|f| f.pool == entry.pool) {
        mesh.registry
            .put(key, body)
            .await
            .context("cannot register capability")?;
    }
    Ok(())
}

/// Every registered capability, read once (for `jetmesh caps`).
pub async fn list(mesh: &Mesh) -> Result<Vec<CapabilityEntry>> {
    let entries = mesh
        .scan(&mesh.registry, &mesh.names.cap_keys_all())
        .await?;
    let mut out: Vec<CapabilityEntry> = entries
        .iter()
        .filter(|e| {
            crate::names::parse_cap_key(&e.key).is_some()
                || crate::names::parse_cap_pool_key(&e.key).is_some()
        })
        .filter_map(|e| codec::from_json(&e.value).ok())
        .collect();
    out.sort_by(|a, b| (&a.capability, &a.pool).cmp(&(&b.capability, &b.pool)));
    out.dedup_by(|a, b| a.capability == b.capability && a.pool == b.pool);
    Ok(out)
}
