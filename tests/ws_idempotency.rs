//! Exactly once, end to end: a broadcast sent again under its
//! `idempotency_key` (from the same instance, from another one, or after a
//! socket cut between the publish and its acknowledgement) is acknowledged
//! again with the first one's position and published once, on Redis and in
//! memory; a key too long is refused.

mod support;

use std::time::Duration;

use realtime::MemoryBroker;
use realtime::broker::Broker;
use realtime::history::{HistoryPolicy, Retention};
use realtime::testing::TestClient;
use serde_json::{Value, json};
use support::{Node, RedisServer, memory_nodes, redis_nodes};

fn policy() -> HistoryPolicy {
    HistoryPolicy::none().keep("room:*", Retention::new(100, Duration::from_secs(600)))
}

/// `say` with an id and a key.
fn keyed(id: u64, text: &str, key: &str) -> Value {
    json!({"type": "say", "data": {"text": text}, "id": id, "idempotency_key": key})
}

/// A client of `topic` past its `subscribed` frame (topics with history).
async fn enter<B: Broker>(node: &Node<B>, topic: &str, user: &str) -> TestClient {
    let mut client = node.connect(topic, user).await;
    if topic.starts_with("room:") {
        let frame = client.recv().await;
        assert!(frame.get("subscribed").is_some(), "{frame}");
    }
    client
}

/// The texts of `topic`'s history.
async fn history<B: Broker>(node: &Node<B>, topic: &str) -> Vec<String> {
    let read = node
        .service
        .history(topic, None, 100)
        .await
        .expect("history");
    read.events
        .iter()
        .map(|line| {
            let event: Value = line.event().expect("a line");
            event["text"].as_str().expect("a text").to_owned()
        })
        .collect()
}

async fn twice_from_one_and_two_instances<B: Broker>(a: &Node<B>, b: &Node<B>) {
    let mut watcher = enter(a, "room:k", "watcher").await;
    let mut alice = enter(a, "room:k", "alice").await;
    let mut bob = enter(b, "room:k", "bob").await;

    alice.send(keyed(1, "once", "key-1")).await;
    let first = alice.recv_reply().await;
    assert!(first["ok"]["offset"].is_u64(), "{first}");
    alice.send(keyed(2, "once", "key-1")).await;
    let again = alice.recv_reply().await;
    assert_eq!(again["ok"], first["ok"], "the same acknowledgement");
    // From the other instance, under the same key.
    bob.send(keyed(3, "once", "key-1")).await;
    let elsewhere = bob.recv_reply().await;
    assert_eq!(elsewhere["ok"], first["ok"], "{elsewhere}");
    // Another key is another event.
    alice.send(keyed(4, "twice", "key-2")).await;
    let second = alice.recv_reply().await;
    assert_eq!(
        second["ok"]["offset"].as_u64(),
        first["ok"]["offset"].as_u64().map(|offset| offset + 1)
    );

    let one = watcher.recv_event().await;
    assert_eq!(one["event"]["text"], "once");
    let two = watcher.recv_event().await;
    assert_eq!(two["event"]["text"], "twice", "the key-1 event came once");
    assert_eq!(history(a, "room:k").await, ["once", "twice"]);

    // A topic without history: acknowledged with `null`, published once.
    let mut plain_watcher = enter(a, "lobby", "watcher").await;
    let mut plain = enter(b, "lobby", "carol").await;
    for id in 5..8 {
        plain.send(keyed(id, "plain once", "key-3")).await;
        assert_eq!(plain.recv_reply().await["ok"], Value::Null);
    }
    plain.send(keyed(8, "plain after", "key-4")).await;
    plain.recv_reply().await;
    assert_eq!(
        plain_watcher.recv_event().await["event"]["text"],
        "plain once"
    );
    assert_eq!(
        plain_watcher.recv_event().await["event"]["text"],
        "plain after"
    );
}

/// The socket is cut once the publish reached the broker (another client
/// got the event) and before the client read its acknowledgement. It sends
/// the call again on a new connection with the same key: one event.
async fn cut_before_the_ack<B: Broker>(node: &Node<B>) {
    let mut watcher = enter(node, "room:c", "watcher").await;
    let mut cut = enter(node, "room:c", "alice").await;
    cut.send(keyed(1, "cut", "key-cut")).await;
    assert_eq!(watcher.recv_event().await["event"]["text"], "cut");
    // Dropped without a close frame and without reading: the TCP connection
    // just ends, and the client never learns whether it was published.
    drop(cut.into_inner());

    let mut back = enter(node, "room:c", "alice").await;
    back.send(keyed(1, "cut", "key-cut")).await;
    let ack = back.recv_reply().await;
    assert_eq!(ack["ok"]["offset"], 1, "{ack}");
    back.send(keyed(2, "next", "key-next")).await;
    back.recv_reply().await;
    assert_eq!(watcher.recv_event().await["event"]["text"], "next");
    assert_eq!(history(node, "room:c").await, ["cut", "next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_publishes_once_on_redis() {
    let redis = RedisServer::start().await;
    let (a, b) = redis_nodes(&redis, "once:", policy()).await;
    twice_from_one_and_two_instances(&a, &b).await;
    cut_before_the_ack(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_publishes_once_in_memory() {
    let (a, b) = memory_nodes(policy()).await;
    twice_from_one_and_two_instances(&a, &b).await;
    cut_before_the_ack(&a).await;
}

#[tokio::test]
async fn a_key_too_long_is_refused() {
    let node = Node::with_history(MemoryBroker::new(), policy()).await;
    let mut client = enter(&node, "lobby", "alice").await;
    client.send(keyed(1, "x", &"k".repeat(65))).await;
    let answer = client.recv_reply().await;
    assert_eq!(answer["error"]["code"], 400, "{answer}");
    client.send(keyed(2, "x", "")).await;
    assert_eq!(client.recv_reply().await["error"]["code"], 400);
    client.send(keyed(3, "x", &"k".repeat(64))).await;
    assert_eq!(client.recv_reply().await["ok"], Value::Null);
}
