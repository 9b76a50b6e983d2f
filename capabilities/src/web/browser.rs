//! One headless Chromium per worker process, started and watched here.
//!
//! The worker starts the browser itself (not through the driver's launcher)
//! so that it owns the process: Chromium runs in a process group of its own,
//! which is killed whole (renderers, zygote, GPU process) when the browser
//! is relaunched or dropped; and it gets `PR_SET_PDEATHSIG = SIGKILL`, so a
//! worker killed with `kill -9` takes its browser with it. The browser's
//! profile lives in a temporary folder, removed with it; every request it
//! makes goes through the worker's [`guard`](super::guard).

use chromiumoxide::Browser;
use chromiumoxide::handler::HandlerConfig;
use futures::StreamExt;
use jetmesh_shared::config::WebConfig;
use jetmesh_shared::{Error, ErrorCode};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The browser is not installed where the config says.
pub const NO_BROWSER: ErrorCode = ErrorCode::capability("no_browser");

/// Names tried on `PATH` when `[web] chromium` is empty.
const CANDIDATES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
];

/// Where the browser is: `[web] chromium` (a path or a name on `PATH`), or
/// the first of [`CANDIDATES`] found. Errors: `no_browser`, saying how to
/// install it.
pub fn find(cfg: &WebConfig) -> Result<PathBuf, Error> {
    let names: Vec<&str> = if cfg.chromium.is_empty() {
        CANDIDATES.to_vec()
    } else {
        vec![cfg.chromium.as_str()]
    };
    for name in &names {
        let p = PathBuf::from(name);
        if p.components().count() > 1 {
            if p.is_file() {
                return Ok(p);
            }
            continue;
        }
        if let Some(found) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
        {
            return Ok(found);
        }
    }
    Err(Error::new(
        NO_BROWSER,
        format!(
            "no Chromium found (tried {}); install it (Debian/Ubuntu: apt-get install chromium) \
             or set [web] chromium to its path",
            names.join(", ")
        ),
    ))
}

/// A running browser.
pub struct Chromium {
    pub browser: Browser,
    /// The process group (= the browser's pid).
    pgid: i32,
    child: tokio::process::Child,
    /// False once the DevTools connection has ended.
    connected: Arc<AtomicBool>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts the browser with its traffic through `proxy` (`None`: straight
    /// out, for the benchmark's raw baseline only).
    pub async fn launch(cfg: &WebConfig, proxy: Option<SocketAddr>) -> Result<Chromium, Error> {
        let bin = find(cfg)?;
        let profile = tempfile::Builder::new()
            .prefix("jetmesh-chromium-")
            .tempdir()
            .map_err(|e| {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("cannot make a browser profile folder: {e}"),
                )
            })?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            // Popups and new windows would be pages nobody drives.
            "--block-new-web-contents",
        ])
        .arg(format!(
            "--window-size={},{}",
            cfg.viewport_width, cfg.viewport_height
        ))
        .arg(format!("--user-data-dir={}", profile.path().display()));
        if let Some(proxy) = proxy {
            // Every request through the guard, loopback included, and no
            // UDP around it.
            cmd.arg(format!("--proxy-server=http://{proxy}"))
                .arg("--proxy-bypass-list=<-loopback>")
                .arg("--force-webrtc-ip-handling-policy=disable_non_proxied_udp");
        }
        if !cfg.sandbox || nix::unistd::Uid::effective().is_root() {
            static SAID: std::sync::Once = std::sync::Once::new();
            if cfg.sandbox {
                SAID.call_once(|| {
                    tracing::warn!("Chromium runs without its sandbox: it cannot use it as root.")
                });
            }
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: between fork and exec only an async-signal-safe syscall
        // (prctl) runs; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::new(NO_BROWSER, format!("cannot start {}: {e}", bin.display())))?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let wait = Duration::from_millis(cfg.launch_timeout_ms.max(1000));
        let found = tokio::time::timeout(wait, async {
            let mut tail = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                    return Ok(url.to_string());
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Err(tail.join("\n"))
        })
        .await;
        let kill = |why: String| {
            if pgid > 0 {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            Error::new(ErrorCode::Unavailable, why)
        };
        let ws = match found {
            Ok(Ok(url)) => url,
            Ok(Err(tail)) => return Err(kill(format!("Chromium exited while starting: {tail}"))),
            Err(_) => return Err(kill(format!("Chromium did not start within {wait:?}"))),
        };
        // Chromium keeps writing to stderr; it must be read or it blocks.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::trace!(target: "chromium", "{line}");
            }
        });
        let config = HandlerConfig {
            ignore_https_errors: false,
            // The driver drops a command older than this: it must outlast the
            // longest wait a task may ask for (a navigation, a scroll); our
            // own bounds (shorter) apply first.
            request_timeout: Duration::from_millis(cfg.navigation_timeout_ms)
                .max(super::MAX_PAGE_WAIT)
                + Duration::from_secs(15),
            viewport: Some(chromiumoxide::handler::viewport::Viewport {
                width: cfg.viewport_width,
                height: cfg.viewport_height,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (browser, mut handler) = Browser::connect_with_config(ws, config)
            .await
            .map_err(|e| kill(format!("cannot connect to Chromium: {e}")))?;
        let connected = Arc::new(AtomicBool::new(true));
        let flag = connected.clone();
        tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "A DevTools message failed.");
                }
            }
            flag.store(false, Ordering::Relaxed);
        });
        tracing::info!(browser = %bin.display(), pid = pgid, "Chromium started.");
        Ok(Chromium {
            browser,
            pgid,
            child,
            connected,
            _profile: profile,
        })
    }

    /// Whether the process runs and its DevTools connection is up.
    pub fn is_alive(&mut self) -> bool {
        self.connected.load(Ordering::Relaxed) && matches!(self.child.try_wait(), Ok(None))
    }

    /// The browser's pid (its process group).
    pub fn pid(&self) -> i32 {
        self.pgid
    }
}

impl Drop for Chromium {
    /// Kills the whole process group: the browser and every process it made.
    fn drop(&mut self) {
        if self.pgid > 0 {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}
