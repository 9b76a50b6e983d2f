//! The autoscaler on a real server: a backlog scales a pool up (one slot per
//! interval, up to its max), raises the "overloaded" alert (on
//! `mesh.alerts.<pool>`, in `MESH_EVENTS`, and POSTed to a real HTTP webhook
//! listening on loopback), which clears once the backlog is gone; after the
//! idle time the pool scales back down to its min. Every decision is in
//! `mesh_scale` and in `MESH_AUDIT`, and `jetmesh pools` shows the table.

use futures::StreamExt;
use jetmesh_shared::config::PoolConfig;
use jetmesh_shared::wire::{Alert, PoolStatus, ScaleDecision, WorkerHeartbeat};
use jetmesh_shared::{Mesh, codec};
use jetmesh_tests::{InProcessMesh, NatsServer, sim_config};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP server on loopback that keeps every request body it gets.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let head = text[..end].lines().next().unwrap_or("").to_string();
                            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                            let _ = tx.send(format!("{head}\n{body}"));
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

async fn beats(mesh: &Mesh) -> usize {
    mesh.scan(&mesh.health, "worker.sim.*")
        .await
        .unwrap()
        .iter()
        .filter_map(|e| codec::from_json::<WorkerHeartbeat>(&e.value).ok())
        .map(|b| b.slots)
        .sum()
}

async fn until_slots(mesh: &Mesh, want: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if beats(mesh).await == want {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let status = mesh.scale.get(mesh.names.status_key("sim")).await.unwrap();
            panic!(
                "the pool never reached {want} slots (it has {}); status: {:?}",
                beats(mesh).await,
                status.map(|b| String::from_utf8_lossy(&b).to_string())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(mesh: &Mesh) -> PoolStatus {
    let v = mesh
        .scale
        .get(mesh.names.status_key("sim"))
        .await
        .unwrap()
        .expect("the autoscaler writes the pool's status");
    codec::from_json(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_scales_up_alerts_then_scales_down_after_idle() {
    let server = NatsServer::start();
    let (hook, mut posts) = webhook().await;
    let mut config = sim_config(&server.url(), 1);
    config.health.heartbeat_ms = 100;
    config.autoscaler.interval_ms = 200;
    config.autoscaler.webhook_url = hook;
    let sim = config.pools.get_mut("sim").unwrap();
    *sim = PoolConfig {
        ack_wait_secs: 5,
        ..PoolConfig::new("sim", 1).limits(1, 4)
    };
    sim.scale_up_queue = 3;
    sim.scale_down_queue = 2;
    sim.overload_queue = 5;
    sim.idle_secs = 2;
    let m = InProcessMesh::start(config).await;
    let mesh = m.mesh.clone();
    let mut alerts = mesh
        .client
        .subscribe(mesh.names.alerts("sim"))
        .await
        .unwrap();
    assert_eq!(
        until_slots(&mesh, 1, Duration::from_secs(5))
            .await
            .as_secs(),
        0
    );

    // 40 tasks of 250 ms on one slot: a backlog.
    let spike = Instant::now();
    for i in 0..40 {
        mesh.js
            .publish(
                mesh.names.tasks("sim", "sleep"),
                format!(r#"{{"id":"s{i}","plan_id":"spike","ms":250}}"#).into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let first_up = until_slots(&mesh, 2, Duration::from_secs(10)).await;
    let to_max = until_slots(&mesh, 4, Duration::from_secs(10)).await;
    eprintln!(
        "first scale-up {:?} after the spike, max 1.x s later ({to_max:?})",
        first_up
    );
    let _ = spike;

    // The overload alert (all busy, more than 5 waiting), on NATS and on the webhook.
    let alert: Alert = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = alerts.next().await.unwrap();
            let a: Alert = codec::from_json(&msg.payload).unwrap();
            if a.kind == "overloaded" {
                return a;
            }
        }
    })
    .await
    .expect("an overloaded alert");
    assert!(alert.message.contains("overloaded"), "{}", alert.message);
    let post = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let p = posts.recv().await.unwrap();
            if p.contains("overloaded") {
                return p;
            }
        }
    })
    .await
    .expect("the webhook got the alert");
    assert!(post.starts_with("POST /hooks/alerts"), "{post}");
    let body: serde_json::Value = serde_json::from_str(post.lines().nth(1).unwrap()).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("pool sim overloaded"),
        "{body}"
    );

    // The backlog drains: the alert clears.
    let cleared: Alert = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let msg = alerts.next().await.unwrap();
            let a: Alert = codec::from_json(&msg.payload).unwrap();
            if a.kind == "overload_cleared" {
                return a;
            }
        }
    })
    .await
    .expect("the overload clears");
    assert_eq!(cleared.pool, "sim");

    // Idle for 2 s: back down, one slot per idle period, to the min.
    until_slots(&mesh, 1, Duration::from_secs(20)).await;
    let mut s = status(&mesh).await;
    for _ in 0..50 {
        if s.workers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status(&mesh).await;
    }
    assert_eq!((s.workers, s.min, s.max), (1, 1, 4));
    assert!(s.live);
    assert!(!s.overloaded);

    // Every decision is audited, up and down.
    let audit = mesh
        .js
        .get_stream(mesh.names.audit_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert!(audit >= 6, "3 ups and 3 downs audited, got {audit}");
    let decision: ScaleDecision = codec::from_json(
        &mesh
            .scale
            .get(mesh.names.scale_key("sim"))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decision.slots.values().sum::<usize>(), 1);
    assert!(decision.reason.contains("idle"), "{}", decision.reason);

    // The table `jetmesh pools` prints.
    let table = jetmesh::client::pools_table(&[s]);
    assert!(table.contains("POOL") && table.contains("sim"), "{table}");
    m.stop().await;
}
