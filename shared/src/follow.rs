//! The one way to follow a KV bucket: every live value under a key filter,
//! then each change, for as long as the follower runs.
//!
//! A KV watch ends or fails now and then (a reconnect, a server restart, a
//! stream leader moving). The follower then opens a new watch from the
//! revision after the last one it saw, after a backoff
//! ([`crate::backoff::Policy::RESTART`]), so nothing is missed and nothing
//! already seen comes again. If the bucket's stream is behind that revision
//! (the server lost its data, or the bucket was made again), the follower
//! says [`Change::Reset`] and replays every live value from the start: a view
//! built from changes must then start over.

use crate::backoff::Policy;
use crate::error::{Context, Result};
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One change under the followed filter.
#[derive(Debug, Clone)]
pub enum Change {
    /// A key was put (or is live when the follower starts).
    Put(kv::Entry),
    /// A key was deleted or purged.
    Delete { key: String, revision: u64 },
    /// The bucket was found behind what was seen: forget everything; every
    /// live value is delivered again.
    Reset,
}

/// Follows `filter` (a key, or a key with `*`/`>` wildcards) in `store`:
/// the live values first, then each change, handing each to `on_change` in
/// order, until `shutdown`. Fails only if the first watch cannot be opened.
pub async fn follow(
    store: kv::Store,
    filter: impl Into<String>,
    shutdown: CancellationToken,
    mut on_change: impl FnMut(Change) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let filter = filter.into();
    let mut watch = store
        .watch_with_history(&filter)
        .await
        .context("cannot watch a KV bucket")?;
    Ok(tokio::spawn(async move {
        let mut last = 0u64;
        let mut delays = Policy::RESTART.delays();
        loop {
            // Read until the watch ends or fails.
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = watch.next() => n,
                };
                match next {
                    Some(Ok(entry)) => {
                        delays = Policy::RESTART.delays();
                        last = entry.revision;
                        on_change(match entry.operation {
                            kv::Operation::Put => Change::Put(entry),
                            kv::Operation::Delete | kv::Operation::Purge => Change::Delete {
                                key: entry.key,
                                revision: entry.revision,
                            },
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, bucket = %store.name, filter, "A KV watch failed; it resumes.");
                        break;
                    }
                    None => break,
                }
            }
            // Open a new watch after the last revision seen.
            loop {
                let delay = delays.next_or_max(&Policy::RESTART);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                match resume(&store, &filter, last).await {
                    Ok((w, reset)) => {
                        if reset {
                            tracing::warn!(bucket = %store.name, filter, revision = last, "The bucket is behind what was seen; following it again from the start.");
                            last = 0;
                            on_change(Change::Reset);
                        }
                        watch = w;
                        break;
                    }
                    Err(error) => {
                        tracing::debug!(%error, bucket = %store.name, filter, "Cannot open a KV watch again; retrying.")
                    }
                }
            }
        }
    }))
}

/// A watch from the revision after `last`; `true` when the bucket's stream
/// is behind `last` and the watch replays everything instead.
async fn resume(store: &kv::Store, filter: &str, last: u64) -> Result<(kv::Watch, bool)> {
    if last > 0 {
        let mut stream = store.stream.clone();
        let info = stream.info().await.context("cannot read a KV bucket")?;
        if info.state.last_sequence >= last {
            let w = store
                .watch_from_revision(filter, last + 1)
                .await
                .context("cannot watch a KV bucket")?;
            return Ok((w, false));
        }
    }
    let w = store
        .watch_with_history(filter)
        .await
        .context("cannot watch a KV bucket")?;
    Ok((w, last > 0))
}
