//! The `agent` capability: works on one bead of an epic (action `bead`).
//!
//! For each bead it waits while its track is paused, claims the bead (a KV
//! create in `mesh_coord`), reserves the bead's files (inside the track's
//! scope), and keeps claim and reservations alive together while it works.
//! It announces the start on the epic thread, reads the track thread's
//! learnings, and runs the allowlisted command in the bead's own git worktree
//! (a copy of the epic's tree as it is now; see [`tree`]) with the
//! bead, its track and the learnings on stdin. Then it looks at what the bead
//! changed: a change outside the scope or outside the reservation, a failed
//! command, or an agent that says it is stuck becomes a blocker on the epic
//! thread, and the bead waits for the decision (retry, reassign, skip, abort;
//! a decision may grant more scope). Nothing reaches the epic's tree until the
//! bead is clean (or a grant covers it); then its changes are copied in while
//! it still holds its reservation, its learnings go to the track thread and
//! its completion to the epic thread.
//!
//! If the worker dies, its renewals stop: the claim and the reservations
//! lapse together after `coord.lease_ttl_secs`, and JetStream delivers the
//! bead to another worker.

mod tree;

use bytes::Bytes;
use futures::future::BoxFuture;
use jetmesh_coord::globs::{self, Glob};
use jetmesh_coord::mail::{self, CHIEF};
use jetmesh_coord::state::{self, Claimed, Reserved};
use jetmesh_coord::wire::{
    Bead, BeadTask, Blocker, BlockerKind, Claim, Decision, DecisionAction, Epic, Importance, Mail,
    MailKind, Reservation, Track,
};
use jetmesh_shared::capability::{Action, Call, Capability};
use jetmesh_shared::config::AgentConfig;
use jetmesh_shared::names::Thread;
use jetmesh_shared::{Error, ErrorCode, Mesh, Result, codec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tree::Worktree;

const ACTIONS: &[Action] = &[Action {
    name: "bead",
    description: "Works on one bead of an epic in its own git worktree (sent by the chief's epic runner).",
    params: r#"{"type":"object","required":["epic","track","bead"],"properties":{
  "epic":{"type":"string","description":"The epic's id."},
  "track":{"type":"string","description":"The bead's track."},
  "bead":{"type":"string","description":"The bead's id."}}}"#,
}];

/// The built-in `agent` capability of one worker process.
pub struct Agent {
    mesh: Mesh,
    worker: String,
}

impl Agent {
    pub fn new(mesh: Mesh, worker: String) -> Agent {
        Agent { mesh, worker }
    }
}

impl Capability for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value>> {
        Box::pin(async move {
            match call.action {
                "bead" => self.bead(call.params).await,
                other => Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!("capability agent has no action {other:?} (it has: bead)"),
                )),
            }
        })
    }
}

/// What a command may write to `$JETMESH_OUTPUT`.
#[derive(Debug, Default, Deserialize)]
struct AgentOutput {
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    learnings: Vec<String>,
    /// The agent is stuck: this becomes an `agent_blocked` blocker.
    #[serde(default)]
    blocked: Option<String>,
}

/// What the command receives on stdin (and in `$JETMESH_CONTEXT`).
#[derive(Debug, Serialize)]
struct BeadContext<'a> {
    epic: EpicContext<'a>,
    track: TrackContext<'a>,
    bead: &'a Bead,
    attempt: u32,
    /// Guidance from the last decision on a blocker of this bead.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    learnings: Vec<Note>,
    context: Vec<Note>,
}

#[derive(Debug, Serialize)]
struct EpicContext<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct TrackContext<'a> {
    id: &'a str,
    agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    scope: Vec<String>,
    reserved: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Note {
    seq: u64,
    from: String,
    subject: String,
    body: String,
}

impl From<&Mail> for Note {
    fn from(m: &Mail) -> Note {
        Note {
            seq: m.seq.unwrap_or(0),
            from: m.from.clone(),
            subject: m.subject.clone(),
            body: m.body.clone(),
        }
    }
}

impl<'a> BeadContext<'a> {
    /// The context of one attempt at `bead`: `scope` is the track's (with
    /// what decisions granted), `reserved` what the bead holds, and `thread`
    /// the track thread, whose learnings and context notes it passes on.
    #[allow(clippy::too_many_arguments)]
    fn new(
        epic: &'a Epic,
        track: &'a Track,
        bead: &'a Bead,
        scope: &[Glob],
        reserved: &[String],
        attempt: u32,
        note: Option<&'a str>,
        thread: &[Mail],
    ) -> BeadContext<'a> {
        let notes = |kind: MailKind| -> Vec<Note> {
            thread
                .iter()
                .filter(|m| m.kind == kind)
                .map(Note::from)
                .collect()
        };
        BeadContext {
            epic: EpicContext {
                id: &epic.id,
                title: epic.title.as_deref(),
            },
            track: TrackContext {
                id: &track.id,
                agent: &track.agent,
                description: track.description.as_deref(),
                scope: scope.iter().map(|g| g.to_string()).collect(),
                reserved: reserved.to_vec(),
            },
            bead,
            attempt,
            note,
            learnings: notes(MailKind::Learning),
            context: notes(MailKind::Context),
        }
    }
}

/// Claim and reservations, renewed together until dropped.
struct Leases {
    held: Arc<Mutex<Vec<(String, Bytes)>>>,
    stop: CancellationToken,
}

impl Leases {
    fn start(mesh: &Mesh) -> Leases {
        let held: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let stop = CancellationToken::new();
        let every = Duration::from_secs(mesh.config.coord.lease_ttl_secs.max(2)) / 3;
        let (m, h, s) = (mesh.clone(), held.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            while s.run_until_cancelled(tick.tick()).await.is_some() {
                let keys = h.lock().map(|v| v.clone()).unwrap_or_default();
                for (key, body) in keys {
                    if let Err(error) = state::renew(&m, &key, body).await {
                        tracing::warn!(%error, key, "Cannot renew a bead lease.");
                    }
                }
            }
        });
        Leases { held, stop }
    }

    fn hold(&self, key: String, body: Bytes) {
        if let Ok(mut v) = self.held.lock() {
            v.retain(|(k, _)| *k != key);
            v.push((key, body));
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How one run of a bead ended.
enum Outcome {
    Done(Value),
    /// The blocker, the bead's worktree (not applied yet), everything it
    /// changed, and the files that are the problem.
    Blocked(Box<Blocker>, Option<Worktree>, Vec<String>, Vec<String>),
}

/// What one run of a bead comes to, from what it changed and how its
/// command ended. The first problem found decides: a change outside the
/// scope, then one outside the reservation, then a failed command, then an
/// agent that says it is stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Its changes may go into the epic's tree.
    Clean,
    /// A blocker of `kind` about `files`, saying `detail`. `violating`: the
    /// files a decision's grant must cover to settle it (none when the
    /// files are not the problem).
    Blocked {
        kind: BlockerKind,
        files: Vec<String>,
        violating: Vec<String>,
        detail: String,
    },
}

impl Verdict {
    /// `scope`: the track's, with grants; `reserved` and `reserved_globs`:
    /// the bead's reservation, as written and parsed.
    fn of(
        bead: &Bead,
        track: &Track,
        scope: &[Glob],
        reserved: &[String],
        reserved_globs: &[Glob],
        changed: &[String],
        run: &Run,
    ) -> Verdict {
        let outside: Vec<String> = changed
            .iter()
            .filter(|p| !globs::any_matches(scope, p))
            .cloned()
            .collect();
        let unreserved: Vec<String> = changed
            .iter()
            .filter(|p| globs::any_matches(scope, p) && !globs::any_matches(reserved_globs, p))
            .cloned()
            .collect();
        if !outside.is_empty() {
            let scope: Vec<String> = scope.iter().map(|g| g.to_string()).collect();
            let detail = format!(
                "{} changed {} outside track {}'s scope ({}): {}",
                bead.id,
                plural(outside.len(), "file"),
                track.id,
                scope.join(", "),
                outside.join(", ")
            );
            return Verdict::Blocked {
                kind: BlockerKind::ScopeViolation,
                files: outside.clone(),
                violating: outside,
                detail,
            };
        }
        if !unreserved.is_empty() {
            let detail = format!(
                "{} changed {} it had not reserved ({}): {}",
                bead.id,
                plural(unreserved.len(), "file"),
                reserved.join(", "),
                unreserved.join(", ")
            );
            return Verdict::Blocked {
                kind: BlockerKind::ReservationConflict,
                files: unreserved.clone(),
                violating: unreserved,
                detail,
            };
        }
        let stuck = |kind, why: &str| Verdict::Blocked {
            kind,
            files: changed.to_vec(),
            violating: Vec::new(),
            detail: why.to_string(),
        };
        if let Some(why) = &run.failure {
            return stuck(BlockerKind::AgentFailed, why);
        }
        if let Some(why) = &run.output.blocked {
            return stuck(BlockerKind::AgentBlocked, why);
        }
        Verdict::Clean
    }
}

/// Whether `decision` settles a blocker as it stands: a retry whose grant
/// covers every file that was wrong, so that the bead's changes are applied
/// as they are. Errors (`invalid_glob`): the grant does not parse.
fn settles(decision: &Decision, violating: &[String]) -> Result<bool> {
    let granted = Glob::parse_all(&decision.grant)?;
    Ok(decision.action == DecisionAction::Retry
        && !violating.is_empty()
        && violating.iter().all(|p| globs::any_matches(&granted, p)))
}

/// What the worker does after a decision.
enum Next {
    Again(Option<String>),
    Finish(Result<Value>),
}

/// The working tree an epic names, checked against `agent.roots`.
pub fn resolve_workdir(cfg: &AgentConfig, epic: &Epic) -> Result<PathBuf> {
    let wanted = match &epic.workdir {
        Some(w) => PathBuf::from(w),
        None => cfg.workdir.clone(),
    };
    let path = std::fs::canonicalize(&wanted).map_err(|e| {
        Error::new(
            ErrorCode::InvalidArgs,
            format!(
                "the epic's workdir {} cannot be used: {e}",
                wanted.display()
            ),
        )
    })?;
    let roots: Vec<PathBuf> = if cfg.roots.is_empty() {
        vec![cfg.workdir.clone()]
    } else {
        cfg.roots.clone()
    };
    let allowed = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| path.starts_with(&r));
    if !allowed {
        return Err(Error::new(
            ErrorCode::InvalidArgs,
            format!(
                "the epic's workdir {} is outside agent.roots; this worker only works in {}",
                path.display(),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(path)
}

/// The allowlisted command an epic names.
pub fn command<'a>(cfg: &'a AgentConfig, epic: &Epic) -> Result<(&'a str, &'a [String])> {
    let name = epic.command.as_deref().unwrap_or(&cfg.default_command);
    if name.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgs,
            "the epic names no agent command and agent.default_command is empty; configure [agent.commands]",
        ));
    }
    cfg.commands
        .get_key_value(name)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgs,
                format!(
                    "agent command {name:?} is not allowed here (allowed: {})",
                    cfg.commands.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

impl Agent {
    async fn bead(&self, params: &Map<String, Value>) -> Result<Value> {
        let task: BeadTask =
            serde_json::from_value(Value::Object(params.clone())).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgs,
                    format!("a bead task needs epic, track and bead: {e}"),
                )
            })?;
        let epic = state::load_epic(&self.mesh, &task.epic).await?;
        let (track, bead) = epic
            .bead(&task.bead)
            .filter(|(t, _)| t.id == task.track)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgs,
                    format!(
                        "epic {} has no bead {} in track {}",
                        epic.id, task.bead, task.track
                    ),
                )
            })?;
        let cfg = &self.mesh.config.agent;
        let workdir = resolve_workdir(cfg, &epic)?;
        command(cfg, &epic)?;
        tree::git_dir(&workdir).await?;

        self.wait_unpaused(&epic, track).await?;
        let leases = Leases::start(&self.mesh);
        self.claim(&epic, track, bead, &leases).await?;
        let outcome = self.work(&epic, track, bead, &workdir, &leases).await;
        let reassigned = matches!(&outcome, Err(e) if e.code == ErrorCode::Unavailable);
        drop(leases);
        let _ = state::release(&self.mesh, &epic.id, &bead.id).await;
        let _ = state::release_claim(&self.mesh, &epic.id, &bead.id).await;
        if !reassigned {
            tracing::info!(epic = %epic.id, bead = %bead.id, ok = outcome.is_ok(), "A bead is finished.");
        }
        outcome
    }

    /// A paused track starts no new bead; its task stays in progress.
    async fn wait_unpaused(&self, epic: &Epic, track: &Track) -> Result<()> {
        let mut said = false;
        loop {
            let paused = state::state(&self.mesh, &epic.id)
                .await?
                .and_then(|(s, _)| s.paused.get(&track.id).cloned());
            let Some(why) = paused else { return Ok(()) };
            if !said {
                tracing::info!(epic = %epic.id, track = %track.id, why, "The track is paused; the bead waits.");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn claim(&self, epic: &Epic, track: &Track, bead: &Bead, leases: &Leases) -> Result<()> {
        let claim = Claim {
            epic: epic.id.clone(),
            track: track.id.clone(),
            bead: bead.id.clone(),
            agent: track.agent.clone(),
            worker: self.worker.clone(),
            at: jiff::Timestamp::now(),
        };
        // A claim of a worker that died lapses within the lease TTL.
        let patience = Duration::from_secs(self.mesh.config.coord.lease_ttl_secs * 2 + 2);
        let until = tokio::time::Instant::now() + patience;
        loop {
            match state::claim(&self.mesh, &claim).await? {
                Claimed::Granted => {
                    leases.hold(
                        self.mesh.names.claim_key(&epic.id, &bead.id),
                        codec::to_json(&claim)?,
                    );
                    return Ok(());
                }
                Claimed::HeldBy(other) if tokio::time::Instant::now() >= until => {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!("bead {} is claimed by worker {}", bead.id, other.worker),
                    ));
                }
                Claimed::HeldBy(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Reserves the bead's files, waiting for other holders up to
    /// `coord.reserve_wait_secs`. `Err(blocker)` when they do not let go.
    async fn reserve(
        &self,
        epic: &Epic,
        track: &Track,
        bead: &Bead,
        scope: &[Glob],
        leases: &Leases,
        attempt: u32,
    ) -> Result<std::result::Result<Vec<String>, Blocker>> {
        let patterns: Vec<String> = if bead.files.is_empty() {
            scope.iter().map(|g| g.to_string()).collect()
        } else {
            bead.files.clone()
        };
        state::check_patterns(&patterns, Some((&track.id, scope)))?;
        let r = Reservation {
            id: bead.id.clone(),
            epic: epic.id.clone(),
            track: Some(track.id.clone()),
            agent: track.agent.clone(),
            worker: Some(self.worker.clone()),
            bead: Some(bead.id.clone()),
            patterns: patterns.clone(),
            exclusive: true,
            at: jiff::Timestamp::now(),
        };
        let until = tokio::time::Instant::now()
            + Duration::from_secs(self.mesh.config.coord.reserve_wait_secs);
        loop {
            match state::reserve(&self.mesh, &r).await? {
                Reserved::Granted(r) => {
                    leases.hold(
                        self.mesh.names.reservation_key(&epic.id, &r.id),
                        codec::to_json(&r)?,
                    );
                    return Ok(Ok(patterns));
                }
                Reserved::Conflict(c) if tokio::time::Instant::now() >= until => {
                    return Ok(Err(Blocker {
                        kind: BlockerKind::ReservationConflict,
                        bead: bead.id.clone(),
                        track: track.id.clone(),
                        agent: track.agent.clone(),
                        worker: self.worker.clone(),
                        files: vec![c.mine.clone()],
                        holders: vec![c.holder()],
                        attempt,
                        detail: c.to_error().message,
                    }));
                }
                Reserved::Conflict(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    async fn post(&self, mail: Mail) -> Result<u64> {
        Ok(mail::post(&self.mesh, &mail).await?.seq)
    }

    /// Announces a finished bead (done, granted or skipped) on the epic
    /// thread; the chief counts it from there.
    async fn completed(
        &self,
        epic: &Epic,
        track: &Track,
        subject: String,
        body: String,
        result: &Value,
    ) -> Result<()> {
        let mail = Mail::new(
            &epic.id,
            &Thread::Epic,
            &track.agent,
            MailKind::BeadCompleted,
            subject,
            body,
        )
        .with_data(result);
        self.post(mail).await.map(|_| ())
    }

    /// Runs the bead until it completes or a decision ends it.
    async fn work(
        &self,
        epic: &Epic,
        track: &Track,
        bead: &Bead,
        workdir: &Path,
        leases: &Leases,
    ) -> Result<Value> {
        let mut note: Option<String> = None;
        let mut blockers = 0;
        for attempt in 1.. {
            let outcome = self
                .run_once(epic, track, bead, workdir, leases, attempt, note.as_deref())
                .await?;
            let (blocker, wt, changed, violating) = match outcome {
                Outcome::Done(v) => return Ok(v),
                Outcome::Blocked(b, wt, c, v) => (b, wt, c, v),
            };
            blockers += 1;
            match self
                .blocked(
                    epic, track, bead, *blocker, wt, changed, violating, blockers,
                )
                .await?
            {
                Next::Again(n) => note = n,
                Next::Finish(r) => return r,
            }
        }
        unreachable!("the loop returns")
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_once(
        &self,
        epic: &Epic,
        track: &Track,
        bead: &Bead,
        workdir: &Path,
        leases: &Leases,
        attempt: u32,
        note: Option<&str>,
    ) -> Result<Outcome> {
        let state = state::state(&self.mesh, &epic.id).await?.map(|(s, _)| s);
        let scope = state::scope(epic, state.as_ref(), &track.id)?;
        let reserved = match self
            .reserve(epic, track, bead, &scope, leases, attempt)
            .await?
        {
            Ok(p) => p,
            Err(blocker) => {
                return Ok(Outcome::Blocked(
                    Box::new(blocker),
                    None,
                    Vec::new(),
                    Vec::new(),
                ));
            }
        };
        let reserved_globs = Glob::parse_all(&reserved)?;
        self.post(
            Mail::new(
                &epic.id,
                &Thread::Epic,
                &track.agent,
                MailKind::BeadStarted,
                format!("{} started: {}", bead.id, bead.title.as_deref().unwrap_or("")),
                format!(
                    "{} works on {} (track {}, attempt {attempt}) on worker {}.",
                    track.agent, bead.id, track.id, self.worker
                ),
            )
            .with_data(json!({"bead": bead.id, "track": track.id, "worker": self.worker, "attempt": attempt})),
        )
        .await?;
        let thread = mail::read(
            &self.mesh,
            &self
                .mesh
                .names
                .mail(&epic.id, &Thread::Track(track.id.clone())),
            None,
        )
        .await?;
        let ctx = BeadContext::new(epic, track, bead, &scope, &reserved, attempt, note, &thread);

        let wt = Worktree::create(workdir, &format!("{}-{}", epic.id, bead.id)).await?;
        let run =
            Agent::run_command(&self.mesh.config.agent, epic, track, bead, &wt.path, &ctx).await;
        let changed = match run {
            Ok(_) => wt.changed().await,
            Err(_) => Ok(Vec::new()),
        };
        let (run, changed) = match (run, changed) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(e), _) | (_, Err(e)) => {
                wt.discard().await;
                return Err(e);
            }
        };
        let verdict = Verdict::of(
            bead,
            track,
            &scope,
            &reserved,
            &reserved_globs,
            &changed,
            &run,
        );
        if let Verdict::Blocked {
            kind,
            files,
            violating,
            detail,
        } = verdict
        {
            let b = Blocker {
                kind,
                bead: bead.id.clone(),
                track: track.id.clone(),
                agent: track.agent.clone(),
                worker: self.worker.clone(),
                files,
                holders: Vec::new(),
                attempt,
                detail,
            };
            return Ok(Outcome::Blocked(Box::new(b), Some(wt), changed, violating));
        }

        // Clean: into the epic's tree (under the reservation), learnings to
        // the track, completion to the epic.
        let failed = wt.apply(&changed).await;
        wt.discard().await;
        if !failed.is_empty() {
            return Err(Error::new(
                ErrorCode::Internal,
                format!("cannot copy {} into the working tree", failed.join(", ")),
            ));
        }
        for l in &run.output.learnings {
            self.post(
                Mail::new(
                    &epic.id,
                    &Thread::Track(track.id.clone()),
                    &track.agent,
                    MailKind::Learning,
                    format!("Learning from {}", bead.id),
                    l.clone(),
                )
                .with_data(json!({"bead": bead.id})),
            )
            .await?;
        }
        let summary = run.output.summary.clone().unwrap_or_default();
        let result = json!({
            "bead": bead.id,
            "track": track.id,
            "agent": track.agent,
            "worker": self.worker,
            "attempt": attempt,
            "files": changed,
            "summary": summary,
            "learnings": run.output.learnings.len(),
        });
        self.completed(
            epic,
            track,
            format!(
                "{} completed: {}",
                bead.id,
                bead.title.as_deref().unwrap_or("")
            ),
            format!(
                "{}\n\nChanged: {}",
                if summary.is_empty() {
                    "Done."
                } else {
                    summary.as_str()
                },
                if changed.is_empty() {
                    "nothing".to_string()
                } else {
                    changed.join(", ")
                }
            ),
            &result,
        )
        .await?;
        Ok(Outcome::Done(result))
    }

    /// Posts the blocker, waits for its decision and acts on it.
    #[allow(clippy::too_many_arguments)]
    async fn blocked(
        &self,
        epic: &Epic,
        track: &Track,
        bead: &Bead,
        mut blocker: Blocker,
        wt: Option<Worktree>,
        changed: Vec<String>,
        violating: Vec<String>,
        count: u32,
    ) -> Result<Next> {
        blocker.attempt = count;
        let mut msg = Mail::new(
            &epic.id,
            &Thread::Epic,
            &track.agent,
            MailKind::Blocker,
            format!("BLOCKER {} ({}): {}", bead.id, blocker.kind.as_str(), first_line(&blocker.detail)),
            format!(
                "{}\n\nReply with a decision: retry, reassign, skip or abort (`jetmesh mail reply <n> --decision retry`).",
                blocker.detail
            ),
        )
        .with_data(&blocker)
        .importance(Importance::High);
        msg.to = vec![CHIEF.to_string()];
        msg.ack_required = true;
        let seq = self.post(msg).await?;
        tracing::info!(epic = %epic.id, bead = %bead.id, seq, kind = blocker.kind.as_str(), "A bead is blocked; waiting for a decision.");
        let patience = Duration::from_secs(self.mesh.config.coord.decision_wait_secs);
        let filter = self.mesh.names.mail(&epic.id, &Thread::Epic);
        let reply = mail::wait_for(&self.mesh, &filter, seq, patience, |m| {
            m.kind == MailKind::Decision
                && m.reply_to == Some(seq)
                && m.data_as::<Decision>().is_some()
        })
        .await?;
        let Some(reply) = reply else {
            return Ok(Next::Finish(Err(Error::new(
                ErrorCode::Blocked,
                format!(
                    "blocker {seq} had no decision within {} s",
                    patience.as_secs()
                ),
            ))));
        };
        let decision: Decision = reply.data_as().unwrap_or(Decision {
            action: DecisionAction::Abort,
            note: None,
            grant: Vec::new(),
        });
        tracing::info!(epic = %epic.id, bead = %bead.id, seq, action = decision.action.as_str(), by = %reply.from, "A blocker was decided.");

        // A grant that covers every file that was wrong settles it: the
        // bead's changes are applied as they are.
        let settled = settles(&decision, &violating)?;
        let (kept, undo): (Vec<String>, Vec<String>) = match wt {
            Some(wt) if settled => {
                let failed = wt.apply(&changed).await;
                if !failed.is_empty() {
                    tracing::warn!(bead = %bead.id, files = ?failed, "Some granted changes could not be copied.");
                }
                wt.discard().await;
                (changed.clone(), Vec::new())
            }
            Some(wt) => {
                wt.discard().await;
                (Vec::new(), changed.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        let done = |skipped: bool| {
            json!({
                "bead": bead.id,
                "track": track.id,
                "agent": track.agent,
                "worker": self.worker,
                "skipped": skipped,
                "decision": decision.action.as_str(),
                "applied": kept,
                "dropped": undo,
            })
        };
        match decision.action {
            // A grant that covers everything that was wrong settles it.
            DecisionAction::Retry if settled => {
                let result = done(false);
                self.completed(
                    epic,
                    track,
                    format!("{} completed (scope granted)", bead.id),
                    format!("Kept under the granted scope: {}", kept.join(", ")),
                    &result,
                )
                .await?;
                Ok(Next::Finish(Ok(result)))
            }
            DecisionAction::Retry => Ok(Next::Again(decision.note.or(Some(blocker.detail)))),
            DecisionAction::Reassign => Ok(Next::Finish(Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "bead {} was reassigned by decision {}",
                    bead.id,
                    reply.seq.unwrap_or(0)
                ),
            )))),
            DecisionAction::Skip => {
                let result = done(true);
                self.completed(
                    epic,
                    track,
                    format!("{} skipped", bead.id),
                    format!("Skipped by decision of {}.", reply.from),
                    &result,
                )
                .await?;
                Ok(Next::Finish(Ok(result)))
            }
            DecisionAction::Abort => Ok(Next::Finish(Err(Error::new(
                ErrorCode::Blocked,
                format!(
                    "{} was aborted by {}: {}",
                    bead.id, reply.from, blocker.detail
                ),
            )))),
        }
    }

    /// Runs the epic's command on `bead` in `workdir` (the bead's worktree),
    /// with `ctx` on stdin and in `$JETMESH_CONTEXT`, within
    /// `agent.timeout_secs`, and reads what it wrote to `$JETMESH_OUTPUT`.
    async fn run_command(
        cfg: &AgentConfig,
        epic: &Epic,
        track: &Track,
        bead: &Bead,
        workdir: &Path,
        ctx: &BeadContext<'_>,
    ) -> Result<Run> {
        let (name, argv) = command(cfg, epic)?;
        let scratch = tempfile::tempdir().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot make a scratch folder: {e}"),
            )
        })?;
        let output_path = scratch.path().join("output.json");
        let context_path = scratch.path().join("context.json");
        let context = serde_json::to_vec_pretty(ctx).map_err(|e| Error::internal(e.to_string()))?;
        tokio::fs::write(&context_path, &context)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot write the bead context: {e}"),
                )
            })?;

        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(workdir)
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: prctl(2) only (async-signal-safe), between fork and exec. A worker killed with
        // SIGKILL takes its agent with it: no orphan keeps writing to the
        // tree after the bead's claim has lapsed.
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        // Only the variables named in agent.pass_env reach the command:
        // the worker's own (NATS credentials, …) never do.
        for var in &cfg.pass_env {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd.env("JETMESH_EPIC", &epic.id)
            .env("JETMESH_TRACK", &track.id)
            .env("JETMESH_AGENT", &track.agent)
            .env("JETMESH_BEAD", &bead.id)
            .env("JETMESH_BEAD_TITLE", bead.title.as_deref().unwrap_or(""))
            .env("JETMESH_SCOPE", ctx.track.scope.join("\n"))
            .env("JETMESH_RESERVED", ctx.track.reserved.join("\n"))
            .env("JETMESH_ATTEMPT", ctx.attempt.to_string())
            .env("JETMESH_NOTE", ctx.note.unwrap_or(""))
            .env("JETMESH_CONTEXT", &context_path)
            .env("JETMESH_OUTPUT", &output_path);
        let mut child = cmd.spawn().map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgs,
                format!("cannot start agent command {name} ({}): {e}", argv[0]),
            )
        })?;
        let pid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin is fine.
            let _ = stdin.write_all(&context).await;
        }
        let max = cfg.max_output_bytes;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let read_out = async move { tail(stdout.as_mut(), max).await };
        let read_err = async move { tail(stderr.as_mut(), max).await };
        let limit = Duration::from_secs(cfg.timeout_secs.max(1));
        let waited = tokio::time::timeout(limit, async {
            let (status, out, err) = tokio::join!(child.wait(), read_out, read_err);
            (status, out, err)
        })
        .await;
        let (failure, stdout, stderr) = match waited {
            Ok((Ok(status), out, err)) if status.success() => (None, out, err),
            Ok((Ok(status), out, err)) => (
                Some(format!(
                    "agent command {name} exited with {status}: {}",
                    last_lines(&err, 20)
                )),
                out,
                err,
            ),
            Ok((Err(e), out, err)) => (Some(format!("agent command {name} failed: {e}")), out, err),
            Err(_) => {
                if let Some(pid) = pid {
                    // The whole process group: an agent's own children too.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                (
                    Some(format!(
                        "agent command {name} ran longer than agent.timeout_secs ({} s)",
                        limit.as_secs()
                    )),
                    String::new(),
                    String::new(),
                )
            }
        };
        let output: AgentOutput = match tokio::fs::read(&output_path).await {
            Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, bead = %bead.id, "The agent's JETMESH_OUTPUT is not valid JSON; ignored.");
                AgentOutput::default()
            }),
            _ => AgentOutput::default(),
        };
        Ok(Run {
            failure,
            output,
            stdout,
            stderr,
        })
    }
}

#[allow(dead_code)]
struct Run {
    failure: Option<String>,
    output: AgentOutput,
    stdout: String,
    stderr: String,
}

/// Reads a pipe to its end, keeping the last `max` bytes.
async fn tail<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>, max: usize) -> String {
    let Some(r) = r else { return String::new() };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > max * 2 {
                    kept.drain(..kept.len() - max);
                }
            }
        }
    }
    if kept.len() > max {
        kept.drain(..kept.len() - max);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests;
