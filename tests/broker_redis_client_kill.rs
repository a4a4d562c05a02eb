//! The subscriber connection killed by Redis (`CLIENT KILL TYPE pubsub`, what
//! Redis does to a subscriber past its output-buffer limit) is detected and
//! recovered like a restart, with clients still connected.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Node, RedisServer, recv_event, recv_reply, said, say, wait_until};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_connection_is_replaced_and_resubscribed() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "kill:").await;
    let b = Node::start(&redis.url(), "kill:").await;
    let mut sender = a.connect("room", "alice").await;
    let mut remote = b.connect("room", "carol").await;
    let mut other = b.connect("lobby", "dave").await;
    sender.send(say(1, "before")).await;
    assert_eq!(
        recv_event(&mut remote).await,
        said("room", "alice", "before")
    );

    let mut admin = redis.admin().await;
    let killed: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 2, "one subscriber connection per node");
    let at = Instant::now();

    for node in [&a, &b] {
        wait_until("both nodes reconnect", || async {
            node.metrics().reconnects == 1
        })
        .await;
    }
    redis.wait_numsub("kill:room", 2).await;
    redis.wait_numsub("kill:lobby", 1).await;
    let recovered = at.elapsed();
    assert!(
        recovered <= Duration::from_secs(2),
        "recovered {recovered:?} after the kill"
    );

    sender.send(say(2, "after")).await;
    assert_eq!(recv_reply(&mut sender, 2).await["ok"], Value::Null);
    assert_eq!(
        recv_event(&mut remote).await,
        said("room", "alice", "after")
    );
    let mut writer = b.connect("lobby", "erin").await;
    writer.send(say(3, "lobby too")).await;
    assert_eq!(
        recv_event(&mut other).await,
        said("lobby", "erin", "lobby too")
    );

    let metrics = b.metrics();
    assert_eq!(metrics.disconnects, 1);
    assert_eq!(metrics.reconnects, 1);
    assert_eq!(
        metrics.resubscribes, 3,
        "room, lobby and the service's control topic"
    );
    assert_eq!(a.metrics().resubscribes, 2, "room and the control topic");
}
