//! Direct answers, broadcasts, acknowledgements and ordering over real sockets.

mod support;

use realtime::Config;
use serde_json::json;
use support::room::{RoomServer, Said};

#[tokio::test]
async fn direct_answer_carries_reply_to() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    client
        .send(json!({"type": "echo", "data": {"text": "hi"}, "id": 7}))
        .await;
    assert_eq!(client.recv().await, json!({"reply_to": 7, "ok": "hi"}));
    client
        .send(json!({"type": "echo", "data": {"text": "x"}, "id": "req-1"}))
        .await;
    assert_eq!(client.recv().await, json!({"reply_to": "req-1", "ok": "x"}));
}

#[tokio::test]
async fn direct_answer_without_id_has_no_reply_to() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    client
        .send(json!({"type": "echo", "data": {"text": "hi"}}))
        .await;
    assert_eq!(client.recv().await, json!({"ok": "hi"}));
}

#[tokio::test]
async fn broadcast_reaches_every_subscriber_of_its_topic_only() {
    let server = RoomServer::start().await;
    let mut sender = server.connect("room:1", "alice").await;
    let mut peer = server.connect("room:1", "bob").await;
    let mut elsewhere = server.connect("room:2", "carol").await;

    sender
        .send(json!({"type": "say", "data": {"text": "hello"}}))
        .await;
    let event = json!({"topic": "room:1", "event": {"from": "alice", "text": "hello"}});
    assert_eq!(
        sender.recv().await,
        event,
        "the sender receives its own event"
    );
    assert_eq!(peer.recv().await, event);

    // A marker on room:2 proves the other topic's client saw nothing before it.
    server
        .service
        .publish(
            "room:2",
            &Said {
                from: "server".into(),
                text: "marker".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        elsewhere.recv().await,
        json!({"topic": "room:2", "event": {"from": "server", "text": "marker"}})
    );
}

#[tokio::test]
async fn ack_follows_the_publish() {
    let server = RoomServer::start().await;
    let mut sender = server.connect("lobby", "alice").await;
    sender
        .send(json!({"type": "say", "data": {"text": "one"}, "id": 1}))
        .await;
    // The acknowledgement comes once the broker took the event; the sender's
    // own event may reach it before or after that.
    assert_eq!(
        sender.recv_reply().await,
        json!({"reply_to": 1, "ok": null})
    );
    assert_eq!(
        sender.recv_event().await,
        json!({"topic": "lobby", "event": {"from": "alice", "text": "one"}})
    );
}

#[tokio::test]
async fn handled_without_event_is_acknowledged() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    client.send(json!({"type": "quiet", "id": 4})).await;
    assert_eq!(client.recv().await, json!({"reply_to": 4, "ok": null}));
}

#[tokio::test]
async fn handler_error_becomes_an_error_frame() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    client
        .send(json!({"type": "fail", "data": {"code": 404, "message": "no such thing"}, "id": 5}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"reply_to": 5, "error": {"code": 404, "message": "no such thing"}})
    );
}

#[tokio::test]
async fn every_subscriber_receives_one_publishers_events_in_order() {
    const N: usize = 500;
    let mut config = Config::default();
    config.max_messages_per_sec = 10_000;
    config.rate_burst = 10_000;
    let server = RoomServer::with_config(config).await;
    let mut publisher = server.connect("order", "alice").await;
    let mut subscribers = Vec::new();
    for n in 0..3 {
        subscribers.push(server.connect("order", &format!("sub{n}")).await);
    }
    for i in 0..N {
        publisher
            .send(json!({"type": "say", "data": {"text": i.to_string()}}))
            .await;
    }
    for client in subscribers
        .iter_mut()
        .chain(std::iter::once(&mut publisher))
    {
        for i in 0..N {
            let frame = client.recv().await;
            assert_eq!(frame["event"]["text"], i.to_string(), "event {i} in order");
        }
    }
}

#[tokio::test]
async fn a_clients_messages_are_answered_in_the_order_sent() {
    let server = RoomServer::start().await;
    let mut client = server.connect("lobby", "alice").await;
    // A slow request first: a runtime that handled messages concurrently
    // would answer the fast ones before it.
    client
        .send(json!({"type": "slow", "data": {"ms": 200}, "id": 0}))
        .await;
    for id in 1..=20 {
        client
            .send(json!({"type": "echo", "data": {"text": "x"}, "id": id}))
            .await;
    }
    for id in 0..=20 {
        assert_eq!(client.recv().await["reply_to"], id);
    }
}

#[tokio::test]
async fn context_send_reaches_only_this_client_before_the_answer() {
    let server = RoomServer::start().await;
    let mut client = server.connect("news", "alice").await;
    let mut peer = server.connect("news", "bob").await;
    client
        .send(json!({"type": "whisper", "data": {"text": "psst"}, "id": 9}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"topic": "news", "event": {"from": "server", "text": "psst"}})
    );
    assert_eq!(client.recv().await, json!({"reply_to": 9, "ok": "sent"}));

    // The peer's next frame is the marker, not the whisper.
    server
        .service
        .publish(
            "news",
            &Said {
                from: "server".into(),
                text: "marker".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(peer.recv().await["event"]["text"], "marker");
}
