//! The aggregator role: it notices when a plan is complete. It follows
//! `mesh_plans` (which plans run, and their tasks), keeps each running plan's
//! counts (`completed`, `failed`, `pending`) up to date in `plan.<plan_id>` of
//! `mesh_results`, and publishes `aggregation_ready` once every task is
//! terminal. Each running plan's results are followed with a watch on
//! `task.<plan_id>.*` that replays what is already stored, so arrival order
//! never matters and a restarted aggregator picks up where it was; results of
//! single tasks (no plan record) cost nothing here.
//!
//! The aggregator also keeps the results it counts (up to
//! `aggregator.bundle_budget_bytes` across plans). When a plan completes it
//! stores them in `mesh_plans` as the plan's result bundle, in parts of at most
//! one message, before `aggregation_ready`, whose `bundle_parts` tells the
//! summary to read them there rather than scan `task.<plan_id>.*`.
//!
//! A plan with a `deadline_ms` that passes with tasks still unfinished gets a
//! `timeout` result for each of them (a KV create, so a result that made it
//! first stands and a late one is ignored); the plan then completes as usual.

use futures::StreamExt;
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::codec;
use jetmesh_shared::error::Result;
use jetmesh_shared::follow::{self, Change};
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::wire::{
    AggregationReady, PlanCounts, PlanOutline, PlanRecord, PlanStatus, ResultBundle, TaskResult,
};
use jetmesh_shared::{Mesh, results, service, telemetry, trace};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A result of a followed plan: plan id, task id, success, the result as stored.
type ResultNote = (String, String, bool, bytes::Bytes);

/// Counts of one running plan.
struct Tally {
    tasks: HashSet<String>,
    done: HashMap<String, bool>,
    dirty: bool,
    /// Stops this plan's result follower.
    stop: CancellationToken,
    /// When unfinished tasks time out, if the plan has a deadline.
    deadline: Option<jiff::Timestamp>,
    expired: bool,
    /// When a result last counted (or the plan was last re-read).
    progress: tokio::time::Instant,
    /// How long without progress before the next re-read: [`STALL`],
    /// doubling up to [`MAX_STALL`] while nothing new turns up.
    stall: Duration,
    /// The counted results, for the summary; `None` once over the budget.
    bundle: Option<ResultBundle>,
    /// The plan's trace context (`PlanRecord::trace`), the parent of its
    /// `plan.complete` span.
    trace: Option<String>,
}

impl Tally {
    fn counts(&self, plan_id: &str, status: PlanStatus) -> PlanCounts {
        let completed = self.done.values().filter(|ok| **ok).count();
        let failed = self.done.len() - completed;
        PlanCounts {
            plan_id: plan_id.to_string(),
            total_tasks: self.tasks.len(),
            completed,
            failed,
            pending: self.tasks.len() - self.done.len(),
            status,
            updated_at: Some(jiff::Timestamp::now()),
        }
    }

    /// First result of a task wins; results for ids outside the plan are
    /// ignored. Returns whether this one counted.
    fn apply(&mut self, task_id: &str, ok: bool) -> bool {
        if self.tasks.contains(task_id) && !self.done.contains_key(task_id) {
            self.done.insert(task_id.to_string(), ok);
            self.dirty = true;
            self.progress = tokio::time::Instant::now();
            self.stall = STALL;
            return true;
        }
        false
    }

    fn complete(&self) -> bool {
        self.done.len() == self.tasks.len()
    }
}

/// The bytes held in result bundles, against the configured budget.
struct Budget {
    held: usize,
    max: usize,
}

impl Budget {
    /// Keeps a counted result in its plan's bundle, or gives the bundle up
    /// when the budget cannot take it.
    fn keep(&mut self, plan_id: &str, tally: &mut Tally, task_id: &str, value: &[u8]) {
        let Some(bundle) = &mut tally.bundle else {
            return;
        };
        let n = ResultBundle::frame_len(task_id, value);
        if self.held + n > self.max {
            tracing::debug!(
                plan_id,
                held = self.held,
                "The result bundle budget is spent; the summary will read this plan's results from the bucket."
            );
            self.release(tally);
            return;
        }
        bundle.push(task_id, value);
        self.held += n;
    }

    /// Gives back what a plan's bundle held.
    fn release(&mut self, tally: &mut Tally) {
        if let Some(bundle) = tally.bundle.take() {
            self.held -= bundle.size();
        }
    }
}

/// Runs the aggregator until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Aggregator);
    let svc = service::start(&mesh, "jetmesh aggregator").await?;
    let (plans_tx, mut plans) = mpsc::unbounded_channel::<Change>();
    follow::follow(
        mesh.plans.clone(),
        mesh.names.plan_key_all(),
        shutdown.clone(),
        move |c| {
            let _ = plans_tx.send(c);
        },
    )
    .await?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<ResultNote>();
    mesh.publish_health("started").await;
    tracing::info!(instance = %mesh.identity.instance, "The aggregator is counting.");

    let mut tallies: HashMap<String, Tally> = HashMap::new();
    let mut budget = Budget {
        held: 0,
        max: mesh.config.aggregator.bundle_budget_bytes,
    };
    // Completed plans being announced (a publish that keeps failing is
    // retried there, never in this loop).
    let announcing = TaskTracker::new();
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush.tick() => {
                flush_counts(&mesh, &mut tallies).await;
                expire(&mesh, &mut tallies, &shutdown);
                reread_stalled(&mesh, &mut tallies, &notes_tx);
            }
            Some((plan_id, task_id, ok, value)) = notes.recv() => {
                let Some(tally) = tallies.get_mut(&plan_id) else { continue };
                if tally.apply(&task_id, ok) {
                    budget.keep(&plan_id, tally, &task_id, &value);
                }
                if tally.complete()
                    && let Some(mut tally) = tallies.remove(&plan_id)
                {
                    let bundle = tally.bundle.take();
                    budget.held -= bundle.as_ref().map_or(0, ResultBundle::size);
                    let (mesh, shutdown) = (mesh.clone(), shutdown.clone());
                    // In the plan's trace (results carry no trace context:
                    // the plan record's is the one).
                    let span = tracing::info_span!(
                        parent: None,
                        "plan.complete",
                        plan_id = %plan_id,
                        tasks = tally.tasks.len() as i64,
                        completed = tracing::field::Empty,
                        failed = tracing::field::Empty,
                    );
                    trace::set_parent_from(&span, tally.trace.as_deref());
                    announcing.spawn(
                        async move { finish(&mesh, tally, bundle, &plan_id, &shutdown).await }
                            .instrument(span),
                    );
                }
            }
            Some(change) = plans.recv() => match change {
                Change::Put(entry) => {
                    let Some(plan_id) = names::parse_plan_key(&entry.key) else { continue };
                    match codec::from_json::<PlanRecord<PlanOutline>>(&entry.value).ok() {
                        Some(r) if r.status == PlanStatus::Running => {
                            if !tallies.contains_key(plan_id) {
                                let tally = track(&mesh, r, shutdown.child_token(), notes_tx.clone());
                                tallies.insert(plan_id.to_string(), tally);
                            }
                        }
                        _ => {
                            if let Some(mut t) = tallies.remove(plan_id) {
                                t.stop.cancel();
                                budget.release(&mut t);
                            }
                        }
                    }
                }
                Change::Delete { key, .. } => {
                    if let Some(plan_id) = names::parse_plan_key(&key)
                        && let Some(mut t) = tallies.remove(plan_id)
                    {
                        t.stop.cancel();
                        budget.release(&mut t);
                    }
                }
                // Plans are seen again from the start; tallies already
                // kept go on counting.
                Change::Reset => {}
            },
        }
    }
    // Bounded: the server may be gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), flush_counts(&mesh, &mut tallies)).await;
    announcing.close();
    let _ = tokio::time::timeout(mesh.config.runtime.drain_timeout(), announcing.wait()).await;
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    Ok(())
}

/// Starts counting a running plan and following its results.
fn track(
    mesh: &Mesh,
    record: PlanRecord<PlanOutline>,
    stop: CancellationToken,
    notes: mpsc::UnboundedSender<ResultNote>,
) -> Tally {
    let plan_id = record.plan.plan_id.clone();
    {
        let (mesh, stop, plan_id) = (mesh.clone(), stop.clone(), plan_id.clone());
        tokio::spawn(async move {
            // Until the first watch opens; after that it resumes by itself.
            let mut delays = Policy::RESTART.delays();
            while !stop.is_cancelled() {
                let notes = notes.clone();
                let id = plan_id.clone();
                let followed = mesh
                    .follow_plan_results(&plan_id, stop.clone(), move |task, value| {
                        let ok = results::succeeded(value);
                        let _ = notes.send((id.clone(), task.to_string(), ok, value.clone()));
                    })
                    .await;
                match followed {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(%error, plan_id, "Cannot follow a plan's results; retrying.");
                        let delay = delays.next_or_max(&Policy::RESTART);
                        let _ = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
                    }
                }
            }
        });
    }
    metrics::gauge!(telemetry::PLANS_TRACKED, "role" => "aggregator").increment(1.0);
    let deadline = jetmesh_shared::plan::deadline(record.created_at, record.plan.deadline_ms);
    Tally {
        tasks: record.plan.subtasks.into_iter().map(|t| t.id).collect(),
        done: HashMap::new(),
        dirty: true,
        stop,
        deadline,
        expired: false,
        progress: tokio::time::Instant::now(),
        stall: STALL,
        bundle: (mesh.config.aggregator.bundle_budget_bytes > 0).then(ResultBundle::default),
        trace: record.trace,
    }
}

/// How long a plan may go without a new result before its results are read
/// again from the bucket. The watch should deliver every result, but a watch
/// can stall (a stream leader lost in a cluster, a server restart) and a
/// stalled plan would never be reported.
const STALL: Duration = Duration::from_secs(5);
const MAX_STALL: Duration = Duration::from_secs(300);

/// Re-reads the results of plans that made no progress for [`STALL`]; what is
/// found is counted like a watched result (duplicates are ignored).
fn reread_stalled(
    mesh: &Mesh,
    tallies: &mut HashMap<String, Tally>,
    notes: &mpsc::UnboundedSender<ResultNote>,
) {
    for (plan_id, tally) in tallies.iter_mut() {
        if tally.progress.elapsed() < tally.stall {
            continue;
        }
        tally.progress = tokio::time::Instant::now();
        tally.stall = (tally.stall * 2).min(MAX_STALL);
        let (mesh, plan_id, notes) = (mesh.clone(), plan_id.clone(), notes.clone());
        tokio::spawn(async move {
            let filter = mesh.names.task_key_plan(&plan_id);
            match mesh.scan(&mesh.results, &filter).await {
                Ok(entries) => {
                    for e in entries {
                        if let Some((_, task)) = names::parse_task_key(&e.key) {
                            let ok = results::succeeded(&e.value);
                            let _ = notes.send((plan_id.clone(), task.to_string(), ok, e.value));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, plan_id, "Cannot re-read a stalled plan's results.")
                }
            }
        });
    }
}

/// Records `timeout` for the unfinished tasks of plans past their deadline.
/// The results come back through the plan's follower like any other.
fn expire(mesh: &Mesh, tallies: &mut HashMap<String, Tally>, shutdown: &CancellationToken) {
    let now = jiff::Timestamp::now();
    for (plan_id, tally) in tallies.iter_mut() {
        if tally.expired || tally.deadline.is_none_or(|d| d > now) {
            continue;
        }
        tally.expired = true;
        let late: Vec<String> = tally
            .tasks
            .iter()
            .filter(|t| !tally.done.contains_key(*t))
            .cloned()
            .collect();
        tracing::info!(
            plan_id,
            tasks = late.len(),
            "The plan's deadline passed; its unfinished tasks time out."
        );
        let (mesh, plan_id, shutdown) = (mesh.clone(), plan_id.clone(), shutdown.clone());
        tokio::spawn(async move {
            let error = jetmesh_shared::Error::new(
                jetmesh_shared::ErrorCode::Timeout,
                "the plan's deadline passed before this task finished",
            );
            futures::stream::iter(late)
                .for_each_concurrent(64, |task_id| {
                    let (mesh, plan_id, error, shutdown) = (&mesh, &plan_id, &error, &shutdown);
                    async move {
                        let result = TaskResult::failure(error).for_task(plan_id, &task_id);
                        // Kept going: a lost timeout would leave the plan open.
                        let _ = results::record_until_stored(
                            mesh, plan_id, &task_id, &result, shutdown,
                        )
                        .await;
                    }
                })
                .await;
        });
    }
}

/// Stores the plan's result bundle, writes the final counts and publishes
/// `aggregation_ready`.
async fn finish(
    mesh: &Mesh,
    tally: Tally,
    bundle: Option<ResultBundle>,
    plan_id: &str,
    shutdown: &CancellationToken,
) {
    tally.stop.cancel();
    let counts = tally.counts(plan_id, PlanStatus::Completed);
    if trace::enabled() {
        let span = tracing::Span::current();
        // As i64: OpenTelemetry attributes have no unsigned integers.
        span.record("completed", counts.completed as i64);
        span.record("failed", counts.failed as i64);
    }
    let bundle_parts = match bundle {
        Some(bundle) => store_bundle(mesh, plan_id, &bundle).await,
        None => 0,
    };
    let event = AggregationReady {
        plan_id: plan_id.to_string(),
        total_tasks: counts.total_tasks,
        completed: counts.completed,
        failed: counts.failed,
        at: jiff::Timestamp::now(),
        bundle_parts,
    };
    // The final counts and the event go out at once. The event is retried
    // until stored or shutdown: losing it would leave the plan unreported. A
    // plan left unannounced at shutdown is still running in `mesh_plans`, so
    // the next aggregator counts it again and announces it.
    let announce = async {
        let mut delays = Policy::RESTART.delays();
        while let Err(error) = mesh
            .publish_event(EventKind::AggregationReady, plan_id, &event)
            .await
        {
            tracing::warn!(%error, plan_id, "Cannot publish aggregation_ready; retrying.");
            let delay = delays.next_or_max(&Policy::RESTART);
            if shutdown
                .run_until_cancelled(tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return;
            }
        }
    };
    let (written, ()) = tokio::join!(write_counts(mesh, &counts), announce);
    if let Err(error) = written {
        tracing::warn!(%error, plan_id, "Cannot write final plan counts.");
    }
    tracing::info!(
        plan_id,
        total = counts.total_tasks,
        completed = counts.completed,
        failed = counts.failed,
        "Every task of the plan is done."
    );
    metrics::counter!(telemetry::PLANS_COMPLETED).increment(1);
    metrics::gauge!(telemetry::PLANS_TRACKED, "role" => "aggregator").decrement(1.0);
}

/// Stores a completed plan's result bundle in `mesh_plans`; returns how many
/// parts, 0 when it could not be stored (the summary then scans).
async fn store_bundle(mesh: &Mesh, plan_id: &str, bundle: &ResultBundle) -> u32 {
    let max = match mesh.config.aggregator.bundle_part_bytes {
        0 => mesh.client.server_info().max_payload.saturating_sub(4096),
        n => n,
    };
    let Some(parts) = bundle.parts(max) else {
        tracing::debug!(plan_id, "A result is larger than a bundle part; no bundle.");
        return 0;
    };
    let count = parts.len() as u32;
    let stored = futures::future::try_join_all(parts.into_iter().enumerate().map(|(n, part)| {
        mesh.plans
            .put(mesh.names.bundle_key(plan_id, n as u32), part)
    }))
    .await;
    match stored {
        Ok(_) => count,
        Err(error) => {
            tracing::warn!(%error, plan_id, "Cannot store a result bundle; the summary will read the results from the bucket.");
            0
        }
    }
}

async fn flush_counts(mesh: &Mesh, tallies: &mut HashMap<String, Tally>) {
    for (plan_id, tally) in tallies.iter_mut().filter(|(_, t)| t.dirty) {
        tally.dirty = false;
        if let Err(error) = write_counts(mesh, &tally.counts(plan_id, PlanStatus::Running)).await {
            tracing::warn!(%error, plan_id, "Cannot write plan counts.");
            tally.dirty = true;
        }
    }
}

async fn write_counts(mesh: &Mesh, counts: &PlanCounts) -> Result<()> {
    mesh.results
        .put(
            mesh.names.plan_key(&counts.plan_id),
            codec::to_json(counts)?,
        )
        .await
        .map_err(|e| jetmesh_shared::Error::unavailable("cannot write plan counts", e))?;
    Ok(())
}
