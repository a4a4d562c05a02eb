//! Two nodes on one Redis: cross-node delivery in publisher order, Redis
//! subscriptions that follow local subscribers, frames forwarded byte for byte.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{Node, RedisServer, recv_event, recv_reply, said, say};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_both_nodes_in_publisher_order() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "order:").await;
    let b = Node::start(&redis.url(), "order:").await;
    let mut sender = a.connect("room", "alice").await;
    let mut local = a.connect("room", "bob").await;
    let mut remote = b.connect("room", "carol").await;
    // One subscriber connection per node, whatever its number of clients.
    assert_eq!(redis.numsub("order:room").await, 2);

    // Within the rate limit's burst, so that none is refused.
    let count = 100;
    for i in 0..count {
        sender.send(say(i, &format!("m{i}"))).await;
    }
    for client in [&mut local, &mut remote] {
        for i in 0..count {
            assert_eq!(
                recv_event(client).await,
                said("room", "alice", &format!("m{i}"))
            );
        }
    }
    // The sender gets an ack per broadcast and its own events, each in order.
    let (mut acks, mut events) = (0, 0);
    while acks < count || events < count {
        let frame = sender.recv().await;
        if frame.get("reply_to").is_some() {
            assert_eq!(frame, json!({"reply_to": acks, "ok": null}));
            acks += 1;
        } else {
            assert_eq!(frame, said("room", "alice", &format!("m{events}")));
            events += 1;
        }
    }
    assert!(remote.is_silent_for(Duration::from_millis(200)).await);

    for node in [&a, &b] {
        let metrics = node.metrics();
        assert!(metrics.connected);
        assert_eq!(metrics.publish_errors, 0);
        assert_eq!(metrics.disconnects, 0);
    }
    assert_eq!(b.metrics().received, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_subscribes_only_while_it_has_local_subscribers() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "follow:").await;
    let b = Node::start(&redis.url(), "follow:").await;
    let channel = "follow:room";
    assert_eq!(redis.numsub(channel).await, 0);

    let first_on_a = a.connect("room", "alice").await;
    let second_on_a = a.connect("room", "bob").await;
    assert_eq!(
        redis.numsub(channel).await,
        1,
        "only node A has subscribers"
    );
    // The topic and the service's control topic; none before a connection.
    assert_eq!(a.metrics().subscribed_topics, 2);
    assert_eq!(b.metrics().subscribed_topics, 0);

    // A node without local subscribers still publishes to the others.
    let mut only_on_b = b.connect("room", "carol").await;
    assert_eq!(redis.numsub(channel).await, 2);
    let mut writer = a.connect("room", "dave").await;
    writer.send(say(1, "hello")).await;
    assert_eq!(
        recv_event(&mut only_on_b).await,
        said("room", "dave", "hello")
    );
    only_on_b.close().await;
    redis.wait_numsub(channel, 1).await;
    // The service's control topic stays, once a connection came.
    assert_eq!(b.metrics().subscribed_topics, 1);

    // Node A keeps its subscription until its last client leaves.
    first_on_a.close().await;
    writer.close().await;
    assert_eq!(redis.numsub(channel).await, 1);
    second_on_a.close().await;
    redis.wait_numsub(channel, 0).await;
    assert_eq!(a.metrics().subscribed_topics, 1, "the control topic");
    assert_eq!(a.metrics().subscribe_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_redis_byte_for_byte() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "bytes:").await;
    let client = a.connect("room", "alice").await;
    // A frame no serializer would write this way: spacing, key order and an
    // escaped slash survive only if the node forwards the bytes untouched.
    let frame = r#"{"topic":"room", "event": { "z" : 1,  "a" : "\/x" }}"#;
    let mut admin = redis.admin().await;
    let receivers: usize = redis::cmd("PUBLISH")
        .arg("bytes:room")
        .arg(frame)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(receivers, 1);

    let mut socket = client.into_inner();
    let received = tokio::time::timeout(support::DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(_)) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a frame within the deadline");
    assert_eq!(received, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_publish_reaches_the_other_node() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "server-side:").await;
    let b = Node::start(&redis.url(), "server-side:").await;
    let mut client = b.connect("news", "alice").await;
    a.service
        .publish(
            "news",
            &support::Said {
                from: "server".to_owned(),
                text: "maintenance".to_owned(),
            },
        )
        .await
        .expect("publish through Redis");
    assert_eq!(
        recv_event(&mut client).await,
        said("news", "server", "maintenance")
    );
    // Direct answers never cross Redis.
    client
        .send(json!({"type": "echo", "data": {"text": "hi"}, "id": 9}))
        .await;
    assert_eq!(
        recv_reply(&mut client, 9).await,
        json!({"reply_to": 9, "ok": "hi"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_subscribes_the_node_and_leave_unsubscribes_it() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "join:").await;
    let b = Node::start(&redis.url(), "join:").await;
    let mut sender = a.connect("room", "alice").await;
    let mut follower = b.connect("lobby", "bob").await;
    assert_eq!(
        redis.numsub("join:room").await,
        1,
        "only node A follows room"
    );

    assert_eq!(
        follower.join("room", 1).await,
        json!({"reply_to": 1, "ok": null})
    );
    assert_eq!(redis.numsub("join:room").await, 2);
    sender.send(say(2, "across")).await;
    assert_eq!(
        recv_event(&mut follower).await,
        said("room", "alice", "across")
    );

    // A broadcast from node B about the joined topic reaches node A.
    follower
        .send(json!({"type": "say", "data": {"text": "back"}, "topic": "room", "id": 3}))
        .await;
    assert_eq!(
        recv_reply(&mut follower, 3).await,
        json!({"reply_to": 3, "ok": null})
    );
    assert_eq!(
        recv_event(&mut sender).await,
        said("room", "alice", "across")
    );
    assert_eq!(recv_event(&mut sender).await, said("room", "bob", "back"));

    assert_eq!(
        follower.leave("room", 4).await,
        json!({"reply_to": 4, "ok": null})
    );
    redis.wait_numsub("join:room", 1).await;
}
