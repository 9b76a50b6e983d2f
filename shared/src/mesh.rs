//! The `Mesh` handle every role runs on: one NATS connection, the JetStream
//! context, the names, the config, and handles to the KV buckets. `Mesh::connect`
//! creates every stream and bucket idempotently, so any role can start first.

use crate::codec;
use crate::config::{Config, NatsConfig, Storage};
use crate::error::{Context, Error, ErrorCode, Result};
use crate::names::{EventKind, Names};
use crate::wire::{HealthEvent, ResultStatus, TaskStatus};
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{Client, ConnectOptions};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a role needs to talk to the mesh. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    pub client: Client,
    pub js: jetstream::Context,
    pub names: Names,
    pub config: Arc<Config>,
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
}

/// The URL used when none is configured and no embedded server runs.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Connects to NATS. `role` names the connection (visible in `nats server report
/// connections`). Fails fast when no server answers.
pub async fn connect(nats: &NatsConfig, role: &str) -> Result<Client> {
    let url = if nats.url.is_empty() {
        DEFAULT_URL
    } else {
        nats.url.as_str()
    };
    let mut opts = ConnectOptions::new()
        .name(format!("jetmesh-{role}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .request_timeout(Some(Duration::from_secs(10)));
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
    opts.connect(urls).await.map_err(|e| {
        Error::new(
            ErrorCode::Unavailable,
            format!("cannot connect to NATS at {url}: {e}"),
        )
    })
}

impl Mesh {
    /// Connects and makes sure every stream and bucket exists.
    pub async fn connect(config: Config, role: &str) -> Result<Mesh> {
        let client = connect(&config.nats, role).await?;
        Mesh::ensure(client, config).await
    }

    /// Creates (or updates) the streams and buckets, then returns the handle.
    pub async fn ensure(client: Client, config: Config) -> Result<Mesh> {
        let names = config.names();
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(config.router.max_inflight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        let m = &config.mesh;
        let storage = match m.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        };
        let dedupe = Duration::from_secs(m.dedupe_window_secs);
        let msg_size = i32::try_from(m.max_request_bytes.max(64 * 1024) * 2).unwrap_or(i32::MAX);
        let streams = [
            stream::Config {
                name: names.queues_stream(),
                description: Some("jetmesh pool work queues".into()),
                subjects: names.queues_subjects(),
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: dedupe,
                ..Default::default()
            },
            stream::Config {
                name: names.intake_stream(),
                description: Some("jetmesh tasks submitted alone (mesh.tasks.>)".into()),
                subjects: vec![names.tasks_all()],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: dedupe,
                max_message_size: msg_size,
                ..Default::default()
            },
            stream::Config {
                name: names.dlq_stream(),
                description: Some("jetmesh dead letters (jetmesh dlq ls|show|replay|purge)".into()),
                subjects: vec![names.dlq_all()],
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(m.dlq_ttl_secs),
                duplicate_window: dedupe,
                ..Default::default()
            },
            stream::Config {
                name: names.events_stream(),
                description: Some("jetmesh events, health and alerts".into()),
                subjects: names.events_subjects(),
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(m.events_ttl_secs),
                duplicate_window: dedupe,
                ..Default::default()
            },
            stream::Config {
                name: names.audit_stream(),
                description: Some("jetmesh audit trail (scaling decisions, ...)".into()),
                subjects: vec![names.audit_all()],
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(m.audit_ttl_secs),
                ..Default::default()
            },
            stream::Config {
                name: names.mail_stream(),
                description: Some("jetmesh agent mail (epic, track and inbox threads)".into()),
                subjects: names.mail_subjects(),
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(config.coord.mail_max_age_days * 86_400),
                max_message_size: msg_size,
                duplicate_window: dedupe,
                ..Default::default()
            },
        ];
        for mut cfg in streams {
            cfg.storage = storage;
            cfg.num_replicas = m.replicas;
            let name = cfg.name.clone();
            retry(&format!("cannot create stream {name}"), || {
                js.create_or_update_stream(cfg.clone())
            })
            .await?;
        }
        let bucket = |name: String, description: &str, max_age: Duration| kv::Config {
            bucket: name,
            description: description.into(),
            history: 1,
            max_age,
            storage,
            num_replicas: m.replicas,
            ..Default::default()
        };
        let registry = ensure_kv(
            &js,
            bucket(
                names.registry_bucket(),
                "jetmesh capability registry",
                Duration::ZERO,
            ),
        )
        .await?;
        let results = ensure_kv(
            &js,
            bucket(
                names.results_bucket(),
                "jetmesh results, plan counts and reports",
                Duration::from_secs(m.results_ttl_secs),
            ),
        )
        .await?;
        let plans = ensure_kv(
            &js,
            bucket(
                names.plans_bucket(),
                "jetmesh plan definitions and state",
                Duration::from_secs(m.plans_ttl_secs),
            ),
        )
        .await?;
        // The lease TTL is a safety margin shared by every holder: it is set
        // when the bucket is created and never changed by a process connecting
        // with another config (change it deliberately with `nats kv edit`).
        let leases = match js.get_key_value(names.leases_bucket()).await {
            Ok(store) => store,
            Err(_) => {
                ensure_kv(
                    &js,
                    bucket(
                        names.leases_bucket(),
                        "jetmesh leader leases",
                        Duration::from_millis(config.leases.ttl_ms.max(1000)),
                    ),
                )
                .await?
            }
        };
        let health = ensure_kv(
            &js,
            bucket(
                names.health_bucket(),
                "jetmesh worker heartbeats",
                Duration::from_millis(config.health.dead_after_ms.max(1000) * 3),
            ),
        )
        .await?;
        let scale = ensure_kv(
            &js,
            bucket(
                names.scale_bucket(),
                "jetmesh worker slots per pool",
                Duration::ZERO,
            ),
        )
        .await?;
        // Like the lease TTL: set when the bucket is created, shared by all.
        let coord = match js.get_key_value(names.coord_bucket()).await {
            Ok(store) => store,
            Err(_) => {
                ensure_kv(
                    &js,
                    bucket(
                        names.coord_bucket(),
                        "jetmesh bead claims and file reservations",
                        Duration::from_secs(config.coord.lease_ttl_secs.max(2)),
                    ),
                )
                .await?
            }
        };
        Ok(Mesh {
            client,
            js,
            names,
            config: Arc::new(config),
            registry,
            results,
            plans,
            leases,
            health,
            scale,
            coord,
        })
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

    /// Publishes a role's health event (best effort: a failure is logged).
    pub async fn publish_health(&self, role: &str, instance: &str, state: &str) {
        let event = HealthEvent {
            role: role.into(),
            instance: instance.into(),
            state: state.into(),
            at: jiff::Timestamp::now(),
            pool: None,
            detail: None,
        };
        let Ok(payload) = codec::to_json(&event) else {
            return;
        };
        if let Err(error) = self
            .client
            .publish(self.names.health(role, instance), payload)
            .await
        {
            tracing::warn!(%error, role, "Could not publish a health event.");
        }
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

    /// A durable consumer on one kind of event, from the start of `MESH_EVENTS`
    /// (a role that starts late still sees what was published before it).
    pub async fn event_consumer(
        &self,
        durable: &str,
        kind: EventKind,
    ) -> Result<consumer::Consumer<consumer::pull::Config>> {
        self.durable_consumer(
            &self.names.events_stream(),
            durable,
            &self.names.event_all(kind),
        )
        .await
    }

    /// A durable pull consumer with explicit acks, from the start of `stream`
    /// (`filter` empty: every subject), created if absent.
    pub async fn durable_consumer(
        &self,
        stream: &str,
        durable: &str,
        filter: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>> {
        let stream = self
            .js
            .get_stream_no_info(stream)
            .await
            .context("cannot open a stream")?;
        stream
            .get_or_create_consumer(
                durable,
                consumer::pull::Config {
                    durable_name: Some(durable.to_string()),
                    filter_subject: filter.to_string(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 20_000,
                    num_replicas: self.config.mesh.replicas,
                    ..Default::default()
                },
            )
            .await
            .context("cannot create a durable consumer")
    }

    /// Follows every result of one plan — those already stored, then each new
    /// one — calling `on_result(task_id, succeeded, stored_value)`, until `stop`. A watch that
    /// ends (server restart, lost consumer) is started again; its replay is
    /// harmless because the callers are idempotent. Per-plan watches mean
    /// results of single tasks and of other plans cost nothing here.
    pub fn follow_plan_results(
        &self,
        plan_id: &str,
        stop: CancellationToken,
        on_result: impl Fn(&str, bool, &bytes::Bytes) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let results = self.results.clone();
        let filter = self.names.task_key_plan(plan_id);
        let plan_id = plan_id.to_string();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut watch = match results.watch_with_history(&filter).await {
                    Ok(w) => w,
                    Err(error) => {
                        tracing::warn!(%error, plan_id, "Cannot watch a plan's results; retrying.");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = watch.next() => n,
                    };
                    match next {
                        Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                            if let Some((_, task)) = crate::names::parse_task_key(&entry.key) {
                                let ok = codec::from_json::<ResultStatus>(&entry.value)
                                    .is_ok_and(|r| r.status == TaskStatus::Success);
                                on_result(task, ok, &entry.value);
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            tracing::warn!(%error, plan_id, "A plan's result watch failed; it resumes.");
                        }
                        None => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

async fn ensure_kv(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store> {
    let name = cfg.bucket.clone();
    retry(&format!("cannot create KV bucket {name}"), || {
        js.create_or_update_key_value(cfg.clone())
    })
    .await
}

/// Roles that start together race to create the same streams: one's update can
/// meet another's create. Creation is idempotent, so a few tries settle it.
async fn retry<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = std::result::Result<T, E>>,
>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> Result<T> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 6 => {
                tracing::debug!(error = %e, attempt, "{what}; retrying.");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(Error::unavailable(what, e)),
        }
    }
    unreachable!("the loop returns")
}
