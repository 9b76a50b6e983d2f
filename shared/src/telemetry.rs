//! Logs, metrics and traces. Logs are structured `tracing` events whose
//! messages read as sentences and whose error field is `error`. Metrics are
//! Prometheus counters, gauges and histograms named `jetmesh_<name>_<unit>`,
//! served on `telemetry.metrics_listen` when it is set.
//!
//! Traces are `tracing` spans of the `jetmesh*` crates at `info` or above,
//! exported as OpenTelemetry spans over OTLP (HTTP/protobuf or gRPC) when
//! `telemetry.otlp_endpoint` is set, in batches on the tokio runtime. Logs
//! never show spans, and the log filter does not decide which spans are
//! exported, so a log line reads the same with export on or off. With no
//! endpoint nothing of OpenTelemetry is installed and a span costs a
//! disabled callsite's check. Trace context crosses roles in NATS headers
//! ([`crate::trace`]), so that one plan is one trace.

use crate::config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
/// LLM calls (and skips) by `provider`, `model` and `outcome`.
pub const LLM_CALLS: &str = "jetmesh_llm_calls_total";
/// LLM tokens by `provider`, `model` and `kind` (`input`, `output`).
pub const LLM_TOKENS: &str = "jetmesh_llm_tokens_total";
/// LLM cost in millionths of a US dollar, by `provider` and `model`.
pub const LLM_COST: &str = "jetmesh_llm_cost_microdollars_total";
/// LLM call latency by `provider` and `model`.
pub const LLM_LATENCY: &str = "jetmesh_llm_latency_seconds";
/// 1 while a provider's circuit breaker is open, by `provider`.
pub const LLM_BREAKER_OPEN: &str = "jetmesh_llm_breaker_open";
/// Goals planned by `outcome` (`ok` or an error code).
pub const GOALS_PLANNED: &str = "jetmesh_goals_planned_total";

/// Installs the log subscriber (once per process), the trace exporter if
/// `telemetry.otlp_endpoint` is set and, if configured, the Prometheus
/// listener. `service` is the spans' `service.name` unless
/// `telemetry.service_name` is set: `jetmesh-<role>`, `jetmesh-up`, or
/// `jetmesh` for the CLI. Call it inside the tokio runtime that lives as
/// long as the process (the exporter runs there), and [`shutdown`] before
/// that runtime ends. An exporter that cannot be set up or a listener that
/// cannot bind is a warning, not a failure: several roles on one host may
/// share a config.
pub fn init(config: &TelemetryConfig, service: &str) {
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
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let logs = if config.log_format == "json" {
            logs.json().boxed()
        } else {
            logs.boxed()
        };
        // Logs are events: spans are for the trace exporter only. (The hint
        // leaves the log filter's own level hint in force.)
        let events = filter_fn(|m| !m.is_span()).with_max_level_hint(LevelFilter::TRACE);
        let mut layers = vec![logs.with_filter(filter.and(events)).boxed()];
        let mut failed = None;
        if !config.otlp_endpoint.is_empty() {
            let service = if config.service_name.is_empty() {
                service
            } else {
                &config.service_name
            };
            match tracer_provider(config, service) {
                Ok(provider) => {
                    layers.push(traces_layer(&provider));
                    *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(provider);
                    opentelemetry::global::set_text_map_propagator(
                        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                    );
                    crate::trace::enable();
                }
                Err(error) => failed = Some(error),
            }
        }
        let _ = tracing_subscriber::registry().with(layers).try_init();
        if let Some(error) = failed {
            tracing::warn!(%error, endpoint = %config.otlp_endpoint, "Cannot export traces; running without.");
        } else if crate::trace::enabled() {
            tracing::info!(endpoint = %config.otlp_endpoint, protocol = %config.otlp_protocol, "Exporting traces over OTLP.");
        }
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

/// The trace provider [`init`] installed, until [`shutdown`].
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// How long [`shutdown`] waits for the last spans to go out.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// Exports the spans still batched and stops the trace exporter, waiting
/// [`SHUTDOWN`] (2 s) at most: the collector may be gone. Call it once the
/// roles have stopped, inside the runtime [`init`] ran in. A no-op when
/// trace export is off or already shut down.
pub async fn shutdown() {
    let Some(provider) = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    // The provider waits for the batch task, which runs on this runtime: wait
    // on a blocking thread, so that a runtime of one worker can still run it.
    let flushed = tokio::time::timeout(
        SHUTDOWN,
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN)),
    )
    .await;
    match flushed {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "The last spans may not have been exported."),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("The last spans were not exported in time; they are dropped.")
        }
    }
}

/// The OTLP exporter for `config`, batched on the current tokio runtime.
fn tracer_provider(config: &TelemetryConfig, service: &str) -> Result<SdkTracerProvider, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("trace export needs a tokio runtime".into());
    }
    let endpoint = config.otlp_endpoint.trim();
    let exporter = match config.otlp_protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(endpoint))
            .build(),
    }
    .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    // The batch task runs on this runtime (a current-thread one too:
    // nothing here blocks it, and `shutdown` waits on a blocking thread).
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build(),
        );
    Ok(builder.build())
}

/// The OTLP/HTTP traces URL of a collector's base URL: `/v1/traces`
/// appended, unless it is there already. (The exporter appends it only to an
/// endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`, not to one it is given.)
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The layer turning spans into OpenTelemetry spans: those of the `jetmesh*`
/// crates at `info` or above, whatever the log filter (warnings and errors
/// in them become span events).
fn traces_layer(provider: &SdkTracerProvider) -> Box<dyn Layer<Registry> + Send + Sync> {
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jetmesh"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(
            filter_fn(|m| {
                m.target().starts_with("jetmesh")
                    && if m.is_span() {
                        *m.level() <= tracing::Level::INFO
                    } else {
                        *m.level() <= tracing::Level::WARN
                    }
            })
            .with_max_level_hint(LevelFilter::INFO),
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoint_is_a_base_url_or_the_traces_url() {
        for (given, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://cloud.langfuse.com/api/public/otel",
                "https://cloud.langfuse.com/api/public/otel/v1/traces",
            ),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(http_traces_url(given), url);
        }
    }
}
