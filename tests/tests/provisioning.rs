//! Opening the mesh is not provisioning it: on a 3-node cluster whose
//! streams and buckets were made R3 and with other limits (by `jetmesh init
//! --apply` with another config), every read-only command and a role started
//! with the default config (R1) leave every stream and bucket config as it
//! was; the role says what differs, once; `jetmesh init` shows the
//! difference and changes nothing without `--apply`.

use jetmesh_tests::{NatsCluster, Proc, jetmesh_bin};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// The other config: replicas 3 and limits unlike the defaults.
const OTHER: [(&str, &str); 6] = [
    ("JETMESH_MESH__REPLICAS", "3"),
    ("JETMESH_MESH__RESULTS_TTL_SECS", "7200"),
    ("JETMESH_MESH__EVENTS_TTL_SECS", "600"),
    ("JETMESH_MESH__DEDUPE_WINDOW_SECS", "30"),
    ("JETMESH_MESH__DLQ_TTL_SECS", "100"),
    ("JETMESH_LEASES__TTL_MS", "4000"),
];

/// Every stream's config (buckets are streams too), by name.
async fn configs(client: &async_nats::Client) -> BTreeMap<String, Value> {
    let js = async_nats::jetstream::new(client.clone());
    let mut out = BTreeMap::new();
    let reply = client
        .request("$JS.API.STREAM.NAMES", "{}".into())
        .await
        .unwrap();
    let names: Value = serde_json::from_slice(&reply.payload).unwrap();
    for name in names["streams"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let stream = js.get_stream(name).await.unwrap();
        out.insert(
            name.to_string(),
            serde_json::to_value(&stream.cached_info().config).unwrap(),
        );
    }
    out
}

/// Runs `jetmesh <args>` against `url` with `env`, bounded in time.
fn run(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(jetmesh_bin());
    cmd.args(args)
        .env("NATS_URL", url)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "jetmesh {args:?} took {:?}",
        started.elapsed()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_roles_never_rewrite_streams_made_with_other_settings() {
    let cluster = NatsCluster::start(3).await;
    let url = cluster.url();
    let client = async_nats::connect(url.split(',').next().unwrap())
        .await
        .unwrap();

    let made = run(&url, &["init", "--apply"], &OTHER);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let before = configs(&client).await;
    assert_eq!(
        before.len(),
        14,
        "six streams, seven buckets and one object store: {:?}",
        before.keys()
    );
    assert!(
        before.values().all(|c| c["num_replicas"] == 3),
        "init --apply made them R3"
    );

    // Read-only commands with the default config (R1, default limits).
    for args in [
        &["caps"][..],
        &["caps", "--json"],
        &["status"],
        &["status", "--json"],
        &["status", "p1"],
        &["pools"],
        &["pools", "--json"],
        &["dlq", "ls"],
        &["mail", "tail", "E1"],
        &["epic", "status", "E1"],
        &["init"],
        &["init", "--json"],
    ] {
        run(&url, args, &[]);
        assert_eq!(
            configs(&client).await,
            before,
            "jetmesh {args:?} changed a stream or bucket config"
        );
    }
    // `init` without --apply shows what differs and says so in its exit code.
    let shown = run(&url, &["init"], &[]);
    assert_eq!(shown.status.code(), Some(2));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("replicas"), "{text}");
    assert!(text.contains("mesh_results"), "{text}");

    // A role with the default config works with what is there and says,
    // once, which fields differ.
    let mut router = Proc::jetmesh(&url, &["router"]);
    let ready = Instant::now();
    loop {
        let info = client.request("$SRV.PING.jetmesh-router", "".into()).await;
        if info.is_ok() {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the router did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(configs(&client).await, before, "a role changed a config");
    let status = router.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let stderr = router.stderr();
    assert_eq!(
        stderr.matches("differ from this config").count(),
        1,
        "one warning: {stderr}"
    );
    for field in ["replicas", "max_age", "duplicate_window"] {
        assert!(
            stderr.contains(field),
            "the warning names {field}: {stderr}"
        );
    }
    drop(cluster);
}
