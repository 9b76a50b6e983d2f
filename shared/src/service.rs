//! Service API registration and replies. Every role process registers with the
//! NATS service API (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`), so `nats micro ls`
//! lists the running agents; request/reply endpoints hang off that service and
//! answer in the encoding of the request.

use crate::codec::Encoding;
use crate::error::{Error, Result};
use crate::wire::ErrorReply;
use async_nats::Client;
use async_nats::service::{Service, ServiceExt};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// Registers this process as `jetmesh-<role>` with the service API.
pub async fn start(mesh: &crate::Mesh, description: &str) -> Result<Service> {
    let (client, role, instance) = (&mesh.client, mesh.identity.role, &mesh.identity.instance);
    let mut metadata = HashMap::new();
    metadata.insert("instance".to_string(), instance.to_string());
    metadata.insert("role".to_string(), role.as_str().to_string());
    metadata.insert("pid".to_string(), std::process::id().to_string());
    metadata.insert(
        "protocol".to_string(),
        crate::wire::PROTOCOL_VERSION.to_string(),
    );
    client
        .service_builder()
        .description(description)
        .metadata(metadata)
        .start(role.service_name(), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| Error::unavailable("cannot register with the service API", e))
}

/// The body of a reply: the value, or an error reply; an encoding failure
/// becomes a JSON error reply.
fn encode_reply<T: Serialize>(enc: Encoding, result: &Result<T>) -> bytes::Bytes {
    let body = match result {
        Ok(value) => enc.encode(value),
        Err(err) => enc.encode(&ErrorReply::new(err)),
    };
    body.unwrap_or_else(|e| {
        Encoding::Json
            .encode(&ErrorReply::new(&e))
            .unwrap_or_default()
    })
}

/// Answers a service request with `result` (a value, or an error reply), in `enc`.
pub async fn respond<T: Serialize>(
    request: &async_nats::service::Request,
    enc: Encoding,
    result: &Result<T>,
) {
    let body = encode_reply(enc, result);
    let headers = enc.headers().unwrap_or_default();
    if let Err(error) = request.respond_with_headers(Ok(body), headers).await {
        tracing::debug!(%error, "Could not send a reply (the requester may have gone).");
    }
}

/// Answers a plain request message (one taken from a queue subscription, not a
/// service endpoint) with `result`, in `enc`.
pub async fn reply<T: Serialize>(
    client: &Client,
    msg: &async_nats::Message,
    enc: Encoding,
    result: &Result<T>,
) {
    let body = encode_reply(enc, result);
    send_reply(client, msg, enc, body).await;
}

/// [`reply`] with an already-encoded JSON body (re-encoded only for msgpack).
pub async fn reply_json_bytes(
    client: &Client,
    msg: &async_nats::Message,
    enc: Encoding,
    json: bytes::Bytes,
) {
    let body = match enc {
        Encoding::Json => Ok(json),
        other => Encoding::Json
            .decode::<serde_json::Value>(&json)
            .and_then(|v| other.encode(&v)),
    };
    match body {
        Ok(body) => send_reply(client, msg, enc, body).await,
        Err(e) => reply::<()>(client, msg, enc, &Err(e)).await,
    }
}

async fn send_reply(client: &Client, msg: &async_nats::Message, enc: Encoding, body: bytes::Bytes) {
    let Some(to) = msg.reply.clone() else {
        return; // published without a reply subject: nobody to answer
    };
    let headers = enc.headers().unwrap_or_default();
    if let Err(error) = client.publish_with_headers(to, headers, body).await {
        tracing::debug!(%error, "Could not send a reply (the requester may have gone).");
    }
}

/// The encoding a request asks for; a bad `Content-Type` answers in JSON.
pub fn request_encoding(request: &async_nats::service::Request) -> Result<Encoding> {
    Encoding::from_headers(request.message.headers.as_ref())
}

/// Waits until every role in `roles` answers `$SRV.INFO` as `jetmesh-<role>`
/// and every subject in `subjects` is served by some endpoint (a standby chief
/// is up before it serves `mesh.plans.submit`). Errors with `timeout`, naming
/// what is still missing.
pub async fn wait_for_roles(
    client: &Client,
    roles: &[crate::Role],
    subjects: &[String],
    within: std::time::Duration,
) -> Result<()> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::unavailable("cannot subscribe", e))?;
        client
            .publish_with_reply("$SRV.INFO", inbox, "".into())
            .await
            .map_err(|e| Error::unavailable("cannot ask services", e))?;
        let (mut names, mut served) = (BTreeSet::new(), BTreeSet::new());
        let window = std::time::Duration::from_millis(200);
        while let Ok(Some(msg)) = tokio::time::timeout(window, sub.next()).await {
            let Ok(info) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
                continue;
            };
            if let Some(name) = info["name"].as_str() {
                names.insert(name.to_string());
            }
            for e in info["endpoints"].as_array().into_iter().flatten() {
                if let Some(subject) = e["subject"].as_str() {
                    served.insert(subject.to_string());
                }
            }
        }
        let mut missing: Vec<String> = roles
            .iter()
            .filter(|r| !names.contains(&r.service_name()))
            .map(|r| format!("role {r}"))
            .collect();
        missing.extend(
            subjects
                .iter()
                .filter(|s| !served.contains(*s))
                .map(|s| format!("subject {s}")),
        );
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(
                crate::ErrorCode::Timeout,
                format!("not ready: {}", missing.join(", ")),
            ));
        }
    }
}
