//! Trace context across roles, so that one plan is one trace: W3C trace
//! context (`traceparent`, and `tracestate` when there is one) carried in the
//! NATS headers of internal messages, or stored as a `traceparent` string in
//! a record (`PlanRecord::trace`).
//!
//! Every function here is a no-op (one relaxed atomic load) unless trace
//! export is on ([`crate::telemetry::init`] with `telemetry.otlp_endpoint`
//! set), so the hot path pays nothing when it is off. Messages are never
//! required to carry trace headers: a message without them (a foreign client,
//! a public subject) just starts a new trace.
//!
//! How a role joins a trace:
//!
//! ```ignore
//! use tracing::Instrument;
//! // Receiving: create the span, give it its parent, *then* enter it.
//! // (`parent: None`: without trace headers it is a root, not a child of
//! // whatever span happens to be current in the consumer loop.)
//! let span = tracing::info_span!(parent: None, "task.execute", plan_id = %plan, otel.kind = "consumer");
//! jetmesh_shared::trace::set_parent(&span, msg.headers.as_ref());
//! async move {
//!     // Sending from inside the span: the message carries its context.
//!     let mut headers = async_nats::HeaderMap::new();
//!     jetmesh_shared::trace::inject(&mut headers);
//!     client.publish_with_headers(subject, headers, body).await
//! }
//! .instrument(span)
//! .await
//! ```
//!
//! Numbers in span fields should be signed (`n as i64`): OpenTelemetry has no
//! unsigned attributes, and unsigned values are exported as strings.
//!
//! Spans are `tracing` spans, exported only from the `jetmesh*` crates at
//! `info` level or above and never shown in the logs (see
//! [`crate::telemetry`]). A span of another crate, or a `debug` span, has no
//! trace context: [`inject`] and [`traceparent`] then write nothing.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header carrying trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace export is on in this process: spans are exported and
/// contexts propagated. Off, every function here returns at once.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns propagation on; [`crate::telemetry::init`] calls it once the
/// exporter is installed.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Writes the trace context of the current span ([`tracing::Span::current`])
/// into `headers`: `traceparent`, and `tracestate` when there is one. Call
/// it inside the span the receiver's span should be a child of (from an
/// `.instrument(span)` future, or with the span entered). Nothing is written
/// when export is off or the current span has no valid context (no span,
/// a span that is not exported).
///
/// For internal messages only: a public subject must not need these headers.
pub fn inject(headers: &mut HeaderMap) {
    if enabled() {
        inject_context(&tracing::Span::current().context(), headers);
    }
}

/// The current span's trace context as a W3C `traceparent` string
/// (`00-<trace id>-<span id>-<flags>`), to store in a record that a later
/// role reads (`PlanRecord::trace`) and hands to [`set_parent_from`].
/// `None` when export is off or the current span has no valid context.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    traceparent_of(&tracing::Span::current().context())
}

/// Makes `span` a child of the trace context in `headers` (from
/// [`inject`]). A no-op when export is off, `headers` is `None`, or they
/// carry no valid `traceparent`: `span` then keeps its own parent (the
/// current span when it was created), or starts a trace.
///
/// Call it right after creating `span` and before entering it (or asking
/// its context): a span that has started cannot change its parent.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if enabled()
        && let Some(headers) = headers
    {
        adopt(span, propagator().extract(&Headers(headers)));
    }
}

/// Makes `span` a child of a stored `traceparent` string (from
/// [`traceparent`]); otherwise as [`set_parent`].
pub fn set_parent_from(span: &tracing::Span, traceparent: Option<&str>) {
    if enabled()
        && let Some(traceparent) = traceparent
    {
        adopt(span, context_of(traceparent));
    }
}

/// Trace context on the wire is always W3C, whatever the global propagator.
/// (A field-less value: making one costs nothing.)
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    if cx.span().span_context().is_valid() {
        propagator().inject_context(cx, &mut HeadersMut(headers));
    }
}

fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Traceparent(None);
    propagator().inject_context(cx, &mut out);
    out.0
}

fn context_of(traceparent: &str) -> Context {
    propagator().extract(&Traceparent(Some(traceparent.to_string())))
}

fn adopt(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only for a span that is not exported or already started:
        // it then keeps the parent it has.
        let _ = span.set_parent(parent);
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Written in lower case; read in any case a foreign client used.
        self.0.get(key).map(|v| v.as_str()).or_else(|| {
            self.0
                .iter()
                .find(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(key))
                .and_then(|(_, values)| values.first())
                .map(|v| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// A carrier of the `traceparent` alone (a stored one has no `tracestate`).
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Runs `f` under a subscriber that gives `tracing` spans OpenTelemetry
    /// contexts (no exporter), with propagation on.
    fn traced<T>(f: impl FnOnce() -> T) -> T {
        enable();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn ids(span: &tracing::Span) -> (String, String) {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }

    #[test]
    fn headers_carry_the_current_span_to_a_child_elsewhere() {
        traced(|| {
            let sender = tracing::info_span!("task.dispatch");
            let (trace_id, span_id) = ids(&sender);
            let mut headers = HeaderMap::new();
            sender.in_scope(|| inject(&mut headers));
            let sent = headers.get(TRACEPARENT).expect("traceparent").as_str();
            assert_eq!(sent, format!("00-{trace_id}-{span_id}-01"));

            // The receiver, with no span of its own in scope.
            let receiver = tracing::info_span!(parent: None, "task.execute");
            set_parent(&receiver, Some(&headers));
            let (receiver_trace, receiver_span) = ids(&receiver);
            assert_eq!(receiver_trace, trace_id, "one trace");
            assert_ne!(receiver_span, span_id);
        });
    }

    #[test]
    fn a_stored_traceparent_parents_a_later_span() {
        traced(|| {
            let root = tracing::info_span!("plan.submit");
            let stored = root.in_scope(traceparent).expect("a traceparent");
            let (trace_id, span_id) = ids(&root);
            assert_eq!(stored, format!("00-{trace_id}-{span_id}-01"));

            let later = tracing::info_span!(parent: None, "plan.dispatch");
            set_parent_from(&later, Some(&stored));
            assert_eq!(ids(&later).0, trace_id);
        });
    }

    #[test]
    fn headers_in_another_case_are_read_too() {
        traced(|| {
            let mut headers = HeaderMap::new();
            let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            headers.insert("Traceparent", tp);
            let span = tracing::info_span!(parent: None, "task.execute");
            set_parent(&span, Some(&headers));
            assert_eq!(ids(&span).0, "0af7651916cd43dd8448eb211c80319c");
        });
    }

    #[test]
    fn without_a_valid_context_nothing_is_written_or_adopted() {
        traced(|| {
            // No current span.
            let mut headers = HeaderMap::new();
            inject(&mut headers);
            assert!(headers.is_empty());
            assert_eq!(traceparent(), None);

            // Absent or invalid contexts leave the span a root of its own.
            for bad in [
                None,
                Some("garbage"),
                Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            ] {
                let span = tracing::info_span!(parent: None, "task.execute");
                set_parent_from(&span, bad);
                let (trace_id, _) = ids(&span);
                assert_ne!(trace_id, "00000000000000000000000000000000");
            }
            let span = tracing::info_span!(parent: None, "task.execute");
            set_parent(&span, None);
            set_parent(&span, Some(&HeaderMap::new()));
            assert!(span.context().span().span_context().is_valid());
        });
    }

    #[test]
    fn a_span_the_layer_does_not_see_has_no_context() {
        enable();
        // No OpenTelemetry layer at all: nothing to inject.
        let span = tracing::info_span!("alone");
        let mut headers = HeaderMap::new();
        span.in_scope(|| inject(&mut headers));
        assert!(headers.is_empty());
        assert_eq!(span.in_scope(traceparent), None);
    }
}
