//! A role's tasks, supervised together: a role runs several loops (an
//! endpoint, consumers, followers), and it serves only while all of them do.
//! [`Tasks`] runs them as one: the first that fails cancels the others and its
//! error is what the role returns, so the process exits non-zero and its
//! supervisor (systemd, Kubernetes) restarts it. A role never half-serves.

use crate::error::{Error, ErrorCode, Result};
use std::future::Future;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The loops of one role.
pub struct Tasks {
    set: JoinSet<(&'static str, Result<()>)>,
    /// Cancelled on shutdown, or when a loop fails.
    stop: CancellationToken,
}

impl Tasks {
    /// Loops that stop with `shutdown`, or when one of them fails.
    pub fn new(shutdown: &CancellationToken) -> Tasks {
        Tasks {
            set: JoinSet::new(),
            stop: shutdown.child_token(),
        }
    }

    /// The token every loop should stop on.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `task`, named `name` in the error that stops the role.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Waits for every loop. The first failure cancels the others; its error
    /// is returned, named after its loop. A loop that panics is a failure too.
    pub async fn join(mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        while let Some(joined) = self.set.join_next().await {
            let failed = match joined {
                Ok((_, Ok(()))) => None,
                Ok((name, Err(mut e))) => {
                    e.message = format!("{name}: {}", e.message);
                    Some(e)
                }
                Err(e) => Some(Error::new(
                    ErrorCode::Internal,
                    format!("a loop of this role panicked: {e}"),
                )),
            };
            if let Some(e) = failed {
                if first.is_none() {
                    tracing::error!(error = %e, "A loop of this role failed; the role stops.");
                    self.stop.cancel();
                    first = Some(e);
                } else {
                    tracing::debug!(error = %e, "Another loop stopped with an error.");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}
