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
//! The open requests are counted one by one (the server fills them in order),
//! so credit lost with a request comes back:
//! - a request the server ends (expired, or cut short by a new stream
//!   leader) says so with a 408 or 409 status;
//! - every request dies with the connection: after a reconnect (the
//!   client's connection events, [`jetmesh_shared::mesh::Connection`]), once
//!   the consumer answers again (JetStream may still be recovering), all are
//!   asked again;
//! - a request that is neither filled nor ended by the server a moment after
//!   it expired, and all of them when neither a task nor an idle heartbeat
//!   came for three heartbeats, are taken as lost.
//!
//! A task from a request taken as lost that was not is held like any other.

use crate::liveness::{Slot, Slots};
use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use jetmesh_shared::Mesh;
use jetmesh_shared::error::{Context, Error, ErrorCode, Result};
use jetmesh_shared::mesh::Connection;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the server keeps a pull request.
const EXPIRES: Duration = Duration::from_secs(10);
/// How often the server says an open request is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long after its expiry a request the server did not end is taken as lost.
const GRACE: Duration = Duration::from_secs(2);

/// An open pull request.
struct Open {
    expires: Instant,
    /// Tasks it may still bring.
    left: usize,
}

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
    /// Open requests, oldest first.
    open: VecDeque<Open>,
    /// When the server was last heard on the inbox.
    heard: Instant,
    /// A held task gets an in-progress ack this often.
    keep_alive: Duration,
    connection: Connection,
    /// Connections made when the requests in `open` were asked.
    connects: u64,
}

impl Puller {
    pub async fn open(
        mesh: &Mesh,
        consumer: Consumer<pull::Config>,
        ack_wait: Duration,
    ) -> Result<Self> {
        let js = &mesh.js;
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
            open: VecDeque::new(),
            heard: Instant::now(),
            keep_alive: ack_wait / 2,
            connects: mesh.connection.connects(),
            connection: mesh.connection.clone(),
        })
    }

    /// The next task, with the slot to run it in. `prefetch`: how many tasks
    /// may be held beyond the free slots. Cancelling it (the pool does at
    /// shutdown) keeps the slots and held tasks in hand for [`Puller::close`];
    /// a task cancelled while it was being handed over comes back after its
    /// ack wait. Errors (`unavailable`): a request was refused as a whole
    /// (the consumer deleted, a limit), or the subscription ended.
    pub async fn next(&mut self, slots: &Arc<Slots>, prefetch: usize) -> Result<(Message, Slot)> {
        loop {
            if !self.held.is_empty()
                && let Some(slot) = self.ready.pop()
            {
                let (msg, at) = self.held.pop_front().expect("a held task");
                // The task's own in-progress acks start half an ack wait
                // after it starts: one now if the last is not recent, so the
                // gap between two never reaches the ack wait.
                if at.elapsed() >= self.keep_alive / 2 {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
                return Ok((msg, slot));
            }
            let window = self.ready.len() + prefetch;
            let asked = self.asked();
            let credit = window.saturating_sub(self.held.len() + asked);
            let idle = asked == 0 && self.held.is_empty();
            if credit > 0 && (idle || credit >= ((slots.count() + prefetch) / 2).max(1)) {
                self.ask(credit).await?;
            }
            // The next moment requests may be taken as lost.
            let lost = self
                .open
                .front()
                .map(|r| (r.expires + GRACE).min(self.heard + HEARTBEAT * 3));
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
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.keep_held_alive().await;
                }
                _ = tokio::time::sleep_until(lost.unwrap_or_else(Instant::now)), if lost.is_some() => {
                    self.drop_lost();
                }
                _ = self.connection.reconnected_after(self.connects) => {
                    self.on_reconnect().await;
                }
            }
        }
    }

    fn asked(&self) -> usize {
        self.open.iter().map(|r| r.left).sum()
    }

    /// Forgets the requests that are past their time (see the module docs).
    fn drop_lost(&mut self) {
        let now = Instant::now();
        if self.heard + HEARTBEAT * 3 <= now {
            tracing::debug!(
                asked = self.asked(),
                "No word on the pull requests; asking again."
            );
            self.open.clear();
        }
        while self.open.front().is_some_and(|r| r.expires + GRACE <= now) {
            self.open.pop_front();
        }
    }

    /// After a reconnect, waits (a few seconds at most) until the consumer
    /// answers, then asks for everything again: the requests made before are
    /// gone with the old connection, or with the restarted server.
    async fn on_reconnect(&mut self) {
        self.connects = self.connection.connects();
        let mut delay = Duration::from_millis(50);
        while self.consumer.get_info().await.is_err() && delay < Duration::from_secs(3) {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::debug!(asked = self.asked(), "Reconnected; asking for tasks again.");
        self.open.clear();
        self.heard = Instant::now();
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
        if self.open.is_empty() {
            self.heard = Instant::now();
        }
        self.open.push_back(Open {
            expires: Instant::now() + EXPIRES,
            left: n,
        });
        Ok(())
    }

    fn task(&self, message: async_nats::Message) -> Message {
        Message {
            message,
            context: self.js.clone(),
        }
    }

    fn on_message(&mut self, m: async_nats::Message) -> Result<()> {
        let ended = m
            .headers
            .as_ref()
            .is_some_and(|h| h.get("Nats-Pending-Messages").is_some());
        match m.status {
            None | Some(StatusCode::OK) => {
                if let Some(r) = self.open.front_mut() {
                    r.left -= 1;
                    if r.left == 0 {
                        self.open.pop_front();
                    }
                }
                let msg = self.task(m);
                self.held.push_back((msg, Instant::now()));
                Ok(())
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Ok(()),
            // The oldest request ended (expired, or cut short by a leader
            // change): the rest of it will not come.
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) if ended => {
                self.open.pop_front();
                Ok(())
            }
            status => {
                // Refused as a whole: nothing asked so far will come.
                self.open.clear();
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
                let _ = self.task(m).ack_with(AckKind::Nak(None)).await;
                handed_back += 1;
            }
        }
        handed_back
    }
}
