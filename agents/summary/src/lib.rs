//! The summary role: on `aggregation_ready` it reads the plan and every task
//! result, writes the final report (JSON, with a markdown rendering for people)
//! to `report.<plan_id>` in `mesh_results`, and publishes it as
//! `mesh.evt.final_report.<plan_id>`. Reports are rebuilt from the stores, so a
//! redelivered event produces the same report, and the event is de-duplicated.
//!
//! The results come from the plan's result bundle when the event names one
//! (`bundle_parts`, stored by the aggregator in `mesh_plans`), else from a
//! scan of `task.<plan_id>.*`. A bundle that is missing, malformed or lacks a
//! task is set aside for the scan. Its parts are removed once the report is out.
//!
//! With an LLM provider configured (`[planner] order`) and
//! `summary.narrative` on, the report also gets a narrative ([`narrative`]).

pub mod narrative;
pub mod render;

use jetmesh_llm::Llm;
use jetmesh_shared::codec;
use jetmesh_shared::consume::{self, Durable, Outcome};
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::wire::{
    AggregationReady, PlanOutline, PlanRecord, Report, ResultBundle, TaskResult,
};
use jetmesh_shared::{Error, ErrorCode, Mesh, service, telemetry};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Runs the summary role until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Summary);
    let svc = service::start(&mesh, "jetmesh summary").await?;
    mesh.publish_health("started").await;
    tracing::info!(instance = %mesh.identity.instance, "The summary agent is writing reports.");
    let durable = Durable::events(
        &mesh,
        mesh.names.summary_consumer(),
        EventKind::AggregationReady,
    );
    let narrator = match mesh.config.summary.narrative {
        true => Llm::from_config(
            &mesh.config.planner,
            Some((mesh.plans.clone(), mesh.names.clone())),
        )?,
        false => None,
    };
    // Without a narrative a report is a few reads and writes: one at a time
    // keeps them in order. A narrative waits on a model: several at once.
    let concurrency = match narrator {
        Some(_) => mesh.config.summary.concurrency.max(1),
        None => 1,
    };
    let m = mesh.clone();
    let consumed = consume::durable(&mesh, durable, concurrency, &shutdown, move |msg| {
        let mesh = m.clone();
        let narrator = narrator.clone();
        async move { on_aggregation_ready(&mesh, narrator.as_ref(), &msg).await }
    })
    .await;
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    consumed
}

/// Writes the report an `aggregation_ready` event asks for.
async fn on_aggregation_ready(
    mesh: &Mesh,
    narrator: Option<&Llm>,
    msg: &async_nats::jetstream::Message,
) -> Outcome {
    let plan_id = names::last_token(&msg.subject).to_string();
    let outcome = match codec::from_json::<AggregationReady>(&msg.payload) {
        Ok(event) => {
            let work = summarize(mesh, narrator, &plan_id, event.bundle_parts);
            match narrator {
                None => work.await,
                // A model may take longer than the consumer's ack wait:
                // say the event is being worked on.
                Some(_) => {
                    let mut work = std::pin::pin!(work);
                    let mut tick = tokio::time::interval(Duration::from_secs(10));
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            r = &mut work => break r,
                            _ = tick.tick() => {
                                let _ = msg.ack_with(async_nats::jetstream::AckKind::Progress).await;
                            }
                        }
                    }
                }
            }
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Outcome::Ack,
        Err(e) if e.code == ErrorCode::NotFound || e.code == ErrorCode::BadRequest => {
            tracing::error!(error = %e, plan_id, "No report can be written for this event; skipped.");
            Outcome::Terminate(e.to_string())
        }
        Err(error) => {
            tracing::warn!(%error, plan_id, "Writing a report failed; it will be retried.");
            Outcome::Retry(Duration::from_secs(1))
        }
    }
}

/// Per task id, its stored result (`None` when it does not decode).
type Results = HashMap<String, Option<TaskResult>>;

/// Builds, stores and publishes the report of `plan_id`, reading its results
/// from the `bundle_parts` parts of its result bundle when there are any.
pub async fn summarize(
    mesh: &Mesh,
    narrator: Option<&Llm>,
    plan_id: &str,
    bundle_parts: u32,
) -> Result<()> {
    // A part holds at least one result: more parts than a plan may have
    // tasks is not a bundle the aggregator wrote.
    let bundle_parts = if bundle_parts as usize > mesh.config.mesh.max_subtasks {
        tracing::warn!(
            plan_id,
            bundle_parts,
            "An aggregation_ready event names more bundle parts than a plan may have tasks; its results are read from the bucket."
        );
        0
    } else {
        bundle_parts
    };
    // The plan and its results at once: every result is stored before
    // `aggregation_ready`.
    let key = mesh.names.plan_key(plan_id);
    let results = async {
        if bundle_parts > 0 {
            match read_bundle(mesh, plan_id, bundle_parts).await {
                Ok(results) => return Ok((results, true)),
                // Gone when this event is handled again after its report.
                Err(error) if error.code == ErrorCode::NotFound => {
                    tracing::debug!(%error, plan_id, "The plan's result bundle is gone; its results are read from the bucket.")
                }
                Err(error) => {
                    tracing::warn!(%error, plan_id, "The plan's result bundle is unreadable; its results are read from the bucket.")
                }
            }
        }
        scan_results(mesh, plan_id).await.map(|r| (r, false))
    };
    let (record, results) = tokio::join!(
        mesh.get_json::<PlanRecord<PlanOutline>>(&mesh.plans, &key),
        results
    );
    let record = record?
        .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("plan {plan_id} is not stored")))?;
    let (mut results, bundled) = results?;
    if bundled
        && let Some(task) = record
            .plan
            .subtasks
            .iter()
            .find(|t| !results.contains_key(&t.id))
    {
        tracing::warn!(plan_id, task_id = %task.id, "The plan's result bundle lacks a task; its results are read from the bucket.");
        results = scan_results(mesh, plan_id).await?;
    }
    let results: HashMap<String, TaskResult> = results
        .into_iter()
        .filter_map(|(id, r)| Some((id, r?)))
        .collect();
    let span = tracing::info_span!("plan.report", plan_id);
    jetmesh_shared::trace::set_parent_from(&span, record.trace.as_deref());
    let mut report = render::report(&record, &results, jiff::Timestamp::now());
    async {
        if let Some(llm) = narrator {
            let previous: Option<Report> = mesh
                .get_json(&mesh.results, &mesh.names.report_key(plan_id))
                .await
                .ok()
                .flatten();
            narrative::add(mesh, llm, &record, &mut report, previous).await;
            report.markdown = render::markdown(&report);
        }
        publish(mesh, &report).await
    }
    .instrument(span)
    .await?;
    for part in 0..bundle_parts {
        if let Err(error) = mesh.plans.purge(mesh.names.bundle_key(plan_id, part)).await {
            tracing::debug!(%error, plan_id, part, "Cannot remove a result bundle part; it expires with the plan.");
        }
    }
    metrics::counter!(telemetry::REPORTS_PUBLISHED).increment(1);
    tracing::info!(
        plan_id,
        completed = report.completed,
        failed = report.failed,
        duration_ms = report.duration_ms,
        "The final report is out."
    );
    Ok(())
}

/// Reads every part of a plan's result bundle.
async fn read_bundle(mesh: &Mesh, plan_id: &str, parts: u32) -> Result<Results> {
    let bodies = futures::future::try_join_all((0..parts).map(|n| async move {
        mesh.plans
            .get(mesh.names.bundle_key(plan_id, n))
            .await
            .context("cannot read a result bundle part")?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("bundle part {n} is missing")))
    }))
    .await?;
    let mut results = HashMap::new();
    for body in &bodies {
        for (task, value) in ResultBundle::decode(body)? {
            results.insert(task.to_string(), Some(jetmesh_shared::results::read(value)));
        }
    }
    Ok(results)
}

/// Reads a plan's results from `mesh_results`.
async fn scan_results(mesh: &Mesh, plan_id: &str) -> Result<Results> {
    let entries = mesh
        .scan(&mesh.results, &mesh.names.task_key_plan(plan_id))
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let (_, task) = names::parse_task_key(&e.key)?;
            Some((
                task.to_string(),
                Some(jetmesh_shared::results::read(&e.value)),
            ))
        })
        .collect())
}

/// Stores and publishes the report; when it is larger than the server accepts,
/// the per-task list is left out (every result stays in `mesh_results`).
async fn publish(mesh: &Mesh, report: &Report) -> Result<()> {
    let max = mesh.client.server_info().max_payload.saturating_sub(4096);
    let mut body = codec::to_json(report)?;
    if body.len() > max {
        let mut short = report.clone();
        short.tasks.clear();
        short.truncated = true;
        short.markdown = render::markdown_header(&short);
        short.markdown.push_str(&format!(
            "\nThe per-task list is too large for one message; read {} in {}.\n",
            mesh.names.task_key_plan(&report.plan_id),
            mesh.results.name
        ));
        body = codec::to_json(&short)?;
    }
    mesh.results
        .put(mesh.names.report_key(&report.plan_id), body.clone())
        .await
        .context("cannot store the report")?;
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(body)
        .message_id(
            mesh.names
                .event_msg_id(EventKind::FinalReport, &report.plan_id),
        );
    mesh.js
        .send_publish(
            mesh.names.event(EventKind::FinalReport, &report.plan_id),
            msg,
        )
        .await
        .context("cannot publish the report")?
        .await
        .context("report not stored")?;
    Ok(())
}
