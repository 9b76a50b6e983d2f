//! Where alerts go: `mesh.alerts.<pool>` (stored in `MESH_EVENTS`), a counter,
//! and, when `autoscaler.webhook_url` is set, a Slack-compatible JSON POST
//! (`{"text": ...}`). The webhook URL usually holds a token, so it is never
//! logged; a failed POST is logged with its status only.

use jetmesh_shared::wire::Alert;
use jetmesh_shared::{Mesh, codec, telemetry};
use std::time::Duration;

#[derive(Clone)]
pub struct Alerter {
    mesh: Mesh,
    webhook: Option<(reqwest::Client, String)>,
}

impl Alerter {
    pub fn new(mesh: Mesh) -> Alerter {
        let url = mesh.config.autoscaler.webhook_url.trim().to_string();
        let webhook = (!url.is_empty()).then(|| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            (client, url)
        });
        Alerter { mesh, webhook }
    }

    /// Raises an alert everywhere it goes; waits until it is stored.
    pub async fn raise(&self, alert: Alert) {
        tracing::warn!(pool = %alert.pool, kind = %alert.kind, "{}", alert.message);
        metrics::counter!(telemetry::ALERTS, "pool" => alert.pool.clone(), "kind" => alert.kind.clone())
            .increment(1);
        if let Some((client, url)) = &self.webhook {
            let body = serde_json::json!({
                "text": format!("[jetmesh] {}: {}", alert.kind, alert.message),
                "pool": alert.pool,
                "kind": alert.kind,
            });
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                match client.post(url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "The alert webhook refused an alert.")
                    }
                    // The error's text can hold the URL: report its kind only.
                    Err(e) => tracing::warn!(
                        timeout = e.is_timeout(),
                        connect = e.is_connect(),
                        "The alert webhook cannot be reached."
                    ),
                }
            });
        }
        self.store(self.mesh.names.alerts(&alert.pool), &alert)
            .await;
    }

    /// Publishes to JetStream (`MESH_EVENTS`, `MESH_AUDIT`) and waits until stored.
    pub async fn store<T: serde::Serialize>(&self, subject: String, body: &T) {
        let Ok(payload) = codec::to_json(body) else {
            return;
        };
        let stored = match self.mesh.js.publish(subject.clone(), payload).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = stored {
            tracing::warn!(%error, subject, "Cannot publish an event.");
        }
    }
}
