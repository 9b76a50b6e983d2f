//! Opening the mesh is not provisioning it. The six streams, seven buckets
//! and one object store
//! jetmesh uses, with the settings this process's config asks for
//! ([`desired`]), and three ways to meet what the server has:
//!
//! - a role ([`Mode::CreateMissing`]) creates what is missing (a create, never
//!   an update) and opens the rest as it finds them; settings that differ from
//!   its own are logged once, in one warning naming the fields, and it keeps
//!   working with what the server has;
//! - a read-only command ([`Mode::Existing`]: `jetmesh caps`, `status`, …)
//!   creates and changes nothing, and says so when the mesh is not there;
//! - `jetmesh init --apply`, and `jetmesh up` on its own embedded server
//!   ([`Mode::Apply`]), create what is missing and update what differs.
//!
//! `jetmesh init` without `--apply` shows the difference ([`inspect`]) field by
//! field. So two processes with different configs never rewrite each other's
//! streams, and the last one to start does not win.

use crate::config::{Config, Storage};
use crate::error::{Error, ErrorCode, Result};
use crate::names::Names;
use async_nats::jetstream::{self, kv, object_store, stream};
use std::fmt;
use std::time::Duration;

/// How a process meets the streams and buckets on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Open what exists; fail (`unavailable`, naming it) if anything is missing.
    Existing,
    /// Create what is missing; open the rest as it is (a role).
    CreateMissing,
    /// Create what is missing and update what differs (`jetmesh init
    /// --apply`, and `jetmesh up` on its own server).
    Apply,
}

/// A stream or a bucket, as this config wants it.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a dozen of them, once per process
pub enum Desired {
    Stream(stream::Config),
    Bucket(kv::Config),
    Objects(object_store::Config),
}

impl Desired {
    /// The stream name, or the bucket name.
    pub fn name(&self) -> &str {
        match self {
            Desired::Stream(c) => &c.name,
            Desired::Bucket(c) => &c.bucket,
            Desired::Objects(c) => &c.bucket,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Desired::Stream(_) => "stream",
            Desired::Bucket(_) => "bucket",
            Desired::Objects(_) => "object store",
        }
    }

    /// The stream behind it (`KV_<bucket>` for a bucket).
    fn stream_name(&self) -> String {
        match self {
            Desired::Stream(c) => c.name.clone(),
            Desired::Bucket(c) => Names::kv_stream_of(&c.bucket),
            Desired::Objects(c) => Names::object_stream_of(&c.bucket),
        }
    }
}

/// Every stream and bucket of the mesh, with the settings `config` asks for.
pub fn desired(config: &Config) -> Vec<Desired> {
    let names = config.names();
    let m = &config.mesh;
    let storage = match m.storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    };
    let dedupe = Duration::from_secs(m.dedupe_window_secs);
    // Mail is capped at twice the request limit. The intake is not capped at
    // all (the server's max_payload is its limit): a task too large for
    // the mesh is stored and answered with a `payload_too_large` result,
    // rather than dropped by the stream with nothing to show for it.
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
    let bucket = |name: String, description: &str, max_age: Duration| kv::Config {
        bucket: name,
        description: description.into(),
        history: 1,
        max_age,
        storage,
        num_replicas: m.replicas,
        ..Default::default()
    };
    let buckets = [
        bucket(
            names.registry_bucket(),
            "jetmesh capability registry",
            Duration::ZERO,
        ),
        bucket(
            names.results_bucket(),
            "jetmesh results, plan counts and reports",
            Duration::from_secs(m.results_ttl_secs),
        ),
        bucket(
            names.plans_bucket(),
            "jetmesh plan definitions and state",
            Duration::from_secs(m.plans_ttl_secs),
        ),
        // The lease TTL is a safety margin shared by every holder
        // (docs/adr/0006): all of them must use the same.
        bucket(
            names.leases_bucket(),
            "jetmesh leader leases",
            Duration::from_millis(config.leases.ttl_ms.max(1000)),
        ),
        bucket(
            names.health_bucket(),
            "jetmesh worker heartbeats",
            Duration::from_millis(config.health.dead_after_ms.max(1000) * 3),
        ),
        bucket(
            names.scale_bucket(),
            "jetmesh worker slots per pool",
            Duration::ZERO,
        ),
        bucket(
            names.coord_bucket(),
            "jetmesh bead claims and file reservations",
            Duration::from_secs(config.coord.lease_ttl_secs.max(2)),
        ),
    ];
    streams
        .into_iter()
        .map(|mut s| {
            s.storage = storage;
            s.num_replicas = m.replicas;
            Desired::Stream(s)
        })
        .chain(buckets.into_iter().map(Desired::Bucket))
        .chain([Desired::Objects(object_store::Config {
            bucket: names.objects_bucket(),
            description: Some("jetmesh large outputs (screenshots, page dumps, archives)".into()),
            max_age: Duration::from_secs(m.objects_ttl_secs),
            storage,
            num_replicas: m.replicas,
            ..Default::default()
        })])
        .collect()
}

/// One setting that differs between the server and this config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub existing: String,
    pub desired: String,
}

/// How one stream or bucket on the server compares with this config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Missing,
    Same,
    Differs(Vec<Difference>),
}

/// One stream or bucket and its [`Status`].
#[derive(Debug, Clone)]
pub struct Drift {
    pub desired: Desired,
    pub status: Status,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.desired.kind(), self.desired.name())?;
        match &self.status {
            Status::Missing => write!(f, ": missing"),
            Status::Same => write!(f, ": as configured"),
            Status::Differs(d) => {
                let fields: Vec<String> = d
                    .iter()
                    .map(|d| format!("{} {} (config: {})", d.field, d.existing, d.desired))
                    .collect();
                write!(f, ": {}", fields.join(", "))
            }
        }
    }
}

/// The settings that matter, of a stream on the server or one wanted.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    subjects: Vec<String>,
    retention: String,
    max_age: Duration,
    duplicate_window: Duration,
    max_message_size: i32,
    storage: String,
    replicas: usize,
    history: i64,
}

impl Shape {
    fn of(c: &stream::Config) -> Shape {
        let mut subjects = c.subjects.clone();
        subjects.sort();
        Shape {
            subjects,
            retention: format!("{:?}", c.retention).to_lowercase(),
            max_age: c.max_age,
            duplicate_window: c.duplicate_window,
            // 0 and -1 both mean no limit.
            max_message_size: if c.max_message_size <= 0 {
                -1
            } else {
                c.max_message_size
            },
            storage: format!("{:?}", c.storage).to_lowercase(),
            replicas: c.num_replicas.max(1),
            history: c.max_messages_per_subject,
        }
    }

    /// The stream behind a KV bucket or an object store.
    fn store(
        subjects: Vec<String>,
        max_age: Duration,
        storage: stream::StorageType,
        replicas: usize,
        history: i64,
    ) -> Shape {
        Shape {
            subjects,
            retention: "limits".into(),
            max_age,
            duplicate_window: Duration::ZERO,
            max_message_size: -1,
            storage: format!("{storage:?}").to_lowercase(),
            replicas: replicas.max(1),
            history,
        }
    }

    fn wanted(d: &Desired) -> Shape {
        match d {
            Desired::Stream(c) => Shape::of(c),
            Desired::Bucket(c) => Shape::store(
                vec![Names::kv_subject_of(&c.bucket, ">")],
                c.max_age,
                c.storage,
                c.num_replicas,
                c.history.max(1),
            ),
            Desired::Objects(c) => Shape::store(
                Names::object_subjects_of(&c.bucket),
                c.max_age,
                c.storage,
                c.num_replicas,
                1,
            ),
        }
    }
}

fn secs(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".into()
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// What differs between `existing` and `wanted` for a resource of `kind`.
/// A setting the config leaves to the server (a zero dedupe window) is not
/// compared.
fn compare(desired: &Desired, existing: &stream::Config) -> Vec<Difference> {
    let (e, w) = (Shape::of(existing), Shape::wanted(desired));
    let mut out = Vec::new();
    let mut differ = |field: &'static str, a: String, b: String| {
        if a != b {
            out.push(Difference {
                field,
                existing: a,
                desired: b,
            });
        }
    };
    differ("max_age", secs(e.max_age), secs(w.max_age));
    differ("storage", e.storage.clone(), w.storage.clone());
    differ("replicas", e.replicas.to_string(), w.replicas.to_string());
    match desired {
        Desired::Stream(_) => {
            differ("subjects", e.subjects.join(" "), w.subjects.join(" "));
            differ("retention", e.retention.clone(), w.retention.clone());
            if !w.duplicate_window.is_zero() {
                differ(
                    "duplicate_window",
                    secs(e.duplicate_window),
                    secs(w.duplicate_window),
                );
            }
            differ(
                "max_message_size",
                e.max_message_size.to_string(),
                w.max_message_size.to_string(),
            );
        }
        Desired::Bucket(_) => {
            differ("history", e.history.to_string(), w.history.to_string());
        }
        Desired::Objects(_) => {}
    }
    out
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The config of the stream behind `d` on the server; `None` if it is missing.
async fn existing(js: &jetstream::Context, d: &Desired) -> Result<Option<stream::Config>> {
    match js.get_stream(d.stream_name()).await {
        Ok(s) => Ok(Some(s.cached_info().config.clone())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::unavailable(
            &format!("cannot read {} {}", d.kind(), d.name()),
            e,
        )),
    }
}

/// How every stream and bucket on the server compares with `config`.
pub async fn inspect(js: &jetstream::Context, config: &Config) -> Result<Vec<Drift>> {
    let mut out = Vec::new();
    for d in desired(config) {
        let status = match existing(js, &d).await? {
            None => Status::Missing,
            Some(e) => match compare(&d, &e) {
                diff if diff.is_empty() => Status::Same,
                diff => Status::Differs(diff),
            },
        };
        out.push(Drift { desired: d, status });
    }
    Ok(out)
}

/// Creates the resource; another process creating it at the same moment is
/// fine (its settings then stand).
async fn create(js: &jetstream::Context, d: &Desired) -> Result<()> {
    let what = format!("cannot create {} {}", d.kind(), d.name());
    let created = match d {
        Desired::Stream(c) => js
            .create_stream(c.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Desired::Bucket(c) => js
            .create_key_value(c.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Desired::Objects(c) => js
            .create_object_store(c.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    match created {
        Ok(()) => Ok(()),
        // Lost a race with another process: it exists now.
        Err(_) if existing(js, d).await?.is_some() => Ok(()),
        Err(e) => Err(Error::new(ErrorCode::Unavailable, format!("{what}: {e}"))),
    }
}

/// Updates the resource to this config's settings.
async fn update(js: &jetstream::Context, d: &Desired) -> Result<()> {
    let what = format!("cannot update {} {}", d.kind(), d.name());
    match d {
        Desired::Stream(c) => js
            .update_stream(c)
            .await
            .map(|_| ())
            .map_err(|e| Error::unavailable(&what, e)),
        Desired::Bucket(c) => js
            .create_or_update_key_value(c.clone())
            .await
            .map(|_| ())
            .map_err(|e| Error::unavailable(&what, e)),
        // The client has no update for object stores: the stream behind
        // it takes the settings that are compared.
        Desired::Objects(c) => {
            let mut config = existing(js, d)
                .await?
                .ok_or_else(|| Error::new(ErrorCode::Unavailable, format!("{what}: it is gone")))?;
            config.max_age = c.max_age;
            config.storage = c.storage;
            config.num_replicas = c.num_replicas;
            js.update_stream(&config)
                .await
                .map(|_| ())
                .map_err(|e| Error::unavailable(&what, e))
        }
    }
}

/// Meets the server's streams and buckets in `mode` (see the module docs);
/// returns the drift found. With [`Mode::CreateMissing`], differing settings
/// are logged in one warning.
pub async fn provision(js: &jetstream::Context, config: &Config, mode: Mode) -> Result<Vec<Drift>> {
    let drift = inspect(js, config).await?;
    let missing: Vec<&str> = drift
        .iter()
        .filter(|d| d.status == Status::Missing)
        .map(|d| d.desired.name())
        .collect();
    match mode {
        Mode::Existing if !missing.is_empty() => {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "this NATS server has no jetmesh {} yet ({}); start a jetmesh role, or run `jetmesh init --apply`",
                    config.mesh.prefix,
                    missing.join(", ")
                ),
            ));
        }
        Mode::Existing => {}
        Mode::CreateMissing | Mode::Apply => {
            for d in drift.iter().filter(|d| d.status == Status::Missing) {
                create(js, &d.desired).await?;
                tracing::info!(kind = d.desired.kind(), name = d.desired.name(), "Created.");
            }
        }
    }
    let differs: Vec<&Drift> = drift
        .iter()
        .filter(|d| matches!(d.status, Status::Differs(_)))
        .collect();
    if mode == Mode::Apply {
        for d in &differs {
            update(js, &d.desired).await?;
            tracing::info!(drift = %d, "Updated to this config.");
        }
    } else if mode == Mode::CreateMissing && !differs.is_empty() {
        let all: Vec<String> = differs.iter().map(|d| d.to_string()).collect();
        tracing::warn!(
            differences = %all.join("; "),
            "The mesh's streams and buckets differ from this config; working with the server's settings (jetmesh init shows them, jetmesh init --apply changes them)."
        );
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_as_desired_has_no_difference_and_a_changed_one_names_its_fields() {
        let config = Config::default();
        for d in desired(&config) {
            let as_stream = match &d {
                Desired::Stream(c) => c.clone(),
                Desired::Bucket(c) => stream::Config {
                    name: Names::kv_stream_of(&c.bucket),
                    subjects: vec![Names::kv_subject_of(&c.bucket, ">")],
                    max_messages_per_subject: c.history,
                    max_age: c.max_age,
                    storage: c.storage,
                    num_replicas: c.num_replicas,
                    // The server's default, which buckets do not set.
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                },
                Desired::Objects(c) => stream::Config {
                    name: format!("OBJ_{}", c.bucket),
                    subjects: vec![
                        format!("$O.{}.C.>", c.bucket),
                        format!("$O.{}.M.>", c.bucket),
                    ],
                    max_age: c.max_age,
                    storage: c.storage,
                    num_replicas: c.num_replicas,
                    ..Default::default()
                },
            };
            assert!(compare(&d, &as_stream).is_empty(), "{}", d.name());
            let mut changed = as_stream.clone();
            changed.num_replicas = 3;
            changed.max_age = Duration::from_secs(7);
            let diff = compare(&d, &changed);
            let fields: Vec<&str> = diff.iter().map(|d| d.field).collect();
            assert_eq!(fields, ["max_age", "replicas"], "{}", d.name());
        }
    }
}
