//! A three-node NATS cluster with every stream and bucket at R3: the node
//! leading the queue stream is killed (SIGKILL) in the middle of a run, with
//! the router still releasing held tasks, and nothing is lost. Bounded in
//! time; cleaned up on drop.

use jetmesh_shared::Config;
use jetmesh_tests::{InProcessMesh, NatsCluster, Workload, sim_config};
use std::time::{Duration, Instant};

fn config(url: &str) -> Config {
    let mut c = sim_config(url, 8);
    c.mesh.replicas = 3;
    // A small queue window: the router holds most plan tasks and releases
    // them while the run goes on, so the kill lands on dispatches in flight.
    if let Some(sim) = c.pools.get_mut("sim") {
        sim.queue_window = 16;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_queue_stream_leader_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let m = InProcessMesh::start(config(&cluster.url())).await;
    let mesh = m.mesh.clone();
    let queues = mesh.names.queues_stream();
    let info = mesh
        .js
        .get_stream(&queues)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let cluster_info = info.cluster.clone().expect("a clustered stream");
    assert_eq!(info.config.num_replicas, 3);
    let leader = cluster_info.leader.expect("a stream leader");

    let work = Workload {
        prefix: "r3".into(),
        plans: 4,
        tasks: 60,
        single: 100,
        ms: 30,
    };
    work.submit(&mesh).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let done_before = work.done(&mesh).await;
    cluster.node(&leader).kill();
    let killed = Instant::now();
    work.finished(&mesh, Duration::from_secs(90)).await;

    let new_leader = mesh
        .js
        .get_stream(&queues)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader);
    eprintln!(
        "killed {leader} (queue stream leader) with {done_before} of {} tasks done; all done {:?} later; the new leader is {new_leader:?}",
        work.total(),
        killed.elapsed()
    );
    assert!(
        done_before < work.total(),
        "the kill came after the work was done"
    );
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()));
    m.stop().await;
}
