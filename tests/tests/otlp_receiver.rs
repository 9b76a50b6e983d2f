//! The OTLP receiver of the harness (tests/src/otlp.rs) itself: spans from
//! the real OpenTelemetry exporter over OTLP/HTTP (protobuf) and OTLP/gRPC,
//! the OTLP JSON encoding and gzip bodies, and the HTTP errors it answers.

use jetmesh_tests::otlp::opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use jetmesh_tests::otlp::opentelemetry::{Array, Context, KeyValue, Value};
use jetmesh_tests::otlp::opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use jetmesh_tests::otlp::opentelemetry_sdk::Resource;
use jetmesh_tests::otlp::opentelemetry_sdk::runtime::Tokio;
use jetmesh_tests::otlp::opentelemetry_sdk::trace::SdkTracerProvider;
use jetmesh_tests::otlp::opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use jetmesh_tests::otlp::{OtlpReceiver, Span};
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

/// Sends a parent and a child span with `exporter` (batched on this runtime,
/// flushed by the provider's shutdown) as service `service`.
async fn send_two_spans(exporter: SpanExporter, service: &str) {
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_string())
                .build(),
        )
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .build();
    let tracer = provider.tracer("otlp-receiver-test");
    let parent = tracer
        .span_builder("parent")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("s", "text"),
            KeyValue::new("i", 7_i64),
            KeyValue::new("f", 1.5),
            KeyValue::new("b", true),
            KeyValue::new(
                "a",
                Value::Array(Array::String(vec!["p".into(), "q".into()])),
            ),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(parent);
    let mut child = tracer
        .span_builder("child")
        .with_kind(SpanKind::Consumer)
        .start_with_context(&tracer, &cx);
    child.set_status(Status::error("it broke"));
    child.end();
    cx.span().end();
    // Shutting down waits for the batch task, which runs on this runtime.
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .expect("the spans are exported");
}

async fn wait_for_spans(rx: &Arc<OtlpReceiver>, n: usize) -> Vec<Span> {
    let rx = rx.clone();
    tokio::task::spawn_blocking(move || rx.wait_for(Duration::from_secs(20), |s| s.len() >= n))
        .await
        .unwrap()
}

fn check_two_spans(spans: &[Span], service: &str) {
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let parent = spans
        .iter()
        .find(|s| s.name == "parent")
        .expect("the parent");
    let child = spans.iter().find(|s| s.name == "child").expect("the child");
    assert_eq!(parent.trace_id.len(), 32);
    assert_eq!(parent.span_id.len(), 16);
    assert_eq!(parent.parent_span_id, "", "a root has no parent");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, parent.span_id);
    assert_eq!((parent.kind, child.kind), (2, 5), "server, consumer");
    assert_eq!(
        (parent.status_code, child.status_code),
        (0, 2),
        "unset, error"
    );
    assert_eq!(parent.service, service);
    assert_eq!(parent.attributes["s"], json!("text"));
    assert_eq!(parent.attributes["i"], json!(7));
    assert_eq!(parent.attributes["f"], json!(1.5));
    assert_eq!(parent.attributes["b"], json!(true));
    assert_eq!(parent.attributes["a"], json!(["p", "q"]));
    assert!(parent.start_unix_nano > 0 && parent.end_unix_nano >= parent.start_unix_nano);
    assert!(child.start_unix_nano >= parent.start_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_over_http_delivers_spans() {
    let rx = Arc::new(OtlpReceiver::start());
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", rx.http_url()))
        .build()
        .unwrap();
    send_two_spans(exporter, "over-http").await;
    let spans = wait_for_spans(&rx, 2).await;
    check_two_spans(&spans, "over-http");
    assert!(rx.requests("http") >= 1);
    assert_eq!(rx.requests("grpc"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_over_grpc_delivers_spans() {
    let rx = Arc::new(OtlpReceiver::start());
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(rx.grpc_url())
        .build()
        .unwrap();
    send_two_spans(exporter, "over-grpc").await;
    let spans = wait_for_spans(&rx, 2).await;
    check_two_spans(&spans, "over-grpc");
    assert!(rx.requests("grpc") >= 1);
    assert_eq!(rx.requests("http"), 0);
}

/// One HTTP/1.1 request (the connection closed after it): status and body.
fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response[split + 4..].to_vec();
    // Bodies come chunked or with a length; these tests only read short
    // ones, so unchunk a single chunk if there is one.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let text = String::from_utf8_lossy(&body).into_owned();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        rest.as_bytes()[..size].to_vec()
    } else {
        body
    };
    (status, body)
}

/// An OTLP JSON request with one span (ids in hex, enums as numbers).
fn json_request(name: &str) -> Vec<u8> {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "from-json"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b173",
            "name": name,
            "kind": 3,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "attributes": [{"key": "n", "value": {"intValue": "42"}}],
            "status": {"code": 1}
        }]}]
    }]})
    .to_string()
    .into_bytes()
}

/// `data` as a gzip member of one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let len = u16::try_from(data.len()).expect("one stored block");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // the final block, stored
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_gzip_bodies_are_read_and_bad_requests_answered() {
    let rx = Arc::new(OtlpReceiver::start());
    let url = rx.http_url();
    let r = rx.clone();
    tokio::task::spawn_blocking(move || {
        let json_type = [("Content-Type", "application/json")];
        let (status, body) = http(
            &url,
            "POST",
            "/v1/traces",
            &json_type,
            &json_request("plain"),
        );
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));

        let gzip_json = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Encoding", "gzip"),
        ];
        let (status, _) = http(
            &url,
            "POST",
            "/v1/traces",
            &gzip_json,
            &gzip_stored(&json_request("gzipped")),
        );
        assert_eq!(status, 200);

        let spans = r.spans();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let plain = spans.iter().find(|s| s.name == "plain").unwrap();
        assert_eq!(plain.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(plain.span_id, "eee19b7ec3c1b174");
        assert_eq!(plain.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!((plain.kind, plain.status_code), (3, 1));
        assert_eq!(plain.service, "from-json");
        assert_eq!(plain.attributes["n"], json!(42));
        assert_eq!(plain.start_unix_nano, 1_544_712_660_000_000_000);
        assert!(spans.iter().any(|s| s.name == "gzipped"));
        assert_eq!(r.requests("http"), 2);

        // A body that does not decode: 400 with a google.rpc.Status.
        let (status, body) = http(
            &url,
            "POST",
            "/v1/traces",
            &json_type,
            b"{\"resourceSpans\": 7}",
        );
        assert_eq!(status, 400);
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["code"], 3);
        let protobuf = [("Content-Type", "application/x-protobuf")];
        assert_eq!(
            http(&url, "POST", "/v1/traces", &protobuf, b"\xff\xff\xff").0,
            400
        );
        let bad_gzip = [
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ];
        assert_eq!(
            http(&url, "POST", "/v1/traces", &bad_gzip, b"not gzip").0,
            400
        );
        // Unknown encodings, paths and methods.
        let text = [("Content-Type", "text/plain")];
        assert_eq!(http(&url, "POST", "/v1/traces", &text, b"x").0, 415);
        let brotli = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "br"),
        ];
        assert_eq!(http(&url, "POST", "/v1/traces", &brotli, b"x").0, 415);
        assert_eq!(http(&url, "POST", "/v1/logs", &json_type, b"{}").0, 404);
        assert_eq!(http(&url, "GET", "/v1/traces", &[], b"").0, 405);
        // None of these counted or recorded anything.
        assert_eq!(r.requests("http"), 2);
        assert_eq!(r.spans().len(), 2);
    })
    .await
    .unwrap();
}

#[test]
fn dropping_the_receiver_closes_both_listeners() {
    let rx = OtlpReceiver::start();
    let (http_url, grpc_url) = (rx.http_url(), rx.grpc_url());
    let connects =
        |url: &str| std::net::TcpStream::connect(url.strip_prefix("http://").unwrap()).is_ok();
    assert!(connects(&http_url) && connects(&grpc_url));
    drop(rx);
    // Refused within a second (a CI run once found the gRPC port still
    // open right after the drop; the kernel closes a listener a moment
    // after its last handle goes).
    let closed = |url: &str| {
        (0..50).any(|_| {
            let refused = !connects(url);
            if !refused {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            refused
        })
    };
    assert!(closed(&http_url), "HTTP still listens");
    assert!(closed(&grpc_url), "gRPC still listens");
}
