//! Sessions on a shared work queue (docs/adr/0011-sessions.md).
//!
//! Tasks of one session of a capability that keeps state (a `web` page)
//! must run on the worker holding that state, though any worker of the pool
//! may pull them. The router runs a session's tasks one at a time, in plan
//! order; here, the worker that pulls one:
//!
//! - runs it itself when it holds the session;
//! - else asks `mesh.session.<pool>.<session>`, where the holder listens (a
//!   queue subscription taken when it opened the session), to run it, and
//!   keeps the task's JetStream message (with progress acks) until the
//!   answer comes; the result is then recorded as for any task;
//! - when nobody answers (no responders: never opened, or its worker died),
//!   becomes the holder and runs it.
//!
//! NATS interest is the session directory: no table to keep, nothing stale
//! after a crash (a dead worker's subscriptions go with its connection).
//! While it waits, the forwarding worker pings the holder every 2 s; a
//! holder that disappears mid-task ends the wait with `session_lost`.
//! A session is released when its plan's tasks are all done
//! (`aggregation_ready`), or once its capability closed it (TTL, page cap).

use async_nats::{HeaderMap, RequestErrorKind};
use futures::StreamExt;
use jetmesh_shared::capability::{Call, Capability};
use jetmesh_shared::error::{Error, ErrorCode, Result};
use jetmesh_shared::names::{EventKind, Names};
use jetmesh_shared::wire::{TaskMessage, TaskResult};
use jetmesh_shared::{Mesh, codec, trace};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The header of a ping: "are you still there?".
const PING: &str = "Jetmesh-Session-Ping";
/// How often a forwarding worker checks that the holder is still there.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Unanswered pings in a row after which the holder counts as gone.
const SILENT_PINGS: u32 = 3;
/// How long a forwarded task may take when the task says nothing.
const DEFAULT_LIMIT: Duration = Duration::from_secs(600);
/// A session whose capability closed it is released within this.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The task's state holder is gone, with the state.
pub const SESSION_LOST: ErrorCode = ErrorCode::capability("session_lost");

/// The sessions this worker process holds, for one pool.
pub struct Sessions {
    mesh: Mesh,
    pool: String,
    held: Mutex<HashMap<String, Held>>,
    stop: CancellationToken,
}

struct Held {
    cap: Arc<dyn Capability>,
    stop: CancellationToken,
}

impl Sessions {
    /// Starts the release of sessions whose plan ended or whose capability
    /// closed them; everything ends with `stop`.
    pub async fn start(mesh: Mesh, pool: &str, stop: CancellationToken) -> Result<Arc<Sessions>> {
        let this = Arc::new(Sessions {
            mesh: mesh.clone(),
            pool: pool.to_string(),
            held: Mutex::default(),
            stop: stop.clone(),
        });
        let mut ended = mesh
            .client
            .subscribe(mesh.names.event_all(EventKind::AggregationReady))
            .await
            .map_err(|e| Error::unavailable("cannot follow plan ends", e))?;
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            loop {
                let plan = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sweep.tick() => None,
                    m = ended.next() => match m {
                        Some(m) => m.subject.rsplit('.').next().map(str::to_string),
                        None => break,
                    },
                };
                let Some(this) = weak.upgrade() else { break };
                match plan {
                    // The default session of a plan is the plan itself.
                    Some(plan) => this.release(&plan).await,
                    None => this.sweep().await,
                }
            }
        });
        Ok(this)
    }

    /// Runs `call` where its session lives: here, on its holder, or here as
    /// the new holder.
    pub async fn execute(
        &self,
        cap: &Arc<dyn Capability>,
        call: Call<'_>,
        task: &TaskMessage,
        limit: Option<Duration>,
    ) -> Result<Value> {
        if self
            .held
            .lock()
            .expect("sessions lock")
            .contains_key(call.session)
        {
            return cap.execute(call).await;
        }
        let subject = self.mesh.names.session(&self.pool, call.session);
        match self
            .forward(&subject, task, limit.unwrap_or(DEFAULT_LIMIT))
            .await
        {
            Forwarded::Answered(r) => r,
            Forwarded::NoHolder => {
                self.hold(cap, call.session, &subject).await?;
                cap.execute(call).await
            }
        }
    }

    /// Listens for the session's tasks from other workers.
    async fn hold(&self, cap: &Arc<dyn Capability>, session: &str, subject: &str) -> Result<()> {
        if self
            .held
            .lock()
            .expect("sessions lock")
            .contains_key(session)
        {
            // Another task here took it meanwhile.
            return Ok(());
        }
        let mut sub = self
            .mesh
            .client
            .queue_subscribe(subject.to_string(), Names::SESSION_HOLDER.to_string())
            .await
            .map_err(|e| Error::unavailable("cannot hold a session", e))?;
        // Registered at the server before the task's result is out, so the
        // session's next task, dispatched after it, finds this holder.
        self.mesh
            .client
            .flush()
            .await
            .map_err(|e| Error::unavailable("cannot hold a session", e))?;
        let stop = self.stop.child_token();
        let first = match self
            .held
            .lock()
            .expect("sessions lock")
            .entry(session.to_string())
        {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Held {
                    cap: cap.clone(),
                    stop: stop.clone(),
                });
                true
            }
        };
        if !first {
            // Another task here became the holder in the meantime.
            let _ = sub.unsubscribe().await;
            return Ok(());
        }
        let (mesh, cap) = (self.mesh.clone(), cap.clone());
        tracing::debug!(session, pool = %self.pool, "This worker holds a session.");
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let (mesh, cap) = (mesh.clone(), cap.clone());
                tokio::spawn(async move { serve(&mesh, &*cap, msg).await });
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(())
    }

    /// Stops holding `session` and closes it in its capability.
    pub async fn release(&self, session: &str) {
        let held = self.held.lock().expect("sessions lock").remove(session);
        if let Some(h) = held {
            h.stop.cancel();
            h.cap.close_session(session).await;
        }
    }

    /// Releases the sessions their capability has closed on its own.
    async fn sweep(&self) {
        let closed: Vec<String> = self
            .held
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(s, h)| !h.cap.holds(s))
            .map(|(s, _)| s.clone())
            .collect();
        for s in closed {
            self.release(&s).await;
        }
    }

    /// Sends the task to the session's holder and waits for its result,
    /// checking every [`PING_EVERY`] that the holder is still there.
    async fn forward(&self, subject: &str, task: &TaskMessage, limit: Duration) -> Forwarded {
        let payload = match codec::to_json(task) {
            Ok(p) => p,
            Err(e) => return Forwarded::Answered(Err(e)),
        };
        let client = &self.mesh.client;
        let mut request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(limit));
        // The holder's span joins this task's trace.
        if trace::enabled() {
            let mut headers = HeaderMap::new();
            trace::inject(&mut headers);
            if !headers.is_empty() {
                request = request.headers(headers);
            }
        }
        let request = client.send_request(subject.to_string(), request);
        tokio::pin!(request);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        // Pings in a row that got no answer: a holder hung or cut off.
        let mut silent = 0;
        loop {
            tokio::select! {
                reply = &mut request => {
                    return match reply {
                        Ok(m) => Forwarded::Answered(decode(&m.payload)),
                        Err(e) if e.kind() == RequestErrorKind::NoResponders => Forwarded::NoHolder,
                        Err(e) if e.kind() == RequestErrorKind::TimedOut => Forwarded::Answered(Err(Error::new(
                            ErrorCode::Timeout,
                            format!("the session's holder did not finish the task within {limit:?}"),
                        ))),
                        Err(e) => Forwarded::Answered(Err(Error::unavailable("cannot reach the session's holder", e))),
                    };
                }
                _ = ping.tick() => {
                    let mut headers = HeaderMap::new();
                    headers.insert(PING, "1");
                    let pong = client
                        .send_request(
                            subject.to_string(),
                            async_nats::Request::new().headers(headers).timeout(Some(PING_EVERY)),
                        )
                        .await;
                    match &pong {
                        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                            return Forwarded::Answered(Err(Error::new(
                                SESSION_LOST,
                                "the worker holding this task's session stopped while running it",
                            )));
                        }
                        Err(_) => silent += 1,
                        Ok(_) => silent = 0,
                    }
                    if silent >= SILENT_PINGS {
                        return Forwarded::Answered(Err(Error::new(
                            SESSION_LOST,
                            "the worker holding this task's session stopped answering",
                        )));
                    }
                }
            }
        }
    }
}

enum Forwarded {
    Answered(Result<Value>),
    NoHolder,
}

/// Answers one message on a session subject: a ping, or a task to run.
async fn serve(mesh: &Mesh, cap: &dyn Capability, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    if msg.headers.as_ref().is_some_and(|h| h.get(PING).is_some()) {
        let _ = mesh.client.publish(reply, "pong".into()).await;
        return;
    }
    let result = match codec::from_json::<TaskMessage>(&msg.payload) {
        Ok(task) => {
            let t = &task.task;
            let span = tracing::info_span!(
                parent: None,
                "session.execute",
                plan_id = %task.plan_id,
                task_id = %t.id,
                capability = %t.capability,
                action = %t.action,
                otel.kind = "server",
            );
            trace::set_parent(&span, msg.headers.as_ref());
            cap.execute(Call {
                action: &t.action,
                params: &t.params,
                plan_id: &task.plan_id,
                task_id: &t.id,
                session: t.session.as_deref().unwrap_or(&task.plan_id),
            })
            .instrument(span)
            .await
        }
        Err(e) => Err(e),
    };
    let body = match &result {
        Ok(v) => TaskResult::success(v.clone()),
        Err(e) => TaskResult::failure(e),
    };
    let sent = match codec::to_json(&body) {
        Ok(bytes) => mesh.client.publish(reply.clone(), bytes).await.is_ok(),
        Err(_) => false,
    };
    if !sent {
        // Too large for one message (or not encodable): the forwarder must
        // not wait for an answer that never comes.
        let e = Error::new(
            ErrorCode::PayloadTooLarge,
            "the session holder's result does not fit one NATS message",
        );
        if let Ok(bytes) = codec::to_json(&TaskResult::failure(&e)) {
            let _ = mesh.client.publish(reply, bytes).await;
        }
    }
}

/// The holder's answer as the task's outcome.
fn decode(payload: &[u8]) -> Result<Value> {
    let r: TaskResult = codec::from_json(payload)?;
    if r.is_success() {
        return Ok(r.output.unwrap_or(Value::Null));
    }
    let body = r
        .error
        .unwrap_or_else(|| (&Error::new(ErrorCode::BadResult, "no error given")).into());
    Err(Error::new(
        ErrorCode::parse(&body.code).unwrap_or(ErrorCode::BadResult),
        body.message,
    ))
}
