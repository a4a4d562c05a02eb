//! A connection follows more topics than the one of its URL: `$join`,
//! `$leave`, and the `topic` key that says which topic a frame is about.

mod support;

use std::time::Duration;

use realtime::Config;
use realtime::testing::TestClient;
use serde_json::{Value, json};
use support::room::RoomServer;
use support::{ack, wait_until};

/// How long a client must stay silent to show it is not subscribed.
const QUIET: Duration = Duration::from_millis(300);

fn error(id: u64, code: u16, message: &str) -> Value {
    json!({"reply_to": id, "error": {"code": code, "message": message}})
}

async fn say(client: &mut TestClient, text: &str) {
    client
        .send(json!({"type": "say", "data": {"text": text}}))
        .await;
}

#[tokio::test]
async fn a_joined_topic_delivers_its_events_beside_the_urls_topic() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    let mut bob = server.connect("b", "bob").await;
    let mut carol = server.connect("a", "carol").await;

    assert_eq!(alice.join("b", 1).await, ack(1));
    say(&mut bob, "on b").await;
    assert_eq!(
        alice.recv().await,
        json!({"topic": "b", "event": {"from": "bob", "text": "on b"}})
    );
    say(&mut carol, "on a").await;
    assert_eq!(
        alice.recv().await,
        json!({"topic": "a", "event": {"from": "carol", "text": "on a"}})
    );
}

#[tokio::test]
async fn a_frame_with_a_topic_is_handled_for_that_topic() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    let mut bob = server.connect("b", "bob").await;
    let mut carol = server.connect("a", "carol").await;
    assert_eq!(alice.join("b", 1).await, ack(1));

    // A broadcast about `b` reaches b's subscribers, not a's.
    alice
        .send(json!({"type": "say", "data": {"text": "to b"}, "topic": "b", "id": 2}))
        .await;
    let said = json!({"topic": "b", "event": {"from": "alice", "text": "to b"}});
    assert_eq!(bob.recv().await, said);
    // The ack and the sender's own event may come in either order.
    assert_eq!(alice.recv_event().await, said);
    assert_eq!(alice.recv_reply().await, ack(2));
    assert!(carol.is_silent_for(QUIET).await);

    // A direct handler sees the frame's topic, and the URL's otherwise.
    alice
        .send(json!({"type": "here", "topic": "b", "id": 3}))
        .await;
    assert_eq!(alice.recv().await, json!({"reply_to": 3, "ok": "b"}));
    assert_eq!(
        alice.request("here", json!({}), 4).await,
        json!({"reply_to": 4, "ok": "a"})
    );
    alice
        .send(json!({"type": "here", "topic": "a", "id": 5}))
        .await;
    assert_eq!(alice.recv().await, json!({"reply_to": 5, "ok": "a"}));
}

#[tokio::test]
async fn a_frame_about_a_topic_not_followed_is_refused() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    let mut bob = server.connect("b", "bob").await;
    alice
        .send(json!({"type": "say", "data": {"text": "sneaky"}, "topic": "b", "id": 1}))
        .await;
    assert_eq!(
        alice.recv().await,
        error(
            1,
            400,
            r#"not subscribed to topic `b`; send {"type": "$join", "data": {"topic": "b"}} first"#
        )
    );
    assert!(bob.is_silent_for(QUIET).await);
}

#[tokio::test]
async fn a_forbidden_topic_is_refused_and_the_connection_stays() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    let mut admin = server.connect("forbidden", "admin").await;
    assert_eq!(
        alice.join("forbidden", 1).await,
        error(1, 403, "forbidden topic `forbidden`")
    );
    say(&mut admin, "secret").await;
    assert!(alice.is_silent_for(QUIET).await);
    assert_eq!(
        alice
            .request("echo", json!({"text": "still here"}), 2)
            .await,
        json!({"reply_to": 2, "ok": "still here"})
    );

    // The admin may join it from another topic.
    let mut root = server.connect("a", "admin").await;
    assert_eq!(root.join("forbidden", 3).await, ack(3));
}

#[tokio::test]
async fn leave_stops_the_events_and_the_urls_topic_cannot_be_left() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    let mut bob = server.connect("b", "bob").await;
    assert_eq!(alice.join("b", 1).await, ack(1));
    // Joining twice is harmless.
    assert_eq!(alice.join("b", 2).await, ack(2));
    assert_eq!(alice.join("a", 3).await, ack(3));

    assert_eq!(alice.leave("b", 4).await, ack(4));
    say(&mut bob, "gone").await;
    assert!(alice.is_silent_for(QUIET).await);

    assert_eq!(
        alice.leave("b", 5).await,
        error(5, 400, "not subscribed to topic `b`")
    );
    assert_eq!(
        alice.leave("a", 6).await,
        error(
            6,
            400,
            "cannot leave `a`, the topic of this connection's URL; close the socket instead"
        )
    );
}

#[tokio::test]
async fn joins_past_the_limit_are_refused() {
    let mut config = Config::default();
    config.max_topics_per_connection = 2;
    let server = RoomServer::with_config(config).await;
    let mut alice = server.connect("a", "alice").await;
    assert_eq!(alice.join("b", 1).await, ack(1));
    assert_eq!(
        alice.join("c", 2).await,
        error(
            2,
            400,
            "at most 2 topics per connection; `$leave` one first"
        )
    );
    assert_eq!(alice.leave("b", 3).await, ack(3));
    assert_eq!(alice.join("c", 4).await, ack(4));
    assert_eq!(
        alice.join("", 5).await,
        error(5, 400, "`data.topic` must not be empty")
    );
}

#[tokio::test]
async fn a_closed_connection_leaves_every_topic() {
    let server = RoomServer::start().await;
    let mut alice = server.connect("a", "alice").await;
    for (id, topic) in ["b", "c", "d"].into_iter().enumerate() {
        assert_eq!(alice.join(topic, id as u64).await, ack(id as u64));
    }
    assert_eq!(server.service.metrics().topics, 4);
    alice.close().await;
    wait_until("every topic is left", || async {
        server.service.metrics().topics == 0
    })
    .await;
}

#[tokio::test]
async fn topics_longer_than_the_limit_are_refused_and_never_stored() {
    let server = RoomServer::start().await;
    let long = "t".repeat(300);

    // In the URL: 400 before the upgrade.
    let refused = TestClient::connect(&server.url(&long), "alice")
        .await
        .expect_err("refused");
    assert_eq!(refused.status(), Some(400));

    // In `$join` and in a frame's `topic`: an error frame that does not
    // repeat the name.
    let mut clients = Vec::new();
    for n in 0..10 {
        let mut client = server.connect("lobby", &format!("user{n}")).await;
        for id in 0..15 {
            let name = format!("{id}{}", "x".repeat(65_000));
            assert_eq!(
                client.join(&name, id).await,
                error(
                    id,
                    400,
                    &format!("topic longer than 256 bytes ({} bytes)", name.len())
                )
            );
        }
        clients.push(client);
    }
    let mut alice = clients.pop().expect("a client");
    alice
        .send(json!({"type": "here", "topic": long, "id": 99}))
        .await;
    assert_eq!(
        alice.recv().await,
        error(99, 400, "topic longer than 256 bytes (300 bytes)")
    );
    // None of the 150 long names is held: the instance follows one topic.
    assert_eq!(server.service.metrics().topics, 1);
    assert_eq!(server.service.topics().len(), 1);
}
