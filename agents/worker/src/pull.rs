//! Pulling on credit. A pool asks JetStream for the tasks it can start soon,
//! not for a fixed batch: its free slots, plus, while its tasks are short, a
//! few per slot more ([`Puller::next`]'s `prefetch`). A task that arrives when no
//! slot is free is held, and kept alive with an in-progress ack every half
//! ack wait, so it is never delivered to a second worker while it waits (a
//! held task whose ack wait ran out would run twice). A pool of slow tasks
//! asks only for free slots, so the tasks that wait stay in the pool's queue,
//! where an idle worker can take them and the autoscaler counts them.
//!
//! Credit is asked for at once when nothing is asked, otherwise in chunks of
//! half the window, so a busy pool sends one pull request per half window.
//! Requests expire, and carry idle heartbeats: when neither a task nor a
//! heartbeat comes for three heartbeats, the requests are taken as lost (a
//! reconnect, a restarted server, a new stream leader) and asked again; a
//! task from a request taken as lost that was not is held like any other.

use crate::liveness::{Slot, Slots};
use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use jetmesh_shared::error::{Context, Error, ErrorCode, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the server keeps a pull request.
const EXPIRES: Duration = Duration::from_secs(10);
/// How often the server says an open request is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub struct Puller {
    consumer: Consumer<pull::Config>,
    js: jetstream::Context,
    inbox: Subject,
    sub: Subscriber,
    /// Free slots in hand.
    ready: Vec<Slot>,
    /// Tasks in hand waiting for a slot, in the order they came, each with
    /// when it was last kept alive.
    held: VecDeque<(Message, Instant)>,
    /// Tasks asked for and not received yet.
    asked: usize,
    /// When the server was last heard on the inbox.
    heard: Instant,
    /// A held task gets an in-progress ack this often.
    keep_alive: Duration,
}

impl Puller {
    pub async fn open(
        js: &jetstream::Context,
        consumer: Consumer<pull::Config>,
        ack_wait: Duration,
    ) -> Result<Self> {
        let client = js.client();
        let inbox = Subject::from(client.new_inbox());
        let sub = client
            .subscribe(inbox.clone())
            .await
            .context("cannot subscribe for tasks")?;
        Ok(Puller {
            consumer,
            js: js.clone(),
            inbox,
            sub,
            ready: Vec::new(),
            held: VecDeque::new(),
            asked: 0,
            heard: Instant::now(),
            keep_alive: ack_wait / 2,
        })
    }

    /// The next task, with the slot to run it in. `prefetch`: how many tasks
    /// may be held beyond the free slots. Cancel-safe: slots and tasks in
    /// hand stay there. Errors (`unavailable`): a request was refused as a
    /// whole (the consumer deleted, a limit), or the subscription ended.
    pub async fn next(&mut self, slots: &Arc<Slots>, prefetch: usize) -> Result<(Message, Slot)> {
        loop {
            if !self.held.is_empty()
                && let Some(slot) = self.ready.pop()
            {
                let (msg, _) = self.held.pop_front().expect("a held task");
                return Ok((msg, slot));
            }
            let window = self.ready.len() + prefetch;
            let credit = window.saturating_sub(self.held.len() + self.asked);
            let idle = self.asked == 0 && self.held.is_empty();
            if credit > 0 && (idle || credit >= ((slots.count() + prefetch) / 2).max(1)) {
                self.ask(credit).await?;
            }
            let silent = self.heard + HEARTBEAT * 3;
            let due = self.held.iter().map(|(_, at)| *at + self.keep_alive).min();
            tokio::select! {
                biased;
                m = self.sub.next() => {
                    let m = m.ok_or_else(|| Error::new(ErrorCode::Unavailable, "the task subscription ended"))?;
                    self.heard = Instant::now();
                    self.on_message(m)?;
                }
                slot = slots.acquire(), if self.ready.len() < slots.count() => {
                    self.ready.push(slot);
                }
                _ = tokio::time::sleep_until(due.unwrap_or(silent)), if due.is_some() => {
                    self.keep_held_alive().await;
                }
                _ = tokio::time::sleep_until(silent), if self.asked > 0 => {
                    tracing::debug!(asked = self.asked, "No word on the pull requests; asking again.");
                    self.asked = 0;
                }
            }
        }
    }

    async fn ask(&mut self, n: usize) -> Result<()> {
        let batch = pull::BatchConfig {
            batch: n,
            expires: Some(EXPIRES),
            idle_heartbeat: HEARTBEAT,
            ..Default::default()
        };
        self.consumer
            .request_batch(batch, self.inbox.clone())
            .await
            .map_err(|e| Error::unavailable("cannot ask for tasks", e))?;
        if self.asked == 0 {
            self.heard = Instant::now();
        }
        self.asked += n;
        Ok(())
    }

    fn on_message(&mut self, m: async_nats::Message) -> Result<()> {
        let pending = |m: &async_nats::Message| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Pending-Messages"))
                .and_then(|v| v.as_str().parse::<usize>().ok())
        };
        match m.status {
            None | Some(StatusCode::OK) => {
                self.asked = self.asked.saturating_sub(1);
                let msg = Message {
                    message: m,
                    context: self.js.clone(),
                };
                self.held.push_back((msg, Instant::now()));
                Ok(())
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Ok(()),
            // A request that ended (expired, or cut short by a leader change)
            // says how many of its tasks will not come.
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) if pending(&m).is_some() => {
                let left = pending(&m).unwrap_or_default();
                self.asked = self.asked.saturating_sub(left);
                Ok(())
            }
            status => {
                // Refused as a whole: nothing asked so far will come.
                self.asked = 0;
                Err(Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the pool consumer refused a pull request: {} {}",
                        status.map_or(0, |s| s.as_u16()),
                        m.description.as_deref().unwrap_or("")
                    ),
                ))
            }
        }
    }

    /// In-progress acks for the held tasks due one.
    async fn keep_held_alive(&mut self) {
        let now = Instant::now();
        for (msg, at) in self.held.iter_mut() {
            if *at + self.keep_alive <= now {
                let _ = msg.ack_with(AckKind::Progress).await;
                *at = now;
            }
        }
    }

    /// Stops asking and hands back the held tasks and those still arriving
    /// (another worker takes them now rather than after the ack wait).
    /// Returns how many were handed back.
    pub async fn close(mut self) -> usize {
        let _ = self.sub.unsubscribe().await;
        self.ready.clear();
        let mut handed_back = 0;
        for (msg, _) in std::mem::take(&mut self.held) {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            handed_back += 1;
        }
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(50), self.sub.next()).await
        {
            if matches!(m.status, None | Some(StatusCode::OK)) {
                let msg = Message {
                    message: m,
                    context: self.js.clone(),
                };
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                handed_back += 1;
            }
        }
        handed_back
    }
}
