//! Agent mail on JetStream: stream `MESH_MAIL`, one subject per thread
//! (`mesh.mail.<epic>.epic`, `.track.<track>`, `.inbox.<agent>`). A message's
//! number is its stream sequence; a reply names the number it answers and is
//! stored on the same thread. Reading a thread is an ordered consumer over its
//! subject, so nothing but the stream holds mail.

use crate::wire::{Epic, Importance, Mail, MailDraft, MailKind, MailSent};
use async_nats::jetstream::consumer;
use futures::{Stream, StreamExt};
use jetmesh_shared::Mesh;
use jetmesh_shared::codec;
use jetmesh_shared::error::{Context, Error, ErrorCode, Result};
use jetmesh_shared::ids;
use jetmesh_shared::names::Thread;
use std::time::Duration;

/// The chief's name on mail threads.
pub const CHIEF: &str = "chief";
/// The name people use; escalations also go to its inbox.
pub const OPERATOR: &str = "operator";
/// The longest mail body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

impl Mail {
    /// A new message (fresh id, now, normal importance).
    pub fn new(
        epic: &str,
        thread: &Thread,
        from: &str,
        kind: MailKind,
        subject: impl Into<String>,
        body: impl Into<String>,
    ) -> Mail {
        Mail {
            v: jetmesh_shared::wire::PROTOCOL_VERSION,
            id: ids::generate(),
            epic: epic.to_string(),
            thread: thread.to_string(),
            from: from.to_string(),
            to: Vec::new(),
            kind,
            subject: subject.into(),
            body: body.into(),
            importance: Importance::Normal,
            ack_required: false,
            reply_to: None,
            data: None,
            at: jiff::Timestamp::now(),
            seq: None,
        }
    }

    pub fn with_data(mut self, data: impl serde::Serialize) -> Mail {
        self.data = serde_json::to_value(data).ok();
        self
    }

    pub fn importance(mut self, i: Importance) -> Mail {
        self.importance = i;
        self
    }

    pub fn reply_to(mut self, seq: u64) -> Mail {
        self.reply_to = Some(seq);
        self
    }

    /// The thread as a value.
    pub fn thread(&self) -> Option<Thread> {
        Thread::parse(&self.thread)
    }

    /// `data` decoded as `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.data
            .clone()
            .and_then(|d| serde_json::from_value(d).ok())
    }
}

/// Stores a message on its thread; returns its number.
pub async fn post(mesh: &Mesh, mail: &Mail) -> Result<MailSent> {
    let thread = mail.thread().ok_or_else(|| {
        Error::new(
            ErrorCode::UnknownThread,
            format!("no thread {:?}", mail.thread),
        )
    })?;
    let subject = mesh.names.mail(&mail.epic, &thread);
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(codec::to_json(mail)?)
        .message_id(mail.id.clone());
    let ack = mesh
        .js
        .send_publish(subject.clone(), msg)
        .await
        .context("cannot send mail")?
        .await
        .context("mail not stored")?;
    Ok(MailSent {
        seq: ack.sequence,
        id: mail.id.clone(),
        subject,
    })
}

/// Decodes a stored message; the subject is authoritative for the thread.
fn decode(mesh: &Mesh, subject: &str, payload: &[u8], seq: u64) -> Option<Mail> {
    let (epic, thread) = mesh.names.parse_mail_subject(subject)?;
    let mut mail: Mail = codec::from_json(payload).ok()?;
    mail.epic = epic;
    mail.thread = thread.to_string();
    mail.seq = Some(seq);
    if mail.id.is_empty() {
        mail.id = seq.to_string();
    }
    Some(mail)
}

/// Message number `seq`.
/// Errors: `not_found` when there is none (or it is not mail).
pub async fn get(mesh: &Mesh, seq: u64) -> Result<Mail> {
    let stream = mesh
        .js
        .get_stream_no_info(mesh.names.mail_stream())
        .await
        .context("cannot open the mail stream")?;
    let missing = || Error::new(ErrorCode::NotFound, format!("there is no message {seq}"));
    let raw = stream.get_raw_message(seq).await.map_err(|_| missing())?;
    decode(mesh, &raw.subject, &raw.payload, seq).ok_or_else(missing)
}

async fn ordered(
    mesh: &Mesh,
    filter: &str,
    after: Option<u64>,
) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>> {
    let stream = mesh
        .js
        .get_stream_no_info(mesh.names.mail_stream())
        .await
        .context("cannot open the mail stream")?;
    let deliver_policy = match after {
        Some(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => consumer::DeliverPolicy::All,
    };
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("cannot read mail")
}

/// Every message on `filter` (a thread subject, wildcards allowed) stored
/// after `after`, in order.
pub async fn read(mesh: &Mesh, filter: &str, after: Option<u64>) -> Result<Vec<Mail>> {
    let consumer = ordered(mesh, filter, after).await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::with_capacity(pending);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.context("cannot read mail")?;
    for _ in 0..pending {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| Error::new(ErrorCode::Timeout, "reading mail stalled"))?;
        let Some(msg) = msg else { break };
        let msg = msg.context("reading mail failed")?;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        if let Some(m) = decode(mesh, &msg.subject, &msg.payload, seq) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Messages on `filter` after `after`, then new ones as they arrive.
pub async fn follow(
    mesh: &Mesh,
    filter: &str,
    after: Option<u64>,
) -> Result<impl Stream<Item = Mail> + Send + use<>> {
    let consumer = ordered(mesh, filter, after).await?;
    let messages = consumer.messages().await.context("cannot follow mail")?;
    let mesh = mesh.clone();
    Ok(messages.filter_map(move |m| {
        let out = m.ok().and_then(|msg| {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            decode(&mesh, &msg.subject, &msg.payload, seq)
        });
        async move { out }
    }))
}

/// The first message on `filter` after `after` that `pred` accepts, waiting
/// up to `patience`. `None` when none came.
pub async fn wait_for(
    mesh: &Mesh,
    filter: &str,
    after: u64,
    patience: Duration,
    pred: impl Fn(&Mail) -> bool,
) -> Result<Option<Mail>> {
    let stream = follow(mesh, filter, Some(after)).await?;
    let found = tokio::time::timeout(patience, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(m) = stream.next().await {
            if pred(&m) {
                return Some(m);
            }
        }
        None
    })
    .await;
    Ok(found.ok().flatten())
}

/// Who may receive mail in an epic: its track agents, the chief, operators.
pub fn knows_agent(epic: &Epic, agent: &str) -> bool {
    agent == CHIEF || agent == OPERATOR || epic.has_agent(agent)
}

/// Checks a draft against its epic and turns it into a message.
/// Errors: `unknown_thread` (no such epic or track), `unknown_agent`,
/// `invalid_id`, `bad_request`, `payload_too_large`.
pub async fn from_draft(mesh: &Mesh, draft: MailDraft) -> Result<Mail> {
    let (epic_id, thread) = if draft.epic.is_empty() {
        Thread::parse_address(&draft.thread).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownThread,
                format!(
                    "{:?} is not a thread; write <epic>, <epic>.track.<track> or <epic>.inbox.<agent>",
                    draft.thread
                ),
            )
        })?
    } else {
        ids::validate("epic id", &draft.epic)?;
        let thread = Thread::parse(&draft.thread).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownThread,
                format!(
                    "{:?} is not a thread; write epic, track.<track> or inbox.<agent>",
                    draft.thread
                ),
            )
        })?;
        (draft.epic.clone(), thread)
    };
    ids::validate("sender", &draft.from)?;
    if draft.body.len() > MAX_BODY_BYTES {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the body is {} bytes; the most is {MAX_BODY_BYTES}",
                draft.body.len()
            ),
        ));
    }
    if draft.subject.trim().is_empty() && draft.body.trim().is_empty() {
        return Err(Error::bad_request("a message needs a subject or a body"));
    }
    let epic = match crate::state::load_epic(mesh, &epic_id).await {
        Ok(e) => e,
        Err(e) if e.code == ErrorCode::NotFound => {
            return Err(Error::new(
                ErrorCode::UnknownThread,
                format!("there is no epic {epic_id}"),
            ));
        }
        Err(e) => return Err(e),
    };
    match &thread {
        Thread::Epic => {}
        Thread::Track(t) if epic.track(t).is_some() => {}
        Thread::Track(t) => {
            return Err(Error::new(
                ErrorCode::UnknownThread,
                format!("epic {epic_id} has no track {t}"),
            ));
        }
        Thread::Inbox(a) if knows_agent(&epic, a) => {}
        Thread::Inbox(a) => {
            return Err(Error::new(
                ErrorCode::UnknownAgent,
                format!("epic {epic_id} has no agent {a}"),
            ));
        }
    }
    for a in &draft.to {
        if !knows_agent(&epic, a) {
            return Err(Error::new(
                ErrorCode::UnknownAgent,
                format!("epic {epic_id} has no agent {a}"),
            ));
        }
    }
    if let Some(seq) = draft.reply_to {
        let original = get(mesh, seq).await?;
        if original.epic != epic_id || original.thread != thread.to_string() {
            return Err(Error::bad_request(format!(
                "message {seq} is on {}.{}; a reply stays on its thread",
                original.epic, original.thread
            )));
        }
    }
    let mut mail = Mail::new(
        &epic_id,
        &thread,
        &draft.from,
        draft.kind,
        draft.subject,
        draft.body,
    );
    mail.to = draft.to;
    mail.importance = draft.importance;
    mail.ack_required = draft.ack_required;
    mail.reply_to = draft.reply_to;
    mail.data = draft.data;
    Ok(mail)
}

/// Whether `agent` acknowledged message `seq` (an `ack` on its thread).
pub fn is_acked(thread: &[Mail], seq: u64, agent: &str) -> bool {
    thread
        .iter()
        .any(|m| m.kind == MailKind::Ack && m.reply_to == Some(seq) && m.from == agent)
}
