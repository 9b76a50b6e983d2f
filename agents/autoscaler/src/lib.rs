//! The autoscaler role, a singleton: every replica campaigns for the
//! `autoscaler` lease and only the holder acts. Every `autoscaler.interval_ms`
//! it measures each pool, writes its status and applies the scaling rules
//! ([`scaler`]); alerts go out through [`alerts`]. It also runs the health
//! monitor ([`health`]): it follows worker heartbeats in `mesh_health`, declares a
//! worker dead when its heartbeat is older than `health.dead_after_ms`
//! (5 s by default), says so on `mesh.health.worker.<instance>` and
//! `mesh.alerts.<pool>`, and has the pool's surviving processes take up the
//! lost slots, up to the pool's `min`, through `mesh_scale`.

pub mod alerts;
pub mod health;
pub mod scaler;

use jetmesh_shared::error::Result;
use jetmesh_shared::lease::Lease;
use jetmesh_shared::{Mesh, service, shutdown};
use tokio_util::sync::CancellationToken;

/// Runs the autoscaler until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let instance = shutdown::instance_id("autoscaler");
    let svc = service::start(&mesh.client, "autoscaler", &instance, "jetmesh autoscaler").await?;
    let registry =
        jetmesh_shared::registry::Registry::follow(mesh.clone(), shutdown.clone()).await?;
    let lease = Lease::campaign(
        &mesh,
        &mesh.names.autoscaler_lease(),
        &instance,
        shutdown.clone(),
    );
    mesh.publish_health("autoscaler", &instance, "started")
        .await;
    tracing::info!(instance = %instance, "The autoscaler is up; it acts while it holds the lease.");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = lease.acquired() => {}
        }
        tracing::info!(instance = %instance, "This autoscaler leads: it watches pools and worker health.");
        let monitor = health::Monitor::new(mesh.clone(), lease.clone(), registry.clone());
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = lease.lost() => {
                // Released by this very shutdown: not worth a warning.
                if shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(instance = %instance, "The autoscaler lease was lost; standing by.");
            }
            r = monitor.run() => if let Err(error) = r {
                tracing::warn!(%error, "The health monitor stopped; it restarts.");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            },
        }
    }
    mesh.publish_health("autoscaler", &instance, "stopping")
        .await;
    let _ = svc.stop().await;
    Ok(())
}
