//! The one way a role consumes a JetStream durable consumer.
//!
//! A handler looks at one message and returns an [`Outcome`], a closed enum
//! whose every variant maps to exactly one ack kind (see [`Outcome::ack`]); the
//! handler never acks itself. [`run`] does the rest, the same way for every
//! loop of every role:
//!
//! - it opens the consumer (creating it from its [`Durable`] config if it is
//!   absent) and pulls from it through a [`Source`]: by default async-nats'
//!   pull stream, at most `concurrency` messages handled at once; the worker
//!   pool brings its own source, which pulls on credit;
//! - after an error, or when the pull ends (a reconnect, a server restart, a
//!   deleted consumer), it opens the consumer again after a backoff
//!   ([`crate::backoff::Policy::RESTART`]);
//! - a consumer that stays unusable for [`Options::give_up_after`] while the
//!   connection is up cannot recover here: `run` returns an error, the role
//!   stops, and the process exits non-zero so that its supervisor (systemd,
//!   Kubernetes) restarts it. Time spent disconnected does not count: the
//!   client reconnects on its own.
//! - it ends with the shutdown token: the source hands back what it holds,
//!   and handlers still running get the drain timeout to finish.

use crate::backoff::Policy;
use crate::error::{Context, Error, ErrorCode, Result};
use crate::mesh::Mesh;
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What became of a message. Each outcome is exactly one ack kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: `+ACK`. The message is done.
    Ack,
    /// Not now: `-NAK` with this delay. JetStream delivers it again after
    /// it, up to the consumer's `max_deliver`.
    Retry(Duration),
    /// Never: `+TERM <reason>`. JetStream stops delivering it; the reason
    /// reaches the server's terminated-message advisory.
    Terminate(String),
    /// Still being worked on elsewhere: `+WPI`, which restarts the ack
    /// wait. Whoever holds the message acks it later; if nobody does, it is
    /// delivered again after the ack wait.
    InProgress,
}

impl Outcome {
    /// The ack this outcome sends.
    pub async fn ack(self, msg: &Message) -> Result<()> {
        let sent = match self {
            Outcome::Ack => msg.ack().await,
            Outcome::Retry(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
            Outcome::InProgress => msg.ack_with(AckKind::Progress).await,
            Outcome::Terminate(reason) => {
                let Some(reply) = msg.reply.clone() else {
                    return Ok(());
                };
                msg.context
                    .client()
                    .publish(reply, format!("+TERM {reason}").into())
                    .await
                    .map_err(Into::into)
            }
        };
        sent.map_err(|e| Error::unavailable("cannot ack a message", e))
    }
}

/// A durable pull consumer: the stream it reads and its config (which names
/// it). Created with this config when it does not exist.
#[derive(Debug, Clone)]
pub struct Durable {
    pub stream: String,
    pub config: pull::Config,
}

impl Durable {
    /// A durable consumer with explicit acks on `stream` (`filter` empty:
    /// every subject), from the start of the stream, so a role that starts
    /// late still sees what was published before it.
    pub fn new(mesh: &Mesh, stream: String, name: String, filter: String) -> Durable {
        Durable {
            stream,
            config: pull::Config {
                durable_name: Some(name),
                filter_subject: filter,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                num_replicas: mesh.config.mesh.replicas,
                ..Default::default()
            },
        }
    }

    /// A durable consumer on one kind of event in `MESH_EVENTS`.
    pub fn events(mesh: &Mesh, name: String, kind: crate::EventKind) -> Durable {
        Durable::new(
            mesh,
            mesh.names.events_stream(),
            name,
            mesh.names.event_all(kind),
        )
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }

    /// Opens the consumer, creating it if it is absent.
    pub async fn open(&self, mesh: &Mesh) -> Result<consumer::Consumer<pull::Config>> {
        let stream = mesh
            .js
            .get_stream_no_info(&self.stream)
            .await
            .context("cannot open a stream")?;
        stream
            .get_or_create_consumer(self.name(), self.config.clone())
            .await
            .map_err(|e| {
                Error::unavailable(
                    &format!("cannot open consumer {} on {}", self.name(), self.stream),
                    e,
                )
            })
    }
}

/// Where messages come from. The default is [`Pull`]; the worker pool pulls
/// on credit with a source of its own.
pub trait Source: Send {
    /// What a message holds while it is handled (a permit, a task slot);
    /// dropped once its outcome is acked.
    type Permit: Send + 'static;

    /// The next message. An error means the source is unusable: [`run`]
    /// closes it and opens a new one.
    fn next(&mut self) -> impl Future<Output = Result<(Message, Self::Permit)>> + Send;

    /// Stops pulling and hands back what it holds but did not hand out.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// async-nats' pull stream, at most `concurrency` messages handled at once.
pub struct Pull {
    messages: pull::Stream,
    permits: Arc<Semaphore>,
}

impl Pull {
    pub async fn open(
        consumer: &consumer::Consumer<pull::Config>,
        concurrency: usize,
    ) -> Result<Pull> {
        let concurrency = concurrency.max(1);
        let messages = consumer
            .stream()
            .max_messages_per_batch(concurrency.min(512))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .context("cannot pull messages")?;
        Ok(Pull {
            messages,
            permits: Arc::new(Semaphore::new(concurrency)),
        })
    }
}

impl Source for Pull {
    type Permit = OwnedSemaphorePermit;

    async fn next(&mut self) -> Result<(Message, OwnedSemaphorePermit)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("the permits closed"))?;
        match self.messages.next().await {
            Some(Ok(msg)) => Ok((msg, permit)),
            Some(Err(e)) => Err(Error::unavailable("pulling messages failed", e)),
            None => Err(Error::new(ErrorCode::Unavailable, "the pull ended")),
        }
    }

    async fn close(self) {}
}

/// How [`run`] behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names the loop in logs, metrics and the error that stops the role
    /// (`router plans`).
    pub name: &'static str,
    /// How long the consumer may stay unusable, while connected, before the
    /// role gives up ([`crate::config::RuntimeConfig::give_up_after_ms`]).
    pub give_up_after: Duration,
    /// How long handlers still running may take after shutdown.
    pub drain: Duration,
    /// Handlers run together in the consumer's own task (for handlers that
    /// wait on I/O: no task per message); otherwise each in a task of its
    /// own (for work that computes, which then spreads over the threads).
    pub inline: bool,
}

impl Options {
    pub fn new(mesh: &Mesh, name: &'static str) -> Options {
        Options {
            name,
            give_up_after: Duration::from_millis(mesh.config.runtime.give_up_after_ms),
            drain: mesh.config.runtime.drain_timeout(),
            inline: false,
        }
    }
}

/// Consumes a durable consumer with `handler` until `shutdown`, through the
/// default pull stream with at most `concurrency` messages at once. See the
/// module docs.
pub async fn durable<H, F>(
    mesh: &Mesh,
    durable: Durable,
    concurrency: usize,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<()>
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    // Role consumers wait on NATS, not on the CPU.
    let options = Options {
        inline: true,
        ..Options::new(mesh, "consumer")
    };
    let name = durable.name().to_string();
    let open = || {
        let (mesh, durable) = (mesh.clone(), durable.clone());
        async move {
            let consumer = durable.open(&mesh).await?;
            Pull::open(&consumer, concurrency).await
        }
    };
    run(mesh, &name, options, open, shutdown, handler).await
}

/// Consumes messages from sources that `open` makes, with `handler`, until
/// `shutdown` (see the module docs). `what` names the consumer in logs.
///
/// The loop's state lives on the heap: a role holds several of these, and
/// inline they make a debug build's task frames large enough to overflow a
/// worker thread's stack.
pub async fn run<S, O, OF, H, F>(
    mesh: &Mesh,
    what: &str,
    options: Options,
    open: O,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<()>
where
    S: Source,
    O: FnMut() -> OF + Send,
    OF: Future<Output = Result<S>> + Send,
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    Box::pin(run_loop(mesh, what, options, open, shutdown, handler)).await
}

async fn run_loop<S, O, OF, H, F>(
    mesh: &Mesh,
    what: &str,
    options: Options,
    mut open: O,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<()>
where
    S: Source,
    O: FnMut() -> OF,
    OF: Future<Output = Result<S>>,
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let tracker = TaskTracker::new();
    // Handlers run here, in this task, when `inline`.
    let mut inflight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>> =
        FuturesUnordered::new();
    let counters = Arc::new(Counters::new(what));
    let mut failing = Failing::new(mesh, what, &options);
    let result = 'open: loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            s = open() => s,
        };
        let mut source = match opened {
            Ok(s) => s,
            Err(error) => match failing.wait(error, shutdown).await {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    source.close().await;
                    break 'open Ok(());
                }
                Some(()) = inflight.next(), if !inflight.is_empty() => continue,
                n = source.next() => n,
            };
            match next {
                Ok((msg, permit)) => {
                    failing.recovered();
                    // On the heap from the start: a handler's future is some
                    // KB, and moved by value it would be copied several
                    // times per message.
                    let handling = Box::pin(handler(msg.clone()));
                    let counters = counters.clone();
                    let done = Box::pin(async move {
                        let outcome = handling.await;
                        counters.count(&outcome);
                        if let Err(error) = outcome.ack(&msg).await {
                            // The message comes back after its ack wait.
                            tracing::debug!(%error, consumer = %counters.what, "Cannot ack a message.");
                        }
                        drop(permit);
                    });
                    if options.inline {
                        inflight.push(done);
                    } else {
                        tracker.spawn(done);
                    }
                }
                Err(error) => {
                    source.close().await;
                    match failing.wait(error, shutdown).await {
                        Ok(()) => continue 'open,
                        Err(e) => break 'open Err(e),
                    }
                }
            }
        }
    };
    tracker.close();
    let drained = tokio::time::timeout(options.drain, async {
        while inflight.next().await.is_some() {}
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(consumer = %what, "Handlers still ran when the drain timeout passed.");
    }
    result
}

/// The handled-messages counter of one consumer, one handle per outcome
/// (registered once, not per message).
struct Counters {
    what: String,
    by_outcome: [metrics::Counter; 4],
}

impl Counters {
    fn new(what: &str) -> Counters {
        let counter = |outcome: &'static str| metrics::counter!(crate::telemetry::MESSAGES_HANDLED, "consumer" => what.to_string(), "outcome" => outcome);
        Counters {
            what: what.to_string(),
            by_outcome: [
                counter("ack"),
                counter("retry"),
                counter("terminate"),
                counter("in_progress"),
            ],
        }
    }

    fn count(&self, outcome: &Outcome) {
        let i = match outcome {
            Outcome::Ack => 0,
            Outcome::Retry(_) => 1,
            Outcome::Terminate(_) => 2,
            Outcome::InProgress => 3,
        };
        self.by_outcome[i].increment(1);
    }
}

/// Tracks how long a consumer has been unusable.
struct Failing<'a> {
    mesh: &'a Mesh,
    what: &'a str,
    give_up_after: Duration,
    since: Option<Instant>,
    delays: crate::backoff::Delays,
}

impl<'a> Failing<'a> {
    fn new(mesh: &'a Mesh, what: &'a str, options: &Options) -> Self {
        Failing {
            mesh,
            what,
            give_up_after: options.give_up_after,
            since: None,
            delays: Policy::RESTART.delays(),
        }
    }

    fn recovered(&mut self) {
        if self.since.take().is_some() {
            tracing::info!(consumer = %self.what, "The consumer works again.");
            self.delays = Policy::RESTART.delays();
        }
    }

    /// Waits before the next try, or gives up (see the module docs).
    async fn wait(&mut self, error: Error, shutdown: &CancellationToken) -> Result<()> {
        if !self.mesh.connection.is_connected() {
            // The client reconnects by itself; the clock starts once it has.
            self.since = None;
            tracing::debug!(%error, consumer = %self.what, "The consumer waits for the connection.");
        } else {
            let since = *self.since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.give_up_after {
                tracing::error!(%error, consumer = %self.what, after = ?self.give_up_after, "The consumer cannot recover; the role stops so that its supervisor restarts it.");
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "consumer {} has been unusable for {:?} while connected: {}",
                        self.what, self.give_up_after, error.message
                    ),
                ));
            }
            tracing::warn!(%error, consumer = %self.what, "The consumer failed; it restarts.");
        }
        let delay = self.delays.next_or_max(&Policy::RESTART);
        let wait = async {
            if self.mesh.connection.is_connected() {
                tokio::time::sleep(delay).await;
            } else {
                // Back as soon as the connection is, but not later than the delay.
                self.mesh.connection.until_connected(delay).await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = wait => {}
        }
        Ok(())
    }
}
