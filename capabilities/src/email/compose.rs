//! Messages from a task's parameters: addresses parsed and checked,
//! attachments fetched from the object store or decoded from base64, a reply
//! threaded to its original (`Re:`, `In-Reply-To`, `References`).

use super::{Account, RECIPIENT_NOT_ALLOWED};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jetmesh_shared::capability::params;
use jetmesh_shared::config::EmailConfig;
use jetmesh_shared::{Error, ErrorCode, Mesh, objects};
use lettre::Message;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Body as MimeBody, Mailbox, MultiPart, SinglePart};
use serde_json::{Map, Value};

/// A message to build: what the task asked for.
#[derive(Debug, Default)]
pub struct Draft {
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<(String, ContentType, Vec<u8>)>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

/// The headers of a message replied to.
#[derive(Debug, Default)]
pub struct Original {
    pub message_id: Option<String>,
    pub references: Vec<String>,
    pub subject: String,
    pub from: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
}

/// A built message and what it is sent as.
pub struct Built {
    pub message: Message,
    pub message_id: String,
    /// Every recipient (To, Cc, Bcc), as addresses.
    pub recipients: Vec<String>,
}

/// The addresses of parameter `name`: a string (one address or a
/// comma-separated list) or an array of them.
fn addresses(p: &Map<String, Value>, name: &str) -> Result<Vec<Mailbox>, Error> {
    let items: Vec<&str> = match p.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Error::invalid_args(format!("{name} must hold strings")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(Error::invalid_args(format!(
                "{name} must be an address or an array of addresses"
            )));
        }
    };
    let mut out = Vec::new();
    for item in items {
        let list: lettre::message::Mailboxes = item.parse().map_err(|e| {
            Error::invalid_args(format!("{name}: {item:?} is not a mail address: {e}"))
        })?;
        out.extend(list);
    }
    Ok(out)
}

/// Attachments: `{"object": key}` from the object store, or `{"name",
/// "content"}` in base64 up to `max_inline_bytes`.
async fn attachments(
    p: &Map<String, Value>,
    mesh: &Mesh,
    cfg: &EmailConfig,
) -> Result<Vec<(String, ContentType, Vec<u8>)>, Error> {
    let Some(list) = p.get("attachments").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    let mut total = 0usize;
    for (i, a) in list.iter().enumerate() {
        let a = a
            .as_object()
            .ok_or_else(|| Error::invalid_args(format!("attachments[{i}] must be an object")))?;
        let (name, stored_type, bytes) = if let Some(key) = params::opt_str(a, "object")? {
            let (r, bytes) = objects::get(mesh, key).await?;
            let name = key.rsplit('/').next().unwrap_or(key).to_string();
            (name, r.content_type, bytes)
        } else {
            let name = params::str(a, "name")?.to_string();
            let content = params::str(a, "content")?;
            if content.len() / 4 * 3 > cfg.max_inline_bytes {
                return Err(Error::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "attachments[{i}] is larger than email.max_inline_bytes ({}); store it in mesh_objects and give its key as object",
                        cfg.max_inline_bytes
                    ),
                ));
            }
            let bytes = B64.decode(content).map_err(|e| {
                Error::invalid_args(format!("attachments[{i}].content is not base64: {e}"))
            })?;
            (name, None, bytes)
        };
        let name = params::opt_str(a, "name")?.map_or(name, str::to_string);
        let ctype = params::opt_str(a, "content_type")?
            .map(str::to_string)
            .or(stored_type)
            .unwrap_or_else(|| "application/octet-stream".into());
        let ctype = ContentType::parse(&ctype).map_err(|_| {
            Error::invalid_args(format!(
                "attachments[{i}].content_type {ctype:?} is not a media type"
            ))
        })?;
        total += bytes.len();
        if total > cfg.max_message_bytes {
            return Err(too_large(cfg));
        }
        out.push((name, ctype, bytes));
    }
    Ok(out)
}

fn too_large(cfg: &EmailConfig) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the message is larger than email.max_message_bytes ({})",
            cfg.max_message_bytes
        ),
    )
}

impl Draft {
    /// A new message from `send`'s or `draft`'s parameters.
    pub async fn from_params(
        p: &Map<String, Value>,
        mesh: &Mesh,
        cfg: &EmailConfig,
    ) -> Result<Draft, Error> {
        Ok(Draft {
            to: addresses(p, "to")?,
            cc: addresses(p, "cc")?,
            bcc: addresses(p, "bcc")?,
            subject: params::opt_str(p, "subject")?.unwrap_or("").to_string(),
            text: params::opt_str(p, "body")?.map(str::to_string),
            html: params::opt_str(p, "html")?.map(str::to_string),
            attachments: attachments(p, mesh, cfg).await?,
            ..Draft::default()
        })
    }

    /// A reply to `original`: to its Reply-To (else From), with reply_all
    /// also to its other To and Cc recipients but never to this account.
    pub async fn reply(
        p: &Map<String, Value>,
        original: &Original,
        account: &Account<'_>,
        reply_all: bool,
        mesh: &Mesh,
        cfg: &EmailConfig,
    ) -> Result<Draft, Error> {
        let own = account.cfg.address.to_ascii_lowercase();
        let to = if original.reply_to.is_empty() {
            original.from.clone()
        } else {
            original.reply_to.clone()
        };
        let mut seen: Vec<String> = to
            .iter()
            .map(|m| m.email.to_string().to_ascii_lowercase())
            .collect();
        let mut cc = Vec::new();
        if reply_all {
            for m in original.to.iter().chain(&original.cc) {
                let a = m.email.to_string().to_ascii_lowercase();
                if a != own && !seen.contains(&a) {
                    seen.push(a);
                    cc.push(m.clone());
                }
            }
        }
        if to.is_empty() {
            return Err(Error::invalid_args(
                "the message has no From or Reply-To address to reply to",
            ));
        }
        let subject = if original
            .subject
            .get(..3)
            .is_some_and(|s| s.eq_ignore_ascii_case("re:"))
        {
            original.subject.clone()
        } else {
            format!("Re: {}", original.subject)
        };
        let mut references = original.references.clone();
        if let Some(id) = &original.message_id
            && !references.contains(id)
        {
            references.push(id.clone());
        }
        Ok(Draft {
            to,
            cc,
            bcc: Vec::new(),
            subject,
            text: params::opt_str(p, "body")?.map(str::to_string),
            html: params::opt_str(p, "html")?.map(str::to_string),
            attachments: attachments(p, mesh, cfg).await?,
            in_reply_to: original.message_id.clone(),
            references,
        })
    }
}

/// `<id>` with its angle brackets.
fn bracketed(id: &str) -> String {
    if id.starts_with('<') {
        id.to_string()
    } else {
        format!("<{id}>")
    }
}

/// The message, from the account, with a fresh Message-ID; a draft keeps
/// its Bcc header.
pub fn build(
    account: &Account<'_>,
    d: &Draft,
    draft: bool,
    cfg: &EmailConfig,
) -> Result<Built, Error> {
    let from: Mailbox = if account.cfg.name.is_empty() {
        account.cfg.address.parse()
    } else {
        format!("{} <{}>", account.cfg.name, account.cfg.address).parse()
    }
    .map_err(|e| {
        Error::new(
            super::NOT_CONFIGURED,
            format!("email.accounts.{}.address is not usable: {e}", account.name),
        )
    })?;
    if d.to.is_empty() && d.cc.is_empty() && d.bcc.is_empty() && !draft {
        return Err(Error::invalid_args("the message has no recipient"));
    }
    let domain = account
        .cfg
        .address
        .rsplit('@')
        .next()
        .unwrap_or("localhost");
    let message_id = format!("<{}@{domain}>", uuid::Uuid::new_v4());
    let mut b = Message::builder()
        .from(from)
        .subject(d.subject.clone())
        .message_id(Some(message_id.clone()))
        .date_now();
    for m in &d.to {
        b = b.to(m.clone());
    }
    for m in &d.cc {
        b = b.cc(m.clone());
    }
    for m in &d.bcc {
        b = b.bcc(m.clone());
    }
    if let Some(id) = &d.in_reply_to {
        b = b.in_reply_to(bracketed(id));
    }
    if !d.references.is_empty() {
        b = b.references(
            d.references
                .iter()
                .map(|r| bracketed(r))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    if draft {
        b = b.keep_bcc();
    }
    let size = d.text.as_ref().map_or(0, String::len)
        + d.html.as_ref().map_or(0, String::len)
        + d.attachments.iter().map(|a| a.2.len()).sum::<usize>();
    if size > cfg.max_message_bytes {
        return Err(too_large(cfg));
    }
    let body = match (&d.text, &d.html) {
        (Some(t), Some(h)) => Body::Multi(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (None, Some(h)) => Body::Single(SinglePart::html(h.clone())),
        (Some(t), None) => Body::Single(SinglePart::plain(t.clone())),
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    };
    let built = if d.attachments.is_empty() {
        match body {
            Body::Single(s) => b.singlepart(s),
            Body::Multi(m) => b.multipart(m),
        }
    } else {
        let mut mixed = match body {
            Body::Single(s) => MultiPart::mixed().singlepart(s),
            Body::Multi(m) => MultiPart::mixed().multipart(m),
        };
        for (name, ctype, bytes) in &d.attachments {
            // Base64 always: the bytes arrive exactly as they were (a text
            // attachment sent as 7bit would have its line ends rewritten).
            let body = MimeBody::new_with_encoding(bytes.clone(), ContentTransferEncoding::Base64)
                .map_err(|_| Error::internal("base64 takes any bytes"))?;
            mixed = mixed.singlepart(Attachment::new(name.clone()).body(body, ctype.clone()));
        }
        b.multipart(mixed)
    };
    let message =
        built.map_err(|e| Error::invalid_args(format!("the message cannot be built: {e}")))?;
    let recipients = message
        .envelope()
        .to()
        .iter()
        .map(|a| a.to_string())
        .collect();
    Ok(Built {
        message,
        message_id,
        recipients,
    })
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

/// Whether `address` matches an `allow_recipients` entry: the address
/// itself, or `*@domain`.
fn allowed(address: &str, allow: &[String]) -> bool {
    let address = address.to_ascii_lowercase();
    allow.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix("*@") {
            Some(domain) => address.rsplit_once('@').is_some_and(|(_, d)| d == domain),
            None => a == address,
        }
    })
}

/// Refuses the message when the account limits recipients and one is not allowed.
pub fn check_allowed(account: &Account<'_>, recipients: &[String]) -> Result<(), Error> {
    if account.cfg.allow_recipients.is_empty() {
        return Ok(());
    }
    match recipients
        .iter()
        .find(|r| !allowed(r, &account.cfg.allow_recipients))
    {
        Some(r) => Err(Error::new(
            RECIPIENT_NOT_ALLOWED,
            format!(
                "{r} is not in email.accounts.{}.allow_recipients; nothing was sent",
                account.name
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_match_addresses_and_domains() {
        let allow = vec!["ops@example.com".to_string(), "*@corp.example".to_string()];
        assert!(allowed("OPS@example.com", &allow));
        assert!(allowed("anyone@corp.example", &allow));
        assert!(!allowed("anyone@evilcorp.example", &allow));
        assert!(!allowed("other@example.com", &allow));
        assert!(!allowed("x@corp.example.evil", &allow));
    }

    #[test]
    fn addresses_parse_from_strings_lists_and_arrays() {
        let p = serde_json::json!({"to": "A <a@x.example>, b@y.example", "cc": ["c@z.example"], "bcc": 5});
        let p = p.as_object().unwrap();
        assert_eq!(addresses(p, "to").unwrap().len(), 2);
        assert_eq!(addresses(p, "cc").unwrap().len(), 1);
        assert!(addresses(p, "bcc").is_err());
        let bad = serde_json::json!({"to": "not an address"});
        assert_eq!(
            addresses(bad.as_object().unwrap(), "to").unwrap_err().code,
            ErrorCode::InvalidArgs
        );
        let header = serde_json::json!({"to": "a@x.example\r\nBcc: evil@y.example"});
        assert!(addresses(header.as_object().unwrap(), "to").is_err());
    }
}
