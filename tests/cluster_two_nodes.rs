//! Two nodes on a local 3-master Redis Cluster with sharded Pub/Sub:
//! delivery on topics spread over every shard, and every topic back after a
//! master restarts.

mod support;

use std::time::Duration;

use realtime::Config;
use realtime::testing::TestClient;
use serde_json::Value;
use support::{Node, RedisCluster, recv_event, said, say, wait_until};
use tokio::time::Instant;

/// Enough topics that every master owns some (12 channels over 3 masters).
const TOPICS: usize = 12;

async fn cluster_node(cluster: &RedisCluster, prefix: &str) -> Node {
    Node::with_broker(cluster.broker(prefix).await, Config::default()).await
}

/// One client per topic on each node; returns them by topic.
async fn subscribe_everywhere(a: &Node, b: &Node) -> Vec<(TestClient, TestClient)> {
    let mut clients = Vec::new();
    for topic in 0..TOPICS {
        let topic = format!("t{topic}");
        clients.push((
            a.connect(&topic, "alice").await,
            b.connect(&topic, "bob").await,
        ));
    }
    clients
}

/// Alice's broadcast on `topic` from `on_a`; returns the answer once it and
/// (unless it is an error) her own event have come. The ack and her event may come in either order: the event
/// travels back through Redis while the ack waits for `SPUBLISH`.
async fn broadcast(on_a: &mut TestClient, topic: &str, text: &str, id: u64) -> Value {
    on_a.send(say(id, text)).await;
    let (mut answer, mut echoed) = (None, false);
    loop {
        let frame = on_a.recv().await;
        if frame.get("reply_to").is_some() {
            assert_eq!(frame["reply_to"], id, "on {topic}: {frame}");
            answer = Some(frame);
        } else {
            assert_eq!(frame, said(topic, "alice", text));
            echoed = true;
        }
        // An error means no event will come; an ack waits for the event.
        if let Some(answer) = &answer
            && (echoed || answer.get("ok").is_none())
        {
            return answer.clone();
        }
    }
}

/// Alice broadcasts on every topic from node A; both nodes' clients get it.
async fn assert_delivery_everywhere(clients: &mut [(TestClient, TestClient)], text: &str, id: u64) {
    for (topic, (on_a, on_b)) in clients.iter_mut().enumerate() {
        let topic = format!("t{topic}");
        let answer = broadcast(on_a, &topic, text, id).await;
        assert_eq!(answer["ok"], Value::Null, "on {topic}: {answer}");
        assert_eq!(recv_event(on_b).await, said(&topic, "alice", text));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_broadcast_reaches_both_nodes_on_every_shard() {
    let cluster = RedisCluster::start().await;
    let a = cluster_node(&cluster, "sharded:").await;
    let b = cluster_node(&cluster, "sharded:").await;
    let mut clients = subscribe_everywhere(&a, &b).await;
    for topic in 0..TOPICS {
        assert_eq!(
            cluster.shardnumsub(&format!("sharded:{{t{topic}}}")).await,
            2
        );
    }
    // The channels spread over the masters.
    let mut owners = std::collections::HashSet::new();
    for topic in 0..TOPICS {
        for (index, node) in cluster.nodes.iter().enumerate() {
            if node
                .shardnumsub_here(&format!("sharded:{{t{topic}}}"))
                .await
                > 0
            {
                owners.insert(index);
            }
        }
    }
    assert_eq!(owners.len(), 3, "every master owns some of the topics");

    assert_delivery_everywhere(&mut clients, "hello", 1).await;

    // The last client of a topic leaving unsubscribes its node.
    let (on_a, on_b) = clients.pop().expect("one client pair per topic");
    let last = format!("sharded:{{t{}}}", TOPICS - 1);
    on_b.close().await;
    cluster.wait_shardnumsub(&last, 1).await;
    on_a.close().await;
    cluster.wait_shardnumsub(&last, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_is_back_after_a_master_restarts() {
    let mut cluster = RedisCluster::start().await;
    let a = cluster_node(&cluster, "restart:").await;
    let b = cluster_node(&cluster, "restart:").await;
    let mut clients = subscribe_everywhere(&a, &b).await;
    assert_delivery_everywhere(&mut clients, "before", 1).await;

    cluster.nodes[1].stop();
    // The master stays away across failed resubscription attempts.
    for node in [&a, &b] {
        wait_until(
            "both nodes fail to resubscribe while a master is away",
            || async {
                let metrics = node.metrics();
                metrics.disconnects >= 1 && metrics.connect_failures >= 2
            },
        )
        .await;
    }
    // Meanwhile the other masters' topics keep working, and a broadcast to
    // the missing shard is answered with an error frame.
    let (mut working, mut failing) = (0, 0);
    for (topic, (on_a, on_b)) in clients.iter_mut().enumerate() {
        let topic = format!("t{topic}");
        let answer = broadcast(on_a, &topic, "during", 2).await;
        if answer["error"]["code"] == 503 {
            failing += 1;
            continue;
        }
        assert_eq!(answer["ok"], Value::Null, "on {topic}: {answer}");
        assert_eq!(recv_event(on_b).await, said(&topic, "alice", "during"));
        working += 1;
    }
    assert!(
        working > 0 && failing > 0,
        "{working} working, {failing} failing"
    );

    cluster.nodes[1].restart().await;
    let back = Instant::now();
    for topic in 0..TOPICS {
        cluster
            .wait_shardnumsub(&format!("restart:{{t{topic}}}"), 2)
            .await;
    }
    for node in [&a, &b] {
        wait_until("both nodes confirm every topic", || async {
            node.metrics().connected
        })
        .await;
    }
    let took = back.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "resubscribed {took:?} after the master came back"
    );

    // Redis itself reports the cluster healthy about 2 s after the restart.
    cluster.wait_ok().await;
    assert_delivery_everywhere(&mut clients, "after", 3).await;
    // Once each: no topic ended up subscribed twice on one node.
    for (on_a, on_b) in &mut clients {
        assert!(on_a.is_silent_for(Duration::from_millis(100)).await);
        assert!(on_b.is_silent_for(Duration::from_millis(100)).await);
    }
    for node in [&a, &b] {
        let metrics = node.metrics();
        assert!(metrics.reconnects >= 1);
        assert!(metrics.resubscribes >= TOPICS as u64);
    }
}

/// Presence on a cluster: each topic's keys and channel share a slot, so
/// the script runs on the topic's master and announces with `SPUBLISH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_and_announces_on_every_shard() {
    use realtime::presence::{PresencePolicy, Tracking};

    let cluster = RedisCluster::start().await;
    let policy = PresencePolicy::none()
        .track("*", Tracking::Announced)
        .linger(Duration::ZERO);
    let a = Node::with_presence(cluster.broker("p:").await, policy.clone()).await;
    let b = Node::with_presence(cluster.broker("p:").await, policy).await;
    for topic in 0..TOPICS {
        let topic = format!("t{topic}");
        let mut watcher = a.connect(&topic, "alice").await;
        let visitor = b.connect(&topic, "bob").await;
        let (node, name) = (&b, topic.as_str());
        wait_until("alice and bob are present", move || async move {
            let presence = node.service.presence(name).await;
            presence.is_ok_and(|presence| presence.clients == 2 && presence.users.len() == 2)
        })
        .await;
        visitor.close().await;
        let leave = loop {
            let frame = recv_event(&mut watcher).await;
            if frame.get("leave").is_some() {
                break frame;
            }
        };
        assert_eq!(
            leave,
            serde_json::json!({"topic": topic, "leave": {"user": "bob"}})
        );
    }
}
