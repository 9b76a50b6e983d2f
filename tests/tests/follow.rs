//! Following a KV bucket (`jetmesh_shared::follow`) across a server restart
//! and a bucket made again: nothing missed, nothing repeated, and a reset
//! said when the bucket is behind what was seen.

use async_nats::jetstream::kv;
use jetmesh_shared::CancellationToken;
use jetmesh_shared::follow::{Change, follow};
use jetmesh_tests::NatsServer;
use std::time::Duration;
use tokio::sync::mpsc;

/// A change as the test compares it: `put k.1`, `delete k.1`, `reset`.
fn said(c: &Change) -> String {
    match c {
        Change::Put(e) => format!("put {}", e.key),
        Change::Delete { key, .. } => format!("delete {key}"),
        Change::Reset => "reset".into(),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Change>) -> String {
    let c = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a change within 15 s")
        .expect("the follower runs");
    said(&c)
}

async fn bucket(js: &async_nats::jetstream::Context) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: "follow_test".into(),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_after_a_restart_and_starts_over_when_the_bucket_is_new() {
    let mut server = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let store = bucket(&js).await;
    store.put("k.1", "a".into()).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    follow(store.clone(), "k.>", stop.clone(), move |c| {
        let _ = tx.send(c);
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "put k.1", "what is there comes first");
    store.put("k.2", "b".into()).await.unwrap();
    assert_eq!(next(&mut rx).await, "put k.2");

    // The server dies and comes back on the same store.
    server.restart();
    let written = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if store.put("k.3", "c".into()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(written.is_ok(), "the server takes writes again");
    store.delete("k.1").await.unwrap();
    // The next change is the new write: nothing seen before comes again.
    assert_eq!(next(&mut rx).await, "put k.3");
    assert_eq!(next(&mut rx).await, "delete k.1");

    // The bucket is made again (its data gone): the follower says so and
    // starts over with what the new bucket holds.
    js.delete_key_value("follow_test").await.unwrap();
    let store = bucket(&js).await;
    store.put("k.9", "z".into()).await.unwrap();
    assert_eq!(next(&mut rx).await, "reset");
    assert_eq!(next(&mut rx).await, "put k.9");
    stop.cancel();
}
