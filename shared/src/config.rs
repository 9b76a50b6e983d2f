//! Configuration: built-in defaults < the TOML file < environment. The file is
//! `--config PATH`, else `$JETMESH_CONFIG`, else `./config/jetmesh.toml`, else
//! `/etc/jetmesh/jetmesh.toml`, whichever exists first. Environment variables are
//! `JETMESH_<SECTION>__<FIELD>` (e.g. `JETMESH_NATS__URL`), and the nats CLI's own
//! `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_CREDS` and `NATS_TOKEN` are
//! honoured the way the nats CLI honours them. `config/jetmesh.toml` documents
//! every field; a test keeps it loadable.

use crate::codec::Encoding;
use crate::error::{Error, ErrorCode, Result};
use crate::ids;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole jetmesh configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The child nats-server that `jetmesh up` starts when no URL is configured.
    pub embedded: EmbeddedConfig,
    /// Protocol-level settings shared by every role.
    pub mesh: MeshConfig,
    /// The chief role.
    pub chief: ChiefConfig,
    /// The router role.
    pub router: RouterConfig,
    /// The aggregator role.
    pub aggregator: AggregatorConfig,
    /// Leader leases of singleton roles.
    pub leases: LeaseConfig,
    /// Worker heartbeats and dead-worker detection.
    pub health: HealthConfig,
    /// Pool status, the scaling rules and overload alerts.
    pub autoscaler: AutoscalerConfig,
    /// Worker pools, by pool name. When the configuration names none, the
    /// built-in `math` and `date` pools are used.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Logs and metrics.
    pub telemetry: TelemetryConfig,
    /// Epics: claims, file reservations, agent mail, blockers.
    pub coord: CoordConfig,
    /// The `agent` capability: the commands that work on beads.
    pub agent: AgentConfig,
    /// The `file` capability: its sandbox root and limits.
    pub file: FileConfig,
    /// The `web` capability: the browser, its network policy and limits.
    pub web: WebConfig,
    /// The `db` capability: named databases (SQLite, PostgreSQL) and limits.
    pub db: DbConfig,
    /// The `email` capability: named accounts (SMTP and IMAP) and limits.
    pub email: EmailConfig,
    /// The optional archive of plans, results, reports and the audit log to
    /// PostgreSQL.
    pub archive: ArchiveConfig,
    /// The LLM planner: providers, the fallback chain, limits and budgets.
    /// The summary's narrative uses the same providers.
    pub planner: PlannerConfig,
    /// The summary role.
    pub summary: SummaryConfig,
    /// The process's async runtime.
    pub runtime: RuntimeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats: NatsConfig::default(),
            embedded: EmbeddedConfig::default(),
            mesh: MeshConfig::default(),
            chief: ChiefConfig::default(),
            router: RouterConfig::default(),
            aggregator: AggregatorConfig::default(),
            leases: LeaseConfig::default(),
            health: HealthConfig::default(),
            autoscaler: AutoscalerConfig::default(),
            pools: default_pools(),
            telemetry: TelemetryConfig::default(),
            coord: CoordConfig::default(),
            agent: AgentConfig::default(),
            file: FileConfig::default(),
            web: WebConfig::default(),
            db: DbConfig::default(),
            email: EmailConfig::default(),
            archive: ArchiveConfig::default(),
            planner: PlannerConfig::default(),
            summary: SummaryConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

fn default_pools() -> BTreeMap<String, PoolConfig> {
    let mut pools = BTreeMap::new();
    pools.insert("math".to_string(), PoolConfig::new("math", 4).limits(1, 10));
    pools.insert("date".to_string(), PoolConfig::new("date", 2).limits(1, 3));
    pools
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated. Empty: `jetmesh up` starts an embedded
    /// server, and every other command uses `nats://127.0.0.1:4222`.
    pub url: String,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`. Never logged.
    pub password: Option<String>,
    /// Token authentication. Never logged.
    pub token: Option<String>,
    /// Path to a `.creds` file (JWT + NKey).
    pub creds: Option<PathBuf>,
}

/// The child nats-server of `jetmesh up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// The nats-server binary: a path, or a name looked up on `PATH`.
    /// `$NATS_SERVER_BIN` overrides it.
    pub bin: String,
    /// Where the server keeps JetStream data.
    pub data_dir: PathBuf,
    /// Client port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Largest message the server accepts, in bytes.
    pub max_payload: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            bin: "nats-server".into(),
            data_dir: PathBuf::from(".jetmesh/nats"),
            port: 4222,
            max_payload: 8 * 1024 * 1024,
        }
    }
}

/// Where JetStream keeps streams and buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// Protocol-level settings shared by every role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Subject prefix (and stream/bucket name prefix). Protocol v1 uses `mesh`.
    pub prefix: String,
    /// Replicas of every stream and bucket (3 on a 3-node cluster).
    pub replicas: usize,
    /// Storage of streams and buckets.
    pub storage: Storage,
    /// How long results, plan counts and reports stay in `mesh_results`.
    pub results_ttl_secs: u64,
    /// How long plan definitions stay in `mesh_plans`.
    pub plans_ttl_secs: u64,
    /// How long large outputs (screenshots, page dumps) stay in `mesh_objects`.
    pub objects_ttl_secs: u64,
    /// The largest object a capability stores, in bytes.
    pub max_object_bytes: u64,
    /// How long events stay in `MESH_EVENTS`.
    pub events_ttl_secs: u64,
    /// How long dead letters stay in `MESH_DLQ`.
    pub dlq_ttl_secs: u64,
    /// How long entries stay in MESH_AUDIT (scaling decisions, ...).
    pub audit_ttl_secs: u64,
    /// Window in which a re-published task (same plan and task id) is dropped.
    pub dedupe_window_secs: u64,
    /// Largest request body any role accepts, in bytes.
    pub max_request_bytes: usize,
    /// Most subtasks one plan may have.
    pub max_subtasks: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            prefix: crate::names::DEFAULT_PREFIX.into(),
            replicas: 1,
            storage: Storage::File,
            results_ttl_secs: 3600,
            plans_ttl_secs: 86_400,
            objects_ttl_secs: 86_400,
            max_object_bytes: 64 * 1024 * 1024,
            events_ttl_secs: 86_400,
            dlq_ttl_secs: 7 * 86_400,
            audit_ttl_secs: 30 * 86_400,
            dedupe_window_secs: 120,
            max_request_bytes: 1024 * 1024,
            max_subtasks: 10_000,
        }
    }
}

/// The process: its async runtime (tokio), how it stops, and when it gives up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run the roles of this process. 0: one per core, less one
    /// when this process also starts the embedded nats-server (which then
    /// shares the machine), and at least one.
    pub worker_threads: usize,
    /// How long a role may finish in-flight work after SIGTERM. The process
    /// exits at the latest 10 s after this, even if the server is gone.
    pub drain_timeout_ms: u64,
    /// How long a consumer or a follower may stay unusable while connected
    /// before the role gives up and exits non-zero (for its supervisor to
    /// restart it). Time spent disconnected does not count.
    pub give_up_after_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: 0,
            drain_timeout_ms: 30_000,
            give_up_after_ms: 60_000,
        }
    }
}

impl RuntimeConfig {
    /// How long a role may drain after shutdown.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_timeout_ms)
    }

    /// When the process exits after shutdown, whatever still runs: the drain
    /// timeout and 10 s of grace.
    pub fn shutdown_bound(&self) -> std::time::Duration {
        self.drain_timeout() + std::time::Duration::from_secs(10)
    }

    /// The thread count for a machine of `cores` cores; `embedded`: this
    /// process starts the nats-server child.
    pub fn threads(&self, cores: usize, embedded: bool) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(usize::from(embedded)).max(1),
            n => n,
        }
    }
}

/// The chief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChiefConfig {
    /// How long a `"wait": true` submit waits for the report by default.
    pub wait_timeout_ms: u64,
    /// How long the chief waits for the planner.
    pub planner_timeout_ms: u64,
}

impl Default for ChiefConfig {
    fn default() -> Self {
        ChiefConfig {
            wait_timeout_ms: 300_000,
            planner_timeout_ms: 10_000,
        }
    }
}

/// The aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Most bytes of results the aggregator keeps, across running plans, to
    /// hand to the summary in one piece (a plan's result bundle). A plan that
    /// does not fit gets none, and the summary reads its results from
    /// `mesh_results`. 0 turns bundles off.
    pub bundle_budget_bytes: usize,
    /// Largest bundle part stored in `mesh_plans`; 0 means the server's
    /// maximum payload less 4 KiB.
    pub bundle_part_bytes: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            bundle_budget_bytes: 64 * 1024 * 1024,
            bundle_part_bytes: 0,
        }
    }
}

/// The router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// How long `mesh.run` waits for a result when the task sets no `timeout_ms`.
    pub run_timeout_ms: u64,
    /// Queue publishes awaiting their JetStream ack at once.
    pub max_inflight: usize,
    /// How a pool is chosen when several serve one capability, unless
    /// `strategies` names one for the capability.
    pub strategy: Strategy,
    /// Strategy per capability.
    pub strategies: BTreeMap<String, Strategy>,
    /// New work for a capability whose pools have no live worker: `fail`
    /// answers `no_workers` at once; `wait` queues it until a worker starts.
    pub when_no_workers: WhenNoWorkers,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            run_timeout_ms: 30_000,
            max_inflight: 1024,
            strategy: Strategy::Match,
            strategies: BTreeMap::new(),
            when_no_workers: WhenNoWorkers::Fail,
        }
    }
}

impl RouterConfig {
    pub fn strategy_for(&self, capability: &str) -> Strategy {
        self.strategies
            .get(capability)
            .copied()
            .unwrap_or(self.strategy)
    }
}

/// The seed's four routing strategies, for capabilities several pools serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Capability match: the pool the capability's `cap.<capability>` entry
    /// names (then its spillover pool).
    #[default]
    Match,
    /// Each live pool in turn.
    RoundRobin,
    /// The live pool with the shortest queue.
    LeastQueue,
    /// Among the live pools that take the task's priority (`priorities`), the
    /// one with the shortest queue.
    Priority,
}

/// What new work for a capability without live workers gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenNoWorkers {
    #[default]
    Fail,
    Wait,
}

/// The autoscaler: pool status, the scaling rules, overload alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// How often pool status is measured and the rules are applied.
    pub interval_ms: u64,
    /// Whether the autoscaler resizes pool processes' slots. Turn it off
    /// where something else scales the pool (KEDA on Kubernetes); status,
    /// alerts and backpressure keep working.
    pub scale_slots: bool,
    /// A Slack-compatible webhook every alert is POSTed to (`{"text": ...}`);
    /// empty: none. Treated as a secret: never logged.
    pub webhook_url: String,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            interval_ms: 1000,
            scale_slots: true,
            webhook_url: String::new(),
        }
    }
}

/// Coordination of epics (seed 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordConfig {
    /// How long a bead's claim and its file reservations live without
    /// renewal. The holding worker renews them every third of it; when it
    /// dies they lapse together, and the bead runs elsewhere.
    pub lease_ttl_secs: u64,
    /// How long a bead waits for files another holder has reserved before
    /// it raises a `reservation_conflict` blocker.
    pub reserve_wait_secs: u64,
    /// How long a blocked bead waits for a decision before it gives up
    /// (`blocked`).
    pub decision_wait_secs: u64,
    /// A blocker nobody has answered after this long is escalated: an
    /// urgent message on the epic thread and in the `operator` inbox, and
    /// an alert on `mesh.alerts.coord`.
    pub escalate_after_secs: u64,
    /// Whether the chief answers blockers itself (retry with guidance, up to
    /// `auto_retries` per bead). Off: only people (or other agents) answer.
    pub auto_decide: bool,
    /// How many blockers of one bead the chief answers with `retry` before it
    /// leaves the bead to an operator.
    pub auto_retries: u32,
    /// How long mail is kept in `MESH_MAIL`, in days.
    pub mail_max_age_days: u64,
}

impl Default for CoordConfig {
    fn default() -> Self {
        CoordConfig {
            lease_ttl_secs: 15,
            reserve_wait_secs: 60,
            decision_wait_secs: 3600,
            escalate_after_secs: 300,
            auto_decide: true,
            auto_retries: 1,
            mail_max_age_days: 30,
        }
    }
}

/// The `agent` capability: allowlisted commands run in an epic's working tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The commands a bead may run, by name: `{ claude = ["claude", "-p"] }`.
    /// Nothing else is ever executed. The bead arrives as JSON on stdin and
    /// in `JETMESH_*` environment variables.
    pub commands: BTreeMap<String, Vec<String>>,
    /// The command used when an epic names none.
    pub default_command: String,
    /// Directories an epic's `workdir` must lie in. Empty: only `workdir`.
    pub roots: Vec<PathBuf>,
    /// The working tree used when an epic names none.
    pub workdir: PathBuf,
    /// How long one run of a command may take.
    pub timeout_secs: u64,
    /// How much of a command's stdout and stderr is kept, in bytes (the tail).
    pub max_output_bytes: usize,
    /// Environment variables passed on to the command; nothing else of the
    /// worker's environment (its NATS credentials, …) reaches it. Add what
    /// the agent needs, e.g. `ANTHROPIC_API_KEY`.
    pub pass_env: Vec<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            commands: BTreeMap::new(),
            default_command: String::new(),
            roots: Vec::new(),
            workdir: PathBuf::from("."),
            timeout_secs: 1800,
            max_output_bytes: 16 * 1024,
            pass_env: ["PATH", "HOME", "LANG", "LC_ALL", "USER", "TMPDIR", "TERM"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The `file` capability: every path a task names lies inside `root`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The sandbox root, created on first use. Nothing outside it is ever
    /// read or written: `..`, absolute paths and symlinks that lead out are
    /// refused.
    pub root: PathBuf,
    /// The largest file `read` and `write` handle, and the largest archive
    /// `compress` writes or `extract` unpacks (uncompressed), in bytes.
    pub max_file_bytes: u64,
    /// Files up to this size come back inline from `read` (text, or base64);
    /// larger ones go to the object store and the result holds a reference.
    pub max_inline_bytes: u64,
    /// The most entries `list` returns, and `compress`/`extract` handle.
    pub max_entries: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            root: PathBuf::from(".jetmesh/files"),
            max_file_bytes: 64 * 1024 * 1024,
            max_inline_bytes: 256 * 1024,
            max_entries: 10_000,
        }
    }
}

/// The `web` capability: one headless Chromium per worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// The browser: a path, or a name looked up on `PATH`. Empty: the first
    /// of `chromium`, `chromium-browser`, `google-chrome-stable`,
    /// `google-chrome` found on `PATH`.
    pub chromium: String,
    /// Networks (CIDRs) the browser may reach although they are loopback,
    /// private, link-local or metadata addresses, which are refused by
    /// default (`address_refused`). Example: `["127.0.0.0/8"]`.
    pub allow_networks: Vec<String>,
    /// The most pages (sessions) open at once in one worker process. At the
    /// cap, the least recently used idle session is closed.
    pub max_pages: usize,
    /// A session unused this long is closed (its later tasks get
    /// `session_lost`).
    pub session_ttl_secs: u64,
    /// How long a navigation may take, unless the task's `timeout_ms` is shorter.
    pub navigation_timeout_ms: u64,
    /// How long the browser may take to start.
    pub launch_timeout_ms: u64,
    /// The viewport, in CSS pixels.
    pub viewport_width: u32,
    pub viewport_height: u32,
    /// Page text up to this size comes back inline; a larger dump goes to
    /// the object store and the result holds a reference.
    pub max_inline_bytes: usize,
    /// Chromium's own sandbox. Chromium cannot use it as root; then it is
    /// turned off with a warning.
    pub sandbox: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            chromium: String::new(),
            allow_networks: Vec::new(),
            max_pages: 16,
            session_ttl_secs: 600,
            navigation_timeout_ms: 30_000,
            launch_timeout_ms: 20_000,
            viewport_width: 1280,
            viewport_height: 800,
            max_inline_bytes: 256 * 1024,
            sandbox: true,
        }
    }
}

/// The `db` capability: the databases a pool process serves, by name, and
/// the limits every statement runs under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// The databases, by the name tasks give in `database`. `main` is always
    /// there: SQLite under `.jetmesh/db`, DDL allowed, unless configured otherwise.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Every database of this process is read-only (for a reporting pool
    /// process): as if each had `read_only = true`.
    pub read_only: bool,
    /// How long one statement may run before it is cancelled (`timeout`).
    pub statement_timeout_ms: u64,
    /// How long a task may wait for a free connection before it fails
    /// (`unavailable`, retryable).
    pub acquire_timeout_ms: u64,
    /// Connections per database per process, unless the database sets its own.
    pub max_connections: u32,
    /// The most rows a result returns; the rest are not read (`truncated`).
    pub max_rows: usize,
    /// The most bytes of row data (as JSON) a result returns; rows past it are
    /// not read (`truncated`).
    pub max_result_bytes: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        let mut databases = BTreeMap::new();
        databases.insert(
            "main".to_string(),
            DatabaseConfig {
                url: "sqlite:.jetmesh/db/main.db".into(),
                allow_ddl: true,
                ..DatabaseConfig::default()
            },
        );
        DbConfig {
            databases,
            read_only: false,
            statement_timeout_ms: 30_000,
            acquire_timeout_ms: 10_000,
            max_connections: 8,
            max_rows: 10_000,
            max_result_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One database of the `db` capability.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH` (created on first use unless read-only; a relative path
    /// is relative to the working folder) or `postgres://user@host:port/db`.
    /// Never logged, and never in an error.
    pub url: String,
    /// Statements run in a read-only transaction (PostgreSQL) or on a
    /// read-only connection (SQLite); writes fail with `read_only`.
    pub read_only: bool,
    /// CREATE, ALTER, DROP and the like are refused (`ddl_refused`) unless true.
    pub allow_ddl: bool,
    /// The password, read from this environment variable when the URL has none.
    pub password_env: Option<String>,
    /// The password, read from this file (its first line) when the URL has none.
    pub password_file: Option<PathBuf>,
    /// Connections to this database per process (default: `db.max_connections`).
    pub max_connections: Option<u32>,
}

/// The `email` capability: the accounts a pool process sends and reads
/// mail with, by name. A task may name an account, never a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The accounts, by the name tasks give in `account`.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// The account of tasks that name none; empty: the only account, when
    /// there is exactly one.
    pub default_account: String,
    /// How long connecting and each SMTP or IMAP command may take.
    pub timeout_ms: u64,
    /// Attempts of a send that the server answers with a temporary (4xx)
    /// error, spaced by the mesh's backoff; a permanent (5xx) one is not retried.
    pub send_attempts: u32,
    /// The largest message `send`, `draft` and `reply` build, attachments
    /// included, in bytes.
    pub max_message_bytes: usize,
    /// Bodies up to this size come back inline from `read`; a larger one,
    /// and every attachment, goes to the object store as a reference.
    pub max_inline_bytes: usize,
    /// The most messages `read` returns, and `search` summarises.
    pub max_messages: usize,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            accounts: BTreeMap::new(),
            default_account: String::new(),
            timeout_ms: 30_000,
            send_attempts: 4,
            max_message_bytes: 25 * 1024 * 1024,
            max_inline_bytes: 256 * 1024,
            max_messages: 100,
        }
    }
}

/// How a mail connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTls {
    /// TLS from the first byte (SMTP 465, IMAP 993).
    #[default]
    Tls,
    /// Plain, upgraded with STARTTLS, which must succeed (SMTP 587, IMAP 143).
    Starttls,
    /// No encryption at all: only for servers on this machine.
    None,
}

/// One mail account of the `email` capability.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountConfig {
    /// The sender address (`From`), e.g. `agent@example.com`.
    pub address: String,
    /// The sender's display name.
    pub name: String,
    /// The login for SMTP and IMAP (default: `address`).
    pub username: String,
    /// The password, from this environment variable. Never logged.
    pub password_env: Option<String>,
    /// The password, from the first line of this file. Never logged.
    pub password_file: Option<PathBuf>,
    pub smtp_host: String,
    /// Default: 465 with `tls`, 587 with `starttls`, 25 with `none`.
    pub smtp_port: Option<u16>,
    pub smtp_tls: MailTls,
    /// Empty: the account cannot read (`read`, `search`, `draft`, `reply`).
    pub imap_host: String,
    /// Default: 993 with `tls`, 143 otherwise.
    pub imap_port: Option<u16>,
    pub imap_tls: MailTls,
    /// A PEM file of certificates to trust besides the system's (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Messages this account may send per minute; more wait for
    /// `rate_limited` (with a retry hint). 0: no limit.
    pub send_per_minute: u32,
    /// When not empty, every recipient must match one of these
    /// (`someone@example.com`, or `*@example.com` for a domain).
    pub allow_recipients: Vec<String>,
    /// The folder drafts go to; empty: the folder marked `\Drafts`, else `Drafts`.
    pub drafts_folder: String,
}

/// The archiver: JetStream stays the system of record, and a copy of plans,
/// task results, reports and `MESH_AUDIT` goes to PostgreSQL tables.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `postgres://user@host:port/db`; empty: no archive (and `jetmesh up`
    /// runs no archiver). Never logged.
    pub url: String,
    /// The password, from this environment variable, when the URL has none.
    pub password_env: Option<String>,
    /// The password, from the first line of this file, when the URL has none.
    pub password_file: Option<PathBuf>,
    /// Connections one archiver process opens (0: the default, 8).
    pub max_connections: u32,
}

/// The LLM planner (and the summary's narrative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    /// The fallback chain: provider names from `providers`, tried in this
    /// order. Empty: a goal gets `no_planner_provider`, and reports have no
    /// narrative.
    pub order: Vec<String>,
    /// The providers, by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Price per model (the name the provider is asked for), in US dollars
    /// per million tokens. A model without a price costs 0.
    pub prices: BTreeMap<String, PriceConfig>,
    /// The most tasks a plan made from a goal may have.
    pub max_tasks: usize,
    /// The longest goal planned, in characters (`payload_too_large` past
    /// it): a goal is sent to a paid model, in every repair round.
    pub max_goal_chars: usize,
    /// How often an invalid plan is sent back to the model with the
    /// validation errors before the goal fails with `planning_failed`.
    pub repair_rounds: u32,
    /// How long planning one goal may take in all (every attempt and
    /// repair round); the chief waits this long for a goal's plan.
    pub timeout_ms: u64,
    /// The most tokens a model may answer with.
    pub max_output_tokens: u32,
    /// Goals one planner process plans at once; more wait.
    pub max_concurrent: usize,
    /// Consecutive failures after which a provider is skipped (its circuit
    /// breaker opens).
    pub breaker_failures: u32,
    /// How long an open breaker skips its provider before one trial call.
    pub breaker_cooldown_ms: u64,
    /// The most a plan's LLM calls (planning, repairs, narrative) may cost,
    /// in US dollars; once spent, planning fails with `budget_exceeded` and
    /// the report has no narrative. 0: no limit.
    pub budget_per_plan_usd: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            order: Vec::new(),
            providers: BTreeMap::new(),
            prices: BTreeMap::new(),
            max_tasks: 20,
            max_goal_chars: 8_000,
            repair_rounds: 2,
            timeout_ms: 120_000,
            max_output_tokens: 4096,
            max_concurrent: 64,
            breaker_failures: 3,
            breaker_cooldown_ms: 30_000,
            budget_per_plan_usd: 0.0,
        }
    }
}

impl PlannerConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::bad_request(m));
        for name in &self.order {
            if !self.providers.contains_key(name) {
                return bad(format!(
                    "planner.order names {name:?}, which is not in [planner.providers]"
                ));
            }
        }
        for (name, p) in &self.providers {
            ids::validate("planner provider name", name)?;
            if p.model.trim().is_empty() {
                return bad(format!("planner.providers.{name}.model is empty"));
            }
            let http = p.base_url.starts_with("http://") || p.base_url.starts_with("https://");
            let userinfo = p
                .base_url
                .split_once("://")
                .is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|h| h.contains('@')));
            if userinfo {
                return bad(format!(
                    "planner.providers.{name}.base_url holds credentials (user@host): give \
                     the key with api_key_env or api_key_file"
                ));
            }
            if !p.base_url.is_empty() && !http {
                return bad(format!(
                    "planner.providers.{name}.base_url must start with http:// or https://"
                ));
            }
            if p.timeout_ms == 0 || p.max_concurrent == 0 {
                return bad(format!(
                    "planner.providers.{name}: timeout_ms and max_concurrent must be above 0"
                ));
            }
            if p.daily_budget_usd < 0.0 || !p.daily_budget_usd.is_finite() {
                return bad(format!(
                    "planner.providers.{name}.daily_budget_usd must be 0 or more"
                ));
            }
        }
        for (model, price) in &self.prices {
            let valid = |p: f64| p.is_finite() && p >= 0.0;
            if !valid(price.input_per_mtok) || !valid(price.output_per_mtok) {
                return bad(format!(
                    "planner.prices.{model:?}: prices must be 0 or more"
                ));
            }
        }
        if self.max_tasks == 0
            || self.max_goal_chars == 0
            || self.timeout_ms == 0
            || self.max_concurrent == 0
        {
            return bad(
                "planner.max_tasks, max_goal_chars, timeout_ms and max_concurrent must be above 0"
                    .into(),
            );
        }
        if self.budget_per_plan_usd < 0.0 || !self.budget_per_plan_usd.is_finite() {
            return bad("planner.budget_per_plan_usd must be 0 or more".into());
        }
        Ok(())
    }
}

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, and every server that speaks it (Ollama,
    /// vLLM, llama.cpp's server, LM Studio, …).
    #[default]
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

/// How a provider is asked for a structured answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structured {
    /// The provider's native mode: JSON schema for OpenAI and Gemini, a
    /// forced tool call for Anthropic.
    #[default]
    Native,
    /// A forced tool (function) call whose parameters are the schema.
    Tool,
    /// Only the prompt asks for JSON (for servers with neither).
    Prompt,
}

/// One LLM provider of `[planner.providers.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// `openai`, `anthropic` or `gemini`.
    pub kind: ProviderKind,
    /// The API's base URL, version included. Empty: the provider's own
    /// (`https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `https://generativelanguage.googleapis.com/v1beta`).
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key. Never logged.
    pub api_key_env: Option<String>,
    /// A file whose first line is the API key. Never logged.
    pub api_key_file: Option<PathBuf>,
    /// How long one call may take.
    pub timeout_ms: u64,
    /// Calls per minute this process makes to it; past it the chain moves
    /// on. 0: no limit.
    pub requests_per_minute: u32,
    /// Tokens (input and output) per minute this process spends on it; past
    /// it the chain moves on. 0: no limit.
    pub tokens_per_minute: u64,
    /// Calls in flight at once from this process; when all are busy the
    /// chain moves on (and waits for one only when every provider is busy).
    pub max_concurrent: usize,
    /// The most this provider may cost per UTC day, across all planner and
    /// summary processes, in US dollars. 0: no limit.
    pub daily_budget_usd: f64,
    /// How the structured plan is asked for.
    pub structured: Structured,
    /// Sampling temperature; unset: the provider's default.
    pub temperature: Option<f32>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::Openai,
            base_url: String::new(),
            model: String::new(),
            api_key_env: None,
            api_key_file: None,
            timeout_ms: 60_000,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            max_concurrent: 8,
            daily_budget_usd: 0.0,
            structured: Structured::Native,
            temperature: None,
        }
    }
}

/// A model's price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceConfig {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// The summary role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummaryConfig {
    /// Add an LLM-written narrative above the template report when
    /// `planner.order` names a provider.
    pub narrative: bool,
    /// The most characters of one task's output shown to the model; a longer
    /// output, and every binary or stored one, is given as a reference.
    pub max_output_chars: usize,
    /// Reports written at once per summary process.
    pub concurrency: usize,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            narrative: true,
            max_output_chars: 2_000,
            concurrency: 8,
        }
    }
}

/// Leader leases (`mesh_leases`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// How long a lease lives without renewal. A standby takes over within
    /// about this long after its holder dies; the holder renews every third of it.
    pub ttl_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { ttl_ms: 10_000 }
    }
}

/// Worker heartbeats (`mesh_health`) and the health monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often a worker process writes its heartbeat.
    pub heartbeat_ms: u64,
    /// A worker whose heartbeat is older than this is declared dead.
    pub dead_after_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            heartbeat_ms: 1000,
            dead_after_ms: 5000,
        }
    }
}

/// One worker pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Capabilities this pool serves; defaults to the pool's name.
    pub capabilities: Vec<String>,
    /// Concurrent worker slots in one pool process.
    pub workers: usize,
    /// The fewest slots the pool keeps across its live processes: when a
    /// worker process dies, the survivors take up its slots to this count.
    pub min: usize,
    /// Encoding of task messages sent to this pool (`json` or `msgpack`).
    pub encoding: Encoding,
    /// Seconds a task may be held without an ack before JetStream redelivers it.
    pub ack_wait_secs: u64,
    /// Deliveries of one task before JetStream gives up on it.
    pub max_deliver: i64,
    /// The most slots the autoscaler grows the pool to across its processes
    /// (a pool started with more is not shrunk for it).
    pub max: usize,
    /// Scale up (+1 slot) when more tasks than this wait and slots < max.
    pub scale_up_queue: u64,
    /// Scale down (−1 slot) when fewer tasks than this wait, slots > min and
    /// the pool has had an idle slot for `idle_secs`.
    pub scale_down_queue: u64,
    /// See `scale_down_queue`.
    pub idle_secs: u64,
    /// Alert "pool overloaded" when every slot is busy and more tasks than
    /// this wait; the alert clears when that stops being true.
    pub overload_queue: u64,
    /// Backpressure: when more tasks than this wait for the pool (queued and
    /// held by routers), new work for it is refused with `overloaded` unless
    /// its spillover pool can take it. 0: no limit.
    pub max_backlog: u64,
    /// Tasks the router lets wait in the pool's JetStream queue at once.
    /// Beyond it, routers hold ready tasks and release them highest priority
    /// first, so a high-priority task waits behind at most this many.
    pub queue_window: u64,
    /// A backup pool serving the same capabilities: when more than
    /// `spill_at` tasks wait here, new tasks go there while it has room.
    pub spill_to: Option<String>,
    /// See `spill_to`.
    pub spill_at: u64,
    /// Task priorities this pool takes under the `priority` strategy.
    pub priorities: Vec<crate::wire::Priority>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig::new("", 4)
    }
}

impl PoolConfig {
    pub fn new(capability: &str, workers: usize) -> Self {
        PoolConfig {
            capabilities: if capability.is_empty() {
                vec![]
            } else {
                vec![capability.to_string()]
            },
            workers,
            min: 1,
            encoding: Encoding::Json,
            ack_wait_secs: 30,
            max_deliver: 5,
            max: workers.max(10),
            scale_up_queue: 10,
            scale_down_queue: 2,
            idle_secs: 300,
            overload_queue: 20,
            max_backlog: 10_000,
            queue_window: 1000,
            spill_to: None,
            spill_at: 10,
            priorities: vec![
                crate::wire::Priority::High,
                crate::wire::Priority::Normal,
                crate::wire::Priority::Low,
            ],
        }
    }

    /// Sets `min` and `max`.
    pub fn limits(mut self, min: usize, max: usize) -> Self {
        self.min = min;
        self.max = max;
        self
    }
}

/// Log and metric output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log filter (`info`, `jetmesh=debug`, …); `RUST_LOG` overrides it.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Address of the Prometheus `/metrics` listener; empty turns it off.
    pub metrics_listen: String,
    /// Where OpenTelemetry traces go over OTLP; empty (the default) turns
    /// trace export off, at no cost. The collector's base URL:
    /// `http://127.0.0.1:4318` for `http` (`/v1/traces` is appended unless
    /// the URL already ends with it), `http://127.0.0.1:4317` for `grpc`.
    /// Request headers (a collector's or Langfuse's `Authorization=Basic …`)
    /// come from the standard `OTEL_EXPORTER_OTLP_HEADERS` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`): `key1=value1,key2=value2`,
    /// values URL-decoded; they are kept out of the config file on purpose.
    pub otlp_endpoint: String,
    /// `http` (OTLP/HTTP with protobuf, the default) or `grpc` (plain
    /// `http://` only: TLS collectors take `http` with an `https://` URL).
    pub otlp_protocol: String,
    /// The `service.name` of this process's spans; empty: `jetmesh-<role>`
    /// (`jetmesh-router`, `jetmesh-up` for every role in one process,
    /// `jetmesh` for the CLI).
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log: "info".into(),
            log_format: "text".into(),
            metrics_listen: String::new(),
            otlp_endpoint: String::new(),
            otlp_protocol: "http".into(),
            service_name: String::new(),
        }
    }
}

/// A password kept out of the config text: from the environment variable
/// `env`, else from the first line of `file`; `None` when neither is set.
/// `section` names the setting in the error (`db.databases.main`), which
/// never holds the password.
pub fn password(
    section: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> std::result::Result<Option<String>, String> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{section}.password_env names {var}, which is not set"));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{section}.password_file {}: {e}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    Ok(None)
}

impl Config {
    /// Loads defaults < file < environment. `path` is `--config`.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::base()));
        if let Some(file) = config_file(path)? {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(nats_cli_env())
            .merge(Env::prefixed("JETMESH_").ignore(&["config"]).split("__"))
            .extract()
            .map_err(|e| {
                Error::new(ErrorCode::BadRequest, format!("invalid configuration: {e}"))
            })?;
        config.finish()
    }

    /// Parses a TOML string over the defaults (no environment); for tests.
    pub fn from_toml(toml: &str) -> Result<Config> {
        let config: Config = Figment::from(Serialized::defaults(Config::base()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| {
                Error::new(ErrorCode::BadRequest, format!("invalid configuration: {e}"))
            })?;
        config.finish()
    }

    /// The defaults figment starts from: no pools, so that a file naming its own
    /// pools gets exactly those (figment merges maps key by key).
    fn base() -> Config {
        Config {
            pools: BTreeMap::new(),
            ..Config::default()
        }
    }

    fn finish(mut self) -> Result<Config> {
        if self.pools.is_empty() {
            self.pools = default_pools();
        }
        self.validate()?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<()> {
        let prefix = &self.mesh.prefix;
        if !ids::is_valid(prefix) || prefix.contains('-') {
            return Err(Error::bad_request(format!(
                "mesh.prefix {prefix:?} must match [A-Za-z0-9_]{{1,64}}"
            )));
        }
        for (name, argv) in &self.agent.commands {
            ids::validate("agent command name", name)?;
            if argv.is_empty() || argv[0].trim().is_empty() {
                return Err(Error::bad_request(format!(
                    "agent.commands.{name} must name a program"
                )));
            }
        }
        for net in &self.web.allow_networks {
            if net.parse::<ipnet::IpNet>().is_err() && net.parse::<std::net::IpAddr>().is_err() {
                return Err(Error::bad_request(format!(
                    "web.allow_networks: {net:?} is not a network like 127.0.0.0/8 or an address"
                )));
            }
        }
        self.planner.validate()?;
        for (name, db) in &self.db.databases {
            ids::validate("database name", name)?;
            let url = db.url.trim();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err(Error::bad_request(format!(
                    "db.databases.{name}.url must start with sqlite:, postgres:// or postgresql://"
                )));
            }
            if db.max_connections == Some(0) {
                return Err(Error::bad_request(format!(
                    "db.databases.{name}.max_connections must be at least 1"
                )));
            }
        }
        for (name, a) in &self.email.accounts {
            ids::validate("email account name", name)?;
            if !a.address.contains('@') {
                return Err(Error::bad_request(format!(
                    "email.accounts.{name}.address must be a mail address"
                )));
            }
            if a.smtp_host.is_empty() && a.imap_host.is_empty() {
                return Err(Error::bad_request(format!(
                    "email.accounts.{name} needs smtp_host, imap_host or both"
                )));
            }
            for r in &a.allow_recipients {
                if !r.contains('@') {
                    return Err(Error::bad_request(format!(
                        "email.accounts.{name}.allow_recipients: {r:?} is not an address or *@domain"
                    )));
                }
            }
        }
        if !self.email.default_account.is_empty()
            && !self
                .email
                .accounts
                .contains_key(&self.email.default_account)
        {
            return Err(Error::bad_request(format!(
                "email.default_account {:?} is not in email.accounts",
                self.email.default_account
            )));
        }
        if !matches!(self.telemetry.otlp_protocol.as_str(), "http" | "grpc") {
            return Err(Error::bad_request(format!(
                "telemetry.otlp_protocol {:?} must be \"http\" or \"grpc\"",
                self.telemetry.otlp_protocol
            )));
        }
        if self.telemetry.otlp_protocol == "grpc"
            && self.telemetry.otlp_endpoint.trim().starts_with("https:")
        {
            return Err(Error::bad_request(
                "telemetry.otlp_endpoint: gRPC over TLS is not built in; \
                 use otlp_protocol = \"http\" for an https:// collector",
            ));
        }
        let archive = &self.archive.url;
        if !(archive.is_empty()
            || archive.starts_with("postgres://")
            || archive.starts_with("postgresql://"))
        {
            return Err(Error::bad_request(
                "archive.url must start with postgres:// or postgresql://",
            ));
        }
        if self.db.max_connections == 0 || self.db.max_rows == 0 {
            return Err(Error::bad_request(
                "db.max_connections and db.max_rows must be at least 1",
            ));
        }
        if self.coord.lease_ttl_secs < 2 {
            return Err(Error::bad_request(
                "coord.lease_ttl_secs must be at least 2",
            ));
        }
        for (name, pool) in &self.pools {
            ids::validate("pool name", name)?;
            for cap in &pool.capabilities {
                ids::validate("capability", cap)?;
            }
            if pool.workers == 0 {
                return Err(Error::bad_request(format!(
                    "pools.{name}.workers must be at least 1"
                )));
            }
            if pool.min > pool.max || pool.max == 0 {
                return Err(Error::bad_request(format!(
                    "pools.{name}: min ({}) must be at most max ({}), and max at least 1",
                    pool.min, pool.max
                )));
            }
            if let Some(spill) = &pool.spill_to {
                ids::validate("spill_to pool", spill)?;
                if spill == name {
                    return Err(Error::bad_request(format!(
                        "pools.{name}.spill_to names the pool itself"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The capabilities a pool serves (its name when none are listed).
    pub fn pool_capabilities(&self, pool: &str) -> Vec<String> {
        match self.pools.get(pool) {
            Some(p) if !p.capabilities.is_empty() => p.capabilities.clone(),
            _ => vec![pool.to_string()],
        }
    }

    /// The pool's settings; an unknown pool gets the defaults.
    pub fn pool(&self, pool: &str) -> &PoolConfig {
        static DEFAULT: std::sync::OnceLock<PoolConfig> = std::sync::OnceLock::new();
        self.pools
            .get(pool)
            .unwrap_or_else(|| DEFAULT.get_or_init(PoolConfig::default))
    }

    pub fn names(&self) -> crate::names::Names {
        crate::names::Names::new(self.mesh.prefix.clone())
    }
}

fn config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(Error::bad_request(format!(
                "config file {} does not exist",
                p.display()
            )));
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("JETMESH_CONFIG").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(Error::bad_request(format!(
                "JETMESH_CONFIG names {}, which does not exist",
                p.display()
            )));
        }
        return Ok(Some(p));
    }
    Ok(["config/jetmesh.toml", "/etc/jetmesh/jetmesh.toml"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists()))
}

/// The nats CLI's environment variables, mapped onto `[nats]`.
fn nats_cli_env() -> Serialized<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (var, key) in [
        ("NATS_URL", "url"),
        ("NATS_USER", "user"),
        ("NATS_PASSWORD", "password"),
        ("NATS_TOKEN", "token"),
        ("NATS_CREDS", "creds"),
    ] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            map.insert(key.to_string(), v);
        }
    }
    Serialized::default("nats", map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_loads_and_matches_the_documented_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/jetmesh.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::from_toml(&text).unwrap();
        let defaults = Config::default();
        assert_eq!(config.mesh, defaults.mesh);
        assert_eq!(config.chief, defaults.chief);
        assert_eq!(config.router, defaults.router);
        assert_eq!(config.leases, defaults.leases);
        assert_eq!(config.autoscaler, defaults.autoscaler);
        assert_eq!(config.coord, defaults.coord);
        assert_eq!(config.agent, defaults.agent);
        assert_eq!(config.file, defaults.file);
        assert_eq!(config.web, defaults.web);
        assert_eq!(config.db, defaults.db);
        assert_eq!(config.email, defaults.email);
        assert_eq!(config.archive, defaults.archive);
        assert_eq!(config.runtime, defaults.runtime);
        assert_eq!(config.pools["math"], defaults.pools["math"]);
        assert_eq!(config.pools["date"], defaults.pools["date"]);
        // The seed's example pools and their limits.
        let limits: Vec<(&str, usize, usize)> = config
            .pools
            .iter()
            .map(|(n, p)| (n.as_str(), p.min, p.max))
            .collect();
        assert_eq!(
            limits,
            [
                ("agent", 1, 8),
                ("date", 1, 3),
                ("db", 1, 8),
                ("email", 1, 5),
                ("file", 1, 4),
                ("math", 1, 10),
                ("web", 2, 20)
            ]
        );
        let math = &config.pools["math"];
        assert_eq!(
            (
                math.scale_up_queue,
                math.scale_down_queue,
                math.idle_secs,
                math.overload_queue
            ),
            (10, 2, 300, 20),
            "the seed's thresholds"
        );
    }

    #[test]
    fn runtime_threads_leave_a_core_to_the_embedded_server() {
        let auto = RuntimeConfig::default();
        assert_eq!(auto.threads(2, true), 1);
        assert_eq!(auto.threads(8, true), 7);
        assert_eq!(auto.threads(2, false), 2);
        assert_eq!(auto.threads(1, true), 1);
        let set = RuntimeConfig {
            worker_threads: 3,
            ..Default::default()
        };
        assert_eq!(set.threads(2, true), 3);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = Config::from_toml("[mesh]\nprefx = \"x\"").unwrap_err();
        assert!(e.message.contains("prefx"), "{}", e.message);
        assert!(Config::from_toml("[mesh]\nprefix = \"a.b\"").is_err());
        assert!(Config::from_toml("[pools.math]\nworkers = 0").is_err());
        assert!(Config::from_toml("[pools.math]\nmin = 5\nmax = 2").is_err());
        assert!(Config::from_toml("[pools.math]\nspill_to = \"math\"").is_err());
        assert!(Config::from_toml("[router]\nstrategy = \"random\"").is_err());
    }

    #[test]
    fn planner_providers_are_checked() {
        let ok =
            "[planner]\norder = [\"a\"]\n[planner.providers.a]\nkind = \"gemini\"\nmodel = \"m\"\n";
        let c = Config::from_toml(ok).unwrap();
        assert_eq!(c.planner.providers["a"].kind, ProviderKind::Gemini);
        for (bad, says) in [
            ("[planner]\norder = [\"b\"]", "not in [planner.providers]"),
            ("[planner.providers.a]\nmodel = \"\"", "model is empty"),
            (
                "[planner.providers.a]\nmodel = \"m\"\nkind = \"mistral\"",
                "mistral",
            ),
            (
                "[planner.providers.a]\nmodel = \"m\"\nbase_url = \"https://u:secret@gw/v1\"",
                "holds credentials",
            ),
            (
                "[planner.providers.a]\nmodel = \"m\"\nbase_url = \"ftp://x\"",
                "http://",
            ),
            (
                "[planner.prices]\nm = { input_per_mtok = -1.0 }",
                "0 or more",
            ),
            ("[planner]\nmax_goal_chars = 0", "above 0"),
        ] {
            let e = Config::from_toml(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert!(!e.message.contains("secret"), "{}", e.message);
        }
    }

    #[test]
    fn trace_export_is_off_by_default_and_its_protocol_is_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, "");
        assert_eq!(c.telemetry.otlp_protocol, "http");
        let c = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\notlp_protocol = \"grpc\"",
        )
        .unwrap();
        assert_eq!(c.telemetry.otlp_protocol, "grpc");
        let e = Config::from_toml("[telemetry]\notlp_protocol = \"udp\"").unwrap_err();
        assert!(e.message.contains("otlp_protocol"), "{}", e.message);
        let e = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"https://c:4317\"\notlp_protocol = \"grpc\"",
        )
        .unwrap_err();
        assert!(e.message.contains("otlp_endpoint"), "{}", e.message);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_file_and_nats_url_is_honoured() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "j.toml",
                "[nats]\nurl = \"nats://file:4222\"\n[router]\nrun_timeout_ms = 5",
            )?;
            let c = Config::load(Some(Path::new("j.toml"))).unwrap();
            assert_eq!(c.nats.url, "nats://file:4222");
            assert_eq!(c.router.run_timeout_ms, 5);
            jail.set_env("NATS_URL", "nats://env:4222");
            let c = Config::load(Some(Path::new("j.toml"))).unwrap();
            assert_eq!(c.nats.url, "nats://env:4222");
            jail.set_env("JETMESH_NATS__URL", "nats://jetmesh:4222");
            jail.set_env("JETMESH_POOLS__MATH__WORKERS", "7");
            let c = Config::load(Some(Path::new("j.toml"))).unwrap();
            assert_eq!(c.nats.url, "nats://jetmesh:4222");
            assert_eq!(c.pools["math"].workers, 7);
            Ok(())
        });
    }
}
