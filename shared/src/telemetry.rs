//! Logs and metrics. Logs are structured `tracing` events whose messages read as
//! sentences and whose error field is `error`. Metrics are Prometheus counters,
//! gauges and histograms named `jetmesh_<name>_<unit>`, served on
//! `telemetry.metrics_listen` when it is set.

use crate::config::TelemetryConfig;
use std::net::SocketAddr;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

pub const TASKS_EXECUTED: &str = "jetmesh_tasks_executed_total";
pub const TASK_DURATION: &str = "jetmesh_task_duration_seconds";
pub const TASKS_DISPATCHED: &str = "jetmesh_tasks_dispatched_total";
pub const TASKS_REJECTED: &str = "jetmesh_tasks_rejected_total";
pub const RESULTS_DUPLICATE: &str = "jetmesh_results_duplicate_total";
pub const PLANS_ACCEPTED: &str = "jetmesh_plans_accepted_total";
pub const PLANS_REJECTED: &str = "jetmesh_plans_rejected_total";
pub const PLANS_COMPLETED: &str = "jetmesh_plans_completed_total";
pub const REPORTS_PUBLISHED: &str = "jetmesh_reports_published_total";
pub const REQUESTS: &str = "jetmesh_requests_total";
pub const RUN_LATENCY: &str = "jetmesh_run_latency_seconds";
pub const PLANS_TRACKED: &str = "jetmesh_plans_tracked";
pub const DEAD_LETTERS: &str = "jetmesh_dead_letters_total";
pub const WORKERS_DEAD: &str = "jetmesh_workers_dead_total";
pub const WORKERS_LIVE: &str = "jetmesh_workers_live";
pub const POOL_OVERLOADED: &str = "jetmesh_pool_overloaded";
pub const POOL_REFUSING: &str = "jetmesh_pool_refusing";
pub const POOL_QUEUE_DEPTH: &str = "jetmesh_pool_queue_depth";
pub const POOL_WORKERS: &str = "jetmesh_pool_workers";
pub const POOL_BUSY: &str = "jetmesh_pool_busy";
pub const SCALE_DECISIONS: &str = "jetmesh_scale_decisions_total";
pub const ALERTS: &str = "jetmesh_alerts_total";
pub const TASKS_HELD: &str = "jetmesh_tasks_held";
pub const MESSAGES_HANDLED: &str = "jetmesh_messages_handled_total";
pub const RESULTS_UNRECORDED: &str = "jetmesh_results_unrecorded_total";
pub const DEGRADED: &str = "jetmesh_degraded";
pub const REGISTRY_INVALID: &str = "jetmesh_registry_invalid_total";

/// Installs the log subscriber (once per process) and, if configured, the
/// Prometheus listener. A listener that cannot bind is a warning, not a failure:
/// several roles on one host may share a config.
pub fn init(config: &TelemetryConfig) {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let spec = std::env::var("RUST_LOG")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| if config.log.is_empty() { "info".into() } else { config.log.clone() });
        // The browser driver logs every CDP message it does not model and
        // the reset of a browser the worker killed on purpose: noise, unless
        // asked for by name. The web capability reports what matters.
        let spec = if spec.contains("chromiumoxide") {
            spec
        } else {
            format!("{spec},chromiumoxide=off")
        };
        let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = if config.log_format == "json" {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
        if !config.metrics_listen.is_empty() {
            match config.metrics_listen.parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Err(error) = metrics_exporter_prometheus::PrometheusBuilder::new()
                        .with_http_listener(addr)
                        .install()
                    {
                        tracing::warn!(%error, %addr, "Cannot serve Prometheus metrics.");
                    } else {
                        tracing::info!(%addr, "Serving Prometheus metrics on /metrics.");
                    }
                }
                Err(error) => tracing::warn!(%error, listen = %config.metrics_listen, "telemetry.metrics_listen is not an address."),
            }
        }
    });
}
