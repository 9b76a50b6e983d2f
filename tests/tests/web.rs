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
    InProcessMesh, NatsServer, Proc, SIGKILL, SIGSTOP, report_task, request_json, test_config,
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
    let text = jetmesh_tests::python_ok(script, &[path.as_os_str()]);
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

    // The plan's session closed when the plan ended: its page is gone.
    let plan_id = v["plan_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let r = run(&c, "extract", json!({"selector": "h1", "session": plan_id})).await;
        if code(&r) == "session_lost" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the plan's page outlived it: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sessions are isolated: a cookie and a stored item set in one are not
    // seen by another on the same site.
    let seen = |v: &Value| v["output"]["text"].as_str().unwrap_or("").to_string();
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/cookie?set"), "session": "iso1"}),
    )
    .await;
    assert_eq!(seen(&v), "none / none", "{v}");
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/cookie"), "session": "iso1"}),
    )
    .await;
    assert_eq!(seen(&v), "k=v / v", "{v}");
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/cookie"), "session": "iso2"}),
    )
    .await;
    assert_eq!(seen(&v), "none / none", "{v}");

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

/// The environment of a `jetmesh worker --pool web` process for these tests.
const WEB_ENV: &[(&str, &str)] = &[
    ("JETMESH_WEB__ALLOW_NETWORKS", "[\"127.0.0.0/8\"]"),
    ("JETMESH_POOLS__WEB__WORKERS", "2"),
    ("JETMESH_POOLS__WEB__ACK_WAIT_SECS", "4"),
    ("JETMESH_HEALTH__HEARTBEAT_MS", "200"),
];

/// The mesh without a web pool of its own: web workers are processes.
async fn mesh_for_processes(url: &str) -> InProcessMesh {
    let mut config = test_config(url);
    config.pools.retain(|p, _| p == "math");
    InProcessMesh::start(config).await
}

/// Waits until `n` web worker processes send heartbeats.
async fn web_workers(mesh: &jetmesh_shared::Mesh, n: usize) {
    let started = Instant::now();
    loop {
        let keys = mesh
            .scan(&mesh.health, "worker.web.*")
            .await
            .unwrap_or_default();
        if keys.len() >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} web workers",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_hold_across_two_worker_processes() {
    let server = NatsServer::start();
    let site = Site::start().await;
    let m = mesh_for_processes(&server.url()).await;
    let c = server.client().await;
    let _a = Proc::jetmesh_env(&server.url(), &["worker", "--pool", "web"], WEB_ENV);
    let _b = Proc::jetmesh_env(&server.url(), &["worker", "--pool", "web"], WEB_ENV);
    jetmesh_tests::wait_for_capability(&m.mesh, "web").await;
    web_workers(&m.mesh, 2).await;

    // Six plans at once: each drives its own page through five steps, and
    // each step is pulled by whichever worker is free.
    let plan = |i: usize| {
        json!({"wait": true, "plan_id": format!("s{i}"), "subtasks": [
            {"id": "nav", "type": "web", "action": "navigate", "url": site.url("/")},
            {"id": "go", "type": "web", "action": "click", "selector": "#next"},
            {"id": "h1", "type": "web", "action": "extract", "selector": "h1"},
            {"id": "reveal", "type": "web", "action": "click", "selector": "#reveal"},
            {"id": "secret", "type": "web", "action": "extract", "selector": "#secret"}
        ]})
    };
    let replies = futures::future::join_all((0..6).map(|i| {
        let c = c.clone();
        let body = plan(i);
        async move { request_json(&c, "mesh.plans.submit", &body, T).await }
    }))
    .await;
    let mut mixed = 0;
    for v in &replies {
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(
            report_task(v, "h1")["output"]["items"],
            json!(["Second page"]),
            "{v}"
        );
        assert_eq!(
            report_task(v, "secret")["output"]["items"],
            json!(["The secret is 1234"]),
            "{v}"
        );
        let workers: std::collections::BTreeSet<String> = ["nav", "go", "h1", "reveal", "secret"]
            .iter()
            .map(|id| {
                report_task(v, id)["worker"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        if workers.len() > 1 {
            mixed += 1;
        }
    }
    assert!(
        mixed > 0,
        "in no plan did both workers pull steps: the forwarding was not exercised"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_worker_killed_mid_navigation_hands_the_task_on_and_leaves_no_browser() {
    let server = NatsServer::start();
    let site = Site::start().await;
    let m = mesh_for_processes(&server.url()).await;
    let c = server.client().await;
    let mut a = Proc::jetmesh_env(&server.url(), &["worker", "--pool", "web"], WEB_ENV);
    jetmesh_tests::wait_for_capability(&m.mesh, "web").await;
    web_workers(&m.mesh, 1).await;

    let body = json!({"wait": true, "subtasks": [
        {"id": "nav", "type": "web", "action": "navigate", "url": site.url("/slow")}
    ]});
    let submit = {
        let c = c.clone();
        tokio::spawn(async move { request_json(&c, "mesh.plans.submit", &body, T).await })
    };
    // The first worker's browser asked for the slow page: kill it now.
    let started = Instant::now();
    while site.hits("/slow") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow page was never asked for"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let browser = jetmesh_tests::descendants(a.pid());
    assert!(!browser.is_empty(), "the worker runs a browser");
    let _b = Proc::jetmesh_env(&server.url(), &["worker", "--pool", "web"], WEB_ENV);
    a.signal(SIGKILL);
    let _ = a.child.wait();

    // No process of the killed worker's browser is left.
    let started = Instant::now();
    loop {
        let left: Vec<i32> = browser
            .iter()
            .copied()
            .filter(|p| jetmesh_tests::is_running(*p))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "orphan browser processes: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other worker took the task over and finished it.
    let v = submit.await.unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    let nav = report_task(&v, "nav");
    assert_eq!(nav["output"]["title"], "Slow", "{nav}");
    assert_eq!(site.hits("/slow"), 2);
    m.stop().await;
}

/// The worker's browser: its child process running Chromium.
fn browser_of(worker: i32) -> i32 {
    let started = Instant::now();
    loop {
        let found = jetmesh_tests::descendants(worker).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("--remote-debugging-port") && !c.contains("--type="))
                && std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.contains(&format!(") S {worker} ")) || s.contains(&format!(") R {worker} "))
                })
        });
        if let Some(p) = found {
            return p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "worker {worker} runs no browser"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_or_hung_browser_is_relaunched_and_the_navigation_retried() {
    let server = NatsServer::start();
    let site = Site::start().await;
    let m = mesh_for_processes(&server.url()).await;
    let c = server.client().await;
    let mut env = WEB_ENV.to_vec();
    env.push(("JETMESH_WEB__NAVIGATION_TIMEOUT_MS", "5000"));
    let w = Proc::jetmesh_env(&server.url(), &["worker", "--pool", "web"], &env);
    jetmesh_tests::wait_for_capability(&m.mesh, "web").await;
    web_workers(&m.mesh, 1).await;
    let v = run(&c, "navigate", json!({"url": site.url("/static")})).await;
    assert_eq!(v["output"]["title"], "Static", "{v}");

    // A crash (kill -9 of the browser) and a hang (SIGSTOP), each in the
    // middle of a navigation.
    for (n, sig) in [(1, SIGKILL), (2, SIGSTOP)] {
        let browser = browser_of(w.pid());
        let nav = {
            let c = c.clone();
            let url = site.url("/slow");
            tokio::spawn(async move {
                run(&c, "navigate", json!({"url": url, "timeout_ms": 40000})).await
            })
        };
        let started = Instant::now();
        while site.hits("/slow") < 2 * n - 1 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the slow page was never asked for"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        jetmesh_tests::signal_pid(browser, sig);
        let v = nav.await.unwrap();
        assert_eq!(v["output"]["title"], "Slow", "{sig:?}: {v}");
        assert_eq!(
            site.hits("/slow"),
            2 * n,
            "{sig:?}: asked for again on the new browser"
        );
        assert_ne!(browser_of(w.pid()), browser, "{sig:?}: a new browser");
        let started = Instant::now();
        while jetmesh_tests::is_running(browser) {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_and_the_page_cap_closes_the_least_recently_used() {
    let server = NatsServer::start();
    let site = Site::start().await;
    let mut config = web_config(&server.url(), &["127.0.0.0/8"]);
    config.web.max_pages = 2;
    config.web.session_ttl_secs = 2;
    config.web.max_inline_bytes = 64;
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;
    let open = |s: &'static str| {
        let c = c.clone();
        let url = site.url("/static");
        async move {
            run(
                &c,
                "navigate",
                json!({"url": url, "session": s, "format": "none"}),
            )
            .await
        }
    };
    let h1 = |s: &'static str| {
        let c = c.clone();
        async move { run(&c, "extract", json!({"selector": "h1", "session": s})).await }
    };
    // At the cap (2 pages), a third session closes the least recently used.
    assert_eq!(open("a").await["status"], "success");
    assert_eq!(open("b").await["status"], "success");
    assert_eq!(
        h1("a").await["output"]["items"],
        json!(["Static"]),
        "a is now the most recent"
    );
    assert_eq!(open("c").await["status"], "success");
    assert_eq!(
        code(&h1("b").await),
        "session_lost",
        "b was the least recently used"
    );
    assert_eq!(h1("a").await["output"]["items"], json!(["Static"]));
    assert_eq!(h1("c").await["output"]["items"], json!(["Static"]));
    // Page text over max_inline_bytes (64 here) goes to the object store.
    let v = run(
        &c,
        "navigate",
        json!({"url": site.url("/list"), "session": "c"}),
    )
    .await;
    let o = &v["output"];
    assert!(o.get("text").is_none(), "{v}");
    let key = o["text_object"]["key"].as_str().unwrap();
    let (r, bytes) = jetmesh_shared::objects::get(&m.mesh, key).await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with("item 1\nitem 2") && text.contains("item 20"),
        "{text}"
    );
    assert_eq!(r.size, text.len() as u64);
    // Unused for longer than session_ttl_secs (2 s): closed by the next
    // sweep (every 2 s here), so within 4 s at most.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(code(&h1("c").await), "session_lost");
    assert_eq!(code(&h1("a").await), "session_lost");
    m.stop().await;
}
