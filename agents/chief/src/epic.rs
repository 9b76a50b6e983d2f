//! The chief as the orchestrator of epics (seed 2).
//!
//! At submit it checks the execution plan and compiles it into `agent.bead`
//! tasks (the router then runs tracks in parallel and beads in order), creates
//! the epic's state, and opens the threads: a kickoff on the epic thread, each
//! track's bead context on its track thread, and an assignment in each
//! agent's inbox. While it leads it follows every epic thread:
//! - a bead completion: progress report; tracks whose cross-track dependency
//!   it was are told they can start;
//! - a blocker: which other tracks' scopes its files touch → those tracks are
//!   paused (they start no new bead) → a decision is posted as a reply
//!   (`retry` with guidance while the bead has retries left; otherwise the
//!   bead waits for a person, and the blocker is escalated after
//!   `coord.escalate_after_secs`);
//! - a decision by someone else: the blocker is settled, paused tracks resume.
//!
//! When the epic's final report is out it posts "EPIC COMPLETE" with a summary.

use async_nats::jetstream::kv;
use jetmesh_coord::epic::{self, Format};
use jetmesh_coord::globs::{self, Glob};
use jetmesh_coord::mail::{self, CHIEF, OPERATOR};
use jetmesh_coord::state;
use jetmesh_coord::wire::{
    Blocker, BlockerKind, BlockerState, Decision, DecisionAction, Epic, EpicState, Importance,
    Mail, MailKind,
};
use jetmesh_shared::codec;
use jetmesh_shared::consume::{self, Durable, Outcome};
use jetmesh_shared::lease::Lease;
use jetmesh_shared::names::Thread;
use jetmesh_shared::wire::{Alert, Plan, Report, SubmitRequest, TaskStatus};
use jetmesh_shared::{Error, ErrorCode, Mesh, Result};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Decodes a `mesh.plans.submit` body that is an execution plan written as
/// markdown or YAML (by `Content-Type`, or recognised by its content).
pub fn decode_text(msg: &async_nats::Message, max: usize) -> Result<SubmitRequest> {
    codec::check_size(msg.payload.len(), max)?;
    let ct = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(codec::CONTENT_TYPE))
        .map(|v| v.as_str().to_string());
    let text = std::str::from_utf8(&msg.payload).map_err(|_| {
        Error::bad_request(format!(
            "the body is neither JSON nor an execution plan in markdown or YAML (Content-Type {})",
            ct.as_deref().unwrap_or("none")
        ))
    })?;
    let yaml_named = ct.as_deref().is_some_and(|c| c.contains("yaml"));
    match epic::format_of(ct.as_deref(), text) {
        Format::Markdown => epic::parse_submission(text, ct.as_deref()),
        Format::Yaml if yaml_named || text.lines().any(|l| l.starts_with("epic:")) => {
            epic::parse_submission(text, ct.as_deref())
        }
        // Not a plan in any form: let the codec say what is wrong with it.
        _ => codec::decode_message(msg.headers.as_ref(), &msg.payload, max).map(|(r, _)| r),
    }
}

/// Checks the epic a plan carries and compiles its beads into subtasks.
pub fn prepare(plan: &mut Plan) -> Result<Epic> {
    let e = epic::of_plan(plan)?.ok_or_else(|| Error::internal("the plan has no epic"))?;
    epic::validate(&e)?;
    if !plan.subtasks.is_empty() {
        return Err(Error::bad_request(
            "an epic's tasks are its beads; send \"epic\" without \"subtasks\"",
        ));
    }
    if plan.plan_id.is_empty() {
        plan.plan_id = e.id.clone();
    } else if plan.plan_id != e.id {
        return Err(Error::bad_request(format!(
            "plan_id {} differs from the epic id {}; leave plan_id out",
            plan.plan_id, e.id
        )));
    }
    plan.subtasks = epic::compile(&e);
    Ok(e)
}

/// Creates the epic's state and opens its threads. Runs once the plan is
/// stored and before it is announced, so workers find both.
pub async fn start(mesh: &Mesh, e: &Epic) -> Result<()> {
    let st = EpicState {
        v: 1,
        epic: e.id.clone(),
        started_at: jiff::Timestamp::now(),
        ..Default::default()
    };
    match mesh
        .plans
        .create(mesh.names.epic_state_key(&e.id), codec::to_json(&st)?)
        .await
    {
        Ok(_) => {}
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(Error::unavailable("cannot store the epic state", err)),
    }
    let beads: usize = e.tracks.iter().map(|t| t.beads.len()).sum();
    let mut body = format!(
        "{}\n\n| Track | Agent | Beads | File scope |\n|---|---|---|---|\n",
        e.title.as_deref().unwrap_or("")
    );
    for t in &e.tracks {
        let ids: Vec<&str> = t.beads.iter().map(|b| b.id.as_str()).collect();
        body.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.id,
            t.agent,
            ids.join(" → "),
            t.scope.join(", ")
        ));
    }
    post(
        mesh,
        from_chief(
            &e.id,
            Thread::Epic,
            MailKind::Progress,
            format!(
                "Epic {} started: {} tracks, {beads} beads",
                e.id,
                e.tracks.len()
            ),
            body,
        ),
    )
    .await?;
    for t in &e.tracks {
        let mut ctx = format!(
            "Track {} is {}'s{}. File scope: {}.\n\n",
            t.id,
            t.agent,
            t.description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            t.scope.join(", ")
        );
        for b in &t.beads {
            ctx.push_str(&format!(
                "- {}: {}\n",
                b.id,
                b.title.as_deref().unwrap_or("")
            ));
            if let Some(d) = &b.description {
                ctx.push_str(&format!("  {}\n", d.replace('\n', "\n  ")));
            }
        }
        for d in e.dependencies.iter().filter(|d| {
            d.track.as_deref() == Some(t.id.as_str())
                || d.bead
                    .as_deref()
                    .is_some_and(|b| t.beads.iter().any(|x| x.id == b))
        }) {
            ctx.push_str(&format!(
                "\nWaits for {} ({}) before {}.\n",
                d.after,
                e.track_of(&d.after)
                    .map(|o| format!("track {}", o.id))
                    .unwrap_or_default(),
                d.bead.as_deref().unwrap_or("it starts")
            ));
        }
        post(
            mesh,
            from_chief(
                &e.id,
                Thread::Track(t.id.clone()),
                MailKind::Context,
                format!("Track {} context", t.id),
                ctx,
            ),
        )
        .await?;
        post(
            mesh,
            from_chief(&e.id, Thread::Inbox(t.agent.clone()),
                MailKind::Note,
                format!("{}: you have track {}", t.agent, t.id),
                format!(
                    "Work through {} in order, inside {}. Read the track thread {}.track.{} for context and learnings.",
                    t.beads
                        .iter()
                        .map(|b| b.id.as_str())
                        .collect::<Vec<_>>()
                        .join(" → "),
                    t.scope.join(", "),
                    e.id,
                    t.id
                ),
            ),
        )
        .await?;
    }
    Ok(())
}

/// A message from the chief on one of the epic's threads.
fn from_chief(
    epic: &str,
    thread: Thread,
    kind: MailKind,
    subject: impl Into<String>,
    body: impl Into<String>,
) -> Mail {
    Mail::new(epic, &thread, CHIEF, kind, subject, body)
}

async fn post(mesh: &Mesh, mail: Mail) -> Result<u64> {
    Ok(mail::post(mesh, &mail).await?.seq)
}

/// Follows every epic thread while this chief leads (durable consumer
/// `chief_mail`, in order: one message at a time).
pub async fn orchestrate(mesh: Mesh, lease: Lease, stop: CancellationToken) -> Result<()> {
    let escalations = tokio::spawn(escalate(mesh.clone(), lease.clone(), stop.clone()));
    let durable = Durable::new(
        &mesh,
        mesh.names.mail_stream(),
        mesh.names.chief_mail_consumer(),
        mesh.names.mail_epic_threads(),
    );
    let m = mesh.clone();
    let consumed = consume::durable(&mesh, durable, 1, &stop, move |msg| {
        let (mesh, lease) = (m.clone(), lease.clone());
        async move { on_epic_message(&mesh, &lease, &msg).await }
    })
    .await;
    let _ = escalations.await;
    consumed
}

async fn on_epic_message(
    mesh: &Mesh,
    lease: &Lease,
    msg: &async_nats::jetstream::Message,
) -> Outcome {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let Some((epic_id, _)) = mesh.names.parse_mail_subject(&msg.subject) else {
        return Outcome::Terminate("not an epic thread".into());
    };
    let Ok(mut m) = codec::from_json::<Mail>(&msg.payload) else {
        tracing::warn!(seq, "A message on an epic thread is not mail; skipped.");
        return Outcome::Terminate("not mail".into());
    };
    m.epic = epic_id;
    m.seq = Some(seq);
    match on_mail(mesh, lease, &m).await {
        Ok(()) => Outcome::Ack,
        Err(e) if e.code == ErrorCode::NotFound => Outcome::Ack,
        Err(error) => {
            tracing::warn!(%error, seq, "Cannot handle epic mail; it will be retried.");
            Outcome::Retry(Duration::from_secs(1))
        }
    }
}

async fn on_mail(mesh: &Mesh, lease: &Lease, m: &Mail) -> Result<()> {
    if m.from == CHIEF {
        return Ok(());
    }
    match m.kind {
        MailKind::BeadCompleted => bead_completed(mesh, lease, m).await,
        MailKind::Blocker => blocker(mesh, lease, m).await,
        MailKind::Decision => {
            let Some(seq) = m.reply_to else { return Ok(()) };
            let Some(d) = m.data_as::<Decision>() else {
                return Ok(());
            };
            settle(mesh, lease, &m.epic, seq, &d).await
        }
        _ => Ok(()),
    }
}

async fn bead_completed(mesh: &Mesh, lease: &Lease, m: &Mail) -> Result<()> {
    let Some(bead) = m
        .data
        .as_ref()
        .and_then(|d| d["bead"].as_str())
        .map(str::to_string)
    else {
        return Ok(());
    };
    let e = state::load_epic(mesh, &m.epic).await?;
    if e.bead(&bead).is_none() {
        return Ok(());
    }
    lease.fence()?;
    let mut newly = false;
    let st = state::update_state(mesh, &e.id, |s| {
        newly = s.done.insert(bead.clone());
        // The blocker of a bead that completed is over.
        let open: Vec<u64> = s
            .blockers
            .iter()
            .filter(|(_, b)| b.bead == bead && b.decision.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in &open {
            if let Some(b) = s.blockers.get_mut(k) {
                b.decision = Some(DecisionAction::Retry);
            }
        }
        resume_paused(s);
        newly || !open.is_empty()
    })
    .await?;
    if !newly {
        return Ok(());
    }
    // Progress report.
    let total: usize = e.tracks.iter().map(|t| t.beads.len()).sum();
    let mut body = String::new();
    for t in &e.tracks {
        let done = t.beads.iter().filter(|b| st.done.contains(&b.id)).count();
        body.push_str(&format!(
            "- Track {} ({}): {done}/{}{}\n",
            t.id,
            t.agent,
            t.beads.len(),
            if done == t.beads.len() { " done" } else { "" }
        ));
    }
    post(
        mesh,
        from_chief(
            &e.id,
            Thread::Epic,
            MailKind::Progress,
            format!(
                "Progress: {}/{total} beads done ({bead} just now)",
                st.done.len()
            ),
            body,
        )
        .reply_to(m.seq.unwrap_or(0)),
    )
    .await?;
    // Tracks waiting for this bead can go (the router releases their beads).
    for t in e.unblocked_by(&bead) {
        let text = format!("Track {} ({}) is unblocked: {bead} is done.", t.id, t.agent);
        post(
            mesh,
            from_chief(&e.id, Thread::Epic, MailKind::Progress, text.clone(), ""),
        )
        .await?;
        post(
            mesh,
            from_chief(
                &e.id,
                Thread::Track(t.id.clone()),
                MailKind::Context,
                text,
                format!(
                    "{bead} of track {} is done; your track starts now.",
                    e.track_of(&bead).map(|x| x.id.as_str()).unwrap_or("?")
                ),
            ),
        )
        .await?;
    }
    Ok(())
}

/// Unpauses tracks no open blocker holds.
fn resume_paused(s: &mut EpicState) {
    let held: std::collections::BTreeSet<String> = s
        .blockers
        .values()
        .filter(|b| b.decision.is_none())
        .flat_map(|b| b.paused.iter().cloned())
        .collect();
    s.paused.retain(|t, _| held.contains(t));
}

/// Other tracks whose scope contains one of `files`.
fn touched<'a>(e: &'a Epic, own: &str, files: &[String]) -> Vec<&'a jetmesh_coord::wire::Track> {
    e.tracks
        .iter()
        .filter(|t| t.id != own)
        .filter(|t| {
            let scope: Vec<Glob> = t.scope.iter().filter_map(|g| Glob::parse(g).ok()).collect();
            files.iter().any(|f| globs::any_matches(&scope, f))
        })
        .collect()
}

async fn blocker(mesh: &Mesh, lease: &Lease, m: &Mail) -> Result<()> {
    let Some(b) = m.data_as::<Blocker>() else {
        return Ok(());
    };
    let seq = m.seq.unwrap_or(0);
    let e = state::load_epic(mesh, &m.epic).await?;
    let Some((track, _)) = e.bead(&b.bead) else {
        return Ok(());
    };
    let hit = touched(&e, &track.id, &b.files);
    let paused: Vec<String> = hit.iter().map(|t| t.id.clone()).collect();
    lease.fence()?;
    let mut fresh = false;
    state::update_state(mesh, &e.id, |s| {
        if s.blockers.contains_key(&seq) {
            return false;
        }
        fresh = true;
        s.blockers.insert(
            seq,
            BlockerState {
                bead: b.bead.clone(),
                track: track.id.clone(),
                kind: b.kind,
                at: m.at,
                paused: paused.clone(),
                decision: None,
                escalated: false,
            },
        );
        for t in &paused {
            s.paused.insert(
                t.clone(),
                format!("blocker {seq} of {} touches its files", b.bead),
            );
        }
        true
    })
    .await?;
    if !fresh {
        return Ok(());
    }
    tracing::info!(epic = %e.id, bead = %b.bead, seq, kind = b.kind.as_str(), paused = ?paused, "A blocker was raised.");
    let _ = post(
        mesh,
        from_chief(
            &e.id,
            Thread::Epic,
            MailKind::Ack,
            format!("Seen blocker {seq}"),
            "",
        )
        .reply_to(seq),
    )
    .await;
    let cfg = &mesh.config.coord;
    let decision = match b.kind {
        _ if !cfg.auto_decide => None,
        BlockerKind::AgentBlocked => None,
        _ if b.attempt > cfg.auto_retries => None,
        BlockerKind::ScopeViolation | BlockerKind::ReservationConflict => {
            let owners: Vec<String> = hit
                .iter()
                .map(|t| format!("track {} ({}, {})", t.id, t.agent, t.scope.join(", ")))
                .collect();
            Some(Decision {
                action: DecisionAction::Retry,
                note: Some(format!(
                    "Stay inside your files: {}. Your changes to {} were not applied to the tree{}. Do the bead again without touching them.",
                    track.scope.join(", "),
                    b.files.join(", "),
                    if owners.is_empty() {
                        String::new()
                    } else {
                        format!("; they belong to {}", owners.join(" and "))
                    }
                )),
                grant: Vec::new(),
            })
        }
        BlockerKind::AgentFailed => Some(Decision {
            action: DecisionAction::Retry,
            note: Some(format!("The last run failed: {}. Try again.", b.detail)),
            grant: Vec::new(),
        }),
    };
    let Some(decision) = decision else {
        let why = match b.kind {
            BlockerKind::AgentBlocked => "the agent asked for help",
            _ if !cfg.auto_decide => "coord.auto_decide is off",
            _ => "its automatic retries are used up",
        };
        post(
            mesh,
            from_chief(&e.id, Thread::Epic,
                MailKind::Note,
                format!("Blocker {seq} waits for an operator ({why})"),
                format!(
                    "Decide with `jetmesh mail reply {seq} --from {OPERATOR} --decision retry|reassign|skip|abort [--note …] [--grant GLOB]`. Paused meanwhile: {}.",
                    if paused.is_empty() { "nothing".to_string() } else { format!("tracks {}", paused.join(", ")) }
                ),
            )
            .reply_to(seq),
        )
        .await?;
        return Ok(());
    };
    post(
        mesh,
        from_chief(
            &e.id,
            Thread::Epic,
            MailKind::Decision,
            format!("Decision on blocker {seq}: {}", decision.action.as_str()),
            decision.note.clone().unwrap_or_default(),
        )
        .reply_to(seq)
        .with_data(&decision),
    )
    .await?;
    settle(mesh, lease, &e.id, seq, &decision).await
}

/// Records a decision on a blocker: grants widen the track's scope, and the
/// tracks it paused resume.
async fn settle(mesh: &Mesh, lease: &Lease, epic_id: &str, seq: u64, d: &Decision) -> Result<()> {
    lease.fence()?;
    state::update_state(mesh, epic_id, |s| {
        let Some(b) = s.blockers.get_mut(&seq) else {
            return false;
        };
        if b.decision.is_some() {
            return false;
        }
        b.decision = Some(d.action);
        let track = b.track.clone();
        if !d.grant.is_empty() {
            let g = s.grants.entry(track).or_default();
            for x in &d.grant {
                if !g.contains(x) {
                    g.push(x.clone());
                }
            }
        }
        resume_paused(s);
        true
    })
    .await?;
    Ok(())
}

/// Escalates blockers nobody answered in time.
async fn escalate(mesh: Mesh, lease: Lease, stop: CancellationToken) {
    let after = Duration::from_secs(mesh.config.coord.escalate_after_secs);
    let mut tick =
        tokio::time::interval(Duration::from_secs(1).min(after.max(Duration::from_millis(200))));
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        if lease.fence().is_err() {
            continue;
        }
        let Ok(entries) = mesh.scan(&mesh.plans, "epic.*").await else {
            continue;
        };
        for entry in entries {
            let Ok(st) = codec::from_json::<EpicState>(&entry.value) else {
                continue;
            };
            if st.complete {
                continue;
            }
            let now = jiff::Timestamp::now();
            for (seq, b) in &st.blockers {
                let age = now.duration_since(b.at).unsigned_abs();
                if b.decision.is_some() || b.escalated || age < after {
                    continue;
                }
                if let Err(error) = escalate_one(&mesh, &st.epic, *seq, b).await {
                    tracing::warn!(%error, seq, "Cannot escalate a blocker.");
                }
            }
        }
    }
}

async fn escalate_one(mesh: &Mesh, epic_id: &str, seq: u64, b: &BlockerState) -> Result<()> {
    let mut marked = false;
    state::update_state(mesh, epic_id, |s| match s.blockers.get_mut(&seq) {
        Some(x) if !x.escalated && x.decision.is_none() => {
            x.escalated = true;
            marked = true;
            true
        }
        _ => false,
    })
    .await?;
    if !marked {
        return Ok(());
    }
    let subject = format!(
        "ESCALATED: blocker {seq} of {} ({}) has no decision",
        b.bead,
        b.kind.as_str()
    );
    let body = format!(
        "Nobody answered blocker {seq} within {} s. Decide with `jetmesh mail reply {seq} --from {OPERATOR} --decision retry|reassign|skip|abort`.",
        mesh.config.coord.escalate_after_secs
    );
    for thread in [Thread::Epic, Thread::Inbox(OPERATOR.to_string())] {
        let mut m = Mail::new(
            epic_id,
            &thread,
            CHIEF,
            MailKind::Escalation,
            subject.clone(),
            body.clone(),
        )
        .importance(Importance::Urgent)
        .reply_to(seq);
        if thread != Thread::Epic {
            // Replies go to the blocker's own thread, not the inbox.
            m.reply_to = None;
            m.ack_required = true;
        }
        post(mesh, m).await?;
    }
    let alert = Alert {
        pool: "coord".into(),
        kind: "blocker_escalated".into(),
        message: subject.clone(),
        instance: None,
        at: jiff::Timestamp::now(),
    };
    if let Ok(body) = codec::to_json(&alert) {
        let _ = mesh.client.publish(mesh.names.alerts("coord"), body).await;
    }
    tracing::warn!(epic = epic_id, seq, bead = %b.bead, "A blocker was escalated.");
    Ok(())
}

/// Posts "EPIC COMPLETE" once the epic's report is out (once per epic).
pub async fn finish(mesh: &Mesh, lease: &Lease, plan_id: &str) -> Result<()> {
    let Some((st, _)) = state::state(mesh, plan_id).await? else {
        return Ok(());
    };
    if st.complete {
        return Ok(());
    }
    let e = state::load_epic(mesh, plan_id).await?;
    let report: Option<Report> = mesh
        .get_json(&mesh.results, &mesh.names.report_key(plan_id))
        .await?;
    lease.fence()?;
    let mut flipped = false;
    state::update_state(mesh, plan_id, |s| {
        if s.complete {
            return false;
        }
        s.complete = true;
        s.finished_at = Some(jiff::Timestamp::now());
        flipped = true;
        true
    })
    .await?;
    if !flipped {
        return Ok(());
    }
    let mut body = String::from("| Track | Agent | Bead | Result |\n|---|---|---|---|\n");
    let (mut ok, mut failed, mut skipped) = (0, 0, 0);
    for t in &e.tracks {
        for b in &t.beads {
            let task = report
                .as_ref()
                .and_then(|r| r.tasks.iter().find(|x| x.id == b.id));
            let result = match task {
                Some(x) if x.status == TaskStatus::Success => {
                    if x.output.as_ref().is_some_and(|o| o["skipped"] == true) {
                        skipped += 1;
                        "skipped".to_string()
                    } else {
                        ok += 1;
                        "done".to_string()
                    }
                }
                Some(x) => {
                    failed += 1;
                    format!(
                        "failed: {}",
                        x.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
                    )
                }
                None => "?".to_string(),
            };
            body.push_str(&format!(
                "| {} | {} | {} | {result} |\n",
                t.id, t.agent, b.id
            ));
        }
    }
    let blockers = st.blockers.len();
    body.push_str(&format!(
        "\n{ok} done, {skipped} skipped, {failed} failed; {blockers} blocker(s) raised.\n"
    ));
    post(
        mesh,
        from_chief(plan_id, Thread::Epic,
            MailKind::EpicComplete,
            format!("EPIC COMPLETE: {plan_id} ({ok} done, {skipped} skipped, {failed} failed)"),
            body,
        )
        .importance(Importance::High)
        .with_data(serde_json::json!({"done": ok, "skipped": skipped, "failed": failed, "blockers": blockers})),
    )
    .await?;
    tracing::info!(epic = plan_id, ok, skipped, failed, "EPIC COMPLETE.");
    Ok(())
}
