//! A sharded subscription that Redis drops on its own: when a topic's slot
//! moves to another master, the old one sends `SUNSUBSCRIBE`; the broker
//! subscribes again where the slot now lives, and the topic's events come
//! back.

mod support;

use realtime::Config;
use support::{Node, RedisCluster};

async fn query<T: redis::FromRedisValue>(server: &support::RedisServer, command: &redis::Cmd) -> T {
    let mut admin = server.admin().await;
    command
        .query_async(&mut admin)
        .await
        .expect("a cluster command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_slot_moved_is_subscribed_again() {
    let cluster = RedisCluster::start().await;
    let node = Node::with_broker(cluster.broker("c7:").await, Config::default()).await;
    let mut client = node.connect("moved", "alice").await;
    let channel = "c7:{moved}";
    cluster.wait_shardnumsub(channel, 1).await;

    let slot: u16 = query(
        &cluster.nodes[0],
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel),
    )
    .await;
    let mut ids = Vec::new();
    let mut owner = None;
    for (index, server) in cluster.nodes.iter().enumerate() {
        let id: String = query(server, redis::cmd("CLUSTER").arg("MYID")).await;
        if server.shardnumsub_here(channel).await == 1 {
            owner = Some(index);
        }
        ids.push(id);
    }
    let owner = owner.expect("the slot's owner has the subscriber");
    let target = (owner + 1) % cluster.nodes.len();
    // The slot holds no key (the topic keeps no history): it moves by
    // assignment alone, target first, as `redis-cli --cluster reshard` does.
    let _: () = query(
        &cluster.nodes[target],
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&ids[owner]),
    )
    .await;
    let _: () = query(
        &cluster.nodes[owner],
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&ids[target]),
    )
    .await;
    for index in [target, owner, (owner + 2) % cluster.nodes.len()] {
        let _: () = query(
            &cluster.nodes[index],
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&ids[target]),
        )
        .await;
    }

    support::wait_until("the subscriber is on the slot's new master", || async {
        cluster.nodes[target].shardnumsub_here(channel).await == 1
    })
    .await;
    node.publish("moved", "after the move".to_owned()).await;
    loop {
        let event = client.recv_event().await;
        if event["event"]["text"] == "after the move" {
            break;
        }
    }
}
