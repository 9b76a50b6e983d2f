//! The people CLI: `submit`, `status`, `caps`, `run`. Each is a thin client of
//! the public protocol, exactly what a `nats` CLI user could do by hand.

use anyhow::{Context, Result, bail};
use comfy_table::{ContentArrangement, Table};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::names::EventKind;
use jetmesh_shared::provision::{self, Mode, Status};
use jetmesh_shared::wire::{
    self, PlanView, PoolStatus, Report, SubmitReply, SubmitRequest, TaskResult, WorkerHeartbeat,
};
use jetmesh_shared::{Config, Identity, Mesh, Role, ids, mesh, registry};
use serde_json::{Map, Value};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The plan file (JSON, YAML, or an execution-plan.md), or - for stdin.
    pub file: PathBuf,
    /// Follow progress and print the final report.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    Ls {
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show one dead letter: its reason, ids and original body.
    Show { id: u64 },
    /// Put a dead letter's task back on its queue (after fixing the cause).
    Replay { id: u64 },
    /// Remove every dead letter.
    Purge,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ObjCommand {
    /// Fetch an object (a screenshot, a page dump) by its key, checked
    /// against its SHA-256; to a file with -o, else to standard output.
    Get {
        /// The key from the result's reference (`<plan>/<task>/<name>`).
        key: String,
        /// Write here instead of to standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// List objects: key, size, media type, time.
    Ls {
        /// Only keys that start with this (a plan id, `<plan>/<task>`).
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    pub capability: String,
    pub action: String,
    /// Positional arguments; each is read as JSON when it parses, else as a string.
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// A named parameter, `key=value` (value read like an argument). Repeatable.
    #[arg(long = "param", short = 'p')]
    pub params: Vec<String>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print the whole result object.
    #[arg(long)]
    pub json: bool,
}

/// A plain connection for a command that only makes requests.
pub(crate) async fn client(config: &Config) -> Result<async_nats::Client> {
    Ok(mesh::connect(&config.nats, &Identity::from("cli")).await?.0)
}

/// The mesh as it is on the server, for a command: nothing is created or
/// changed ([`Mode::Existing`]); a server without the mesh is an error that
/// says so.
pub(crate) async fn open(config: Config) -> Result<Mesh> {
    Ok(Mesh::open(config, Identity::from("cli"), Mode::Existing).await?)
}

/// A table for people: no borders, a header, columns as wide as they need.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

fn json_or_string(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub async fn run(config: Config, args: RunArgs) -> Result<i32> {
    ids::validate("capability", &args.capability)?;
    ids::validate("action", &args.action)?;
    let mut body = Map::new();
    if !args.args.is_empty() {
        body.insert(
            "args".into(),
            Value::Array(args.args.iter().map(|a| json_or_string(a)).collect()),
        );
    }
    for p in &args.params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param {p:?} must be key=value");
        };
        body.insert(k.to_string(), json_or_string(v));
    }
    let client = client(&config).await?;
    let names = config.names();
    let reply = client
        .send_request(
            names.run(&args.capability, &args.action),
            async_nats::Request::new()
                .payload(codec::to_json(&body)?)
                .timeout(Some(Duration::from_secs(args.timeout))),
        )
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!("no router is running"),
            _ => anyhow::anyhow!("mesh.run failed: {e}"),
        })?;
    let value: Value = codec::from_json(&reply.payload)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    let result: TaskResult = serde_json::from_value(value)?;
    if result.is_success() {
        if !args.json {
            let out = result.output.unwrap_or(Value::Null);
            match out {
                Value::String(s) => println!("{s}"),
                other => println!("{}", serde_json::to_string_pretty(&other)?),
            }
        }
        Ok(0)
    } else {
        if !args.json
            && let Some(e) = result.error
        {
            eprintln!("error: {}: {}", e.code, e.message);
        }
        Ok(1)
    }
}

pub async fn caps(config: Config, actions: bool, json: bool) -> Result<i32> {
    let mesh = open(config).await?;
    let (caps, invalid) = registry::list(&mesh).await?;
    if json {
        let invalid: Vec<&jetmesh_shared::Error> = invalid.iter().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"capabilities": caps, "invalid": invalid})
            )?
        );
        return Ok(0);
    }
    if caps.is_empty() {
        println!("No capability is registered. Start a pool: jetmesh worker --pool math");
    } else if actions {
        let mut t = table(&[
            "CAPABILITY",
            "ACTION",
            "DESCRIPTION",
            "PARAMETERS (* required)",
        ]);
        let mut seen = std::collections::BTreeSet::new();
        for c in &caps {
            // One row per action of each capability, from its first pool.
            if !seen.insert(&c.capability) {
                continue;
            }
            for a in &c.actions {
                let schema = c.schemas.get(a);
                let description = schema.and_then(|s| s.description.clone());
                let params = schema
                    .and_then(|s| s.params.as_ref())
                    .map(describe_params)
                    .unwrap_or_else(|| "(no schema: any)".into());
                t.add_row(vec![
                    c.capability.clone(),
                    a.clone(),
                    description.unwrap_or_default(),
                    params,
                ]);
            }
        }
        println!("{t}");
    } else {
        let mut t = table(&["CAPABILITY", "POOL", "ENCODING", "ACTIONS"]);
        for c in caps {
            let enc = if c.encoding == Encoding::Json {
                "json"
            } else {
                "msgpack"
            };
            t.add_row(vec![c.capability, c.pool, enc.into(), c.actions.join(", ")]);
        }
        println!("{t}");
    }
    for e in &invalid {
        println!("ignored: {}", e.message);
    }
    Ok(0)
}

/// The parameters a schema describes, one line each: `name* type: what`.
fn describe_params(schema: &serde_json::Value) -> String {
    use serde_json::Value;
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return "(any)".into();
    };
    if props.is_empty() {
        return "(none)".into();
    }
    let kind = |p: &Value| -> String {
        let t = match p.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect::<Vec<_>>()
                .join("|"),
            _ => match p.get("enum").and_then(Value::as_array) {
                Some(e) => e
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
                None => "any".into(),
            },
        };
        match p
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            Some(item) if t == "array" => format!("array of {item}"),
            _ => t,
        }
    };
    props
        .iter()
        .map(|(name, p)| {
            let star = if required.contains(&name.as_str()) {
                "*"
            } else {
                ""
            };
            match p.get("description").and_then(Value::as_str) {
                Some(d) => format!("{name}{star} {}: {d}", kind(p)),
                None => format!("{name}{star} {}", kind(p)),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `jetmesh obj get|ls`.
pub async fn obj(config: Config, command: ObjCommand) -> Result<i32> {
    use futures::StreamExt;
    use std::io::Write;
    let mesh = open(config).await?;
    match command {
        ObjCommand::Get { key, output } => {
            let (reference, bytes) = jetmesh_shared::objects::get(&mesh, &key).await?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &bytes)?;
                    eprintln!(
                        "{} bytes ({}), sha256 {} → {}",
                        reference.size,
                        reference.content_type.as_deref().unwrap_or("unknown type"),
                        reference.sha256,
                        path.display()
                    );
                }
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
        ObjCommand::Ls { prefix, json } => {
            let mut list = mesh
                .objects
                .list()
                .await
                .map_err(|e| jetmesh_shared::Error::unavailable("cannot list objects", e))?;
            let mut rows = Vec::new();
            while let Some(info) = list.next().await {
                let info =
                    info.map_err(|e| jetmesh_shared::Error::unavailable("cannot list objects", e))?;
                if info.deleted || prefix.as_deref().is_some_and(|p| !info.name.starts_with(p)) {
                    continue;
                }
                rows.push(info);
            }
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                let out: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "key": i.name, "size": i.size,
                            "content_type": i.metadata.get("content_type"),
                            "sha256": i.metadata.get("sha256"),
                            "modified": i.modified.map(|m| m.to_string()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if rows.is_empty() {
                println!("No objects.");
            } else {
                let mut t = table(&["KEY", "SIZE", "TYPE", "MODIFIED"]);
                for i in rows {
                    t.add_row(vec![
                        i.name.clone(),
                        i.size.to_string(),
                        i.metadata.get("content_type").cloned().unwrap_or_default(),
                        i.modified.map(|m| m.to_string()).unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(0)
}

/// The pool table, once or every `watch` seconds.
pub async fn pools(config: Config, watch: Option<u64>, json: bool) -> Result<i32> {
    let mesh = open(config).await?;
    loop {
        let statuses = pool_statuses(&mesh).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&statuses)?);
        } else {
            if watch.is_some() {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[2J\x1b[H");
                println!(
                    "jetmesh pools, every {} s (Ctrl-C stops)\n",
                    watch.unwrap_or(2)
                );
            }
            print!("{}", pools_table(&statuses));
        }
        let Some(every) = watch else { return Ok(0) };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
        }
    }
}

/// Every pool's status from `mesh_scale`, by pool name.
pub async fn pool_statuses(mesh: &Mesh) -> Result<Vec<PoolStatus>> {
    let mut out: Vec<PoolStatus> = mesh
        .scan(&mesh.scale, &mesh.names.status_all())
        .await?
        .iter()
        .filter_map(|e| codec::from_json(&e.value).ok())
        .collect();
    out.sort_by(|a, b| a.pool.cmp(&b.pool));
    Ok(out)
}

/// The seed's "Current State" table, with busy slots, held tasks and the
/// oldest wait added.
pub fn pools_table(statuses: &[PoolStatus]) -> String {
    if statuses.is_empty() {
        return "No pool status yet: the autoscaler writes it every second \
                (is one running? jetmesh autoscaler, or jetmesh up).\n"
            .into();
    }
    let mut t = table(&[
        "POOL", "MIN", "MAX", "CURRENT", "BUSY", "QUEUE", "HELD", "OLDEST", "ACTION",
    ]);
    for s in statuses {
        let stale = jiff::Timestamp::now().duration_since(s.at).as_secs_f64() > 10.0;
        let mut action = s.action.to_uppercase();
        if s.overloaded {
            action.push_str(", OVERLOADED");
        }
        if s.refusing {
            action.push_str(", REFUSING NEW WORK");
        }
        if stale {
            action = format!(
                "(status {} s old)",
                s.at.duration_until(jiff::Timestamp::now()).as_secs()
            );
        }
        let oldest = s
            .oldest_wait_ms
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        t.add_row(vec![
            s.pool.clone(),
            s.min.to_string(),
            s.max.to_string(),
            s.workers.to_string(),
            s.busy.to_string(),
            s.queue_depth.to_string(),
            s.held.to_string(),
            oldest,
            action,
        ]);
    }
    for c in 1..8 {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    format!("{t}\n")
}

/// `jetmesh init`: how the server's streams and buckets compare with this
/// config, and, with `apply`, making them so.
pub async fn init(config: Config, apply: bool, json: bool) -> Result<i32> {
    let (client, _) = mesh::connect(&config.nats, &Identity::from("init")).await?;
    let js = async_nats::jetstream::new(client);
    let drift = provision::inspect(&js, &config).await?;
    let pending = drift.iter().filter(|d| d.status != Status::Same).count();
    if apply && pending > 0 {
        provision::provision(&js, &config, Mode::Apply).await?;
    }
    if json {
        let rows: Vec<Value> = drift
            .iter()
            .map(|d| {
                let (status, fields) = match &d.status {
                    Status::Same => ("same", vec![]),
                    Status::Missing => ("missing", vec![]),
                    Status::Differs(f) => ("differs", f.clone()),
                };
                serde_json::json!({
                    "kind": d.desired.kind(),
                    "name": d.desired.name(),
                    "status": status,
                    "differences": fields.iter().map(|f| serde_json::json!({
                        "field": f.field, "server": f.existing, "config": f.desired,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"applied": apply && pending > 0, "resources": rows})
            )?
        );
    } else {
        let mut t = table(&["KIND", "NAME", "STATUS", "FIELD", "SERVER", "CONFIG"]);
        for d in &drift {
            let (kind, name) = (d.desired.kind().to_string(), d.desired.name().to_string());
            match &d.status {
                Status::Same => t.add_row(vec![kind, name, "as configured".into()]),
                Status::Missing => t.add_row(vec![
                    kind,
                    name,
                    if apply { "created" } else { "missing" }.into(),
                ]),
                Status::Differs(fields) => {
                    for (i, f) in fields.iter().enumerate() {
                        let (k, n, st) = if i == 0 {
                            (
                                kind.clone(),
                                name.clone(),
                                if apply { "updated" } else { "differs" },
                            )
                        } else {
                            (String::new(), String::new(), "")
                        };
                        t.add_row(vec![
                            k,
                            n,
                            st.into(),
                            f.field.into(),
                            f.existing.clone(),
                            f.desired.clone(),
                        ]);
                    }
                    &mut t
                }
            };
        }
        println!("{t}");
        match (pending, apply) {
            (0, _) => println!("Nothing to change."),
            (n, true) => println!("{n} changed."),
            (n, false) => println!("{n} to change; run `jetmesh init --apply` to change them."),
        }
    }
    Ok(if pending > 0 && !apply { 2 } else { 0 })
}

/// Who holds each leader lease, and what the registry holds.
pub async fn mesh_status(config: Config, json: bool) -> Result<i32> {
    let mesh = open(config).await?;
    let chief = jetmesh_shared::lease::holder(&mesh, Role::Chief).await?;
    let autoscaler = jetmesh_shared::lease::holder(&mesh, Role::Autoscaler).await?;
    let (caps, _) = registry::list(&mesh).await?;
    let mut workers: Vec<WorkerHeartbeat> = mesh
        .scan(&mesh.health, &mesh.names.worker_health_all())
        .await?
        .iter()
        .filter_map(|e| codec::from_json(&e.value).ok())
        .collect();
    workers.sort_by(|a, b| (&a.pool, &a.instance).cmp(&(&b.pool, &b.instance)));
    if json {
        let v = serde_json::json!({
            "leaders": {"chief": chief, "autoscaler": autoscaler},
            "capabilities": caps,
            "workers": workers,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    for (role, lease) in [("chief", chief), ("autoscaler", autoscaler)] {
        match lease {
            Some(l) => println!(
                "{role}: {} leads (term {}, since {}, renewed {})",
                l.holder, l.term, l.acquired_at, l.renewed_at
            ),
            None => println!("{role}: no leader (none running, or the lease just expired)"),
        }
    }
    if workers.is_empty() {
        println!("workers: none heartbeating");
    }
    for w in &workers {
        let age = jiff::Timestamp::now().duration_since(w.at).as_millis();
        println!(
            "worker {} (pool {}, pid {}): {}/{} slots busy, last heartbeat {age} ms ago",
            w.instance,
            w.pool,
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            w.busy,
            w.slots
        );
    }
    let names: Vec<&str> = caps.iter().map(|c| c.capability.as_str()).collect();
    println!(
        "capabilities: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    );
    Ok(0)
}

pub async fn status(config: Config, plan_id: &str, json: bool) -> Result<i32> {
    ids::validate("plan id", plan_id)?;
    let client = client(&config).await?;
    let reply = client
        .request(config.names().plans_get(plan_id), "".into())
        .await
        .context("mesh.plans.get failed (is a chief running?)")?;
    let view: PlanView = wire::decode_reply(Encoding::Json, &reply.payload)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(0);
    }
    println!(
        "plan {}: {} — {} tasks, {} completed, {} failed, {} pending",
        view.plan_id,
        view.status.as_str(),
        view.total_tasks,
        view.completed,
        view.failed,
        view.pending
    );
    if let Some(n) = view.report.as_ref().and_then(|r| r.narrative.as_ref()) {
        println!("\n{n}\n");
    }
    let mut t = table(&["TASK", "STATUS", "RESULT"]);
    for (id, v) in &view.tasks {
        let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
        let detail = match (v.get("output"), v.get("error")) {
            (Some(Value::String(s)), _) => s.clone(),
            (Some(o), _) => o.to_string(),
            (_, Some(e)) => format!(
                "{}: {}",
                e.get("code").and_then(Value::as_str).unwrap_or(""),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ),
            _ => String::new(),
        };
        t.add_row(vec![id.clone(), status.to_string(), detail]);
    }
    println!("{t}");
    if let Some(usage) = &view.llm {
        print_llm(usage);
    }
    Ok(0)
}

/// The LLM calls of a plan: one row per call (skips included), then totals.
fn print_llm(usage: &wire::LlmUsage) {
    let mut t = table(&[
        "LLM", "MODEL", "PURPOSE", "OUTCOME", "IN", "OUT", "MS", "COST $",
    ]);
    for c in &usage.calls {
        t.add_row(vec![
            c.provider.clone(),
            c.model.clone(),
            c.purpose.clone(),
            c.outcome.clone(),
            c.input_tokens.to_string(),
            c.output_tokens.to_string(),
            c.latency_ms.to_string(),
            format!("{:.6}", c.cost_usd),
        ]);
    }
    println!("{t}");
    println!(
        "LLM total: {} input + {} output tokens, ${:.6}",
        usage.input_tokens, usage.output_tokens, usage.cost_usd
    );
}

/// `jetmesh plan goal`: a dry run of the goal; prints the plan and what
/// planning cost. Exit 1 with the mesh's error (and, for
/// `planning_failed`, the model's last answer and the errors).
pub async fn plan_goal(config: Config, goal: String, json: bool) -> Result<i32> {
    let timeout = Duration::from_millis(config.planner.timeout_ms + 10_000);
    let client = client(&config).await?;
    let request = serde_json::json!({"goal": goal, "dry_run": true});
    let reply = client
        .send_request(
            config.names().plans_submit(),
            async_nats::Request::new()
                .payload(serde_json::to_vec(&request)?.into())
                .timeout(Some(timeout)),
        )
        .await
        .context("mesh.plans.submit failed (is a chief running?)")?;
    let body: Value = serde_json::from_slice(&reply.payload)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    let planned: wire::DryRunReply = match wire::decode_reply(Encoding::Json, &reply.payload) {
        Ok(r) => r,
        Err(e) => {
            if !json {
                eprintln!("error: {}: {}", e.code, e.message);
                if let Some(d) = body.get("error").and_then(|e| e.get("details")) {
                    eprintln!("{}", serde_json::to_string_pretty(d)?);
                }
            }
            return Ok(1);
        }
    };
    if json {
        return Ok(0);
    }
    println!(
        "plan {} ({} tasks, not run):",
        planned.plan_id,
        planned.plan.subtasks.len()
    );
    let mut t = table(&["TASK", "CAPABILITY", "ACTION", "DEPENDS ON", "PARAMETERS"]);
    for s in &planned.plan.subtasks {
        t.add_row(vec![
            s.id.clone(),
            s.capability.clone(),
            s.action.clone(),
            s.depends_on.join(", "),
            Value::Object(s.params.clone()).to_string(),
        ]);
    }
    println!("{t}");
    if let Some(usage) = &planned.llm {
        print_llm(usage);
    }
    Ok(0)
}

/// Submits `request` with `"wait": true` and returns the final report (or the
/// mesh's error), waiting at most `timeout`.
pub async fn submit_and_wait(
    mesh: &Mesh,
    mut request: SubmitRequest,
    timeout: Duration,
) -> Result<Report> {
    request.wait = true;
    request.wait_timeout_ms = Some(timeout.as_millis() as u64);
    let reply = mesh
        .client
        .send_request(
            mesh.names.plans_submit(),
            async_nats::Request::new()
                .payload(codec::to_json(&request)?)
                .timeout(Some(timeout + Duration::from_secs(1))),
        )
        .await
        .context("mesh.plans.submit failed (is a chief running?)")?;
    Ok(wire::decode_reply(Encoding::Json, &reply.payload)?)
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<i32> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    // JSON, YAML, or an execution plan in markdown (checked here first).
    let mut request: SubmitRequest =
        jetmesh_coord::epic::parse_submission(&text, None).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid plan: {}: {}",
                args.file.display(),
                e.code,
                e.message
            )
        })?;
    if request.plan.plan_id.is_empty() {
        request.plan.plan_id = ids::generate();
    }
    ids::validate("plan id", &request.plan.plan_id)?;
    request.wait = false;
    let plan_id = request.plan.plan_id.clone();
    let mesh = open(config).await?;

    // Subscribe to the report and the results before submitting.
    let mut report_sub = mesh
        .client
        .subscribe(mesh.names.event(EventKind::FinalReport, &plan_id))
        .await?;
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let following = jetmesh_shared::CancellationToken::new();
    let _stop_following = following.clone().drop_guard();
    jetmesh_shared::follow::follow(
        mesh.results.clone(),
        mesh.names.task_key_plan(&plan_id),
        following,
        move |c| {
            if let jetmesh_shared::follow::Change::Put(_) = c {
                let _ = tx.send(());
            }
        },
    )
    .await?;
    // A goal is planned by a model first, which takes its time.
    let timeout = if request.plan.subtasks.is_empty() {
        Duration::from_millis(mesh.config.planner.timeout_ms + 10_000)
    } else {
        Duration::from_secs(10)
    };
    let reply = mesh
        .client
        .send_request(
            mesh.names.plans_submit(),
            async_nats::Request::new()
                .payload(codec::to_json(&request)?)
                .timeout(Some(timeout)),
        )
        .await
        .context("mesh.plans.submit failed (is a chief running?)")?;
    let accepted: SubmitReply = match wire::decode_reply(Encoding::Json, &reply.payload) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {}", e.code, e.message);
            return Ok(1);
        }
    };
    if !args.wait {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
        } else {
            println!("{}", accepted.plan_id);
        }
        return Ok(0);
    }
    let bar = ProgressBar::new(accepted.total_tasks as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} tasks {msg}")
            .expect("template"),
    );
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout));
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let report: Report = loop {
        tokio::select! {
            _ = &mut deadline => {
                bar.abandon_with_message("timed out");
                eprintln!("error: timeout: plan {plan_id} is still running; see `jetmesh status {plan_id}`");
                return Ok(1);
            }
            Some(()) = progress.recv() => bar.inc(1),
            Some(msg) = report_sub.next() => break codec::from_json(&msg.payload)?,
            _ = poll.tick() => {
                // In case the event was missed (reconnect): the stored report.
                if let Some(r) = mesh.get_json::<Report>(&mesh.results, &mesh.names.report_key(&plan_id)).await? {
                    break r;
                }
            }
        }
    };
    bar.set_position(report.total_tasks as u64);
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.markdown);
    }
    Ok(if report.failed == 0 { 0 } else { 2 })
}

pub async fn dlq(config: Config, command: DlqCommand) -> Result<i32> {
    use jetmesh_shared::dlq;
    let mesh = open(config).await?;
    match command {
        DlqCommand::Ls { json, limit } => {
            let entries = dlq::list(&mesh, limit).await?;
            if json {
                let v: Vec<Value> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if entries.is_empty() {
                println!("No dead letters.");
            } else {
                let mut t = table(&["ID", "AT", "POOL", "REASON", "ATTEMPTS", "TASK"]);
                for e in &entries {
                    let task = match (&e.letter.plan_id, &e.letter.task_id) {
                        (Some(p), Some(t)) => format!("{p}.{t}"),
                        _ => "-".into(),
                    };
                    let at = e.at.strftime("%Y-%m-%d %H:%M:%S").to_string();
                    t.add_row(vec![
                        e.seq.to_string(),
                        at,
                        e.letter.pool.clone(),
                        e.letter.reason.clone(),
                        e.letter.attempts.to_string(),
                        task,
                    ]);
                }
                println!("{t}");
            }
        }
        DlqCommand::Show { id } => {
            let e = dlq::get(&mesh, id).await?;
            println!("{}", serde_json::to_string_pretty(&entry_json(&e))?);
        }
        DlqCommand::Replay { id } => {
            dlq::replay(&mesh, id).await?;
            println!("Dead letter {id} is back on its queue.");
        }
        DlqCommand::Purge => {
            let n = dlq::purge(&mesh).await?;
            println!("Removed {n} dead letters.");
        }
    }
    Ok(0)
}

fn entry_json(e: &jetmesh_shared::dlq::Entry) -> Value {
    let body = match std::str::from_utf8(&e.body) {
        Ok(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
        Err(_) => Value::String(format!(
            "<{} bytes of {}>",
            e.body.len(),
            e.content_type.as_deref().unwrap_or("binary")
        )),
    };
    serde_json::json!({
        "id": e.seq,
        "at": e.at.to_string(),
        "reason": e.letter.reason,
        "detail": e.letter.detail,
        "pool": e.letter.pool,
        "subject": e.letter.subject,
        "attempts": e.letter.attempts,
        "plan_id": e.letter.plan_id,
        "task_id": e.letter.task_id,
        "content_type": e.content_type,
        "body": body,
    })
}
