//! A live view of the capability registry (`mesh_registry`, keys `cap.*`). A pool
//! registers a capability by putting its key; this view follows the bucket
//! ([`crate::follow`]), so the router and planner see a new capability the
//! moment it is written, with no restart and no code change. A miss falls back
//! to a direct read, which covers the instant between a registration and its
//! arrival here.
//!
//! Several pools may serve one capability: each writes `cap.<capability>.<pool>`,
//! and `cap.<capability>` (the v1 key) keeps naming the first. The router picks
//! among them with the capability's routing strategy.
//!
//! A registry entry is outside input: anyone who may write the bucket can
//! put anything there. Every entry is checked when it is read ([`check`]):
//! ids, pool, actions, and that it matches its key. An invalid one is ignored,
//! with a warning and an alert on `mesh.alerts.registry`, and its capability
//! is then unknown; it never reaches a subject.
//!
//! An entry may describe its actions' parameters with JSON Schemas
//! (`schemas`). They are compiled once, when the entry is read; an entry
//! whose schema does not compile is invalid like any other. A task whose
//! parameters break its action's schema is refused with `invalid_args`
//! naming the field ([`Registered::check_params`]). Schemas are outside input
//! too: they compile with a linear-time regex engine and never fetch a
//! remote `$ref`.

use crate::codec;
use crate::error::{Context, Error, ErrorCode, Result};
use crate::follow::{Change, follow};
use crate::ids;
use crate::mesh::Mesh;

use crate::wire::{ActionSchema, CapabilityEntry};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// The most actions one capability may register.
pub const MAX_ACTIONS: usize = 256;

/// The most schema errors quoted in one refusal.
const MAX_QUOTED: usize = 3;

/// A checked registry entry, with its actions' schemas compiled.
#[derive(Debug)]
pub struct Registered {
    pub entry: CapabilityEntry,
    validators: HashMap<String, jsonschema::Validator>,
}

impl Deref for Registered {
    type Target = CapabilityEntry;
    fn deref(&self) -> &CapabilityEntry {
        &self.entry
    }
}

impl Registered {
    /// Checks a task's parameters against its action's schema, if the entry
    /// has one. Errors: `invalid_args`, naming task, action and fields.
    pub fn check_params(
        &self,
        task: &str,
        action: &str,
        params: &Map<String, Value>,
    ) -> Result<()> {
        let Some(v) = self.validators.get(action) else {
            return Ok(());
        };
        // Cloning the map is the price of the crate's `&Value` input; it
        // happens once per task at acceptance, never per dispatch retry.
        let instance = Value::Object(params.clone());
        let mut problems = Vec::new();
        let mut more = 0usize;
        for e in v.iter_errors(&instance) {
            if problems.len() < MAX_QUOTED {
                problems.push(describe(&e));
            } else {
                more += 1;
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let mut message = format!(
            "task {task}: the parameters of {}.{action} do not match its schema: {}",
            self.entry.capability,
            problems.join("; ")
        );
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        Err(Error::invalid_args(message))
    }
}

/// One schema error as users read it: the field (`args[1]`, or
/// `parameters` for the whole object), then what is wrong, without quoting
/// the value (it may be large, or secret).
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    let mut field = String::new();
    for (i, seg) in e.instance_path().to_string().split('/').skip(1).enumerate() {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            field.push_str(&format!("[{seg}]"));
        } else {
            if i > 0 {
                field.push('.');
            }
            field.push_str(&seg);
        }
    }
    let what = match e.kind() {
        K::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            let at = if field.is_empty() {
                String::new()
            } else {
                format!("{field}.")
            };
            return format!("{at}{name} is required");
        }
        K::AdditionalProperties { unexpected } => {
            return format!(
                "{} not a parameter of this action",
                unexpected
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if unexpected.len() == 1 { " is" } else { " are" }
            );
        }
        _ => e.masked().to_string(),
    };
    if field.is_empty() {
        format!("parameters: {what}")
    } else {
        format!("{field}: {what}")
    }
}

/// Compiles one action's schema. Errors: `bad_registration`, naming the
/// capability and action.
pub fn compile(
    capability: &str,
    action: &str,
    schema: &ActionSchema,
) -> Result<Option<jsonschema::Validator>> {
    let Some(params) = &schema.params else {
        return Ok(None);
    };
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(params)
        .map(Some)
        .map_err(|e| {
            Error::new(
                ErrorCode::BadRegistration,
                format!("{capability}.{action}: the parameter schema does not compile: {e}"),
            )
        })
}

#[derive(Clone)]
pub struct Registry {
    mesh: Mesh,
    /// `cap.<capability>`: the pool a capability was first registered by.
    caps: Arc<RwLock<HashMap<String, Arc<Registered>>>>,
    /// `cap.<capability>.<pool>`: every pool offering it.
    offers: Arc<RwLock<HashMap<String, Offers>>>,
}

/// The pools offering one capability, by pool name.
type Offers = BTreeMap<String, Arc<Registered>>;

/// Reads the registry entry stored under `key` and checks it: valid ids, a
/// pool that is one subject token, at least one action and at most
/// [`MAX_ACTIONS`], each a valid id, and the capability (and pool, for
/// `cap.<capability>.<pool>`) its key names. Errors: `bad_registration`,
/// naming what is wrong.
pub fn check(key: &str, value: &[u8]) -> Result<Registered> {
    let bad = |why: String| Error::new(ErrorCode::BadRegistration, format!("{key}: {why}"));
    let entry: CapabilityEntry = codec::from_json(value).map_err(|e| bad(e.message))?;
    ids::validate("capability", &entry.capability).map_err(|e| bad(e.message))?;
    ids::validate("pool", &entry.pool).map_err(|e| bad(e.message))?;
    if entry.actions.is_empty() || entry.actions.len() > MAX_ACTIONS {
        return Err(bad(format!(
            "a capability has 1 to {MAX_ACTIONS} actions; this one has {}",
            entry.actions.len()
        )));
    }
    for a in &entry.actions {
        ids::validate("action", a).map_err(|e| bad(e.message))?;
    }
    let (cap, pool) = match crate::names::parse_cap_pool_key(key) {
        Some((cap, pool)) => (cap, Some(pool)),
        None => match crate::names::parse_cap_key(key) {
            Some(cap) => (cap, None),
            None => return Err(bad("not a registry key".into())),
        },
    };
    if entry.capability != cap {
        return Err(bad(format!(
            "the entry names capability {:?}, the key {cap:?}",
            entry.capability
        )));
    }
    if let Some(pool) = pool
        && entry.pool != pool
    {
        return Err(bad(format!(
            "the entry names pool {:?}, the key {pool:?}",
            entry.pool
        )));
    }
    let mut validators = HashMap::new();
    for (action, schema) in &entry.schemas {
        if !entry.actions.contains(action) {
            return Err(bad(format!(
                "a schema for {action:?}, which is not one of its actions"
            )));
        }
        if let Some(v) = compile(&entry.capability, action, schema).map_err(|e| bad(e.message))? {
            validators.insert(action.clone(), v);
        }
    }
    Ok(Registered { entry, validators })
}

impl Registry {
    /// Starts following the registry until `shutdown`.
    pub async fn follow(mesh: Mesh, shutdown: CancellationToken) -> Result<Registry> {
        let registry = Registry {
            mesh: mesh.clone(),
            caps: Arc::default(),
            offers: Arc::default(),
        };
        let this = registry.clone();
        let (bad_tx, mut bad_rx) = tokio::sync::mpsc::unbounded_channel::<Error>();
        follow(
            mesh.registry.clone(),
            mesh.names.cap_keys_all(),
            shutdown.clone(),
            move |change| {
                if let Err(e) = this.apply(change) {
                    let _ = bad_tx.send(e);
                }
            },
        )
        .await?;
        // Alerts are published outside the follower's callback.
        tokio::spawn(async move {
            while let Some(Some(e)) = shutdown.run_until_cancelled(bad_rx.recv()).await {
                mesh.alert("registry", "bad_registration", &e.message).await;
            }
        });
        Ok(registry)
    }

    fn apply(&self, change: Change) -> Result<()> {
        let (key, value) = match change {
            Change::Reset => {
                self.caps.write().expect("registry lock").clear();
                self.offers.write().expect("registry lock").clear();
                return Ok(());
            }
            Change::Put(entry) => (entry.key, Some(entry.value)),
            Change::Delete { key, .. } => (key, None),
        };
        let checked = value.map(|v| check(&key, &v));
        if let Some((cap, pool)) = crate::names::parse_cap_pool_key(&key) {
            let mut offers = self.offers.write().expect("registry lock");
            match checked {
                Some(Ok(e)) => {
                    offers
                        .entry(cap.to_string())
                        .or_default()
                        .insert(pool.to_string(), Arc::new(e));
                }
                // Deleted, or replaced by something invalid: gone.
                gone => {
                    if let Some(o) = offers.get_mut(cap) {
                        o.remove(pool);
                    }
                    return gone
                        .map_or(Ok(()), |r| r.map(|_| ()))
                        .inspect_err(|e| self.ignored(e));
                }
            }
            return Ok(());
        }
        let Some(cap) = crate::names::parse_cap_key(&key) else {
            return Ok(());
        };
        let mut caps = self.caps.write().expect("registry lock");
        match checked {
            Some(Ok(e)) => {
                tracing::info!(capability = cap, pool = %e.pool, actions = ?e.actions, "A capability is registered.");
                caps.insert(cap.to_string(), Arc::new(e));
                Ok(())
            }
            None => {
                tracing::info!(capability = cap, "A capability is unregistered.");
                caps.remove(cap);
                Ok(())
            }
            Some(Err(e)) => {
                caps.remove(cap);
                self.ignored(&e);
                Err(e)
            }
        }
    }

    fn ignored(&self, e: &Error) {
        metrics::counter!(crate::telemetry::REGISTRY_INVALID).increment(1);
        tracing::warn!(error = %e, "A registry entry is invalid; it is ignored until it is fixed.");
    }

    /// The capability, from the view or, on a miss, straight from the bucket.
    /// Errors: `bad_registration` when its entry is there but invalid.
    pub async fn resolve(&self, capability: &str) -> Result<Option<Arc<Registered>>> {
        if let Some(e) = self.get(capability) {
            return Ok(Some(e));
        }
        if !crate::ids::is_valid(capability) {
            return Ok(None);
        }
        let key = self.mesh.names.cap_key(capability);
        // Boxed: a miss is the rare path of every dispatch.
        let Some(value) = Box::pin(self.mesh.registry.get(&key))
            .await
            .map_err(|e| Error::unavailable("cannot read the registry", e))?
        else {
            return Ok(None);
        };
        // Invalid: the caller says so (`bad_registration`), rather than
        // `unknown_capability` or a decoding error that blames the request.
        let entry = Arc::new(check(&key, &value)?);
        self.caps
            .write()
            .expect("registry lock")
            .insert(capability.to_string(), entry.clone());
        Ok(Some(entry))
    }

    pub fn get(&self, capability: &str) -> Option<Arc<Registered>> {
        self.caps
            .read()
            .expect("registry lock")
            .get(capability)
            .cloned()
    }

    /// Every capability in the view (`cap.<capability>` entries), by name.
    pub fn all(&self) -> Vec<Arc<Registered>> {
        let mut all: Vec<Arc<Registered>> = self
            .caps
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.capability.cmp(&b.capability));
        all
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
    pub async fn candidates(&self, capability: &str) -> Result<Vec<Arc<Registered>>> {
        let (primary, invalid) = match self.resolve(capability).await {
            Ok(p) => (p, None),
            Err(e) if e.code == ErrorCode::BadRegistration => (None, Some(e)),
            Err(e) => return Err(e),
        };
        let mut out: Vec<Arc<Registered>> = primary.into_iter().collect();
        if let Some(offers) = self.offers.read().expect("registry lock").get(capability) {
            for e in offers.values() {
                if !out.iter().any(|o| o.pool == e.pool) {
                    out.push(e.clone());
                }
            }
        }
        match invalid {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
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
    let first = mesh
        .registry
        .get(&key)
        .await
        .context("cannot read the registry")?;
    // An invalid first entry (written by hand, or by a broken worker) is
    // replaced: it serves nobody.
    let first = first.and_then(|v| check(&key, &v).ok());
    if first.is_none_or(|f| f.pool == entry.pool) {
        mesh.registry
            .put(key, body)
            .await
            .context("cannot register capability")?;
    }
    Ok(())
}

/// Every registered capability, read once (for `jetmesh caps`), and the
/// entries that are ignored because they are invalid ([`check`]).
pub async fn list(mesh: &Mesh) -> Result<(Vec<CapabilityEntry>, Vec<Error>)> {
    let entries = mesh
        .scan(&mesh.registry, &mesh.names.cap_keys_all())
        .await?;
    let (mut out, mut invalid) = (Vec::new(), Vec::new());
    for e in &entries {
        match check(&e.key, &e.value) {
            Ok(r) => out.push(r.entry),
            Err(error) => invalid.push(error),
        }
    }
    out.sort_by(|a, b| (&a.capability, &a.pool).cmp(&(&b.capability, &b.pool)));
    out.dedup_by(|a, b| a.capability == b.capability && a.pool == b.pool);
    Ok((out, invalid))
}
