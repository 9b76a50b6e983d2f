//! The aggregator role: it notices when a plan is complete. It follows
//! `mesh_plans` (which plans run, and their tasks) and every task result in
//! `mesh_results`, keeps each plan's counts (`completed`, `failed`, `pending`)
//! up to date in `plan.<plan_id>`, and publishes `aggregation_ready` once every
//! task is terminal. A result that arrives before its plan is known is found
//! again by the scan made when the plan appears, so arrival order never matters;
//! results of single tasks (no plan record) are ignored at no cost.

use futures::StreamExt;
use jetmesh_shared::codec;
use jetmesh_shared::error::Result;
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::wire::{AggregationReady, PlanCounts, PlanRecord, PlanStatus, TaskResult};
use jetmesh_shared::{Mesh, service, shutdown, telemetry};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Counts of one running plan.
struct Tally {
    tasks: HashSet<String>,
    done: HashMap<String, bool>,
    dirty: bool,
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

    fn apply(&mut self, task_id: &str, ok: bool) {
        if self.tasks.contains(task_id) && !self.done.contains_key(task_id) {
            self.done.insert(task_id.to_string(), ok);
            self.dirty = true;
        }
    }

    fn complete(&self) -> bool {
        self.done.len() == self.tasks.len()
    }
}

/// Runs the aggregator until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let instance = shutdown::instance_id("aggregator");
    let svc = service::start(&mesh.client, "aggregator", &instance, "jetmesh aggregator").await?;
    // Results first (from now), then plans with their history: a plan seen in
    // the replay is scanned for results written before the results watch began.
    let mut results = mesh
        .watch_new(&mesh.results, &mesh.names.task_key_all())
        .await?;
    let mut plans = mesh
        .plans
        .watch(mesh.names.plan_key_all())
        .await
        .map_err(|e| jetmesh_shared::Error::unavailable("cannot watch plans", e))?;
    mesh.publish_health("aggregator", &instance, "started")
        .await;
    tracing::info!(instance = %instance, "The aggregator is counting.");

    let mut tallies: HashMap<String, Tally> = HashMap::new();
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    let mut last_result_rev = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush.tick() => flush_counts(&mesh, &mut tallies).await,
            entry = plans.next() => match entry {
                Some(Ok(entry)) => {
                    let Some(plan_id) = names::parse_plan_key(&entry.key) else { continue };
                    let record = codec::from_json::<PlanRecord>(&entry.value).ok();
                    match record {
                        Some(r) if r.status == PlanStatus::Running => {
                            if !tallies.contains_key(plan_id) {
                                let tally = start_tally(&mesh, r).await;
                                tallies.insert(plan_id.to_string(), tally);
                                finish_if_complete(&mesh, &mut tallies, plan_id).await;
                            }
                        }
                        _ => { tallies.remove(plan_id); }
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "The plans watch failed; it resumes."),
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(w) = mesh.plans.watch(mesh.names.plan_key_all()).await { plans = w; }
                }
            },
            entry = results.next() => match entry {
                Some(Ok(entry)) => {
                    last_result_rev = entry.revision;
                    let Some((plan_id, task_id)) = names::parse_task_key(&entry.key) else { continue };
                    let Some(tally) = tallies.get_mut(plan_id) else { continue };
                    let ok = codec::from_json::<TaskResult>(&entry.value).map(|r| r.is_success()).unwrap_or(false);
                    tally.apply(task_id, ok);
                    if tally.complete() {
                        let plan_id = plan_id.to_string();
                        finish_if_complete(&mesh, &mut tallies, &plan_id).await;
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "The results watch failed; it resumes."),
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(w) = mesh.results.watch_from_revision(mesh.names.task_key_all(), last_result_rev + 1).await { results = w; }
                }
            },
        }
    }
    flush_counts(&mesh, &mut tallies).await;
    mesh.publish_health("aggregator", &instance, "stopping")
        .await;
    let _ = svc.stop().await;
    Ok(())
}

async fn start_tally(mesh: &Mesh, record: PlanRecord) -> Tally {
    let plan_id = record.plan.plan_id.clone();
    let mut tally = Tally {
        tasks: record.plan.subtasks.iter().map(|t| t.id.clone()).collect(),
        done: HashMap::new(),
        dirty: true,
    };
    match mesh
        .scan(&mesh.results, &mesh.names.task_key_plan(&plan_id))
        .await
    {
        Ok(entries) => {
            for e in entries {
                if let Some((_, task)) = names::parse_task_key(&e.key) {
                    let ok = codec::from_json::<TaskResult>(&e.value)
                        .map(|r| r.is_success())
                        .unwrap_or(false);
                    tally.apply(task, ok);
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, plan_id, "Cannot scan a plan's results; counting from now.")
        }
    }
    metrics::gauge!(telemetry::PLANS_TRACKED, "role" => "aggregator").increment(1.0);
    tally
}

async fn finish_if_complete(mesh: &Mesh, tallies: &mut HashMap<String, Tally>, plan_id: &str) {
    let Some(tally) = tallies.get(plan_id) else {
        return;
    };
    if !tally.complete() {
        return;
    }
    let counts = tally.counts(plan_id, PlanStatus::Completed);
    let event = AggregationReady {
        plan_id: plan_id.to_string(),
        total_tasks: counts.total_tasks,
        completed: counts.completed,
        failed: counts.failed,
        at: jiff::Timestamp::now(),
    };
    if let Err(error) = write_counts(mesh, &counts).await {
        tracing::warn!(%error, plan_id, "Cannot write final plan counts.");
    }
    // Retry until stored: losing this event would leave the plan unreported.
    let mut delay = Duration::from_millis(100);
    loop {
        match mesh
            .publish_event(EventKind::AggregationReady, plan_id, &event)
            .await
        {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, plan_id, "Cannot publish aggregation_ready; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
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
    tallies.remove(plan_id);
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
