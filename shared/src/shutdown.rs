//! Graceful shutdown. One [`CancellationToken`] per process is cancelled on
//! Ctrl-C or SIGTERM; each role stops taking new work when it fires, finishes
//! what it holds (bounded by its drain timeout) and returns.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a role may take to drain in-flight work after shutdown is asked.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A token cancelled on the first Ctrl-C or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown requested; draining in-flight work.");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A short random instance id for a role process (`math-7f3a9c`).
pub fn instance_id(role: &str) -> String {
    let id = crate::ids::generate();
    format!("{role}-{}", &id[..6])
}
