//! Fast-ingest batches (the router's plan dispatch) against a real nats-server:
//! `true` means stored, de-duplication holds inside a batch, a stream without
//! batches turns them off, and a refused message ends the batch without any
//! message reported stored that is not.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use jetmesh_shared::ingest::Ingest;
use jetmesh_tests::NatsServer;
use std::time::Duration;

async fn work_queue(js: &jetstream::Context, batched: bool, max_size: i32) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "Q".into(),
        subjects: vec!["q.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        allow_batch_publish: batched,
        max_message_size: max_size,
        ..Default::default()
    })
    .await
    .expect("stream")
}

fn with_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    h
}

async fn stored(stream: &mut stream::Stream) -> u64 {
    stream.info().await.expect("stream info").state.messages
}

/// Publishes `bodies` at once, in order, with ids `m<i>`.
async fn publish_all(ingest: &Ingest, bodies: Vec<Vec<u8>>) -> Vec<bool> {
    let all = bodies.into_iter().enumerate().map(|(i, body)| {
        ingest.publish(
            format!("q.{}", i % 3).into(),
            with_id(&format!("m{i}")),
            body.into(),
        )
    });
    tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(all))
        .await
        .expect("every publish resolves")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_store_every_message_once() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = work_queue(&js, true, -1).await;
    // Already stored on its own: the batch's copy is a duplicate.
    js.send_publish(
        "q.1",
        jetstream::message::PublishMessage::build()
            .payload("before".into())
            .message_id("m7"),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let ingest = Ingest::start(client, true);
    let results = publish_all(
        &ingest,
        (0..450).map(|i| format!("{i}").into_bytes()).collect(),
    )
    .await;
    assert!(results.iter().all(|ok| *ok), "every message confirmed");
    assert!(ingest.enabled());
    assert_eq!(stored(&mut stream).await, 450, "m7 is stored once");

    // A second round opens a new batch; the same ids are all duplicates.
    let again = publish_all(
        &ingest,
        (0..450).map(|i| format!("{i}").into_bytes()).collect(),
    )
    .await;
    assert!(again.iter().all(|ok| *ok));
    assert_eq!(stored(&mut stream).await, 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_batches_turns_them_off() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = work_queue(&js, false, -1).await;
    let ingest = Ingest::start(client, true);
    assert_eq!(publish_all(&ingest, vec![b"a".to_vec()]).await, [false]);
    assert!(!ingest.enabled(), "the refusal turns batches off");
    assert_eq!(publish_all(&ingest, vec![b"b".to_vec()]).await, [false]);
    assert_eq!(
        stored(&mut stream).await,
        0,
        "nothing reported unstored was stored"
    );

    // Turned off by configuration: nothing goes through the batch path.
    let off = Ingest::start(server.client().await, false);
    assert!(!off.enabled());
    assert_eq!(publish_all(&off, vec![b"c".to_vec()]).await, [false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_ends_the_batch_and_nothing_is_lost() {
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let mut stream = work_queue(&js, true, 100).await;
    let ingest = Ingest::start(client, true);
    let mut bodies: Vec<Vec<u8>> = (0..5).map(|_| b"small".to_vec()).collect();
    bodies.push(vec![b'x'; 500]);
    bodies.extend((0..20).map(|_| b"small".to_vec()));
    let results = publish_all(&ingest, bodies).await;
    assert_eq!(results[..5], [true; 5], "{results:?}");
    assert!(!results[5], "the oversized message is not confirmed");
    let confirmed = results.iter().filter(|ok| **ok).count() as u64;
    let after = stored(&mut stream).await;
    assert!(
        after >= confirmed,
        "{confirmed} confirmed but only {after} stored"
    );

    // The caller's ordinary path for what was not confirmed: with the same
    // ids, the stream ends with every small message exactly once.
    for (i, ok) in results.iter().enumerate() {
        if !ok && i != 5 {
            js.send_publish(
                format!("q.{}", i % 3),
                jetstream::message::PublishMessage::build()
                    .payload("small".into())
                    .message_id(format!("m{i}")),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        }
    }
    assert_eq!(stored(&mut stream).await, 25);
    assert!(
        ingest.enabled(),
        "a refused message does not turn batches off"
    );
}
