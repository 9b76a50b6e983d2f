//! The summary role: on `aggregation_ready` it reads the plan and every task
//! result, writes the final report (JSON, with a markdown rendering for people)
//! to `report.<plan_id>` in `mesh_results`, and publishes it as
//! `mesh.evt.final_report.<plan_id>`. Reports are rebuilt from the stores, so a
//! redelivered event produces the same report, and the event is de-duplicated.

pub mod render;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use jetmesh_shared::codec;
use jetmesh_shared::error::{Context, Result};
use jetmesh_shared::names::{self, EventKind};
use jetmesh_shared::wire::{AggregationReady, PlanOutline, PlanRecord, Report, TaskResult};
use jetmesh_shared::{Error, ErrorCode, Mesh, service, shutdown, telemetry};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the summary role until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let instance = shutdown::instance_id("summary");
    let svc = service::start(&mesh.client, "summary", &instance, "jetmesh summary").await?;
    let consumer = mesh
        .event_consumer(&mesh.names.summary_consumer(), EventKind::AggregationReady)
        .await?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read aggregation_ready")?;
    mesh.publish_health("summary", &instance, "started").await;
    tracing::info!(instance = %instance, "The summary agent is writing reports.");
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(error)) => {
                tracing::warn!(%error, "Reading aggregation_ready failed.");
                continue;
            }
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                messages = consumer
                    .messages()
                    .await
                    .context("cannot read aggregation_ready")?;
                continue;
            }
        };
        let plan_id = names::last_token(&msg.subject).to_string();
        let outcome = match codec::from_json::<AggregationReady>(&msg.payload) {
            Ok(_) => summarize(&mesh, &plan_id).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                let _ = msg.ack().await;
            }
            Err(e) if e.code == ErrorCode::NotFound || e.code == ErrorCode::BadRequest => {
                tracing::error!(error = %e, plan_id, "No report can be written for this event; skipped.");
                let _ = msg.ack().await;
            }
            Err(error) => {
                tracing::warn!(%error, plan_id, "Writing a report failed; it will be retried.");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
    mesh.publish_health("summary", &instance, "stopping").await;
    let _ = svc.stop().await;
    Ok(())
}

/// Builds, stores and publishes the report of `plan_id`.
pub async fn summarize(mesh: &Mesh, plan_id: &str) -> Result<()> {
    // Both reads at once: every result is stored before `aggregation_ready`.
    let (key, filter) = (
        mesh.names.plan_key(plan_id),
        mesh.names.task_key_plan(plan_id),
    );
    let (record, entries) = tokio::join!(
        mesh.get_json::<PlanRecord<PlanOutline>>(&mesh.plans, &key),
        mesh.scan(&mesh.results, &filter)
    );
    let record = record?
        .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("plan {plan_id} is not stored")))?;
    let entries = entries?;
    let mut results = HashMap::with_capacity(entries.len());
    for e in entries {
        if let Some((_, task)) = names::parse_task_key(&e.key)
            && let Ok(r) = codec::from_json::<TaskResult>(&e.value)
        {
            results.insert(task.to_string(), r);
        }
    }
    let report = render::report(&record, &results, jiff::Timestamp::now());
    publish(mesh, &report).await?;
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
