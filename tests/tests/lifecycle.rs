//! How roles end: a consumer that cannot recover stops its role with a
//! non-zero exit (for systemd or Kubernetes to restart it), never a role that
//! half-serves; SIGTERM is bounded even while NATS does not answer; a second
//! signal ends the process at once.

use jetmesh_tests::{NatsServer, Proc, SIGCONT, SIGSTOP, SIGTERM};
use std::time::{Duration, Instant};

/// Waits until `service` (`jetmesh-router`) answers the service API.
async fn until_serving(client: &async_nats::Client, service: &str) {
    let started = Instant::now();
    while client
        .request(format!("$SRV.PING.{service}"), "".into())
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{service} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the process exits, at most `within`; returns its status and
/// how long it took.
fn exit_within(p: &mut Proc, within: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{} still runs after {within:?}:\n{}",
            p.name,
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_cannot_recover_stops_its_role_with_a_failure_exit() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut router = Proc::jetmesh_env(
        &server.url(),
        &["router"],
        &[("JETMESH_RUNTIME__GIVE_UP_AFTER_MS", "2000")],
    );
    until_serving(&client, "jetmesh-router").await;
    // The intake stream goes away under the router: its consumer cannot be
    // opened again (the router never re-creates streams while it runs).
    let js = async_nats::jetstream::new(client.clone());
    js.delete_stream("MESH_INTAKE").await.unwrap();
    let (status, after) = exit_within(&mut router, Duration::from_secs(30));
    assert!(
        !status.success(),
        "a role that cannot consume exits non-zero"
    );
    assert!(
        after >= Duration::from_secs(2),
        "it tried for give_up_after_ms first: {after:?}"
    );
    let log = router.stderr();
    assert!(log.contains("intake"), "the error names the loop: {log}");
    assert!(log.contains("cannot recover"), "{log}");
    // It backed off between tries (100 ms doubling), not spun.
    let tries = log.matches("The consumer failed; it restarts.").count();
    assert!((1..20).contains(&tries), "{tries} tries in 2 s: {log}");
    // It does not half-serve: mesh.run went with it.
    let run = client
        .request("mesh.run.math.sum", r#"{"args":[1]}"#.into())
        .await;
    assert!(run.is_err(), "nobody answers mesh.run any more");
    // Restarted (as its supervisor would), it provisions the stream again.
    let _again = Proc::jetmesh(&server.url(), &["router"]);
    until_serving(&client, "jetmesh-router").await;
    js.get_stream("MESH_INTAKE")
        .await
        .expect("the restarted router created the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_stops_within_its_bound_while_nats_does_not_answer() {
    let server = NatsServer::start();
    let client = server.client().await;
    let drain = [("JETMESH_RUNTIME__DRAIN_TIMEOUT_MS", "2000")];
    let mut roles: Vec<(Proc, &str)> = [
        (&["chief"][..], "jetmesh-chief"),
        (&["planner"], "jetmesh-planner"),
        (&["router"], "jetmesh-router"),
        (&["aggregator"], "jetmesh-aggregator"),
        (&["summary"], "jetmesh-summary"),
        (&["autoscaler"], "jetmesh-autoscaler"),
        (&["worker", "--pool", "math"], "jetmesh-worker"),
    ]
    .into_iter()
    .map(|(args, service)| (Proc::jetmesh_env(&server.url(), args, &drain), service))
    .collect();
    for (_, service) in &roles {
        until_serving(&client, service).await;
    }
    // The server stops answering (paused, its port still open).
    server.signal(SIGSTOP);
    for (p, _) in &roles {
        p.signal(SIGTERM);
    }
    // Drain timeout 2 s, then at most 10 s of grace: the bound is 12 s.
    for (p, _) in roles.iter_mut() {
        let (status, took) = exit_within(p, Duration::from_secs(15));
        assert!(
            status.code().is_some(),
            "{} exited by itself: {status}",
            p.name
        );
        assert!(took < Duration::from_secs(13), "{} took {took:?}", p.name);
    }
    server.signal(SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut chief = Proc::jetmesh(&server.url(), &["chief"]);
    until_serving(&client, "jetmesh-chief").await;
    // With the server paused a graceful stop would take the drain timeout
    // (30 s by default); the second SIGTERM cuts it short.
    server.signal(SIGSTOP);
    chief.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    chief.signal(SIGTERM);
    let (status, took) = exit_within(&mut chief, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.signal(SIGCONT);
}
