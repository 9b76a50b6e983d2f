//! The `web` capability against a real Chromium (Debian's `chromium`) and a
//! site served on loopback by the harness ([`jetmesh_tests::site`]): pages
//! whose text only JavaScript writes, clicks that navigate or change the DOM,
//! extraction, screenshots fetched back from the object store and checked as
//! PNG by Python's zlib, infinite scrolling; address refusals after DNS
//! resolution, redirects included; sessions across two worker processes; and
//! a worker killed with kill -9 mid-navigation.

use jetmesh_shared::config::{Config, PoolConfig};
use jetmesh_tests::site::Site;
use jetmesh_tests::{
    InProcessMesh, NatsServer, Proc, SIGKILL, python, report_task, request_json, test_config,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn web_config(url: &str, allow: &[&str]) -> Config {
    let mut config = test_config(url);
    config.pools.insert("web".into(), PoolConfig::new("web", 2));
    config.web.allow_networks = allow.iter().map(|s| s.to_string()).collect();
    config
}

async fn run(c: &async_nats::Client, action: &str, params: Value) -> Value {
    request_json(c, &format!("mesh.run.web.{action}"), &params, T).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Checks a PNG with an independent reader: Python parses its chunks,
/// verifies every CRC and inflates the image data; prints width and height.
fn python_png(bytes: &[u8]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shot.png");
    std::fs::write(&path, bytes).unwrap();
    let script = r#"
import struct, sys, zlib
b = open(sys.argv[1], 'rb').read()
assert b[:8] == b'\x89PNG\r\n\x1a\n', 'signature'
i, idat, size = 8, b'', None
while i < len(b):
    n, kind = struct.unpack('>I4s', b[i:i+8]); data = b[i+8:i+8+n]
    assert zlib.crc32(kind + data) == struct.unpack('>I', b[i+8+n:i+12+n])[0], 'crc'
    if kind == b'IHDR': size = struct.unpack('>II', data[:8])
    if kind == b'IDAT': idat += data
    i += 12 + n
raw = zlib.decompress(idat)
w, h = size
assert len(raw) >= h * (w * 3 + 1), 'image data'
print(w, h)
"#;
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_drives_one_page_through_navigate_click_extract_and_screenshot() {
    let server = NatsServer::start();
    let site = Site::start().await;
    let m = InProcessMesh::start(web_config(&server.url(), &["127.0.0.0/8"])).await;
    let c = server.client().await;

    // The seed's t3 and the session plan of the issue, in one plan.
    let plan = json!({"wait": true, "subtasks": [
        {"id": "t1", "type": "math", "action": "sum", "args": [1, 2]},
        {"id": "nav", "type": "web", "action": "navigate", "url": site.url("/"), "selector": ".price"},
        {"id": "prices", "type": "web", "action": "extract", "selector": ".price"},
        {"id": "skus", "type": "web", "action": "extract", "selector": ".price", "attribute": "data-sku"},
        {"id": "table", "type": "web", "action": "extract", "selector": "#t", "as": "table"},
        {"id": "links", "type": "web", "action": "extract", "selector": "#app", "as": "links"},
        {"id": "md", "type": "web", "action": "extract"},
        {"id": "shot", "type": "web", "action": "screenshot"},
        {"id": "go", "type": "web", "action": "click", "selector": "#next"},
        {"id": "reveal", "type": "web", "action": "click", "selector": "#reveal"},
        {"id": "secret", "type": "web", "action": "extract", "selector": "#secret"}
    ]});
    let v = request_json(&c, "mesh.plans.submit", &plan, T).await;
    assert_eq!(v["status"], "completed", "{v}");
    let out = |id: &str| report_task(&v, id)["output"].clone();
    let nav = out("nav");
    assert_eq!(nav["title"], "Jetmesh Test Shop", "{nav}");
    assert_eq!(nav["status"], 200);
    assert!(
        nav["text"]
            .as_str()
            .unwrap()
            .contains("Rendered by JavaScript"),
        "{nav}"
    );
    assert_eq!(
        out("prices")["items"],
        json!(["42.50", "7.25"]),
        "{}",
        report_task(&v, "prices")
    );
    assert_eq!(out("skus")["items"], json!(["a1", "b2"]));
    assert_eq!(
        out("table")["items"][0],
        json!({"headers": ["Item", "Qty"], "rows": [["Apple", "3"], ["Pear", "5"]]})
    );
    assert_eq!(out("links")["items"][0]["href"], site.url("/next"));
    let md = out("md")["markdown"].as_str().unwrap().to_string();
    assert!(
        md.contains("# Rendered by JavaScript") && md.contains("[Next page]("),
        "{md}"
    );
    assert!(md.contains("| Apple | 3 |"), "{md}");
    assert_eq!(out("go")["navigated"], true, "{}", out("go"));
    assert_eq!(out("go")["title"], "Second page");
    assert_eq!(out("reveal")["navigated"], false);
    assert_eq!(out("secret")["items"], json!(["The secret is 1234"]));

    // The screenshot: a reference in the result, the PNG in the object store.
    let shot = out("shot");
    let key = shot["object"]["key"].as_str().unwrap();
    let (r, png) = jetmesh_shared::objects::get(&m.mesh, key).await.unwrap();
    assert_eq!(r.content_type.as_deref(), Some("image/png"));
    assert_eq!(r.sha256, shot["object"]["sha256"].as_str().unwrap());
    assert_eq!(python_png(&png), (1280, 800));
    assert_eq!(
        (shot["width"].as_u64(), shot["height"].as_u64()),
        (Some(1280), Some(800))
    );

    // Single tasks share a page through an explicit session; sessions are
    // isolated from each other.
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/list"), "session": "s1", "format": "none"}),
    )
    .await;
    assert_eq!(v["output"]["title"], "Endless", "{v}");
    let v = run(
        &c,
        "scroll",
        json!({"to": "bottom", "session": "s1", "max_rounds": 20, "wait_ms": 1500}),
    )
    .await;
    assert_eq!(v["output"]["grew"], true, "{v}");
    let v = run(
        &c,
        "extract",
        json!({"selector": "#items li", "session": "s1", "limit": 1}),
    )
    .await;
    assert_eq!(
        v["output"]["count"], 100,
        "the whole endless list loaded: {v}"
    );
    let v = run(&c, "extract", json!({"selector": "li", "session": "s2"})).await;
    assert_eq!(code(&v), "session_lost", "{v}");
    let v = run(&c, "click", json!({"selector": "#nope", "session": "s1"})).await;
    assert_eq!(code(&v), "selector_not_found", "{v}");
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/"), "selectr": "x"}),
    )
    .await;
    assert_eq!(code(&v), "invalid_args", "{v}");
    let v = run(&c, "navigate", json!({"url": "file:///etc/passwd"})).await;
    assert_eq!(code(&v), "invalid_args", "{v}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_after_resolution_and_after_redirects() {
    let server = NatsServer::start();
    // The site on 127.0.0.2, and only that address allowed: 127.0.0.1 (and
    // `localhost`, which resolves to it), private and metadata addresses are
    // refused.
    let site = Site::start_on("127.0.0.2").await;
    let m = InProcessMesh::start(web_config(&server.url(), &["127.0.0.2/32"])).await;
    let c = server.client().await;
    let port = site.addr.port();
    let v = run(&c, "navigate", json!({"url": site.url("/static")})).await;
    assert_eq!(v["output"]["title"], "Static", "{v}");
    for url in [
        format!("http://127.0.0.1:{port}/static"),
        format!("http://localhost:{port}/static"),
        format!("http://[::1]:{port}/static"),
        "http://10.1.2.3/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "https://169.254.169.254/".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        site.url("/redirect?to=http://169.254.169.254/latest/meta-data/"),
        site.url(&format!("/redirect?to=http://localhost:{port}/static")),
    ] {
        let started = Instant::now();
        let v = run(&c, "navigate", json!({"url": url, "timeout_ms": 20000})).await;
        assert_eq!(code(&v), "address_refused", "{url}: {v}");
        assert!(started.elapsed() < Duration::from_secs(20), "{url}");
    }
    assert_eq!(
        site.hits("/static"),
        1,
        "no refused navigation reached the site"
    );
    m.stop().await;
}
