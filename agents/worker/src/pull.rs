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
//!
//! `Credit` keeps this account and decides when to ask, without I/O;
//! [`Puller`] does the asking and hands it what came on the inbox.

use crate::liveness::{Slot, Slots};
use async_nats::jetstream::consumer::{Consumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use jetmesh_shared::Mesh;
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::error::{Context, Error, ErrorCode, Result};
use jetmesh_shared::mesh::Connection;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long to wait, after a reconnect, for the consumer to answer again
/// (JetStream may still be recovering): 50 ms doubling, about 3 s in all.
const CONSUMER_BACK: Policy = Policy {
    min: Duration::from_millis(50),
    max: Duration::from_millis(1600),
    attempts: Some(7),
};

/// How long the server keeps a pull request.
const EXPIRES: Duration = Duration::from_secs(10);
/// How often the server says an open request is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long after its expiry a request the server did not end is taken as lost.
const GRACE: Duration = Duration::from_secs(2);

/// An open pull request.
#[derive(Debug)]
struct Open {
    expires: Instant,
    /// Tasks it may still bring.
    left: usize,
}

/// What a message on the pool's inbox means for the open requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A task, brought by the oldest open request.
    Task,
    /// The server says the open requests are still there.
    Heartbeat,
    /// The oldest request ended (expired, or cut short by a new stream
    /// leader): the rest of it will not come.
    Ended,
    /// A request was refused as a whole: nothing asked so far will come.
    Refused,
}

impl Delivery {
    /// `ended`: the message carries the server's count of what the request
    /// still had pending, as the end of a request does.
    fn of(status: Option<StatusCode>, ended: bool) -> Delivery {
        match status {
            None | Some(StatusCode::OK) => Delivery::Task,
            Some(StatusCode::IDLE_HEARTBEAT) => Delivery::Heartbeat,
            Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) if ended => Delivery::Ended,
            _ => Delivery::Refused,
        }
    }
}

/// The account of open pull requests (see the module docs): how much is
/// asked, when to ask for more, and when requests are taken as lost. It
/// does no I/O: [`Puller`] asks and tells it what came.
#[derive(Debug)]
struct Credit {
    /// Open requests, oldest first.
    open: VecDeque<Open>,
    /// When the server was last heard on the inbox.
    heard: Instant,
}

impl Credit {
    fn new() -> Credit {
        Credit {
            open: VecDeque::new(),
            heard: Instant::now(),
        }
    }

    /// Tasks the open requests may still bring.
    fn asked(&self) -> usize {
        self.open.iter().map(|r| r.left).sum()
    }

    /// How many tasks to ask for now, if any. `ready`: free slots in hand,
    /// `held`: tasks in hand waiting for a slot, `slots`: the pool's slots.
    fn to_ask(&self, ready: usize, held: usize, slots: usize, prefetch: usize) -> Option<usize> {
        let window = ready + prefetch;
        let asked = self.asked();
        let credit = window.saturating_sub(held + asked);
        let idle = asked == 0 && held == 0;
        (credit > 0 && (idle || credit >= ((slots + prefetch) / 2).max(1))).then_some(credit)
    }

    /// A request for `n` tasks was sent.
    fn asking(&mut self, n: usize) {
        if self.open.is_empty() {
            self.heard = Instant::now();
        }
        self.open.push_back(Open {
            expires: Instant::now() + EXPIRES,
            left: n,
        });
    }

    /// Something came on the inbox.
    fn on(&mut self, delivery: Delivery) {
        self.heard = Instant::now();
        match delivery {
            Delivery::Task => {
                if let Some(r) = self.open.front_mut() {
                    r.left -= 1;
                    if r.left == 0 {
                        self.open.pop_front();
                    }
                }
            }
            Delivery::Heartbeat => {}
            Delivery::Ended => {
                self.open.pop_front();
            }
            Delivery::Refused => self.open.clear(),
        }
    }

    /// The next moment requests may be taken as lost.
    fn lost_at(&self) -> Option<Instant> {
        self.open
            .front()
            .map(|r| (r.expires + GRACE).min(self.heard + HEARTBEAT * 3))
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

    /// The connection came back and the consumer answers: every request
    /// made before is gone.
    fn reconnected(&mut self) {
        tracing::debug!(asked = self.asked(), "Reconnected; asking for tasks again.");
        self.open.clear();
        self.heard = Instant::now();
    }
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
    credit: Credit,
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
            credit: Credit::new(),
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
            let wanted =
                self.credit
                    .to_ask(self.ready.len(), self.held.len(), slots.count(), prefetch);
            if let Some(credit) = wanted {
                self.ask(credit).await?;
            }
            let lost = self.credit.lost_at();
            let due = self.held.iter().map(|(_, at)| *at + self.keep_alive).min();
            tokio::select! {
                biased;
                m = self.sub.next() => {
                    let m = m.ok_or_else(|| Error::new(ErrorCode::Unavailable, "the task subscription ended"))?;
                    self.on_message(m)?;
                }
                slot = slots.acquire(), if self.ready.len() < slots.count() => {
                    self.ready.push(slot);
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    self.keep_held_alive().await;
                }
                _ = tokio::time::sleep_until(lost.unwrap_or_else(Instant::now)), if lost.is_some() => {
                    self.credit.drop_lost();
                }
                _ = self.connection.reconnected_after(self.connects) => {
                    self.on_reconnect().await;
                }
            }
        }
    }

    /// After a reconnect, waits (a few seconds at most) until the consumer
    /// answers, then asks for everything again: the requests made before are
    /// gone with the old connection, or with the restarted server.
    async fn on_reconnect(&mut self) {
        self.connects = self.connection.connects();
        let _ = CONSUMER_BACK
            .retry(
                "reading the pool consumer after a reconnect",
                || self.consumer.get_info(),
                |_| true,
            )
            .await;
        self.credit.reconnected();
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
        self.credit.asking(n);
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
        let delivery = Delivery::of(m.status, ended);
        self.credit.on(delivery);
        match delivery {
            Delivery::Task => {
                let msg = self.task(m);
                self.held.push_back((msg, Instant::now()));
                Ok(())
            }
            Delivery::Heartbeat | Delivery::Ended => Ok(()),
            Delivery::Refused => Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "the pool consumer refused a pull request: {} {}",
                    m.status.map_or(0, |s| s.as_u16()),
                    m.description.as_deref().unwrap_or("")
                ),
            )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_idle_pool_asks_at_once_for_its_free_slots_and_prefetch() {
        let credit = Credit::new();
        // Even one free slot of eight: nothing is asked, so ask now.
        assert_eq!(credit.to_ask(1, 0, 8, 2), Some(3));
        assert_eq!(credit.to_ask(8, 0, 8, 0), Some(8));
    }

    #[test]
    fn with_requests_open_a_pool_asks_in_chunks_of_half_its_window() {
        let mut credit = Credit::new();
        credit.asking(2);
        // Window of 4 slots: a chunk is 2.
        assert_eq!(credit.to_ask(3, 0, 4, 0), None);
        assert_eq!(credit.to_ask(4, 0, 4, 0), Some(2));
        // Prefetch widens the window and the chunk: (4 + 4) / 2 = 4.
        assert_eq!(credit.to_ask(4, 0, 4, 4), Some(6));
        assert_eq!(credit.to_ask(1, 0, 4, 4), None);
    }

    #[test]
    fn held_tasks_and_open_requests_use_up_credit() {
        let mut credit = Credit::new();
        credit.asking(1);
        // Window 4 + 4, one task held, one asked: 6 more.
        assert_eq!(credit.to_ask(4, 1, 4, 4), Some(6));
        credit.asking(6);
        assert_eq!(credit.to_ask(4, 1, 4, 4), None);
    }

    #[test]
    fn a_held_task_alone_makes_a_pool_ask_in_chunks() {
        let credit = Credit::new();
        assert_eq!(credit.to_ask(2, 0, 8, 0), Some(2));
        // The same free slots with a task in hand: 1 is below a chunk of 4.
        assert_eq!(credit.to_ask(2, 1, 8, 0), None);
    }

    #[test]
    fn a_full_window_asks_for_nothing() {
        let mut credit = Credit::new();
        assert_eq!(credit.to_ask(0, 0, 4, 0), None);
        // More in hand than the window: no underflow, nothing asked.
        assert_eq!(credit.to_ask(1, 5, 4, 0), None);
        credit.asking(9);
        assert_eq!(credit.to_ask(4, 0, 4, 2), None);
        // A pool of one slot still asks one at a time.
        let one = Credit::new();
        assert_eq!(one.to_ask(1, 0, 1, 0), Some(1));
    }

    #[test]
    fn statuses_are_read_as_tasks_heartbeats_ends_and_refusals() {
        use StatusCode as S;
        assert_eq!(Delivery::of(None, false), Delivery::Task);
        assert_eq!(Delivery::of(Some(S::OK), false), Delivery::Task);
        assert_eq!(
            Delivery::of(Some(S::IDLE_HEARTBEAT), false),
            Delivery::Heartbeat
        );
        assert_eq!(Delivery::of(Some(S::TIMEOUT), true), Delivery::Ended);
        assert_eq!(
            Delivery::of(Some(S::REQUEST_TERMINATED), true),
            Delivery::Ended
        );
        // Without the pending counts a 408 or 409 is not the end of one
        // request (409 Consumer Deleted, Exceeded MaxWaiting, ...).
        assert_eq!(Delivery::of(Some(S::TIMEOUT), false), Delivery::Refused);
        assert_eq!(
            Delivery::of(Some(S::REQUEST_TERMINATED), false),
            Delivery::Refused
        );
        assert_eq!(Delivery::of(Some(S::NOT_FOUND), true), Delivery::Refused);
        assert_eq!(
            Delivery::of(Some(S::NO_RESPONDERS), false),
            Delivery::Refused
        );
    }

    #[test]
    fn tasks_fill_the_oldest_request_first_one_by_one() {
        let mut credit = Credit::new();
        credit.asking(2);
        credit.asking(3);
        credit.on(Delivery::Task);
        assert_eq!((credit.asked(), credit.open.len()), (4, 2));
        credit.on(Delivery::Task);
        // The first request is filled and closed; the second is untouched.
        assert_eq!((credit.asked(), credit.open.len()), (3, 1));
        assert_eq!(credit.open[0].left, 3);
    }

    #[test]
    fn a_task_with_no_open_request_leaves_the_count_alone() {
        let mut credit = Credit::new();
        credit.on(Delivery::Task);
        assert_eq!(credit.asked(), 0);
        assert!(credit.open.is_empty());
    }

    #[test]
    fn an_end_closes_only_the_oldest_request_and_a_refusal_closes_all() {
        let mut credit = Credit::new();
        credit.asking(5);
        credit.asking(3);
        credit.on(Delivery::Task);
        credit.on(Delivery::Heartbeat);
        assert_eq!(credit.asked(), 7);
        // The oldest had 4 left: they will not come; the newer 3 still may.
        credit.on(Delivery::Ended);
        assert_eq!(credit.asked(), 3);
        credit.asking(2);
        credit.on(Delivery::Refused);
        assert_eq!(credit.asked(), 0);
        assert_eq!(credit.lost_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_lost_a_grace_after_it_expires() {
        let mut credit = Credit::new();
        let t0 = Instant::now();
        credit.asking(4);
        credit.on(Delivery::Task);
        advance(SECOND).await;
        credit.asking(1);
        assert_eq!(credit.lost_at(), Some(t0 + HEARTBEAT * 3));
        // Heartbeats keep coming: only expiry plus grace ends the request.
        while Instant::now() < t0 + EXPIRES + GRACE - SECOND {
            advance(SECOND).await;
            credit.on(Delivery::Heartbeat);
            credit.drop_lost();
            assert_eq!(credit.asked(), 4, "at {:?}", t0.elapsed());
        }
        assert_eq!(credit.lost_at(), Some(t0 + EXPIRES + GRACE));
        advance(SECOND - Duration::from_millis(1)).await;
        credit.drop_lost();
        assert_eq!(credit.asked(), 4);
        advance(Duration::from_millis(1)).await;
        credit.drop_lost();
        // The oldest is gone, the one asked a second later is not.
        assert_eq!(credit.asked(), 1);
        assert_eq!(credit.lost_at(), Some(t0 + SECOND + EXPIRES + GRACE));
    }

    #[tokio::test(start_paused = true)]
    async fn three_silent_heartbeats_lose_every_request() {
        let mut credit = Credit::new();
        let t0 = Instant::now();
        credit.asking(2);
        credit.asking(3);
        assert_eq!(credit.lost_at(), Some(t0 + HEARTBEAT * 3));
        advance(HEARTBEAT * 3 - Duration::from_millis(1)).await;
        credit.drop_lost();
        assert_eq!(credit.asked(), 5);
        advance(Duration::from_millis(1)).await;
        credit.drop_lost();
        assert_eq!(credit.asked(), 0);
        assert_eq!(credit.lost_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn anything_heard_puts_off_the_silence_rule() {
        let mut credit = Credit::new();
        let t0 = Instant::now();
        credit.asking(2);
        advance(HEARTBEAT * 2).await;
        credit.on(Delivery::Task);
        assert_eq!(credit.lost_at(), Some(t0 + HEARTBEAT * 5));
        advance(HEARTBEAT * 2).await;
        credit.on(Delivery::Heartbeat);
        advance(HEARTBEAT * 2).await;
        credit.drop_lost();
        assert_eq!(credit.asked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn asking_after_a_quiet_spell_restarts_the_silence_clock_but_asking_more_does_not() {
        let mut credit = Credit::new();
        // Nothing was open, so nothing was to be heard.
        advance(EXPIRES).await;
        let t1 = Instant::now();
        credit.asking(1);
        assert_eq!(credit.lost_at(), Some(t1 + HEARTBEAT * 3));
        credit.drop_lost();
        assert_eq!(credit.asked(), 1);
        // With a request open, a new one does not count as word from the server.
        advance(HEARTBEAT * 2).await;
        credit.asking(1);
        assert_eq!(credit.lost_at(), Some(t1 + HEARTBEAT * 3));
        advance(HEARTBEAT).await;
        credit.drop_lost();
        assert_eq!(credit.asked(), 0);
    }

    #[test]
    fn a_reconnect_forgets_every_request_so_the_credit_is_asked_for_again() {
        let mut credit = Credit::new();
        credit.asking(3);
        credit.asking(1);
        credit.on(Delivery::Task);
        assert_eq!(credit.to_ask(4, 0, 4, 0), None);
        credit.reconnected();
        assert_eq!(credit.asked(), 0);
        assert_eq!(credit.lost_at(), None);
        assert_eq!(credit.to_ask(4, 0, 4, 0), Some(4));
    }

    /// A pool of 2 slots and prefetch 2 driven through a few minutes of
    /// tasks, finished tasks, ended requests, reconnects and silences: it
    /// never has more asked and in hand than its window, and keeps asking.
    #[tokio::test(start_paused = true)]
    async fn the_credit_never_exceeds_the_window_whatever_comes() {
        let (slots, prefetch) = (2, 2);
        let mut credit = Credit::new();
        let mut held = 0;
        let mut ready = slots;
        let mut asks = 0;
        for step in 0..600u32 {
            if let Some(n) = credit.to_ask(ready, held, slots, prefetch) {
                credit.asking(n);
                asks += 1;
            }
            assert!(
                credit.asked() + held <= ready + prefetch,
                "step {step}: asked {} held {held} ready {ready}",
                credit.asked()
            );
            match step % 7 {
                // A task comes and takes a slot if one is free.
                0 | 3 if credit.asked() > 0 => {
                    credit.on(Delivery::Task);
                    if ready > 0 {
                        ready -= 1;
                    } else {
                        held += 1;
                    }
                }
                // A task finishes: its slot is free again, or a held task takes it.
                1 | 4 if ready < slots => {
                    if held > 0 {
                        held -= 1;
                    } else {
                        ready += 1;
                    }
                }
                5 if step % 5 == 0 => credit.on(Delivery::Ended),
                6 if step % 11 == 0 => credit.reconnected(),
                _ => {}
            }
            advance(Duration::from_millis(700)).await;
            if step % 13 != 0 {
                credit.on(Delivery::Heartbeat);
            }
            credit.drop_lost();
        }
        assert!(asks > 20, "asked only {asks} times");
    }
}
