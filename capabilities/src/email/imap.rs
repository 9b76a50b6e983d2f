//! Reading over IMAP: one session per task (implicit TLS, STARTTLS or none,
//! every command bounded by `timeout_ms`), messages parsed by mail-parser
//! into JSON, attachments put in the object store, drafts appended with
//! `\Draft`.

use super::compose::{Built, Original};
use super::{
    AUTH_FAILED, Account, FOLDER_NOT_FOUND, IMAP_ERROR, MESSAGE_NOT_FOUND, NOT_CONFIGURED,
};
use base64::Engine;
use futures::TryStreamExt;
use jetmesh_shared::capability::{Call, params};
use jetmesh_shared::config::{EmailConfig, MailTls};
use jetmesh_shared::{Error, ErrorCode, Mesh, objects};
use lettre::message::Mailbox;
use mail_parser::{Address, MessageParser, MimeHeaders};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// The most UIDs `search` lists (the newest); `count` has them all.
const MAX_UIDS: usize = 10_000;

/// A logged-in IMAP session of one task.
pub struct Session {
    inner: async_imap::Session<Stream>,
    timeout: Duration,
    account: String,
}

/// The task's `uid`.
pub fn uid_param(p: &Map<String, Value>) -> Result<u32, Error> {
    p.get("uid")
        .and_then(Value::as_u64)
        .filter(|n| (1..=u32::MAX as u64).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| Error::invalid_args("uid must be a message UID (a positive integer)"))
}

/// Bounds one IMAP step by the command timeout.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Timeout,
            format!("the IMAP server did not answer {what} within email.timeout_ms"),
        ))
    })
}

fn imap_error(account: &str, what: &str, e: async_imap::error::Error) -> Error {
    use async_imap::error::Error as E;
    match e {
        E::Io(e) => Error::new(
            ErrorCode::Unavailable,
            format!(
                "the IMAP server of account {account} dropped the connection during {what}: {e}"
            ),
        ),
        E::ConnectionLost => Error::new(
            ErrorCode::Unavailable,
            format!("the IMAP server of account {account} closed the connection during {what}"),
        ),
        other => Error::new(
            IMAP_ERROR,
            format!("the IMAP server of account {account} refused {what}: {other}"),
        ),
    }
}

impl Session {
    /// Connects and logs in with the account's settings.
    pub async fn open(account: &Account<'_>, cfg: &EmailConfig) -> Result<Session, Error> {
        let a = account.cfg;
        if a.imap_host.is_empty() {
            return Err(Error::new(
                NOT_CONFIGURED,
                format!("account {} has no imap_host", account.name),
            ));
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let port = a.imap_port.unwrap_or(match a.imap_tls {
            MailTls::Tls => 993,
            _ => 143,
        });
        let name = account.name.to_string();
        let host = a.imap_host.clone();
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorCode::Unavailable,
                format!("the IMAP server of account {name} cannot be reached: {e}"),
            )
        };
        let client = bounded(timeout, "the connection", async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| unreachable(&e))?;
            let tls = || -> Result<TlsConnector, Error> {
                let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::internal(format!("TLS: {e}")))?
                .with_root_certificates(super::roots(account)?)
                .with_no_client_auth();
                Ok(TlsConnector::from(Arc::new(config)))
            };
            let server_name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| Error::new(NOT_CONFIGURED, format!("imap_host {host:?}: {e}")))?;
            let mut client = match a.imap_tls {
                MailTls::None => async_imap::Client::new(Either::Left(tcp)),
                MailTls::Tls => {
                    let s = tls()?
                        .connect(server_name, tcp)
                        .await
                        .map_err(|e| unreachable(&format!("TLS: {e}")))?;
                    async_imap::Client::new(Either::Right(s))
                }
                MailTls::Starttls => {
                    let mut plain = async_imap::Client::<Stream>::new(Either::Left(tcp));
                    plain
                        .read_response()
                        .await
                        .map_err(|e| unreachable(&e))?
                        .ok_or_else(|| unreachable(&"no greeting"))?;
                    plain
                        .run_command_and_check_ok("STARTTLS", None)
                        .await
                        .map_err(|e| unreachable(&format!("STARTTLS: {e}")))?;
                    let Either::Left(tcp) = plain.into_inner() else {
                        unreachable!("the stream is plain before STARTTLS")
                    };
                    let s = tls()?
                        .connect(server_name, tcp)
                        .await
                        .map_err(|e| unreachable(&format!("TLS: {e}")))?;
                    return Ok(async_imap::Client::new(Either::Right(s)));
                }
            };
            client
                .read_response()
                .await
                .map_err(|e| unreachable(&e))?
                .ok_or_else(|| unreachable(&"no greeting"))?;
            Ok(client)
        })
        .await?;
        let session = bounded(timeout, "the login", async {
            client
                .login(account.username(), &account.password)
                .await
                .map_err(|(e, _)| match e {
                    async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                        Error::new(
                            AUTH_FAILED,
                            format!("the IMAP server refused the login of account {name}"),
                        )
                    }
                    other => imap_error(&name, "the login", other),
                })
        })
        .await?;
        Ok(Session {
            inner: session,
            timeout,
            account: account.name.to_string(),
        })
    }

    /// Logs out, bounded; a failure here changes nothing for the task.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.logout()).await;
    }

    async fn select(&mut self, folder: &str) -> Result<async_imap::types::Mailbox, Error> {
        if folder.chars().any(|c| c.is_control()) {
            return Err(Error::invalid_args("folder holds a control character"));
        }
        let (timeout, account) = (self.timeout, self.account.clone());
        bounded(timeout, "SELECT", async {
            self.inner
                .select(mailbox_name(folder))
                .await
                .map_err(|e| match e {
                    async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                        Error::new(
                            FOLDER_NOT_FOUND,
                            format!("account {account} has no folder {folder:?}"),
                        )
                    }
                    other => imap_error(&account, "SELECT", other),
                })
        })
        .await
    }

    async fn uid_search(&mut self, query: &str) -> Result<Vec<u32>, Error> {
        let (timeout, account) = (self.timeout, self.account.clone());
        let mut uids: Vec<u32> = bounded(timeout, "SEARCH", async {
            self.inner
                .uid_search(query)
                .await
                .map_err(|e| imap_error(&account, "SEARCH", e))
        })
        .await?
        .into_iter()
        .collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// `(uid, flags, raw bytes)` of the messages in `set`.
    async fn fetch(
        &mut self,
        set: &str,
        query: &str,
    ) -> Result<Vec<(u32, Vec<String>, Vec<u8>)>, Error> {
        Ok(self
            .fetch_sized(set, query)
            .await?
            .into_iter()
            .map(|(uid, flags, bytes, _)| (uid, flags, bytes))
            .collect())
    }

    /// `(uid, flags, raw bytes, RFC822.SIZE)` of the messages in `set`.
    async fn fetch_sized(
        &mut self,
        set: &str,
        query: &str,
    ) -> Result<Vec<(u32, Vec<String>, Vec<u8>, Option<u32>)>, Error> {
        let (timeout, account) = (self.timeout, self.account.clone());
        bounded(timeout, "FETCH", async {
            let fetches: Vec<async_imap::types::Fetch> = self
                .inner
                .uid_fetch(set, query)
                .await
                .map_err(|e| imap_error(&account, "FETCH", e))?
                .try_collect()
                .await
                .map_err(|e| imap_error(&account, "FETCH", e))?;
            Ok(fetches
                .iter()
                .filter_map(|f| {
                    let uid = f.uid?;
                    let flags = f.flags().map(|fl| flag_name(&fl)).collect();
                    let bytes = f.body().or_else(|| f.header()).unwrap_or_default().to_vec();
                    Some((uid, flags, bytes, f.size))
                })
                .collect())
        })
        .await
    }

    /// `read`: by UID, or the newest `limit`.
    pub async fn read(
        &mut self,
        p: &Map<String, Value>,
        call: &Call<'_>,
        mesh: &Mesh,
        cfg: &EmailConfig,
    ) -> Result<Value, Error> {
        let folder = params::opt_str(p, "folder")?.unwrap_or("INBOX");
        self.select(folder).await?;
        let uids: Vec<u32> = match p.get("uid") {
            Some(v) if !v.is_null() => vec![uid_param(p)?],
            _ => {
                let limit = limit(p, 1, cfg)?;
                let all = self.uid_search("ALL").await?;
                all[all.len().saturating_sub(limit)..].to_vec()
            }
        };
        if uids.is_empty() {
            return Ok(json!({"folder": folder, "messages": []}));
        }
        let set = uids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let peek = if params::opt_bool(p, "mark_seen")?.unwrap_or(false) {
            "BODY[]"
        } else {
            "BODY.PEEK[]"
        };
        let mut fetched = self.fetch(&set, &format!("(UID FLAGS {peek})")).await?;
        if fetched.is_empty() && p.get("uid").is_some_and(|v| !v.is_null()) {
            return Err(Error::new(
                MESSAGE_NOT_FOUND,
                format!("no message with UID {set} in {folder}"),
            ));
        }
        fetched.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut messages = Vec::with_capacity(fetched.len());
        for (uid, flags, raw) in fetched {
            messages.push(message_json(uid, flags, &raw, call, mesh, cfg).await?);
        }
        Ok(json!({"folder": folder, "messages": messages}))
    }

    /// `search`: the UIDs matching `criteria`, and summaries of the newest.
    pub async fn search(
        &mut self,
        p: &Map<String, Value>,
        cfg: &EmailConfig,
    ) -> Result<Value, Error> {
        let folder = params::opt_str(p, "folder")?.unwrap_or("INBOX");
        let empty = Map::new();
        let criteria = match p.get("criteria") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(o)) => o,
            Some(_) => return Err(Error::invalid_args("criteria must be an object")),
        };
        let query = search_query(criteria)?;
        self.select(folder).await?;
        let uids = self.uid_search(&query).await?;
        let limit = limit(p, 20, cfg)?;
        let newest = &uids[uids.len().saturating_sub(limit)..];
        let mut summaries = Vec::new();
        if !newest.is_empty() {
            let set = newest
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let mut fetched = self.fetch(&set, "(UID FLAGS BODY.PEEK[HEADER])").await?;
            fetched.sort_by_key(|f| std::cmp::Reverse(f.0));
            for (uid, flags, raw) in fetched {
                let Some(m) = MessageParser::default().parse(&raw) else {
                    continue;
                };
                summaries.push(json!({
                    "uid": uid,
                    "flags": flags,
                    "message_id": m.message_id(),
                    "from": addrs(m.from()),
                    "to": addrs(m.to()),
                    "subject": m.subject(),
                    "date": m.date().map(|d| d.to_rfc3339()),
                }));
            }
        }
        // Every match is counted; the UIDs listed are the newest MAX_UIDS.
        let listed = &uids[uids.len().saturating_sub(MAX_UIDS)..];
        Ok(
            json!({"folder": folder, "query": query, "count": uids.len(), "uids": listed,
                  "truncated": listed.len() < uids.len(), "messages": summaries}),
        )
    }

    /// The headers of message `uid`, for a reply.
    pub async fn headers(&mut self, folder: &str, uid: u32) -> Result<Original, Error> {
        self.select(folder).await?;
        let fetched = self
            .fetch(&uid.to_string(), "(UID BODY.PEEK[HEADER])")
            .await?;
        let Some((_, _, raw)) = fetched.into_iter().find(|f| f.0 == uid) else {
            return Err(Error::new(
                MESSAGE_NOT_FOUND,
                format!("no message with UID {uid} in {folder}"),
            ));
        };
        let m = MessageParser::default()
            .parse(&raw)
            .ok_or_else(|| Error::new(IMAP_ERROR, format!("message {uid} cannot be parsed")))?;
        let list = |a: Option<&Address>| -> Vec<Mailbox> {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| {
                        let email = x.address()?.parse().ok()?;
                        Some(Mailbox::new(x.name().map(str::to_string), email))
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut references: Vec<String> = match m.references() {
            mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
            mail_parser::HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
            _ => Vec::new(),
        };
        references.retain(|r| !r.is_empty());
        Ok(Original {
            message_id: m.message_id().map(str::to_string),
            references,
            subject: m.subject().unwrap_or("").to_string(),
            from: list(m.from()),
            reply_to: list(m.reply_to()),
            to: list(m.to()),
            cc: list(m.cc()),
        })
    }

    /// Appends `built` to the drafts folder with `\Draft` and `\Seen`, and
    /// finds its UID by its Message-ID.
    pub async fn save_draft(
        &mut self,
        account: &Account<'_>,
        built: &Built,
    ) -> Result<Value, Error> {
        let folder = self.drafts_folder(account).await?;
        let raw = built.message.formatted();
        let (timeout, name) = (self.timeout, self.account.clone());
        bounded(timeout, "APPEND", async {
            self.inner
                .append(mailbox_name(&folder), Some("(\\Draft \\Seen)"), None, &raw)
                .await
                .map_err(|e| match e {
                    async_imap::error::Error::No(_) => Error::new(
                        FOLDER_NOT_FOUND,
                        format!("account {name} cannot save to {folder:?}"),
                    ),
                    other => imap_error(&name, "APPEND", other),
                })
        })
        .await?;
        self.select(&folder).await?;
        let id = built.message_id.trim_matches(|c| c == '<' || c == '>');
        let uid = self
            .uid_search(&format!("HEADER Message-ID {}", quote(id)?))
            .await?
            .last()
            .copied();
        Ok(
            json!({"folder": folder, "uid": uid, "message_id": built.message_id, "recipients": built.recipients}),
        )
    }

    /// The account's `drafts_folder`, else the folder marked `\Drafts`, else `Drafts`.
    async fn drafts_folder(&mut self, account: &Account<'_>) -> Result<String, Error> {
        if !account.cfg.drafts_folder.is_empty() {
            return Ok(account.cfg.drafts_folder.clone());
        }
        // Names from LIST are on the wire's form: shown as text.
        let (timeout, name) = (self.timeout, self.account.clone());
        let names: Vec<async_imap::types::Name> = bounded(timeout, "LIST", async {
            self.inner
                .list(Some(""), Some("*"))
                .await
                .map_err(|e| imap_error(&name, "LIST", e))?
                .try_collect()
                .await
                .map_err(|e| imap_error(&name, "LIST", e))
        })
        .await?;
        Ok(names
            .iter()
            .find(|n| {
                n.attributes()
                    .iter()
                    .any(|a| matches!(a, async_imap::types::NameAttribute::Drafts))
            })
            .map_or_else(|| "Drafts".to_string(), |n| mailbox_text(n.name())))
    }
}

fn limit(p: &Map<String, Value>, default: usize, cfg: &EmailConfig) -> Result<usize, Error> {
    match p.get("limit") {
        None | Some(Value::Null) => Ok(default.min(cfg.max_messages)),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| (n as usize).min(cfg.max_messages))
            .ok_or_else(|| Error::invalid_args("limit must be a positive integer")),
    }
}

fn flag_name(f: &async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag;
    match f {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(c) => c.to_string(),
    }
}

/// A mailbox name as IMAP writes it: modified UTF-7 (RFC 3501 5.1.3), so
/// `Entwürfe` is `Entw&APw-rfe` and `&` is `&-`.
pub fn mailbox_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        out.push('&');
        out.push_str(&b64.replace('/', ","));
        out.push('-');
        run.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A mailbox name the server wrote (modified UTF-7) as text; a name that is
/// not valid modified UTF-7 is shown as it came.
pub fn mailbox_text(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 1..].find('-') else {
            return name.to_string();
        };
        let encoded = &rest[start + 1..start + 1 + len];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let Ok(bytes) =
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.replace(',', "/"))
            else {
                return name.to_string();
            };
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            match String::from_utf16(&units) {
                Ok(t) => out.push_str(&t),
                Err(_) => return name.to_string(),
            }
        }
        rest = &rest[start + 2 + len..];
    }
    out.push_str(rest);
    out
}

/// An IMAP quoted string: `"` and `\` escaped; control characters refused.
fn quote(s: &str) -> Result<String, Error> {
    if s.chars().any(|c| c.is_control()) {
        return Err(Error::invalid_args(
            "search text may not hold control characters (line breaks, NUL)",
        ));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// `2026-01-31` as IMAP's `31-Jan-2026`.
fn imap_date(name: &str, s: &str) -> Result<String, Error> {
    let d: jiff::civil::Date = s.parse().map_err(|_| {
        Error::invalid_args(format!("criteria.{name} must be a date like 2026-01-31"))
    })?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    Ok(format!(
        "{}-{}-{}",
        d.day(),
        MONTHS[d.month() as usize - 1],
        d.year()
    ))
}

/// The IMAP SEARCH query for `criteria`, every value quoted: a task's text
/// never becomes a search key of its own.
pub fn search_query(criteria: &Map<String, Value>) -> Result<String, Error> {
    let mut keys = Vec::new();
    let mut utf8 = false;
    for (k, v) in criteria {
        let text = || {
            v.as_str()
                .ok_or_else(|| Error::invalid_args(format!("criteria.{k} must be a string")))
        };
        let flag = || {
            v.as_bool()
                .ok_or_else(|| Error::invalid_args(format!("criteria.{k} must be true or false")))
        };
        let key = match k.as_str() {
            "from" | "to" | "cc" | "subject" | "text" | "body" => {
                let t = text()?;
                utf8 |= !t.is_ascii();
                format!("{} {}", k.to_ascii_uppercase(), quote(t)?)
            }
            "since" => format!("SINCE {}", imap_date(k, text()?)?),
            "before" => format!("BEFORE {}", imap_date(k, text()?)?),
            "unseen" => (if flag()? { "UNSEEN" } else { "SEEN" }).to_string(),
            "flagged" => (if flag()? { "FLAGGED" } else { "UNFLAGGED" }).to_string(),
            other => {
                return Err(Error::invalid_args(format!(
                    "criteria.{other} is not a search criterion (from, to, cc, subject, text, body, since, before, unseen, flagged)"
                )));
            }
        };
        keys.push(key);
    }
    if keys.is_empty() {
        keys.push("ALL".into());
    }
    let q = keys.join(" ");
    Ok(if utf8 {
        format!("CHARSET UTF-8 {q}")
    } else {
        q
    })
}

fn addrs(a: Option<&Address>) -> Value {
    Value::Array(
        a.map(|a| {
            a.iter()
                .map(|x| json!({"name": x.name(), "address": x.address()}))
                .collect()
        })
        .unwrap_or_default(),
    )
}

/// A name fit for an object key: letters, digits, `.`, `_` and `-`.
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "attachment".into() } else { s }
}

/// One message as JSON: headers, bodies (inline up to `max_inline_bytes`,
/// else a reference) and attachments (always references).
async fn message_json(
    uid: u32,
    flags: Vec<String>,
    raw: &[u8],
    call: &Call<'_>,
    mesh: &Mesh,
    cfg: &EmailConfig,
) -> Result<Value, Error> {
    let Some(m) = MessageParser::default().parse(raw) else {
        return Ok(json!({"uid": uid, "flags": flags, "error": "the message cannot be parsed"}));
    };
    let key = |name: &str| {
        mesh.names
            .object_key(call.plan_id, call.task_id, &format!("{uid}-{name}"))
    };
    let mut out = json!({
        "uid": uid,
        "flags": flags,
        "message_id": m.message_id(),
        "in_reply_to": m.in_reply_to().as_text(),
        "references": match m.references() {
            mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
            mail_parser::HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
            _ => Vec::new(),
        },
        "from": addrs(m.from()),
        "to": addrs(m.to()),
        "cc": addrs(m.cc()),
        "reply_to": addrs(m.reply_to()),
        "subject": m.subject(),
        "date": m.date().map(|d| d.to_rfc3339()),
        "size": raw.len(),
    });
    for (field, body, ctype) in [
        ("text", m.body_text(0), "text/plain; charset=utf-8"),
        ("html", m.body_html(0), "text/html; charset=utf-8"),
    ] {
        // A message without an HTML part has its text rendered as HTML by
        // mail-parser (and the reverse): keep only bodies the message has.
        let present = match field {
            "text" => m.text_bodies().any(|p| !p.is_text_html()),
            _ => m.html_bodies().any(|p| p.is_text_html()),
        };
        match body.filter(|_| present) {
            None => out[field] = Value::Null,
            Some(b) if b.len() <= cfg.max_inline_bytes => {
                out[field] = Value::String(b.into_owned())
            }
            Some(b) => {
                let r =
                    objects::put(mesh, &key(&format!("{field}.txt")), ctype, b.as_bytes()).await?;
                out[field] = Value::Null;
                out[format!("{field}_object")] = serde_json::to_value(r).expect("a reference");
            }
        }
    }
    let mut attachments = Vec::new();
    for (i, part) in m.attachments().enumerate() {
        let name = part
            .attachment_name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("attachment-{i}"));
        let ctype = part.content_type().map_or_else(
            || "application/octet-stream".to_string(),
            |c| match c.subtype() {
                Some(s) => format!("{}/{s}", c.ctype()),
                None => c.ctype().to_string(),
            },
        );
        let bytes = part.contents();
        let r = objects::put(
            mesh,
            &key(&format!("{i}-{}", safe_name(&name))),
            &ctype,
            bytes,
        )
        .await?;
        attachments.push(json!({
            "name": name,
            "content_type": ctype,
            "size": bytes.len(),
            "object": r,
        }));
    }
    out["attachments"] = Value::Array(attachments);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_values_are_quoted_and_never_become_keys() {
        let c = json!({"from": "alice@example.test", "subject": "a \"quoted\" \\ word", "since": "2026-02-01", "unseen": true});
        assert_eq!(
            search_query(c.as_object().unwrap()).unwrap(),
            "FROM \"alice@example.test\" SUBJECT \"a \\\"quoted\\\" \\\\ word\" SINCE 1-Feb-2026 UNSEEN"
        );
        let evil = json!({"subject": "x\r\nA1 DELETE INBOX"});
        assert!(search_query(evil.as_object().unwrap()).is_err());
        let unknown = json!({"uid": "1:*"});
        assert!(search_query(unknown.as_object().unwrap()).is_err());
        let utf8 = json!({"text": "café"});
        assert_eq!(
            search_query(utf8.as_object().unwrap()).unwrap(),
            "CHARSET UTF-8 TEXT \"café\""
        );
        assert_eq!(search_query(&Map::new()).unwrap(), "ALL");
        let bad_date = json!({"before": "yesterday"});
        assert!(search_query(bad_date.as_object().unwrap()).is_err());
    }

    #[test]
    fn mailbox_names_are_modified_utf7() {
        // RFC 3501's example, and German, French and plain names.
        assert_eq!(
            mailbox_name("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(mailbox_name("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(mailbox_name("Brouillons & co"), "Brouillons &- co");
        assert_eq!(mailbox_name("INBOX"), "INBOX");
        for n in [
            "~peter/mail/台北/日本語",
            "Entwürfe",
            "a & b",
            "😀 mail",
            "INBOX",
        ] {
            assert_eq!(mailbox_text(&mailbox_name(n)), n);
        }
        assert_eq!(mailbox_text("&bogus"), "&bogus");
    }

    #[test]
    fn object_names_are_tamed() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("report 2026.pdf"), "report_2026.pdf");
        assert_eq!(safe_name(""), "attachment");
    }
}
