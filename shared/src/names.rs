//! Every subject, stream, consumer, bucket and key name jetmesh uses is built here,
//! on top of one configurable prefix (`mesh` by default). No other module spells a
//! subject: a renamed subject is a one-line change in this file plus an ADR when it
//! is part of the public protocol (see `docs/adr/0002-protocol-v1.md`).

use crate::wire::Priority;

/// The default subject prefix of protocol v1.
pub const DEFAULT_PREFIX: &str = "mesh";

/// The seed's message-bus channels, kept by name as `mesh.evt.<kind>.<plan_id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    TaskAvailable,
    PlanReady,
    AggregationReady,
    FinalReport,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::TaskAvailable,
        EventKind::PlanReady,
        EventKind::AggregationReady,
        EventKind::FinalReport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskAvailable => "task_available",
            EventKind::PlanReady => "plan_ready",
            EventKind::AggregationReady => "aggregation_ready",
            EventKind::FinalReport => "final_report",
        }
    }
}

/// Every kind of process on the mesh. A role's name is its service name
/// (`jetmesh-<role>`), the second token of its health subject and the
/// first part of its instance ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Chief,
    Planner,
    Router,
    Worker,
    Aggregator,
    Summary,
    Autoscaler,
    /// Copies plans, results, reports and the audit log to PostgreSQL
    /// (only where `[archive] url` is set).
    Archiver,
    /// A person's or a script's connection (`jetmesh submit`, `caps`, …).
    Client,
}

impl Role {
    /// The roles `jetmesh up` runs, in start order (workers are per pool).
    pub const SERVICES: [Role; 7] = [
        Role::Chief,
        Role::Planner,
        Role::Router,
        Role::Aggregator,
        Role::Summary,
        Role::Autoscaler,
        Role::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chief => "chief",
            Role::Planner => "planner",
            Role::Router => "router",
            Role::Worker => "worker",
            Role::Aggregator => "aggregator",
            Role::Summary => "summary",
            Role::Autoscaler => "autoscaler",
            Role::Archiver => "archiver",
            Role::Client => "cli",
        }
    }

    /// `jetmesh-<role>`: the role's name in the NATS service API.
    pub fn service_name(self) -> String {
        format!("jetmesh-{}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds names for one mesh (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names::new(DEFAULT_PREFIX)
    }
}

impl Names {
    /// `prefix` must be a valid subject token; config validation checks it.
    pub fn new(prefix: impl Into<String>) -> Self {
        Names {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    // --- public request/reply and publish subjects (fixed, protocol v1) ---

    /// `mesh.run.<capability>.<action>`: run one task synchronously.
    pub fn run(&self, capability: &str, action: &str) -> String {
        self.subject(&format!("run.{capability}.{action}"))
    }

    /// `mesh.session.<pool>.<session>`: the worker of `pool` that holds a
    /// session (a browser page) listens here, in queue group
    /// [`Names::SESSION_HOLDER`]; other workers of the pool send it the
    /// session's tasks. No responder: nobody holds the session.
    pub fn session(&self, pool: &str, session: &str) -> String {
        self.subject(&format!("session.{pool}.{session}"))
    }

    /// The queue group of session holders.
    pub const SESSION_HOLDER: &'static str = "holder";

    /// The wildcard the router's `mesh.run` endpoint listens on.
    pub fn run_all(&self) -> String {
        self.subject("run.>")
    }

    /// `mesh.tasks.<capability>.<action>`: submit one task durably.
    pub fn tasks(&self, capability: &str, action: &str) -> String {
        self.subject(&format!("tasks.{capability}.{action}"))
    }

    pub fn tasks_all(&self) -> String {
        self.subject("tasks.>")
    }

    /// The `(capability, action)` of a `mesh.run.*.*` or `mesh.tasks.*.*`
    /// subject; `None` when the subject has another shape (the caller rejects it).
    pub fn cap_action_of<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let rest = rest
            .strip_prefix("run.")
            .or_else(|| rest.strip_prefix("tasks."))?;
        let (cap, action) = rest.split_once('.')?;
        (!action.contains('.')).then_some((cap, action))
    }

    /// `mesh.plans.submit`.
    pub fn plans_submit(&self) -> String {
        self.subject("plans.submit")
    }

    /// `mesh.chief.<instance>.submit`: one chief's own subject, to which the
    /// other chiefs forward the submits they receive while it leads.
    pub fn chief_submit(&self, instance: &str) -> String {
        self.subject(&format!("chief.{instance}.submit"))
    }

    /// `mesh.plans.get.<plan_id>`.
    pub fn plans_get(&self, plan_id: &str) -> String {
        self.subject(&format!("plans.get.{plan_id}"))
    }

    pub fn plans_get_all(&self) -> String {
        self.subject("plans.get.*")
    }

    /// `mesh.planner.plan`: the planner's service endpoint.
    pub fn planner_plan(&self) -> String {
        self.subject("planner.plan")
    }

    /// `mesh.evt.<kind>.<plan_id>`.
    pub fn event(&self, kind: EventKind, plan_id: &str) -> String {
        self.subject(&format!("evt.{}.{plan_id}", kind.as_str()))
    }

    /// `mesh.evt.<kind>.*`, the filter for one kind of event.
    pub fn event_all(&self, kind: EventKind) -> String {
        self.subject(&format!("evt.{}.*", kind.as_str()))
    }

    /// `mesh.health.<role>.<instance>`: the seed's `agent_health` channel.
    pub fn health(&self, role: Role, instance: &str) -> String {
        self.subject(&format!("health.{role}.{instance}"))
    }

    /// `mesh.alerts.<scope>`: a pool's alerts, or a part of the mesh's
    /// (`results`, `coord`, `registry`).
    pub fn alerts(&self, scope: &str) -> String {
        self.subject(&format!("alerts.{scope}"))
    }

    // --- queues ---

    /// `mesh.queue.<pool>.<priority>`: where the router puts a ready task.
    pub fn queue(&self, pool: &str, priority: Priority) -> String {
        self.subject(&format!("queue.{pool}.{}", priority.as_str()))
    }

    /// `mesh.queue.<pool>.>`: the filter of a pool's consumer.
    pub fn queue_filter(&self, pool: &str) -> String {
        self.subject(&format!("queue.{pool}.>"))
    }

    // --- streams and consumers ---

    fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.to_ascii_uppercase())
    }

    /// `MESH_QUEUES`: the pools' work queues.
    pub fn queues_stream(&self) -> String {
        self.stream("QUEUES")
    }

    /// `MESH_INTAKE`: tasks submitted alone on `mesh.tasks.>`.
    pub fn intake_stream(&self) -> String {
        self.stream("INTAKE")
    }

    /// `MESH_EVENTS`: `mesh.evt.>`, `mesh.health.>` and `mesh.alerts.>`.
    pub fn events_stream(&self) -> String {
        self.stream("EVENTS")
    }

    pub fn events_subjects(&self) -> Vec<String> {
        vec![
            self.subject("evt.>"),
            self.subject("health.>"),
            self.subject("alerts.>"),
            self.max_deliveries_advisories(),
        ]
    }

    pub fn queues_subjects(&self) -> Vec<String> {
        vec![self.subject("queue.>")]
    }

    /// `MESH_AUDIT`: `mesh.audit.>`, decisions kept for operators.
    pub fn audit_stream(&self) -> String {
        self.stream("AUDIT")
    }

    /// `mesh.audit.<kind>.<name>`, e.g. `mesh.audit.scale.math`.
    pub fn audit(&self, kind: &str, name: &str) -> String {
        self.subject(&format!("audit.{kind}.{name}"))
    }

    pub fn audit_all(&self) -> String {
        self.subject("audit.>")
    }

    /// `MESH_DLQ`: dead letters, browsable and replayable.
    pub fn dlq_stream(&self) -> String {
        self.stream("DLQ")
    }

    /// `mesh.dlq.<pool>`: a dead letter of one pool.
    pub fn dlq(&self, pool: &str) -> String {
        self.subject(&format!("dlq.{pool}"))
    }

    pub fn dlq_all(&self) -> String {
        self.subject("dlq.>")
    }

    /// JetStream's advisory for a message of the queue stream that reached its
    /// consumer's max deliveries (captured in `MESH_EVENTS`).
    pub fn max_deliveries_advisories(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.queues_stream()
        )
    }

    /// The router's durable consumer on max-deliveries advisories.
    pub fn router_dlq_consumer(&self) -> String {
        "router_dlq".to_string()
    }

    /// De-duplication id of the dead letter of queue message `queue_seq`.
    pub fn dlq_msg_id(&self, queue_seq: u64) -> String {
        format!("dlq.{queue_seq}")
    }

    /// A fresh message id for replaying dead letter `dlq_seq` (never de-duplicated).
    pub fn replay_msg_id(&self, dlq_seq: u64) -> String {
        format!("replay.{dlq_seq}.{}", crate::ids::generate())
    }

    /// The lease key of a singleton role in `mesh_leases`: `chief` (the
    /// active chief) and `autoscaler` (the active autoscaler and health
    /// monitor).
    pub fn lease_key(&self, role: Role) -> String {
        role.as_str().to_string()
    }

    /// The pool a `pool_<pool>` consumer belongs to.
    pub fn pool_of_consumer<'a>(&self, consumer: &'a str) -> Option<&'a str> {
        consumer.strip_prefix("pool_")
    }

    /// `pool_<pool>`: the durable consumer every worker of a pool shares (fixed).
    pub fn pool_consumer(&self, pool: &str) -> String {
        format!("pool_{pool}")
    }

    /// The router's durable consumer on `MESH_INTAKE`.
    pub fn router_intake_consumer(&self) -> String {
        "router_intake".to_string()
    }

    /// The router's durable consumer on `plan_ready` events.
    pub fn router_plans_consumer(&self) -> String {
        "router_plans".to_string()
    }

    /// The summary's durable consumer on `aggregation_ready` events.
    pub fn summary_consumer(&self) -> String {
        "summary".to_string()
    }

    /// The archiver's durable consumers: on `mesh_plans`' stream, on
    /// `mesh_results`' stream, and on `MESH_AUDIT`.
    pub fn archiver_consumer(&self, what: &str) -> String {
        format!("archiver_{what}")
    }

    /// The chief's durable consumer on `final_report` events.
    pub fn chief_reports_consumer(&self) -> String {
        "chief_reports".to_string()
    }

    // --- coordination (seed 2): agent mail and reservations ---

    /// `MESH_MAIL`: agent mail threads, `mesh.mail.>`.
    pub fn mail_stream(&self) -> String {
        self.stream("MAIL")
    }

    pub fn mail_subjects(&self) -> Vec<String> {
        vec![self.subject("mail.>")]
    }

    /// `mesh.mail.<epic>.<thread>`; `thread` is `epic`, `track.<track>` or
    /// `inbox.<agent>` (see [`Thread`]).
    pub fn mail(&self, epic: &str, thread: &Thread) -> String {
        self.subject(&format!("mail.{epic}.{thread}"))
    }

    /// Every epic thread: `mesh.mail.*.epic` (what the chief follows).
    pub fn mail_epic_threads(&self) -> String {
        self.subject("mail.*.epic")
    }

    /// One agent's inboxes across epics: `mesh.mail.*.inbox.<agent>`.
    pub fn mail_inboxes(&self, agent: &str) -> String {
        self.subject(&format!("mail.*.inbox.{agent}"))
    }

    /// The epic and thread of a mail subject.
    pub fn parse_mail_subject(&self, subject: &str) -> Option<(String, Thread)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".mail.")?;
        let (epic, thread) = rest.split_once('.')?;
        Some((epic.to_string(), Thread::parse(thread)?))
    }

    /// `mesh.mailbox.<op>` (`send`, `reply`, `ack`): validated mail, for
    /// any client.
    pub fn mailbox(&self, op: &str) -> String {
        self.subject(&format!("mailbox.{op}"))
    }

    /// `mesh.coord.<op>` (`reserve`, `release`): file reservations.
    pub fn coord(&self, op: &str) -> String {
        self.subject(&format!("coord.{op}"))
    }

    /// The chief's durable consumer of the epic threads.
    pub fn chief_mail_consumer(&self) -> String {
        "chief_mail".to_string()
    }

    // --- key-value buckets and keys ---

    fn bucket(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// `mesh_registry`: `cap.<capability>` entries.
    pub fn registry_bucket(&self) -> String {
        self.bucket("registry")
    }

    /// `mesh_results`: plan counts, task results and reports (TTL).
    pub fn results_bucket(&self) -> String {
        self.bucket("results")
    }

    /// `mesh_plans`: plan definitions and lifecycle state.
    pub fn plans_bucket(&self) -> String {
        self.bucket("plans")
    }

    /// `mesh_leases`: one key per singleton role (`chief`, `autoscaler`, …).
    pub fn leases_bucket(&self) -> String {
        self.bucket("leases")
    }

    /// `mesh_health`: worker heartbeats; entries expire soon after they stop.
    pub fn health_bucket(&self) -> String {
        self.bucket("health")
    }

    /// `mesh_scale`: worker slots assigned to each pool's processes.
    pub fn scale_bucket(&self) -> String {
        self.bucket("scale")
    }

    /// `mesh_coord`: bead claims and file reservations, leases that expire
    /// unless their worker renews them.
    pub fn coord_bucket(&self) -> String {
        self.bucket("coord")
    }

    /// `mesh_objects`: the object store for large outputs (screenshots, page
    /// dumps, archives); results carry references to them.
    pub fn objects_bucket(&self) -> String {
        self.bucket("objects")
    }

    /// `OBJ_<bucket>`: the stream behind any object store.
    pub fn object_stream_of(bucket: &str) -> String {
        format!("OBJ_{bucket}")
    }

    /// The subjects of an object store's stream: chunks and metadata.
    pub fn object_subjects_of(bucket: &str) -> Vec<String> {
        vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")]
    }

    /// `<plan>/<task>/<name>` in `mesh_objects`: an output of a task.
    pub fn object_key(&self, plan_id: &str, task_id: &str, name: &str) -> String {
        format!("{plan_id}/{task_id}/{name}")
    }

    /// `claim.<epic>.<bead>` in `mesh_coord`.
    pub fn claim_key(&self, epic: &str, bead: &str) -> String {
        format!("claim.{epic}.{bead}")
    }

    /// `res.<epic>.<id>` in `mesh_coord`.
    pub fn reservation_key(&self, epic: &str, id: &str) -> String {
        format!("res.{epic}.{id}")
    }

    pub fn reservation_keys(&self, epic: &str) -> String {
        format!("res.{epic}.*")
    }

    /// `gen.<epic>` in `mesh_coord`: bumped with compare-and-set by every new
    /// reservation, so that two overlapping ones cannot both be granted.
    pub fn reservation_gen_key(&self, epic: &str) -> String {
        format!("gen.{epic}")
    }

    /// `epic.<epic>` in `mesh_plans`: the epic's live state.
    pub fn epic_state_key(&self, epic: &str) -> String {
        format!("epic.{epic}")
    }

    /// `worker.<pool>.<instance>` in `mesh_health`.
    pub fn worker_health_key(&self, pool: &str, instance: &str) -> String {
        format!("worker.{pool}.{instance}")
    }

    /// Every heartbeat key of one pool's workers.
    pub fn pool_health_keys(&self, pool: &str) -> String {
        format!("worker.{pool}.*")
    }

    /// Every worker heartbeat key.
    pub fn worker_health_all(&self) -> String {
        "worker.>".to_string()
    }

    /// `pool.<pool>` in `mesh_scale`.
    pub fn scale_key(&self, pool: &str) -> String {
        format!("pool.{pool}")
    }

    /// `status.<pool>` in `mesh_scale`: the pool's live status.
    pub fn status_key(&self, pool: &str) -> String {
        format!("status.{pool}")
    }

    /// Every pool status key.
    pub fn status_all(&self) -> String {
        "status.*".to_string()
    }

    /// `router.<instance>` in `mesh_health`: a router's heartbeat.
    pub fn router_health_key(&self, instance: &str) -> String {
        format!("router.{instance}")
    }

    /// Every router heartbeat key.
    pub fn router_health_all(&self) -> String {
        "router.*".to_string()
    }

    /// The core-NATS subject a KV write to `key` in `bucket` is published on.
    /// Subscribing to it is the cheapest way to be told about one write.
    pub fn kv_subject(&self, bucket: &str, key: &str) -> String {
        Names::kv_subject_of(bucket, key)
    }

    /// `$KV.<bucket>.<key>`, for any bucket (JetStream's naming, not the mesh's).
    pub fn kv_subject_of(bucket: &str, key: &str) -> String {
        format!("$KV.{bucket}.{key}")
    }

    /// The stream behind a KV bucket.
    pub fn kv_stream(&self, bucket: &str) -> String {
        Names::kv_stream_of(bucket)
    }

    /// `KV_<bucket>`: the stream behind any bucket.
    pub fn kv_stream_of(bucket: &str) -> String {
        format!("KV_{bucket}")
    }

    pub fn cap_key(&self, capability: &str) -> String {
        format!("cap.{capability}")
    }

    pub fn cap_key_all(&self) -> String {
        "cap.*".to_string()
    }

    /// `cap.<capability>.<pool>`: one pool's offer of a capability, for
    /// capabilities several pools serve (`cap.<capability>` names the first).
    pub fn cap_pool_key(&self, capability: &str, pool: &str) -> String {
        format!("cap.{capability}.{pool}")
    }

    /// Every registry key: `cap.*` and `cap.*.*`.
    pub fn cap_keys_all(&self) -> String {
        "cap.>".to_string()
    }

    pub fn plan_key(&self, plan_id: &str) -> String {
        format!("plan.{plan_id}")
    }

    pub fn plan_key_all(&self) -> String {
        "plan.*".to_string()
    }

    pub fn task_key(&self, plan_id: &str, task_id: &str) -> String {
        format!("task.{plan_id}.{task_id}")
    }

    /// Every task result of one plan.
    pub fn task_key_plan(&self, plan_id: &str) -> String {
        format!("task.{plan_id}.*")
    }

    pub fn task_key_all(&self) -> String {
        "task.*.*".to_string()
    }

    /// Part `n` of a plan's result bundle, in `mesh_plans`.
    pub fn bundle_key(&self, plan_id: &str, part: u32) -> String {
        format!("bundle.{plan_id}.{part}")
    }

    /// `spend.<provider>.<YYYY-MM-DD>` in `mesh_plans`: what an LLM provider
    /// cost on one UTC day, for its daily budget.
    pub fn llm_spend_key(&self, provider: &str, day: &str) -> String {
        format!("spend.{provider}.{day}")
    }

    pub fn report_key(&self, plan_id: &str) -> String {
        format!("report.{plan_id}")
    }

    /// Message id for JetStream de-duplication of an event (one per kind and plan).
    pub fn event_msg_id(&self, kind: EventKind, plan_id: &str) -> String {
        format!("{}.{plan_id}", kind.as_str())
    }

    // --- the benchmark's baseline, which runs outside the mesh on purpose ---

    /// `BENCH_RAW`: the raw loop's stream (created and deleted by the bench).
    pub fn bench_raw_stream(&self) -> String {
        "BENCH_RAW".to_string()
    }

    pub fn bench_raw_subjects(&self) -> String {
        "bench.raw.>".to_string()
    }

    /// `bench.raw.<n>`: the raw loop's `n`th message.
    pub fn bench_raw_subject(&self, n: usize) -> String {
        format!("bench.raw.{n}")
    }

    /// `bench_raw`: the raw loop's bucket.
    pub fn bench_raw_bucket(&self) -> String {
        "bench_raw".to_string()
    }

    /// `bench.echo`: the core request/reply the latency baseline uses.
    pub fn bench_echo(&self) -> String {
        "bench.echo".to_string()
    }

    /// Message id for JetStream de-duplication of a dispatched task.
    pub fn dispatch_msg_id(&self, plan_id: &str, task_id: &str) -> String {
        format!("{plan_id}.{task_id}")
    }
}

/// Splits a result key `task.<plan_id>.<task_id>` into its ids.
pub fn parse_task_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("task.")?;
    let (plan, task) = rest.split_once('.')?;
    (!plan.is_empty() && !task.is_empty() && !task.contains('.')).then_some((plan, task))
}

/// Splits `cap.<capability>`.
pub fn parse_cap_key(key: &str) -> Option<&str> {
    key.strip_prefix("cap.")
        .filter(|c| !c.is_empty() && !c.contains('.'))
}

/// Splits `cap.<capability>.<pool>`.
pub fn parse_cap_pool_key(key: &str) -> Option<(&str, &str)> {
    let (cap, pool) = key.strip_prefix("cap.")?.split_once('.')?;
    (!cap.is_empty() && !pool.is_empty() && !pool.contains('.')).then_some((cap, pool))
}

/// Splits a worker heartbeat key `worker.<pool>.<instance>`.
pub fn parse_worker_health_key(key: &str) -> Option<(&str, &str)> {
    let (pool, instance) = key.strip_prefix("worker.")?.split_once('.')?;
    (!pool.is_empty() && !instance.is_empty() && !instance.contains('.'))
        .then_some((pool, instance))
}

/// Whether `key` is a router heartbeat key `router.<instance>`.
pub fn is_router_health_key(key: &str) -> bool {
    key.strip_prefix("router.")
        .is_some_and(|i| !i.is_empty() && !i.contains('.'))
}

/// Splits `status.<pool>` (a pool's status in `mesh_scale`).
pub fn parse_status_key(key: &str) -> Option<&str> {
    key.strip_prefix("status.")
        .filter(|p| !p.is_empty() && !p.contains('.'))
}

/// Splits `plan.<plan_id>`.
pub fn parse_plan_key(key: &str) -> Option<&str> {
    key.strip_prefix("plan.").filter(|p| !p.is_empty())
}

/// A mail thread inside an epic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Thread {
    /// The epic thread: progress, bead completions, blockers.
    Epic,
    /// A track's thread: bead context, learnings.
    Track(String),
    /// An agent's inbox.
    Inbox(String),
}

impl Thread {
    /// `epic`, `track.<track>`, `inbox.<agent>`.
    pub fn parse(s: &str) -> Option<Thread> {
        let valid = |t: &str| crate::ids::is_valid(t).then(|| t.to_string());
        match s.split_once('.') {
            None if s == "epic" => Some(Thread::Epic),
            Some(("track", t)) => valid(t).map(Thread::Track),
            Some(("inbox", a)) => valid(a).map(Thread::Inbox),
            _ => None,
        }
    }

    /// A full address `<epic>.<thread>` (`E1.track.2`), or an epic id alone
    /// for its epic thread.
    pub fn parse_address(s: &str) -> Option<(String, Thread)> {
        match s.split_once('.') {
            None => crate::ids::is_valid(s).then(|| (s.to_string(), Thread::Epic)),
            Some((epic, thread)) => {
                crate::ids::is_valid(epic).then_some(())?;
                Some((epic.to_string(), Thread::parse(thread)?))
            }
        }
    }
}

impl std::fmt::Display for Thread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Thread::Epic => f.write_str("epic"),
            Thread::Track(t) => write!(f, "track.{t}"),
            Thread::Inbox(a) => write!(f, "inbox.{a}"),
        }
    }
}

/// The last token of a subject (`mesh.evt.plan_ready.<plan_id>` → plan id).
pub fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names_match_protocol_v1() {
        let n = Names::default();
        assert_eq!(n.run("math", "sum"), "mesh.run.math.sum");
        assert_eq!(n.tasks("math", "sum"), "mesh.tasks.math.sum");
        assert_eq!(n.plans_submit(), "mesh.plans.submit");
        assert_eq!(n.plans_get("abc"), "mesh.plans.get.abc");
        assert_eq!(
            n.event(EventKind::AggregationReady, "abc"),
            "mesh.evt.aggregation_ready.abc"
        );
        assert_eq!(n.queue("math", Priority::High), "mesh.queue.math.high");
        assert_eq!(n.queues_stream(), "MESH_QUEUES");
        assert_eq!(n.pool_consumer("math"), "pool_math");
        assert_eq!(n.registry_bucket(), "mesh_registry");
        assert_eq!(n.results_bucket(), "mesh_results");
        assert_eq!(n.task_key("p", "t"), "task.p.t");
        assert_eq!(n.mail("E1", &Thread::Epic), "mesh.mail.E1.epic");
        assert_eq!(
            n.mail("E1", &Thread::Track("2".into())),
            "mesh.mail.E1.track.2"
        );
        assert_eq!(
            n.mail("E1", &Thread::Inbox("BlueLake".into())),
            "mesh.mail.E1.inbox.BlueLake"
        );
        assert_eq!(n.mail_stream(), "MESH_MAIL");
        assert_eq!(
            n.kv_subject("mesh_results", "task.p.t"),
            "$KV.mesh_results.task.p.t"
        );
    }

    #[test]
    fn prefix_changes_every_name() {
        let n = Names::new("edge");
        assert_eq!(n.run("math", "sum"), "edge.run.math.sum");
        assert_eq!(n.queues_stream(), "EDGE_QUEUES");
        assert_eq!(n.results_bucket(), "edge_results");
    }

    #[test]
    fn run_subjects_parse() {
        let n = Names::default();
        assert_eq!(n.cap_action_of("mesh.run.math.sum"), Some(("math", "sum")));
        assert_eq!(
            n.cap_action_of("mesh.tasks.date.today"),
            Some(("date", "today"))
        );
        assert_eq!(n.cap_action_of("mesh.run.math"), None);
        assert_eq!(n.cap_action_of("mesh.run.math.sum.x"), None);
        assert_eq!(n.cap_action_of("other.run.math.sum"), None);
    }

    #[test]
    fn mail_threads_parse() {
        let n = Names::default();
        assert_eq!(
            n.parse_mail_subject("mesh.mail.E1.track.2"),
            Some(("E1".into(), Thread::Track("2".into())))
        );
        assert_eq!(
            Thread::parse_address("E1"),
            Some(("E1".into(), Thread::Epic))
        );
        assert_eq!(
            Thread::parse_address("E1.inbox.Blue"),
            Some(("E1".into(), Thread::Inbox("Blue".into())))
        );
        assert_eq!(Thread::parse_address("E1.track"), None);
        assert_eq!(Thread::parse_address("E1.other.x"), None);
        assert_eq!(Thread::parse_address("E 1"), None);
        assert_eq!(n.parse_mail_subject("mesh.mail.E1.nope"), None);
    }

    #[test]
    fn task_keys_parse() {
        assert_eq!(parse_task_key("task.p1.t1"), Some(("p1", "t1")));
        assert_eq!(parse_task_key("task.p1"), None);
        assert_eq!(parse_task_key("plan.p1"), None);
        assert_eq!(parse_task_key("task.p1.t1.x"), None);
        assert_eq!(parse_plan_key("plan.p1"), Some("p1"));
    }
}
