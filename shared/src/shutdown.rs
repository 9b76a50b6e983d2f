//! Graceful shutdown, bounded. One [`CancellationToken`] per process is
//! cancelled on the first Ctrl-C or SIGTERM; each role then stops taking new
//! work, finishes what it holds within `runtime.drain_timeout_ms`, and
//! returns. A second signal ends the process at once, and so does
//! [`deadline`] if draining takes longer than the drain timeout plus a grace
//! period (a server that does not answer must not keep a role alive).

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The exit code after a second signal: what shells use for SIGINT.
pub const FORCED_EXIT: i32 = 130;

/// A token cancelled on the first Ctrl-C or SIGTERM; the second one exits
/// the process at once with [`FORCED_EXIT`].
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "Shutdown requested; draining in-flight work (a second signal stops at once)."
        );
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(FORCED_EXIT);
    });
    token
}

/// Once `shutdown` fires, exits the process with code 1 if it is still
/// running `bound` later: the last guard of a bounded shutdown.
pub fn deadline(shutdown: CancellationToken, bound: Duration) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(bound).await;
        tracing::error!(?bound, "Shutdown did not finish in time; exiting.");
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
