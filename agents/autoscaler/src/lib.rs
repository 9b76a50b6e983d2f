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
use jetmesh_shared::{Mesh, Role, service};
use tokio_util::sync::CancellationToken;

/// Runs the autoscaler until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) -> Result<()> {
    let mesh = mesh.as_role(jetmesh_shared::Role::Autoscaler);
    let svc = service::start(&mesh, "jetmesh autoscaler").await?;
    let registry =
        jetmesh_shared::registry::Registry::follow(mesh.clone(), shutdown.clone()).await?;
    let lease = Lease::campaign(&mesh, Role::Autoscaler, shutdown.clone());
    mesh.publish_health("started").await;
    let instance = mesh.identity.instance.clone();
    tracing::info!(instance = %instance, "The autoscaler is up; it acts while it holds the lease.");
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = lease.acquired() => {}
        }
        tracing::info!(instance = %instance, "This autoscaler leads: it watches pools and worker health.");
        let stop = shutdown.child_token();
        let monitor = health::Monitor::new(mesh.clone(), lease.clone(), registry.clone());
        let monitoring = monitor.run(stop.clone());
        tokio::pin!(monitoring);
        let outcome = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ok(()),
            _ = lease.lost() => {
                // Released by this very shutdown: not worth a warning.
                if !shutdown.is_cancelled() {
                    tracing::warn!(instance = %instance, "The autoscaler lease was lost; standing by.");
                }
                Ok(())
            }
            r = &mut monitoring => r,
        };
        stop.cancel();
        if let Err(e) = outcome {
            // Heartbeats cannot be followed: an autoscaler that cannot see
            // workers must not lead.
            break Err(e);
        }
        if shutdown.is_cancelled() {
            break Ok(());
        }
    };
    mesh.publish_health("stopping").await;
    let _ = svc.stop().await;
    result
}
