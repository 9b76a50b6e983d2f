//! Sending over SMTP: one pooled lettre transport per account (implicit TLS,
//! STARTTLS or none, with the account's login), temporary refusals retried
//! with the mesh's backoff, and every failure as a stable code.

use super::{AUTH_FAILED, Account, MESSAGE_REJECTED, RECIPIENT_REFUSED};
use jetmesh_shared::backoff::Policy;
use jetmesh_shared::config::{EmailConfig, MailTls};
use jetmesh_shared::{Error, ErrorCode};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

pub struct Transport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    account: String,
}

impl Transport {
    pub fn new(account: &Account<'_>, cfg: &EmailConfig) -> Result<Transport, Error> {
        let a = account.cfg;
        let host = a.smtp_host.clone();
        let port = a.smtp_port.unwrap_or(match a.smtp_tls {
            MailTls::Tls => 465,
            MailTls::Starttls => 587,
            MailTls::None => 25,
        });
        let not_configured = |e: String| Error::new(super::NOT_CONFIGURED, e);
        let tls = if a.smtp_tls == MailTls::None {
            Tls::None
        } else {
            let mut b =
                TlsParameters::builder(host.clone()).certificate_store(CertificateStore::Default);
            if let Some(path) = &a.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    not_configured(format!(
                        "email.accounts.{}.ca_file {}: {e}",
                        account.name,
                        path.display()
                    ))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    not_configured(format!("email.accounts.{}.ca_file: {e}", account.name))
                })?;
                b = b.add_root_certificate(cert);
            }
            let params = b
                .build_rustls()
                .map_err(|e| not_configured(format!("TLS for account {}: {e}", account.name)))?;
            match a.smtp_tls {
                MailTls::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(cfg.timeout_ms)));
        if !account.password.is_empty() {
            builder = builder
                .credentials(Credentials::new(
                    account.username().to_string(),
                    account.password.clone(),
                ))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Transport {
            inner: builder.build(),
            account: account.name.to_string(),
        })
    }

    /// Sends `message`; a temporary refusal (4xx) or a dropped connection is
    /// tried again, up to `send_attempts` attempts in all.
    pub async fn send(&self, message: &Message, cfg: &EmailConfig) -> Result<(), Error> {
        let policy = Policy {
            min: Duration::from_millis(200),
            max: Duration::from_secs(5),
            attempts: Some(cfg.send_attempts.max(1) as usize),
        };
        policy
            .retry(
                "an SMTP send",
                || self.inner.send(message.clone()),
                |e: &lettre::transport::smtp::Error| e.is_transient(),
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&self.account, &e))
    }
}

/// A lettre error as a stable code.
fn classify(account: &str, e: &lettre::transport::smtp::Error) -> Error {
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    let text = e.to_string();
    let kind = if e.is_permanent() {
        match code.as_str() {
            "530" | "534" | "535" | "538" => AUTH_FAILED,
            "550" | "551" | "553" => RECIPIENT_REFUSED,
            "552" | "554" if text.contains("size") => ErrorCode::PayloadTooLarge,
            _ => MESSAGE_REJECTED,
        }
    } else if e.is_transient() {
        if code == "454" && text.to_ascii_lowercase().contains("auth") {
            AUTH_FAILED
        } else {
            ErrorCode::Unavailable
        }
    } else if e.is_timeout() {
        ErrorCode::Timeout
    } else if text.to_ascii_lowercase().contains("authentication") {
        AUTH_FAILED
    } else {
        // Connecting, TLS, or the connection dropping: the server may be back soon.
        ErrorCode::Unavailable
    };
    let what = match &kind {
        k if *k == ErrorCode::Unavailable && code.is_empty() => {
            format!("the SMTP server of account {account} cannot be reached: {text}")
        }
        k if *k == ErrorCode::Unavailable => format!(
            "the SMTP server of account {account} refused for now, through every attempt: {text}"
        ),
        _ => format!("the SMTP server of account {account}: {text}"),
    };
    Error::new(kind, what)
}
