//! The `email` capability: mail through the accounts of `[email.accounts]`,
//! sent over SMTP (lettre) and read over IMAP (async-imap, MIME by
//! mail-parser).
//!
//! | action   | parameters                                                   | result |
//! |----------|--------------------------------------------------------------|--------|
//! | `send`   | `to`, `subject`, `body`, `cc`, `bcc`, `html`, `attachments`  | `{message_id, account, recipients}` |
//! | `read`   | `folder` (INBOX), `uid`, or the newest `limit`; `mark_seen`   | `{folder, messages: [{uid, from, to, subject, date, text, html, attachments, …}]}` |
//! | `search` | `folder`, `criteria` (from, to, subject, text, since, before, unseen), `limit` | `{folder, uids, count, messages: [summary]}` |
//! | `draft`  | as `send`                                                    | `{folder, uid, message_id}` |
//! | `reply`  | `uid`, `body`, `folder`, `html`, `reply_all`, `attachments`, `draft` | `{message_id, in_reply_to, to, subject}` |
//!
//! Every action takes `account` (a configured account's name; a task never
//! names a server). Passwords come from the account's `password_env` or
//! `password_file` and are never logged. Sending is rate-limited per account
//! (`send_per_minute`), recipients may be limited to `allow_recipients`, and
//! a temporary SMTP refusal (4xx) is retried with the mesh's backoff while a
//! permanent one (5xx) is not. Attachments come from the object store
//! (`{"object": key}`) or inline as base64 (`{"name", "content"}`), and the
//! ones `read` finds go to the object store as references.

mod compose;
mod imap;
mod smtp;

use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability, params};
use jetmesh_shared::config::{AccountConfig, EmailConfig};
use jetmesh_shared::{Error, ErrorCode, Mesh};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server refused the account's login.
pub const AUTH_FAILED: ErrorCode = ErrorCode::capability("auth_failed");
/// The SMTP server refused a recipient (550, 551, 553).
pub const RECIPIENT_REFUSED: ErrorCode = ErrorCode::capability("recipient_refused");
/// A recipient is not in the account's `allow_recipients`.
pub const RECIPIENT_NOT_ALLOWED: ErrorCode = ErrorCode::capability("recipient_not_allowed");
/// The SMTP server refused the message for good (another 5xx).
pub const MESSAGE_REJECTED: ErrorCode = ErrorCode::capability("message_rejected");
/// The account sent `send_per_minute` messages in the last minute.
pub const RATE_LIMITED: ErrorCode = ErrorCode::capability("rate_limited");
/// The task names an account this pool does not have.
pub const UNKNOWN_ACCOUNT: ErrorCode = ErrorCode::capability("unknown_account");
/// The account has no SMTP (or no IMAP) server for this action.
pub const NOT_CONFIGURED: ErrorCode = ErrorCode::capability("not_configured");
/// No folder of that name.
pub const FOLDER_NOT_FOUND: ErrorCode = ErrorCode::capability("folder_not_found");
/// No message with that UID in the folder.
pub const MESSAGE_NOT_FOUND: ErrorCode = ErrorCode::capability("message_not_found");
/// The IMAP server answered a command with an error.
pub const IMAP_ERROR: ErrorCode = ErrorCode::capability("imap_error");

const ACCOUNT: &str = r#""account":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","description":"A configured account (default: email.default_account, or the only one)."}"#;
const ADDRESSES: &str = r#"{"oneOf":[{"type":"string","minLength":3,"maxLength":4096},{"type":"array","minItems":1,"maxItems":500,"items":{"type":"string","minLength":3,"maxLength":998}}],"description":"An address (Name <a@b>), a comma-separated list, or an array."}"#;
const ATTACHMENTS: &str = r#""attachments":{"type":"array","maxItems":100,"items":{"type":"object","additionalProperties":false,
  "properties":{"object":{"type":"string","minLength":1,"description":"A key in mesh_objects."},
    "name":{"type":"string","minLength":1,"maxLength":255},"content":{"type":"string","description":"Base64 bytes."},
    "content_type":{"type":"string","minLength":3,"maxLength":255}},
  "oneOf":[{"required":["object"]},{"required":["name","content"]}]}}"#;
const BODY: &str = r#""subject":{"type":"string","maxLength":998},
  "body":{"type":"string","description":"The plain-text body."},
  "html":{"type":"string","description":"An HTML body (sent with the text one as alternatives)."}"#;
const FOLDER: &str =
    r#""folder":{"type":"string","minLength":1,"maxLength":255,"description":"Default INBOX."}"#;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn actions() -> &'static [Action] {
    static ACTIONS: std::sync::OnceLock<Vec<Action>> = std::sync::OnceLock::new();
    ACTIONS.get_or_init(|| {
        let message = |required: &str| {
            leak(format!(
                r#"{{"type":"object","required":[{required}],"additionalProperties":false,"properties":{{
  "to":{ADDRESSES},"cc":{ADDRESSES},"bcc":{ADDRESSES},{BODY},{ATTACHMENTS},{ACCOUNT}}},
  "anyOf":[{{"required":["body"]}},{{"required":["html"]}}]}}"#
            ))
        };
        vec![
            Action {
                name: "send",
                description: "Sends a message over SMTP: to, cc, bcc, subject, a text and/or HTML body, attachments.",
                params: message(r#""to""#),
            },
            Action {
                name: "read",
                description: "Reads messages of a folder by UID, or the newest ones: headers, text and HTML bodies, attachments as object references.",
                params: leak(format!(
                    r#"{{"type":"object","additionalProperties":false,"properties":{{{FOLDER},
  "uid":{{"type":"integer","minimum":1,"maximum":4294967295}},
  "limit":{{"type":"integer","minimum":1,"description":"The newest this many, when no uid (default 1)."}},
  "mark_seen":{{"type":"boolean","description":"Set \\Seen on what is read (default false)."}},{ACCOUNT}}}}}"#
                )),
            },
            Action {
                name: "search",
                description: "Searches a folder (IMAP SEARCH): from, to, subject, text, since, before, unseen; returns UIDs and summaries.",
                params: leak(format!(
                    r#"{{"type":"object","additionalProperties":false,"properties":{{{FOLDER},
  "criteria":{{"type":"object","additionalProperties":false,"properties":{{
    "from":{{"type":"string","minLength":1,"maxLength":998}},"to":{{"type":"string","minLength":1,"maxLength":998}},
    "cc":{{"type":"string","minLength":1,"maxLength":998}},"subject":{{"type":"string","minLength":1,"maxLength":998}},
    "text":{{"type":"string","minLength":1,"maxLength":998}},"body":{{"type":"string","minLength":1,"maxLength":998}},
    "since":{{"type":"string","format":"date","description":"YYYY-MM-DD, on or after."}},
    "before":{{"type":"string","format":"date","description":"YYYY-MM-DD, before."}},
    "unseen":{{"type":"boolean"}},"flagged":{{"type":"boolean"}}}}}},
  "limit":{{"type":"integer","minimum":1,"description":"Summaries of the newest this many matches (default 20)."}},{ACCOUNT}}}}}"#
                )),
            },
            Action {
                name: "draft",
                description: "Saves a message to the Drafts folder (IMAP APPEND with \\Draft) without sending it.",
                params: message(""),
            },
            Action {
                name: "reply",
                description: "Replies to a message by UID: Re: subject, In-Reply-To and References set; reply_all adds the other recipients.",
                params: leak(format!(
                    r#"{{"type":"object","required":["uid"],"additionalProperties":false,"properties":{{{FOLDER},
  "uid":{{"type":"integer","minimum":1,"maximum":4294967295}},
  "body":{{"type":"string"}},"html":{{"type":"string"}},
  "reply_all":{{"type":"boolean","description":"Also to the original's other To and Cc recipients (default false)."}},
  "draft":{{"type":"boolean","description":"Save the reply as a draft instead of sending it (default false)."}},
  {ATTACHMENTS},{ACCOUNT}}},
  "anyOf":[{{"required":["body"]}},{{"required":["html"]}}]}}"#
                )),
            },
        ]
    })
}

/// The built-in `email` capability.
pub struct Email {
    mesh: Mesh,
    cfg: EmailConfig,
    /// Sends per account in the current window, for `send_per_minute`.
    sent: Mutex<HashMap<String, Window>>,
    /// One pooled SMTP transport per account, made on first send.
    transports: Mutex<HashMap<String, Arc<smtp::Transport>>>,
}

/// A sliding minute of sends.
#[derive(Default)]
struct Window {
    times: std::collections::VecDeque<Instant>,
}

/// An account with its password, as an action uses it.
pub(crate) struct Account<'a> {
    pub name: &'a str,
    pub cfg: &'a AccountConfig,
    pub password: String,
}

impl<'a> Account<'a> {
    pub fn username(&self) -> &str {
        if self.cfg.username.is_empty() {
            &self.cfg.address
        } else {
            &self.cfg.username
        }
    }
}

impl Email {
    pub fn new(mesh: Mesh) -> Email {
        Email {
            cfg: mesh.config.email.clone(),
            mesh,
            sent: Mutex::new(HashMap::new()),
            transports: Mutex::new(HashMap::new()),
        }
    }

    /// Why no `email` pool can run here: no account is configured.
    pub fn available(cfg: &EmailConfig) -> Result<(), Error> {
        if cfg.accounts.is_empty() {
            return Err(Error::new(
                NOT_CONFIGURED,
                "no email account is configured: add [email.accounts.NAME] (address, smtp_host, imap_host, password_env) to the config",
            ));
        }
        Ok(())
    }

    fn account(&self, p: &serde_json::Map<String, Value>) -> Result<Account<'_>, Error> {
        let name = match params::opt_str(p, "account")? {
            Some(n) => n,
            None if !self.cfg.default_account.is_empty() => &self.cfg.default_account,
            None if self.cfg.accounts.len() == 1 => self.cfg.accounts.keys().next().expect("one"),
            None => {
                return Err(Error::new(
                    UNKNOWN_ACCOUNT,
                    "name an account: this pool has several and no email.default_account",
                ));
            }
        };
        let Some((name, cfg)) = self.cfg.accounts.get_key_value(name) else {
            let names: Vec<&str> = self.cfg.accounts.keys().map(String::as_str).collect();
            return Err(Error::new(
                UNKNOWN_ACCOUNT,
                format!(
                    "no email account {name:?} (configured: {})",
                    names.join(", ")
                ),
            ));
        };
        Ok(Account {
            name,
            cfg,
            password: jetmesh_shared::config::password(
                &format!("email.accounts.{name}"),
                cfg.password_env.as_deref(),
                cfg.password_file.as_deref(),
            )
            .map_err(|e| Error::new(NOT_CONFIGURED, e))?
            .unwrap_or_default(),
        })
    }

    /// Takes one send from the account's minute, or says when there is room.
    fn take_send(&self, account: &Account<'_>) -> Result<(), Error> {
        let per_minute = account.cfg.send_per_minute as usize;
        if per_minute == 0 {
            return Ok(());
        }
        let mut sent = self.sent.lock().expect("rate map");
        let w = sent.entry(account.name.to_string()).or_default();
        let now = Instant::now();
        while w
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            w.times.pop_front();
        }
        if w.times.len() >= per_minute {
            let wait = Duration::from_secs(60) - now.duration_since(w.times[0]);
            return Err(Error::new(
                RATE_LIMITED,
                format!(
                    "account {} sent {per_minute} messages in the last minute (send_per_minute)",
                    account.name
                ),
            )
            .retry_after(wait.as_millis() as u64 + 1));
        }
        w.times.push_back(now);
        Ok(())
    }

    fn transport(&self, account: &Account<'_>) -> Result<Arc<smtp::Transport>, Error> {
        if let Some(t) = self
            .transports
            .lock()
            .expect("transports")
            .get(account.name)
        {
            return Ok(t.clone());
        }
        let t = Arc::new(smtp::Transport::new(account, &self.cfg)?);
        Ok(self
            .transports
            .lock()
            .expect("transports")
            .entry(account.name.to_string())
            .or_insert(t)
            .clone())
    }

    /// Checks the recipients and the rate, then sends `message`.
    async fn deliver(&self, account: &Account<'_>, message: &compose::Built) -> Result<(), Error> {
        if account.cfg.smtp_host.is_empty() {
            return Err(Error::new(
                NOT_CONFIGURED,
                format!("account {} has no smtp_host", account.name),
            ));
        }
        compose::check_allowed(account, &message.recipients)?;
        self.take_send(account)?;
        let transport = self.transport(account)?;
        transport.send(&message.message, &self.cfg).await
    }

    async fn run(&self, call: &Call<'_>) -> Result<Value, Error> {
        let p = call.params;
        let account = self.account(p)?;
        match call.action {
            "send" => {
                let draft = compose::Draft::from_params(p, &self.mesh, &self.cfg).await?;
                let built = compose::build(&account, &draft, false, &self.cfg)?;
                self.deliver(&account, &built).await?;
                Ok(json!({
                    "message_id": built.message_id,
                    "account": account.name,
                    "recipients": built.recipients,
                }))
            }
            "draft" => {
                let draft = compose::Draft::from_params(p, &self.mesh, &self.cfg).await?;
                let built = compose::build(&account, &draft, true, &self.cfg)?;
                let mut session = imap::Session::open(&account, &self.cfg).await?;
                let out = session.save_draft(&account, &built).await;
                session.close().await;
                out
            }
            "read" => {
                let mut session = imap::Session::open(&account, &self.cfg).await?;
                let out = session.read(p, call, &self.mesh, &self.cfg).await;
                session.close().await;
                out
            }
            "search" => {
                let mut session = imap::Session::open(&account, &self.cfg).await?;
                let out = session.search(p, &self.cfg).await;
                session.close().await;
                out
            }
            "reply" => {
                let folder = params::opt_str(p, "folder")?.unwrap_or("INBOX");
                let uid = imap::uid_param(p)?;
                let mut session = imap::Session::open(&account, &self.cfg).await?;
                let original = session.headers(folder, uid).await;
                let original = match original {
                    Ok(o) => o,
                    Err(e) => {
                        session.close().await;
                        return Err(e);
                    }
                };
                let reply_all = params::opt_bool(p, "reply_all")?.unwrap_or(false);
                let draft =
                    compose::Draft::reply(p, &original, &account, reply_all, &self.mesh, &self.cfg)
                        .await;
                let draft = match draft {
                    Ok(d) => d,
                    Err(e) => {
                        session.close().await;
                        return Err(e);
                    }
                };
                let save = params::opt_bool(p, "draft")?.unwrap_or(false);
                let built = compose::build(&account, &draft, save, &self.cfg)?;
                let summary = json!({
                    "message_id": built.message_id,
                    "in_reply_to": draft.in_reply_to,
                    "references": draft.references,
                    "to": built.recipients,
                    "subject": draft.subject,
                });
                let out = if save {
                    session.save_draft(&account, &built).await.map(|mut v| {
                        v["reply"] = summary.clone();
                        v
                    })
                } else {
                    self.deliver(&account, &built).await.map(|()| summary)
                };
                session.close().await;
                out
            }
            other => Err(Error::new(
                ErrorCode::UnknownAction,
                format!("email has no action {other:?}"),
            )),
        }
    }
}

/// The trust roots of an account's TLS: the system's, and its `ca_file`.
pub(crate) fn roots(account: &Account<'_>) -> Result<tokio_rustls::rustls::RootCertStore, Error> {
    use rustls_pki_types::pem::PemObject;
    let mut store = tokio_rustls::rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    if let Some(path) = &account.cfg.ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                Error::new(
                    NOT_CONFIGURED,
                    format!(
                        "email.accounts.{}.ca_file {}: {e}",
                        account.name,
                        path.display()
                    ),
                )
            })?;
        store.add_parsable_certificates(certs);
    }
    Ok(store)
}

impl Capability for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    fn actions(&self) -> &'static [Action] {
        actions()
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { self.run(&call).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_compile_and_name_the_public_parameters() {
        struct Schemas;
        impl Capability for Schemas {
            fn name(&self) -> &'static str {
                "email"
            }
            fn actions(&self) -> &'static [Action] {
                actions()
            }
            fn execute<'a>(&'a self, _: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
                Box::pin(async { Ok(Value::Null) })
            }
        }
        let reg = jetmesh_shared::capability::registered(&Schemas).unwrap();
        let seed = json!({"to": "a@example.com", "body": "hi"});
        reg.check_params("t", "send", seed.as_object().unwrap())
            .unwrap();
        let full = json!({"to": ["a@example.com"], "cc": "b@example.com", "bcc": ["c@example.com"],
            "subject": "s", "body": "b", "html": "<p>b</p>", "attachments": [{"object": "k"}, {"name": "a.txt", "content": "aGk="}], "account": "main"});
        reg.check_params("t", "send", full.as_object().unwrap())
            .unwrap();
        let e = reg
            .check_params(
                "t",
                "send",
                json!({"to": "a@example.com"}).as_object().unwrap(),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        let search = json!({"folder": "INBOX", "criteria": {"from": "x", "since": "2026-01-01", "unseen": true}});
        reg.check_params("t", "search", search.as_object().unwrap())
            .unwrap();
        let reply = json!({"uid": 3, "body": "ok", "reply_all": true});
        reg.check_params("t", "reply", reply.as_object().unwrap())
            .unwrap();
        let server = json!({"to": "a@example.com", "body": "b", "smtp_host": "evil.example"});
        assert!(
            reg.check_params("t", "send", server.as_object().unwrap())
                .is_err()
        );
    }
}
