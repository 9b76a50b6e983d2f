//! A real OTLP trace receiver for tests.
//!
//! [`OtlpReceiver::start`] opens two listeners on 127.0.0.1 with ports chosen
//! by the system:
//!
//! * OTLP/HTTP: `POST /v1/traces` with `Content-Type: application/x-protobuf`
//!   (also `application/protobuf`) or `application/json` (the OTLP JSON
//!   encoding: hex ids, enums as numbers, lowerCamelCase field names), the body
//!   optionally `Content-Encoding: gzip`. Success is 200 with an empty
//!   `ExportTraceServiceResponse` in the request's encoding; a body that does not
//!   decode is 400 with a `google.rpc.Status` in the request's encoding; an
//!   unknown content type or content encoding is 415; another path is 404 and
//!   another method on `/v1/traces` is 405.
//! * OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`,
//!   accepting gzip-compressed messages too.
//!
//! Every span received is flattened into a [`Span`] and kept in memory until the
//! receiver is dropped, which stops both listeners.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use serde_json::Value;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

// The exporter crates, for tests that send spans themselves: the integration
// tests are a target of the `jetmesh` package, which does not depend on them.
pub use {opentelemetry, opentelemetry_otlp, opentelemetry_sdk};

/// The largest export request accepted, compressed or not (64 MiB).
const MAX_BODY: usize = 64 << 20;

/// One received span, flattened.
#[derive(Clone, Debug)]
pub struct Span {
    /// The trace id as 32 lower-case hex digits.
    pub trace_id: String,
    /// The span id as 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span id as 16 lower-case hex digits; "" for a root.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// The OTLP `SpanKind` number (0 unspecified, 1 internal, 2 server,
    /// 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// The resource attribute `service.name`; "" when the resource has none.
    pub service: String,
    /// Attribute key -> JSON value: string, integer, double, bool, arrays of
    /// these, objects for key-value lists, base64 strings for bytes, null for
    /// an empty value or a non-finite double.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The OTLP `StatusCode` number (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End time, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
}

/// What both listeners record into.
#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<Span>>,
    http_requests: AtomicUsize,
    grpc_requests: AtomicUsize,
}

impl Shared {
    fn spans(&self) -> MutexGuard<'_, Vec<Span>> {
        // A panic elsewhere while holding the lock leaves whole spans behind.
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: ExportTraceServiceRequest) {
        let spans = flatten(request);
        self.spans().extend(spans);
    }
}

/// An OTLP trace receiver listening on 127.0.0.1 over HTTP and gRPC.
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts both listeners on their own thread with its own tokio runtime; stops on drop.
    ///
    /// Both ports are bound before this returns, so exporters may connect at
    /// once. Panics if a port cannot be bound or the runtime cannot be built.
    pub fn start() -> OtlpReceiver {
        let bind = || {
            let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener
                .set_nonblocking(true)
                .expect("set listener non-blocking");
            listener
        };
        let (http_listener, grpc_listener) = (bind(), bind());
        let http_addr = http_listener.local_addr().expect("HTTP listener address");
        let grpc_addr = grpc_listener.local_addr().expect("gRPC listener address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the receiver's tokio runtime");

        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let http_listener = tokio::net::TcpListener::from_std(http_listener)
                        .expect("register the HTTP listener");
                    let grpc_listener = tokio::net::TcpListener::from_std(grpc_listener)
                        .expect("register the gRPC listener");
                    let app = Router::new()
                        .route("/v1/traces", post(http_export))
                        .layer(DefaultBodyLimit::max(MAX_BODY))
                        .with_state(Arc::clone(&state));
                    let grpc = TraceServiceServer::new(GrpcTraces(state))
                        .accept_compressed(CompressionEncoding::Gzip)
                        .max_decoding_message_size(MAX_BODY);
                    let grpc = tonic::transport::Server::builder()
                        .serve_with_incoming(grpc, TcpIncoming::from(grpc_listener));
                    // No graceful shutdown: exporters keep idle connections
                    // open, and waiting for them could hang the drop. Leaving
                    // this block drops the runtime and with it every connection.
                    tokio::select! {
                        result = axum::serve(http_listener, app).into_future() => {
                            if let Err(error) = result {
                                eprintln!("otlp receiver: HTTP listener failed: {error}");
                            }
                        }
                        result = grpc => {
                            if let Err(error) = result {
                                eprintln!("otlp receiver: gRPC listener failed: {error}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the receiver thread");

        OtlpReceiver {
            shared,
            http_addr,
            grpc_addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener (an exporter's endpoint is this + "/v1/traces").
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.shared.spans().clone()
    }

    /// Waits (polling, up to `within`) until `pred(&spans)` holds; returns the spans then, or the spans at the deadline.
    ///
    /// Blocks the calling thread; from async code call it inside
    /// `tokio::task::spawn_blocking` or a multi-thread runtime.
    pub fn wait_for(&self, within: Duration, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            let now = Instant::now();
            if now >= deadline {
                return spans;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// How many export requests arrived per protocol ("http", "grpc").
    ///
    /// Counts the requests that decoded and whose spans were recorded; any
    /// other protocol name gives 0.
    pub fn requests(&self, protocol: &str) -> usize {
        match protocol {
            "http" => self.shared.http_requests.load(Ordering::SeqCst),
            "grpc" => self.shared.grpc_requests.load(Ordering::SeqCst),
            _ => 0,
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The encodings of an OTLP/HTTP body.
#[derive(Clone, Copy)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// A `google.rpc.Status`, the body of an OTLP/HTTP error response.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// `POST /v1/traces`.
async fn http_export(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = header_value(&headers, header::CONTENT_TYPE);
    let encoding = match media_type(&content_type).as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {content_type:?}: \
                     use application/x-protobuf or application/json"
                ),
            );
        }
    };
    let content_encoding = header_value(&headers, header::CONTENT_ENCODING);
    let body = match media_type(&content_encoding).as_str() {
        "" | "identity" => body.to_vec(),
        "gzip" | "x-gzip" => match gunzip(&body) {
            Ok(body) => body,
            Err(error) => return http_error(encoding, format!("bad gzip body: {error}")),
        },
        _ => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {content_encoding:?}: use gzip or none"),
            );
        }
    };
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body.as_slice())
            .map_err(|error| format!("bad protobuf ExportTraceServiceRequest: {error}")),
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|error| format!("bad JSON ExportTraceServiceRequest: {error}")),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => return http_error(encoding, message),
    };
    shared.record(request);
    shared.http_requests.fetch_add(1, Ordering::SeqCst);
    let body = match encoding {
        // An ExportTraceServiceResponse with nothing set is empty in protobuf.
        Encoding::Protobuf => ExportTraceServiceResponse::default().encode_to_vec(),
        Encoding::Json => b"{}".to_vec(),
    };
    with_type(StatusCode::OK, encoding.content_type(), body)
}

/// A header's value as text, "" when absent or not text.
fn header_value(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The lower-cased value before any `;` parameters.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Inflates a gzip body, refusing more than [`MAX_BODY`] bytes.
fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > MAX_BODY {
        return Err(std::io::Error::other("inflates past the size limit"));
    }
    Ok(out)
}

/// 400 with a `google.rpc.Status` (code 3, INVALID_ARGUMENT) in `encoding`.
fn http_error(encoding: Encoding, message: String) -> Response {
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code: 3, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": 3, "message": message })
            .to_string()
            .into_bytes(),
    };
    with_type(StatusCode::BAD_REQUEST, encoding.content_type(), body)
}

fn plain(status: StatusCode, message: String) -> Response {
    with_type(status, "text/plain; charset=utf-8", message.into_bytes())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The gRPC `TraceService`.
struct GrpcTraces(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.into_inner());
        self.0.grpc_requests.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Every span of a request, with its resource's `service.name`.
fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|value| match &value.value {
                Some(any_value::Value::StringValue(name)) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(Span {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    service: service.clone(),
                    attributes: attributes(span.attributes),
                    status_code: span.status.map_or(0, |status| status.code),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(pairs: Vec<KeyValue>) -> serde_json::Map<String, Value> {
    pairs
        .into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, json)))
        .collect()
}

/// An OTLP `AnyValue` as JSON.
fn json(value: AnyValue) -> Value {
    match value.value {
        None | Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::IntValue(i)) => Value::from(i),
        // Value::from gives null for NaN and the infinities.
        Some(any_value::Value::DoubleValue(d)) => Value::from(d),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.into_iter().map(json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes(list.values)),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(base64(&bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Standard base64 with padding, as OTLP JSON writes bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_hex_and_base64() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
        assert_eq!(hex(&[]), "");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn media_type_drops_parameters() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert_eq!(media_type(""), "");
    }
}
