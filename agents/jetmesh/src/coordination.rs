//! The CLI for epics: `jetmesh plan check`, `jetmesh epic status`,
//! `jetmesh mail send|reply|tail|inbox|ack`, `jetmesh reserve|release`.
//! Writes go through the chief's endpoints (`mesh.mailbox.*`,
//! `mesh.coord.*`), which check them; reads come straight from the stream
//! and the buckets.

use anyhow::{Context, Result};
use futures::StreamExt;
use jetmesh_coord::mail;
use jetmesh_coord::wire::{
    Claim, Decision, DecisionAction, Importance, Mail, MailAck, MailDraft, MailKind, MailReply,
    MailSent, ReleaseRequest, Reservation, ReserveRequest,
};
use jetmesh_coord::{epic, state};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::names::Thread;
use jetmesh_shared::wire::{self, PlanView};
use jetmesh_shared::{Config, Mesh};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PlanCommand {
    /// Check an execution plan (markdown execution-plan.md, YAML or JSON) and
    /// print what was understood; exits 1 with the error (and its line) if
    /// it is not valid.
    Check {
        file: PathBuf,
        /// Print the epic as JSON (the form `mesh.plans.submit` takes).
        #[arg(long)]
        json: bool,
    },
    /// Plan a goal with the LLM planner and show the plan, without running
    /// it (a dry run): `jetmesh plan goal "sum 1 to 10, then ..."`.
    Goal {
        goal: String,
        /// Print the reply as JSON (the plan in the form `jetmesh submit` takes).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum EpicCommand {
    /// Tracks, beads, claims, reservations, paused tracks and blockers.
    Status {
        epic: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MailCommand {
    /// Send a message to a thread: `E1` (the epic thread), `E1.track.2`, `E1.inbox.BlueLake`.
    Send {
        thread: String,
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "")]
        subject: String,
        /// Markdown; `-` reads it from stdin.
        #[arg(long, default_value = "")]
        body: String,
        /// note, progress, context, learning, …
        #[arg(long, default_value = "note")]
        kind: String,
        /// low, normal, high, urgent.
        #[arg(long, default_value = "normal")]
        importance: String,
        /// Agents it is for (repeat).
        #[arg(long)]
        to: Vec<String>,
        #[arg(long)]
        ack_required: bool,
    },
    /// Reply to message N on its own thread; with --decision, answer a blocker.
    Reply {
        seq: u64,
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "")]
        body: String,
        /// retry, reassign, skip or abort.
        #[arg(long)]
        decision: Option<String>,
        /// Guidance for the agent (with --decision retry).
        #[arg(long)]
        note: Option<String>,
        /// Widen the track's scope by this glob (repeat).
        #[arg(long)]
        grant: Vec<String>,
    },
    /// Print a thread; --follow keeps printing new messages.
    Tail {
        thread: String,
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// An agent's inbox across epics, with what still needs its ack.
    Inbox {
        agent: String,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge message N as AGENT.
    Ack {
        seq: u64,
        #[arg(long)]
        agent: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReserveArgs {
    pub epic: String,
    /// Who holds it: a track's agent (bounded by its scope) or `operator`.
    #[arg(long)]
    pub agent: String,
    /// The track whose scope bounds it (default: the agent's).
    #[arg(long)]
    pub track: Option<String>,
    /// Globs to reserve.
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Shared instead of exclusive.
    #[arg(long)]
    pub shared: bool,
    /// Renew this reservation (same id) instead of making a new one.
    #[arg(long)]
    pub id: Option<String>,
}

fn read_text(file: &PathBuf) -> Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

pub async fn plan(config: jetmesh_shared::Config, cmd: PlanCommand) -> Result<i32> {
    let (file, json) = match cmd {
        PlanCommand::Check { file, json } => (file, json),
        PlanCommand::Goal { goal, json } => {
            return crate::client::plan_goal(config, goal, json).await;
        }
    };
    let text = read_text(&file)?;
    let ct = match file.extension().and_then(|e| e.to_str()) {
        Some("md") | Some("markdown") => Some("text/markdown"),
        Some("yaml") | Some("yml") => Some("application/yaml"),
        Some("json") => Some("application/json"),
        _ => None,
    };
    match epic::parse_any(&text, ct) {
        Ok(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"epic": e}))?
                );
            } else {
                print!("{}", epic::describe(&e));
                println!(
                    "\nOK: {} tracks, {} beads.",
                    e.tracks.len(),
                    e.tracks.iter().map(|t| t.beads.len()).sum::<usize>()
                );
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {}: {}: {}", file.display(), e.code, e.message);
            Ok(1)
        }
    }
}

/// A request to a chief endpoint, decoded as `T` or an error (exit 1).
async fn call<B: Serialize, T: DeserializeOwned>(
    mesh: &Mesh,
    subject: String,
    body: &B,
) -> Result<std::result::Result<T, jetmesh_shared::Error>> {
    let reply = mesh
        .client
        .request(subject.clone(), codec::to_json(body)?)
        .await
        .with_context(|| format!("{subject} failed (is a chief running?)"))?;
    Ok(wire::decode_reply(Encoding::Json, &reply.payload))
}

fn parse_enum<T: DeserializeOwned>(what: &str, v: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| anyhow::anyhow!("unknown {what} {v:?}"))
}

fn report<T>(r: std::result::Result<T, jetmesh_shared::Error>, ok: impl FnOnce(T)) -> i32 {
    match r {
        Ok(v) => {
            ok(v);
            0
        }
        Err(e) => {
            eprintln!("error: {}: {}", e.code, e.message);
            1
        }
    }
}

pub async fn mail_cmd(config: Config, cmd: MailCommand) -> Result<i32> {
    let mesh = crate::client::open(config).await?;
    match cmd {
        MailCommand::Send {
            thread,
            from,
            subject,
            body,
            kind,
            importance,
            to,
            ack_required,
        } => {
            let body = if body == "-" {
                read_text(&PathBuf::from("-"))?
            } else {
                body
            };
            let draft = MailDraft {
                thread,
                from,
                to,
                kind: parse_enum::<MailKind>("kind", &kind)?,
                subject,
                body,
                importance: parse_enum::<Importance>("importance", &importance)?,
                ack_required,
                ..Default::default()
            };
            let r: std::result::Result<MailSent, _> =
                call(&mesh, mesh.names.mailbox("send"), &draft).await?;
            Ok(report(r, |s| println!("sent #{} to {}", s.seq, s.subject)))
        }
        MailCommand::Reply {
            seq,
            from,
            body,
            decision,
            note,
            grant,
        } => {
            let mut reply = MailReply {
                reply_to: seq,
                from,
                body,
                ..Default::default()
            };
            if let Some(d) = decision {
                let action: DecisionAction = parse_enum("decision", &d)?;
                let decision = Decision {
                    action,
                    note: note.clone(),
                    grant,
                };
                reply.kind = Some(MailKind::Decision);
                reply.subject = Some(format!("Decision on blocker {seq}: {d}"));
                if reply.body.is_empty() {
                    reply.body = note.unwrap_or_default();
                }
                reply.data = serde_json::to_value(decision).ok();
            }
            let r: std::result::Result<MailSent, _> =
                call(&mesh, mesh.names.mailbox("reply"), &reply).await?;
            Ok(report(r, |s| println!("sent #{} to {}", s.seq, s.subject)))
        }
        MailCommand::Ack { seq, agent } => {
            let r: std::result::Result<MailSent, _> =
                call(&mesh, mesh.names.mailbox("ack"), &MailAck { seq, agent }).await?;
            Ok(report(r, |s| println!("acked #{seq} (#{})", s.seq)))
        }
        MailCommand::Tail {
            thread,
            follow,
            json,
        } => {
            let Some((epic_id, t)) = Thread::parse_address(&thread) else {
                eprintln!(
                    "error: unknown_thread: {thread:?} is not a thread; write <epic>, <epic>.track.<track> or <epic>.inbox.<agent>"
                );
                return Ok(1);
            };
            let e = match state::load_epic(&mesh, &epic_id).await {
                Ok(e) => e,
                Err(err) => {
                    eprintln!("error: unknown_thread: {}", err.message);
                    return Ok(1);
                }
            };
            match &t {
                Thread::Track(x) if e.track(x).is_none() => {
                    eprintln!("error: unknown_thread: epic {epic_id} has no track {x}");
                    return Ok(1);
                }
                Thread::Inbox(a) if !mail::knows_agent(&e, a) => {
                    eprintln!("error: unknown_agent: epic {epic_id} has no agent {a}");
                    return Ok(1);
                }
                _ => {}
            }
            let filter = mesh.names.mail(&epic_id, &t);
            let history = mail::read(&mesh, &filter, None).await?;
            let last = history.last().and_then(|m| m.seq);
            for m in &history {
                print_mail(m, json)?;
            }
            if follow {
                let stream = mail::follow(&mesh, &filter, last.or(Some(0))).await?;
                let mut stream = std::pin::pin!(stream);
                let stop = jetmesh_shared::shutdown::on_signal();
                while let Some(Some(m)) = stop.run_until_cancelled(stream.next()).await {
                    print_mail(&m, json)?;
                }
            }
            Ok(0)
        }
        MailCommand::Inbox { agent, json } => {
            jetmesh_shared::ids::validate("agent", &agent)?;
            let inbox = mail::read(&mesh, &mesh.names.mail_inboxes(&agent), None).await?;
            for m in &inbox {
                let pending = m.ack_required
                    && !inbox
                        .iter()
                        .any(|a| a.kind == MailKind::Ack && a.reply_to == m.seq && a.from == agent);
                if json {
                    let mut v = serde_json::to_value(m)?;
                    v["needs_ack"] = serde_json::json!(pending);
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    print_mail(m, false)?;
                    if pending {
                        println!(
                            "     (needs your ack: jetmesh mail ack {} --agent {agent})",
                            m.seq.unwrap_or(0)
                        );
                    }
                }
            }
            if inbox.is_empty() && !json {
                println!("{agent}'s inbox is empty.");
            }
            Ok(0)
        }
    }
}

fn print_mail(m: &Mail, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(m)?);
        return Ok(());
    }
    let at = m.at.strftime("%Y-%m-%d %H:%M:%S");
    let kind = serde_json::to_value(m.kind)?
        .as_str()
        .unwrap_or("")
        .to_string();
    let flag = match m.importance {
        Importance::Urgent => " !!",
        Importance::High => " !",
        _ => "",
    };
    let re = m
        .reply_to
        .map(|r| format!(" (re #{r})"))
        .unwrap_or_default();
    println!(
        "#{:<5} {at}  {} → {}.{}  [{kind}]{flag}{re}  {}",
        m.seq.unwrap_or(0),
        m.from,
        m.epic,
        m.thread,
        m.subject
    );
    for line in m.body.lines() {
        println!("       {line}");
    }
    Ok(())
}

pub async fn epic_cmd(config: Config, cmd: EpicCommand) -> Result<i32> {
    let EpicCommand::Status { epic: id, json } = cmd;
    let mesh = crate::client::open(config).await?;
    let e = match state::load_epic(&mesh, &id).await {
        Ok(e) => e,
        Err(err) => {
            eprintln!("error: {}: {}", err.code, err.message);
            return Ok(1);
        }
    };
    let st = state::state(&mesh, &id).await?.map(|(s, _)| s);
    let reservations = state::reservations(&mesh, &id).await?;
    let mut claims: Vec<Claim> = Vec::new();
    for t in &e.tracks {
        for b in &t.beads {
            if let Some(c) = state::claim_of(&mesh, &id, &b.id).await? {
                claims.push(c);
            }
        }
    }
    let view: Option<PlanView> =
        call::<_, PlanView>(&mesh, mesh.names.plans_get(&id), &serde_json::json!({}))
            .await?
            .ok();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "epic": e, "state": st, "claims": claims, "reservations": reservations,
                "tasks": view.as_ref().map(|v| &v.tasks),
            }))?
        );
        return Ok(0);
    }
    println!(
        "Epic {}{}",
        e.id,
        e.title
            .as_deref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    );
    if let Some(s) = &st {
        println!("{}", if s.complete { "COMPLETE" } else { "running" });
    }
    for t in &e.tracks {
        let paused = st.as_ref().and_then(|s| s.paused.get(&t.id));
        println!(
            "\nTrack {} — {} ({}){}",
            t.id,
            t.agent,
            t.scope.join(", "),
            paused.map(|p| format!("  PAUSED: {p}")).unwrap_or_default()
        );
        let mut beads = crate::client::table(&["BEAD", "STATUS", "TITLE"]);
        for b in &t.beads {
            let status = view
                .as_ref()
                .and_then(|v| v.tasks.get(&b.id))
                .and_then(|r| r["status"].as_str())
                .unwrap_or("pending")
                .to_string();
            let claim = claims
                .iter()
                .find(|c| c.bead == b.id)
                .map(|c| format!("  claimed by {}", c.worker))
                .unwrap_or_default();
            beads.add_row(vec![
                b.id.clone(),
                status,
                format!("{}{claim}", b.title.as_deref().unwrap_or("")),
            ]);
        }
        println!("{beads}");
    }
    if !reservations.is_empty() {
        println!("\nReservations");
        let mut t = crate::client::table(&["ID", "AGENT", "MODE", "PATTERNS"]);
        for r in &reservations {
            t.add_row(vec![
                r.id.clone(),
                r.agent.clone(),
                if r.exclusive { "exclusive" } else { "shared" }.into(),
                r.patterns.join(", "),
            ]);
        }
        println!("{t}");
    }
    if let Some(s) = &st {
        let open: Vec<_> = s
            .blockers
            .iter()
            .filter(|(_, b)| b.decision.is_none())
            .collect();
        if !open.is_empty() {
            println!("\nOpen blockers");
            for (seq, b) in open {
                println!(
                    "  #{seq} {} {} {}",
                    b.bead,
                    b.kind.as_str(),
                    if b.escalated { "(escalated)" } else { "" }
                );
            }
        }
    }
    Ok(0)
}

pub async fn reserve(config: Config, args: ReserveArgs) -> Result<i32> {
    let mesh = crate::client::open(config).await?;
    let req = ReserveRequest {
        epic: args.epic,
        agent: args.agent,
        track: args.track,
        patterns: args.patterns,
        exclusive: !args.shared,
        id: args.id,
    };
    let r: std::result::Result<Reservation, _> =
        call(&mesh, mesh.names.coord("reserve"), &req).await?;
    Ok(report(r, |r| {
        println!(
            "reserved {} ({}) for {}; renew within {} s with --id {}",
            r.patterns.join(", "),
            if r.exclusive { "exclusive" } else { "shared" },
            r.agent,
            mesh.config.coord.lease_ttl_secs,
            r.id
        )
    }))
}

pub async fn release(config: Config, epic: String, id: String) -> Result<i32> {
    let mesh = crate::client::open(config).await?;
    let r: std::result::Result<serde_json::Value, _> = call(
        &mesh,
        mesh.names.coord("release"),
        &ReleaseRequest {
            epic,
            id: id.clone(),
        },
    )
    .await?;
    Ok(report(r, |_| println!("released {id}")))
}
