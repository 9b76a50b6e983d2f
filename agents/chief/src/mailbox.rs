//! Agent mail and file reservations for any client, as request/reply
//! endpoints every chief serves (no lease needed: they only read epics and
//! write mail and reservations):
//! - `mesh.mailbox.send` ([`MailDraft`]), `mesh.mailbox.reply` ([`MailReply`]),
//!   `mesh.mailbox.ack` ([`MailAck`]) answer [`MailSent`];
//! - `mesh.coord.reserve` ([`ReserveRequest`]) answers the [`Reservation`],
//!   `mesh.coord.release` ([`ReleaseRequest`]) answers `{"released": id}`.
//!
//! Each checks its input against the epic: unknown threads and agents,
//! invalid globs, patterns outside the track's scope and conflicts with other
//! holders are refused with their error code and the holder named.

use async_nats::service::Request;
use futures::StreamExt;
use jetmesh_coord::mail::{self, OPERATOR};
use jetmesh_coord::state::{self, Reserved};
use jetmesh_coord::wire::{
    Decision, MailAck, MailDraft, MailKind, MailReply, MailSent, ReleaseRequest, Reservation,
    ReserveRequest,
};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::{Error, ErrorCode, Mesh, Result, ids, service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Adds the endpoints to `svc`; the returned future serves them until
/// `shutdown` (an error if they close before).
pub async fn serve(
    mesh: Mesh,
    svc: &async_nats::service::Service,
    inflight: TaskTracker,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = Result<()>> + Send + 'static> {
    let mut endpoints = Vec::new();
    for subject in [
        mesh.names.mailbox("send"),
        mesh.names.mailbox("reply"),
        mesh.names.mailbox("ack"),
        mesh.names.coord("reserve"),
        mesh.names.coord("release"),
    ] {
        let ep = svc
            .endpoint(subject.clone())
            .await
            .map_err(|e| Error::unavailable(&format!("cannot serve {subject}"), e))?;
        endpoints.push(ep);
    }
    let mut all = futures::stream::select_all(endpoints);
    Ok(async move {
        loop {
            match shutdown.run_until_cancelled(all.next()).await {
                None => return Ok(()),
                Some(None) => {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        "the mailbox endpoints closed",
                    ));
                }
                Some(Some(request)) => {
                    let mesh = mesh.clone();
                    inflight.spawn(async move { handle(&mesh, request).await });
                }
            }
        }
    })
}

async fn handle(mesh: &Mesh, request: Request) {
    let enc = service::request_encoding(&request).unwrap_or(Encoding::Json);
    let op = jetmesh_shared::names::last_token(&request.message.subject).to_string();
    let max = mesh.config.mesh.max_request_bytes;
    let msg = &request.message;
    macro_rules! body {
        ($t:ty) => {
            match codec::decode_message::<$t>(msg.headers.as_ref(), &msg.payload, max) {
                Ok((v, _)) => v,
                Err(e) => return service::respond::<()>(&request, enc, &Err(e)).await,
            }
        };
    }
    let is_coord = request.message.subject.as_str() == mesh.names.coord(&op);
    match (is_coord, op.as_str()) {
        (false, "send") => {
            let r = send(mesh, body!(MailDraft)).await;
            service::respond(&request, enc, &r).await
        }
        (false, "reply") => {
            let r = reply(mesh, body!(MailReply)).await;
            service::respond(&request, enc, &r).await
        }
        (false, "ack") => {
            let r = ack(mesh, body!(MailAck)).await;
            service::respond(&request, enc, &r).await
        }
        (true, "reserve") => {
            let r = reserve(mesh, body!(ReserveRequest)).await;
            service::respond(&request, enc, &r).await
        }
        (true, "release") => {
            let r = release(mesh, body!(ReleaseRequest)).await;
            service::respond(&request, enc, &r).await
        }
        _ => {
            let e = Error::bad_request(format!("no operation {op}"));
            service::respond::<()>(&request, enc, &Err(e)).await
        }
    }
}

/// A decision must answer a blocker on the same thread, with a valid body.
async fn check_decision(
    mesh: &Mesh,
    reply_to: Option<u64>,
    data: Option<&serde_json::Value>,
) -> Result<()> {
    let seq = reply_to
        .ok_or_else(|| Error::bad_request("a decision answers a blocker: give reply_to"))?;
    let blocker = mail::get(mesh, seq).await?;
    if blocker.kind != MailKind::Blocker {
        return Err(Error::bad_request(format!(
            "message {seq} is not a blocker"
        )));
    }
    let d: Decision = data
        .cloned()
        .ok_or_else(|| {
            Error::bad_request("a decision needs data {\"action\": retry|reassign|skip|abort}")
        })
        .and_then(|d| {
            serde_json::from_value(d)
                .map_err(|e| Error::bad_request(format!("not a decision: {e}")))
        })?;
    jetmesh_coord::globs::Glob::parse_all(&d.grant)?;
    Ok(())
}

pub async fn send(mesh: &Mesh, draft: MailDraft) -> Result<MailSent> {
    let m = mail::from_draft(mesh, draft).await?;
    if m.kind == MailKind::Decision {
        check_decision(mesh, m.reply_to, m.data.as_ref()).await?;
    }
    mail::post(mesh, &m).await
}

pub async fn reply(mesh: &Mesh, r: MailReply) -> Result<MailSent> {
    let original = mail::get(mesh, r.reply_to).await?;
    let kind = r.kind.unwrap_or(MailKind::Note);
    let subject = r.subject.unwrap_or_else(|| {
        let s = original.subject.trim_start_matches("Re: ");
        format!("Re: {s}")
    });
    let mut draft = MailDraft {
        epic: original.epic.clone(),
        thread: original.thread.clone(),
        from: r.from,
        to: if original.from.is_empty() || !ids::is_valid(&original.from) {
            Vec::new()
        } else {
            vec![original.from.clone()]
        },
        kind,
        subject,
        body: r.body,
        importance: r.importance,
        ack_required: false,
        reply_to: Some(r.reply_to),
        data: r.data,
    };
    // An unknown original sender is not the replier's fault.
    if let Ok(e) = state::load_epic(mesh, &original.epic).await {
        draft.to.retain(|a| mail::knows_agent(&e, a));
    }
    send(mesh, draft).await
}

pub async fn ack(mesh: &Mesh, a: MailAck) -> Result<MailSent> {
    let original = mail::get(mesh, a.seq).await?;
    send(
        mesh,
        MailDraft {
            epic: original.epic.clone(),
            thread: original.thread.clone(),
            from: a.agent.clone(),
            kind: MailKind::Ack,
            subject: format!("Ack {}", a.seq),
            reply_to: Some(a.seq),
            ..Default::default()
        },
    )
    .await
}

pub async fn reserve(mesh: &Mesh, req: ReserveRequest) -> Result<Reservation> {
    let e = state::load_epic(mesh, &req.epic).await?;
    ids::validate("agent", &req.agent)?;
    let track = match (&req.track, e.tracks.iter().find(|t| t.agent == req.agent)) {
        (Some(t), _) => Some(e.track(t).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownThread,
                format!("epic {} has no track {t}", e.id),
            )
        })?),
        (None, Some(t)) => Some(t),
        (None, None) if req.agent == OPERATOR => None,
        (None, None) => {
            return Err(Error::new(
                ErrorCode::UnknownAgent,
                format!("epic {} has no agent {}", e.id, req.agent),
            ));
        }
    };
    let st = state::state(mesh, &e.id).await?.map(|(s, _)| s);
    let scope = match track {
        Some(t) => Some(state::scope(&e, st.as_ref(), &t.id)?),
        None => None,
    };
    state::check_patterns(
        &req.patterns,
        track.zip(scope.as_deref()).map(|(t, s)| (t.id.as_str(), s)),
    )?;
    let r = Reservation {
        id: req.id.clone().unwrap_or_else(ids::generate),
        epic: e.id.clone(),
        track: track.map(|t| t.id.clone()),
        agent: req.agent.clone(),
        worker: None,
        bead: None,
        patterns: req.patterns.clone(),
        exclusive: req.exclusive,
        at: jiff::Timestamp::now(),
    };
    match state::reserve(mesh, &r).await? {
        Reserved::Granted(r) => Ok(r),
        Reserved::Conflict(c) => Err(c.to_error()),
    }
}

pub async fn release(mesh: &Mesh, req: ReleaseRequest) -> Result<serde_json::Value> {
    ids::validate("epic id", &req.epic)?;
    ids::validate("reservation id", &req.id)?;
    state::release(mesh, &req.epic, &req.id).await?;
    Ok(serde_json::json!({"released": req.id}))
}
