//! Fast-ingest batch publishing (JetStream ADR-50, nats-server 2.14 and later)
//! for bulk work: the router queues the tasks of a plan through it.
//!
//! An ordinary JetStream publish gets one ack per message. In a fast-ingest
//! batch the server acks every `flow` messages (it picks `flow`, at most what
//! was asked) and ends the batch with an ack that says how many of its
//! messages were stored, in order. Messages are stored as they arrive (a batch
//! is not all-or-nothing), and `Nats-Msg-Id` de-duplication applies as usual:
//! a duplicate counts as stored. The stream must allow it (`allow_batched`).
//!
//! [`Ingest`] is a handle on one background task that runs one batch at a
//! time. A batch opens with the first message handed over and closes (an
//! end-of-batch commit, which stores nothing) as soon as no message waits.
//! [`Ingest::publish`] resolves `true` once an ack covers the message.
//! Messages a batch did not confirm (a refused message ends the batch, as does
//! a leader change or a silent server) resolve `false`; the caller then
//! publishes them the ordinary way, and de-duplication makes that safe even
//! for a message that was stored after all. A server or stream that does not
//! take batches turns fast ingest off for the life of the handle.

use async_nats::{HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The ack interval asked of the server.
const FLOW: u16 = 100;
/// Ack intervals in flight before the publisher waits (ADR-50 recommends 2).
const OUTSTANDING: u64 = 2;
/// How long to wait for an ack before giving up on a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages handed over but not yet published.
const QUEUE: usize = 4096;

/// Operation codes of the `$FI` reply subject.
const START: u8 = 0;
const APPEND: u8 = 1;
const COMMIT_EOB: u8 = 3;

/// Server error codes that end a batch (see nats-server's errors.json).
const DISABLED: u64 = 10205;
const INVALID_PATTERN: u64 = 10206;
const INVALID_BATCH_ID: u64 = 10207;
const UNKNOWN_BATCH_ID: u64 = 10208;
const TOO_MANY_INFLIGHT: u64 = 10211;

struct Item {
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    done: oneshot::Sender<bool>,
}

/// A handle on the fast-ingest publisher of one connection. Cheap to clone;
/// the background task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Item>,
    on: Arc<AtomicBool>,
}

impl Ingest {
    /// Starts the publisher on `client`. With `enabled` false every message
    /// resolves `false` at once (the caller's ordinary path).
    pub fn start(client: async_nats::Client, enabled: bool) -> Ingest {
        let (tx, rx) = mpsc::channel(QUEUE);
        let on = Arc::new(AtomicBool::new(enabled));
        tokio::spawn(run(client, rx, on.clone()));
        Ingest { tx, on }
    }

    /// Whether batches are in use (not turned off, nor refused by the server).
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Publishes one message in the current batch. `true`: stored (or a
    /// duplicate of a stored message); `false`: not confirmed, publish it the
    /// ordinary way.
    pub async fn publish(&self, subject: Subject, headers: HeaderMap, payload: Bytes) -> bool {
        if !self.enabled() {
            return false;
        }
        let (done, confirmed) = oneshot::channel();
        let item = Item {
            subject,
            headers,
            payload,
            done,
        };
        if self.tx.send(item).await.is_err() {
            return false;
        }
        confirmed.await.unwrap_or(false)
    }
}

async fn run(client: async_nats::Client, mut rx: mpsc::Receiver<Item>, on: Arc<AtomicBool>) {
    let mut flow = FLOW;
    while let Some(first) = rx.recv().await {
        if !on.load(Ordering::Relaxed) {
            let _ = first.done.send(false);
            continue;
        }
        let mut batch = match Batch::open(&client, flow, on.clone()).await {
            Ok(b) => b,
            Err(reason) => {
                tracing::info!(
                    reason,
                    "Fast-ingest batches are off; queue publishes go one by one."
                );
                on.store(false, Ordering::Relaxed);
                let _ = first.done.send(false);
                continue;
            }
        };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            if !batch.add(item).await {
                break;
            }
            next = match rx.try_recv() {
                Ok(item) => Some(item),
                // Let the senders that are ready hand over their messages
                // before the batch closes.
                Err(_) => {
                    tokio::task::yield_now().await;
                    rx.try_recv().ok()
                }
            };
        }
        batch.close().await;
        flow = batch.flow;
        if batch.refused {
            tracing::info!(
                "The queue stream does not take fast-ingest batches (nats-server 2.14 and \
                 `allow_batched` are needed); queue publishes go one by one."
            );
        }
    }
}

/// What the server sends to a batch's inbox.
#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<u64>,
    msgs: Option<u16>,
    count: Option<u64>,
    batch: Option<String>,
    stream: Option<String>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

struct Batch {
    client: async_nats::Client,
    sub: Subscriber,
    flow: u16,
    /// `<inbox>.<flow>.fail.`: the reply subject up to the batch sequence.
    prefix: String,
    inbox: String,
    seq: u64,
    acked: u64,
    /// The server confirmed the batch (its first flow ack).
    started: bool,
    /// The server ended the batch (final ack or a batch error).
    ended: bool,
    /// The server or stream does not take batches.
    refused: bool,
    /// The handle's switch, turned off on refusal before anyone is told.
    on: Arc<AtomicBool>,
    pending: VecDeque<(u64, oneshot::Sender<bool>)>,
    first_subject: Option<Subject>,
}

impl Batch {
    async fn open(
        client: &async_nats::Client,
        flow: u16,
        on: Arc<AtomicBool>,
    ) -> Result<Batch, String> {
        let inbox = client.new_inbox();
        // The server reads the reply subject from the right and expects the
        // batch id to be the inbox's second token.
        if inbox.split('.').count() != 2 {
            return Err(format!("the inbox {inbox:?} does not have two tokens"));
        }
        let sub = client
            .subscribe(format!("{inbox}.>"))
            .await
            .map_err(|e| format!("cannot subscribe to the batch inbox: {e}"))?;
        Ok(Batch {
            client: client.clone(),
            sub,
            flow,
            prefix: format!("{inbox}.{flow}.fail."),
            inbox,
            seq: 0,
            acked: 0,
            started: false,
            ended: false,
            refused: false,
            on,
            pending: VecDeque::new(),
            first_subject: None,
        })
    }

    /// Publishes `item` in the batch; `false` once the batch has ended (the
    /// item and everything unconfirmed are then resolved `false`).
    async fn add(&mut self, item: Item) -> bool {
        if !self.room().await {
            let _ = item.done.send(false);
            return false;
        }
        self.seq += 1;
        let op = if self.seq == 1 { START } else { APPEND };
        if self.first_subject.is_none() {
            self.first_subject = Some(item.subject.clone());
        }
        let reply = format!("{}{}.{op}.$FI", self.prefix, self.seq);
        if let Err(error) = self
            .client
            .publish_with_reply_and_headers(item.subject, reply, item.headers, item.payload)
            .await
        {
            tracing::debug!(%error, "A fast-ingest publish failed.");
            let _ = item.done.send(false);
            self.end();
            return false;
        }
        self.pending.push_back((self.seq, item.done));
        // The first reply says whether the server took the batch.
        while self.seq == 1 && !self.started && !self.ended {
            if !self.wait().await {
                self.end();
            }
        }
        self.drain();
        !self.ended
    }

    /// Waits while the acks in flight are at their limit; `false` if the
    /// batch ended meanwhile.
    async fn room(&mut self) -> bool {
        self.drain();
        while !self.ended && self.acked + u64::from(self.flow) * OUTSTANDING <= self.seq + 1 {
            if !self.wait().await {
                self.end();
            }
        }
        !self.ended
    }

    /// Ends the batch with an end-of-batch commit (stores nothing) and waits
    /// for its final ack; resolves what is still unconfirmed.
    async fn close(&mut self) {
        if self.room().await
            && let Some(subject) = self.first_subject.clone()
        {
            let reply = format!("{}{}.{COMMIT_EOB}.$FI", self.prefix, self.seq + 1);
            match self
                .client
                .publish_with_reply(subject, reply, Bytes::new())
                .await
            {
                Ok(()) => {
                    while !self.ended {
                        if !self.wait().await {
                            self.end();
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "A fast-ingest commit failed."),
            }
        }
        tracing::debug!(
            messages = self.seq,
            acked = self.acked,
            "A fast-ingest batch closed."
        );
        self.end();
        let _ = self.sub.unsubscribe().await;
    }

    /// Handles what already arrived, without waiting.
    fn drain(&mut self) {
        while let Some(Some(msg)) = self.sub.next().now_or_never() {
            self.handle(&msg);
        }
    }

    /// Waits for one reply; `false` on timeout.
    async fn wait(&mut self) -> bool {
        match tokio::time::timeout(ACK_TIMEOUT, self.sub.next()).await {
            Ok(Some(msg)) => {
                self.handle(&msg);
                true
            }
            _ => {
                tracing::debug!(inbox = %self.inbox, "No fast-ingest ack came in time.");
                false
            }
        }
    }

    fn handle(&mut self, msg: &async_nats::Message) {
        let (subject, payload) = (msg.subject.as_str(), &msg.payload);
        // A status instead of a reply: no stream took the message (no
        // responders while a stream leader is elected, say). The batch is
        // over; the caller's ordinary publish retries with backoff.
        if let Some(status) = msg.status {
            tracing::debug!(%status, subject, "A fast-ingest message got a status, not an ack.");
            self.end();
            return;
        }
        let Ok(reply) = serde_json::from_slice::<Reply>(payload) else {
            tracing::debug!(subject, "An unreadable fast-ingest reply was ignored.");
            return;
        };
        match (reply.kind.as_deref(), reply.error) {
            (Some("ack"), _) => {
                self.started = true;
                if let Some(msgs) = reply.msgs.filter(|m| *m > 0 && *m != self.flow) {
                    self.flow = msgs;
                    self.prefix = format!("{}.{msgs}.fail.", self.inbox);
                }
                self.confirm(reply.seq.unwrap_or(0));
            }
            // A gap or a refused message: the final ack follows and says
            // how far the batch got.
            (Some(kind), error) => tracing::debug!(
                kind,
                seq = reply.seq,
                error = error.map(|e| e.description),
                "A fast-ingest batch stops early."
            ),
            (None, Some(error)) => match error.err_code {
                DISABLED | INVALID_PATTERN => self.refuse(),
                INVALID_BATCH_ID | UNKNOWN_BATCH_ID | TOO_MANY_INFLIGHT => {
                    if !self.ended {
                        tracing::debug!(error = %error.description, "A fast-ingest batch was dropped by the server.");
                    }
                    self.end();
                }
                // One message refused (too large, a limit): the batch ends
                // at the gap it leaves, with a final ack.
                _ => {
                    tracing::debug!(error = %error.description, "A fast-ingest message was refused.")
                }
            },
            (None, None) => match (reply.count, reply.batch, reply.stream) {
                // The final ack: the first `count` messages are stored.
                (Some(count), Some(_), _) => {
                    self.confirm(count);
                    self.end();
                }
                // A plain publish ack: the server does not know batches,
                // and stored this message as an ordinary one.
                (None, None, Some(_)) => {
                    if let Some(seq) = reply_seq(subject) {
                        self.confirm_one(seq);
                    }
                    self.refuse();
                }
                _ => {}
            },
        }
    }

    /// Messages up to `upto` are stored.
    fn confirm(&mut self, upto: u64) {
        self.acked = self.acked.max(upto);
        while self.pending.front().is_some_and(|(seq, _)| *seq <= upto) {
            if let Some((_, done)) = self.pending.pop_front() {
                let _ = done.send(true);
            }
        }
    }

    fn confirm_one(&mut self, seq: u64) {
        if let Some(i) = self.pending.iter().position(|(s, _)| *s == seq)
            && let Some((_, done)) = self.pending.remove(i)
        {
            let _ = done.send(true);
        }
    }

    /// The server does not take batches: off for the handle, then over.
    fn refuse(&mut self) {
        self.refused = true;
        self.on.store(false, Ordering::Relaxed);
        self.end();
    }

    /// The batch is over: whatever is unconfirmed goes the ordinary way.
    fn end(&mut self) {
        self.ended = true;
        for (_, done) in self.pending.drain(..) {
            let _ = done.send(false);
        }
    }
}

/// The batch sequence in a reply subject `<inbox>.<flow>.<gap>.<seq>.<op>.$FI`.
fn reply_seq(subject: &str) -> Option<u64> {
    subject.rsplit('.').nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reply_subjects_carry_the_sequence() {
        assert_eq!(super::reply_seq("_INBOX.abc.100.fail.42.1.$FI"), Some(42));
        assert_eq!(super::reply_seq("nonsense"), None);
    }
}
