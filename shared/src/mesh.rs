//! The `Mesh` handle every role runs on: one NATS connection and what it
//! says about itself ([`Connection`]), the JetStream context, the names, the
//! config, who this process is ([`Identity`]), its health ([`Status`]), and
//! handles to the KV buckets.
//!
//! [`Mesh::connect`] opens the streams and buckets the way [`provision`]
//! describes: a role creates what is missing and never changes what exists.

use crate::codec;
use crate::config::{Config, NatsConfig};
use crate::error::{Context, Error, ErrorCode, Result};
use crate::names::{EventKind, Names, Role};
use crate::provision::{self, Mode};
use crate::wire::{Alert, HealthEvent};
use async_nats::jetstream::{self, consumer, kv, object_store};
use async_nats::{Client, ConnectOptions};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything a role needs to talk to the mesh, and who it is. Cheap to
/// clone (two `Arc`s): the shared parts ([`Parts`]) are reached through
/// `Deref`, as `mesh.results`.
#[derive(Clone)]
pub struct Mesh {
    parts: Arc<Parts>,
    /// Who this is on the mesh. Roles that share one connection (in one
    /// process, in tests) each take their own ([`Mesh::as_role`]).
    pub identity: Arc<Identity>,
    /// What this role reports about its own health.
    pub status: Status,
}

impl std::ops::Deref for Mesh {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

/// What a [`Mesh`] holds: one connection and what comes with it.
pub struct Parts {
    pub client: Client,
    pub js: jetstream::Context,
    pub names: Names,
    pub config: Arc<Config>,
    /// Whether the connection is up, and how many times it was made.
    pub connection: Connection,
    /// `mesh_registry`: `cap.<capability>`.
    pub registry: kv::Store,
    /// `mesh_results`: `plan.*`, `task.*.*`, `report.*`.
    pub results: kv::Store,
    /// `mesh_plans`: plan definitions and lifecycle.
    pub plans: kv::Store,
    /// `mesh_leases`: leader leases; entries expire after the lease TTL.
    pub leases: kv::Store,
    /// `mesh_health`: worker heartbeats.
    pub health: kv::Store,
    /// `mesh_scale`: slot assignments per pool.
    pub scale: kv::Store,
    /// `mesh_coord`: bead claims and file reservations (expire unless renewed).
    pub coord: kv::Store,
    /// `mesh_objects`: large outputs, referenced from results ([`crate::objects`]).
    pub objects: object_store::ObjectStore,
}

/// Who a process is: its role and its instance id (`router-3fa9c1`,
/// `math-7f3a9c` for a worker of pool `math`). The instance names the NATS
/// connection (`jetmesh-<instance>`), the service instance, heartbeats and
/// health events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub instance: String,
}

impl Identity {
    /// `<role>-<6 hex>`.
    pub fn new(role: Role) -> Identity {
        Identity::named(role, role.as_str())
    }

    /// `<name>-<6 hex>` (a worker names itself after its pool, a client
    /// after what it is).
    pub fn named(role: Role, name: &str) -> Identity {
        let name: String = name.chars().take(crate::ids::MAX_ID_LEN - 7).collect();
        Identity {
            role,
            instance: format!("{name}-{}", &crate::ids::generate()[..6]),
        }
    }
}

impl From<Role> for Identity {
    fn from(role: Role) -> Identity {
        Identity::new(role)
    }
}

/// A client connection named after what it is for (`bench`, `test`).
impl From<&str> for Identity {
    fn from(name: &str) -> Identity {
        Identity::named(Role::Client, name)
    }
}

/// The connection's state, kept from the client's connection events.
#[derive(Clone)]
pub struct Connection(watch::Receiver<ConnectionState>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ConnectionState {
    connected: bool,
    /// Connections made so far: a reconnect adds one.
    connects: u64,
}

impl Connection {
    pub fn is_connected(&self) -> bool {
        self.0.borrow().connected
    }

    /// How many times the connection was made; a change means a reconnect
    /// (requests and pull requests made before are gone).
    pub fn connects(&self) -> u64 {
        self.0.borrow().connects
    }

    /// Waits until the connection is up, at most `max`.
    pub async fn until_connected(&self, max: Duration) {
        let mut rx = self.0.clone();
        let _ = tokio::time::timeout(max, rx.wait_for(|s| s.connected)).await;
    }

    /// Waits for the next (re)connection after `connects` connections.
    pub async fn reconnected_after(&self, connects: u64) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| s.connected && s.connects > connects).await;
    }
}

/// What a role reports about its own health: the parts of it that are
/// degraded, and why. A change is published as a health event (`degraded`
/// with the reason, or `recovered`) on `mesh.health.<role>.<instance>`.
#[derive(Clone)]
pub struct Status(Arc<StatusInner>);

struct StatusInner {
    client: Client,
    subject: String,
    identity: Identity,
    degraded: Mutex<BTreeMap<String, String>>,
}

impl Status {
    fn new(client: &Client, names: &Names, identity: &Identity) -> Status {
        Status(Arc::new(StatusInner {
            client: client.clone(),
            subject: names.health(identity.role, &identity.instance),
            identity: identity.clone(),
            degraded: Mutex::default(),
        }))
    }

    /// `part` (`results`, `registry`, …) is degraded because of `why`.
    pub async fn degrade(&self, part: &str, why: &str) {
        let new = self
            .0
            .degraded
            .lock()
            .expect("status lock")
            .insert(part.to_string(), why.to_string())
            .is_none();
        if new {
            metrics::gauge!(crate::telemetry::DEGRADED, "part" => part.to_string()).set(1.0);
            tracing::warn!(part, reason = why, "This process is degraded.");
            self.publish("degraded", Some(format!("{part}: {why}")))
                .await;
        }
    }

    /// `part` works again.
    pub async fn clear(&self, part: &str) {
        let was = {
            let mut d = self.0.degraded.lock().expect("status lock");
            if d.is_empty() {
                return;
            }
            d.remove(part).is_some()
        };
        if was {
            metrics::gauge!(crate::telemetry::DEGRADED, "part" => part.to_string()).set(0.0);
            tracing::info!(part, "This process recovered.");
            self.publish("recovered", Some(part.to_string())).await;
        }
    }

    /// Whether `part` is degraded now.
    pub fn is_degraded(&self, part: &str) -> bool {
        self.0
            .degraded
            .lock()
            .expect("status lock")
            .contains_key(part)
    }

    /// The degraded parts and why.
    pub fn degraded(&self) -> BTreeMap<String, String> {
        self.0.degraded.lock().expect("status lock").clone()
    }

    /// Publishes a health event (`started`, `stopping`, …); best effort.
    pub async fn publish(&self, state: &str, detail: Option<String>) {
        let me = &self.0;
        let event = HealthEvent {
            role: me.identity.role.as_str().into(),
            instance: me.identity.instance.clone(),
            state: state.into(),
            at: jiff::Timestamp::now(),
            pool: None,
            detail,
        };
        let Ok(payload) = codec::to_json(&event) else {
            return;
        };
        // Bounded: a health event must never hold a role up (at shutdown the
        // server may be gone).
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            me.client.publish(me.subject.clone(), payload),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(state, "Could not publish a health event.");
        }
    }
}

/// The URL used when none is configured and no embedded server runs.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Connects to NATS as `jetmesh-<instance>`. Fails fast when no server
/// answers; after that the client reconnects by itself, for ever.
pub async fn connect(nats: &NatsConfig, identity: &Identity) -> Result<(Client, Connection)> {
    let url = if nats.url.is_empty() {
        DEFAULT_URL
    } else {
        nats.url.as_str()
    };
    let (tx, rx) = watch::channel(ConnectionState::default());
    let tx = Arc::new(tx);
    let events = tx.clone();
    let mut opts = ConnectOptions::new()
        .name(format!("jetmesh-{}", identity.instance))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .request_timeout(Some(Duration::from_secs(10)))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => events.send_modify(|s| {
                        s.connected = true;
                        s.connects += 1;
                    }),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        events.send_modify(|s| s.connected = false)
                    }
                    _ => {}
                }
            }
        });
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &nats.token {
        opts = opts.token(token.clone());
    }
    if let Some(creds) = &nats.creds {
        opts = opts.credentials_file(creds).await.map_err(|e| {
            Error::bad_request(format!("cannot read creds file {}: {e}", creds.display()))
        })?;
    }
    let urls: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::bad_request(format!("invalid NATS URL {url:?}: {e}")))?;
    let client = opts.connect(urls).await.map_err(|e| {
        Error::new(
            ErrorCode::Unavailable,
            format!("cannot connect to NATS at {url}: {e}"),
        )
    })?;
    // The first connection's event comes through the callback a moment
    // later: wait for it, so that `connects` starts at one and a change
    // always means a reconnect.
    let connection = Connection(rx);
    let mut first = connection.0.clone();
    let _ = tokio::time::timeout(Duration::from_secs(5), first.wait_for(|s| s.connects > 0)).await;
    drop(tx);
    Ok((client, connection))
}

impl Mesh {
    /// Connects as `identity` and opens the mesh, creating the streams and
    /// buckets that are missing (what a role does).
    pub async fn connect(config: Config, identity: impl Into<Identity>) -> Result<Mesh> {
        Mesh::open(config, identity.into(), Mode::CreateMissing).await
    }

    /// Connects as `identity` and opens the mesh in `mode` (see [`provision`]).
    pub async fn open(config: Config, identity: Identity, mode: Mode) -> Result<Mesh> {
        let (client, connection) = connect(&config.nats, &identity).await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(config.router.max_inflight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        provision::provision(&js, &config, mode).await?;
        let names = config.names();
        let bucket = |name: String| {
            let js = js.clone();
            async move {
                js.get_key_value(&name)
                    .await
                    .map_err(|e| Error::unavailable(&format!("cannot open bucket {name}"), e))
            }
        };
        let (registry, results, plans, leases, health, scale, coord) = tokio::try_join!(
            bucket(names.registry_bucket()),
            bucket(names.results_bucket()),
            bucket(names.plans_bucket()),
            bucket(names.leases_bucket()),
            bucket(names.health_bucket()),
            bucket(names.scale_bucket()),
            bucket(names.coord_bucket()),
        )?;
        let objects = js
            .get_object_store(names.objects_bucket())
            .await
            .map_err(|e| Error::unavailable("cannot open object store", e))?;
        let status = Status::new(&client, &names, &identity);
        Ok(Mesh {
            identity: Arc::new(identity),
            status,
            parts: Arc::new(Parts {
                client,
                js,
                names,
                config: Arc::new(config),
                connection,
                registry,
                results,
                plans,
                leases,
                health,
                scale,
                coord,
                objects,
            }),
        })
    }

    /// This mesh as the role `role`: itself if it already is one, else the
    /// same connection with a new identity (`<role>-<6 hex>`) and status.
    pub fn as_role(&self, role: Role) -> Mesh {
        if self.identity.role == role {
            return self.clone();
        }
        self.as_identity(Identity::new(role))
    }

    /// This mesh as a worker of `pool`: itself if it already is a worker,
    /// else the same connection as `<pool>-<6 hex>`.
    pub fn as_worker(&self, pool: &str) -> Mesh {
        if self.identity.role == Role::Worker {
            return self.clone();
        }
        self.as_identity(Identity::named(Role::Worker, pool))
    }

    fn as_identity(&self, identity: Identity) -> Mesh {
        Mesh {
            parts: self.parts.clone(),
            status: Status::new(&self.client, &self.names, &identity),
            identity: Arc::new(identity),
        }
    }

    /// Publishes this process's health event (`started`, `stopping`).
    pub async fn publish_health(&self, state: &str) {
        self.status.publish(state, None).await;
    }

    /// Raises an alert on `mesh.alerts.<scope>` (stored in `MESH_EVENTS`);
    /// best effort, and logged either way.
    pub async fn alert(&self, scope: &str, kind: &str, message: &str) {
        metrics::counter!(crate::telemetry::ALERTS, "pool" => scope.to_string(), "kind" => kind.to_string()).increment(1);
        tracing::warn!(scope, kind, message, "Alert.");
        let alert = Alert {
            pool: scope.to_string(),
            kind: kind.to_string(),
            message: message.to_string(),
            instance: Some(self.identity.instance.clone()),
            at: jiff::Timestamp::now(),
        };
        let Ok(body) = codec::to_json(&alert) else {
            return;
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.publish(self.names.alerts(scope), body),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(scope, kind, "Could not publish an alert.");
        }
    }

    /// Publishes an event to `MESH_EVENTS`, de-duplicated per kind and plan, and
    /// waits for the stream to store it.
    pub async fn publish_event<T: Serialize>(
        &self,
        kind: EventKind,
        plan_id: &str,
        event: &T,
    ) -> Result<()> {
        let payload = codec::to_json(event)?;
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(self.names.event_msg_id(kind, plan_id));
        self.js
            .send_publish(self.names.event(kind, plan_id), msg)
            .await
            .context("cannot publish event")?
            .await
            .context("event not stored")?;
        Ok(())
    }

    /// Reads and decodes a JSON KV value.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<T>> {
        match store.get(key).await.context("cannot read KV")? {
            Some(bytes) => Ok(Some(codec::from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every live entry of `store` whose key matches `filter` (a KV key with
    /// `*`/`>` wildcards), latest value per key, in stream order.
    pub async fn scan(&self, store: &kv::Store, filter: &str) -> Result<Vec<kv::Entry>> {
        let stream = self
            .js
            .get_stream_no_info(&store.stream_name)
            .await
            .context("cannot open KV stream")?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{filter}", store.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .context("cannot scan KV")?;
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.context("cannot scan KV")?;
        // Delete markers count in `pending` but are not returned.
        let mut read = 0;
        while read < pending {
            read += 1;
            let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| Error::new(ErrorCode::Timeout, "KV scan stalled"))?;
            let Some(msg) = msg else { break };
            let msg = msg.context("KV scan failed")?;
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            let info = msg.info().map_err(|e| Error::internal(e.to_string()))?;
            let revision = info.stream_sequence;
            let key = msg
                .subject
                .strip_prefix(store.prefix.as_str())
                .unwrap_or(&msg.subject)
                .to_string();
            if !deleted {
                out.push(kv::Entry {
                    bucket: store.name.clone(),
                    key,
                    value: msg.payload.clone(),
                    revision,
                    delta: 0,
                    created: info.published,
                    operation: kv::Operation::Put,
                    seen_current: true,
                });
            }
        }
        Ok(out)
    }

    /// The durable consumer `pool_<pool>` on `MESH_QUEUES`, created with the
    /// documented config of the foreign-worker contract if it does not exist.
    pub async fn pool_consumer(
        &self,
        pool: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>> {
        crate::ids::validate("pool", pool)?;
        let stream = self
            .js
            .get_stream_no_info(self.names.queues_stream())
            .await
            .context("cannot open the queue stream")?;
        stream
            .get_or_create_consumer(
                &self.names.pool_consumer(pool),
                self.pool_consumer_config(pool),
            )
            .await
            .context("cannot create the pool consumer")
    }

    /// The documented config of `pool_<pool>` (README, "Foreign workers").
    pub fn pool_consumer_config(&self, pool: &str) -> consumer::pull::Config {
        let p = self.config.pool(pool);
        consumer::pull::Config {
            durable_name: Some(self.names.pool_consumer(pool)),
            description: Some(format!("jetmesh pool {pool}")),
            filter_subject: self.names.queue_filter(pool),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(p.ack_wait_secs),
            max_deliver: p.max_deliver,
            max_ack_pending: 10_000,
            num_replicas: self.config.mesh.replicas,
            ..Default::default()
        }
    }

    /// Follows every result of one plan (those already stored, then each
    /// new one) through [`crate::follow`], calling `on_result(task_id,
    /// stored_value)` until `stop`. A result read again after a watch
    /// restarts is harmless: the callers keep the first result of a task.
    pub async fn follow_plan_results(
        &self,
        plan_id: &str,
        stop: CancellationToken,
        mut on_result: impl FnMut(&str, &bytes::Bytes) + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<()>> {
        crate::follow::follow(
            self.results.clone(),
            self.names.task_key_plan(plan_id),
            stop,
            move |change| {
                if let crate::follow::Change::Put(entry) = change
                    && let Some((_, task)) = crate::names::parse_task_key(&entry.key)
                {
                    on_result(task, &entry.value);
                }
            },
        )
        .await
    }
}
