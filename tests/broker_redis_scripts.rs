//! The history scripts lost under a running publisher (`SCRIPT FLUSH`, on
//! one Redis and on every master of a cluster): one connection's events
//! still come out in the order it sent them, every acknowledged one is
//! delivered, and none that was refused.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use realtime::history::{HistoryPolicy, Retention};
use realtime::{Config, RedisBroker};
use support::{Node, RedisCluster, RedisServer, say, subscribed};

/// Broadcasts sent by one connection.
const SENT: u64 = 3000;
/// Sent, then answered, at a time: the sender's queue holds the answers
/// and its own events without filling.
const CHUNK: u64 = 200;

fn policy() -> HistoryPolicy {
    HistoryPolicy::none().keep("room:*", Retention::new(10_000, Duration::from_secs(600)))
}

/// No rate limit in the way of a burst.
fn config() -> Config {
    let mut config = Config::default();
    config.max_messages_per_sec = 1_000_000;
    config.rate_burst = 1_000_000;
    config
}

/// Sends [`SENT`] broadcasts from one connection while `flush` runs
/// `SCRIPT FLUSH` on the servers; checks what a second client received.
async fn order_holds_while_scripts_vanish(node: &Node<RedisBroker>, flush: Vec<String>) {
    let mut watcher = node.connect("room:o", "watcher").await;
    subscribed(&mut watcher).await;
    let mut sender = node.connect("room:o", "sender").await;
    subscribed(&mut sender).await;

    let watching = tokio::spawn(async move {
        let mut numbers = Vec::new();
        loop {
            let frame = watcher.recv_event().await;
            match frame["event"]["text"].as_str() {
                Some("end") => return numbers,
                Some(text) => numbers.push(text.parse::<u64>().expect("a number")),
                None => {}
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flushing = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut admins = Vec::new();
            for url in flush {
                let client = redis::Client::open(url).expect("a URL");
                admins.push(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("connect"),
                );
            }
            let mut flushes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for admin in &mut admins {
                    let _: Result<(), _> =
                        redis::cmd("SCRIPT").arg("FLUSH").exec_async(admin).await;
                }
                flushes += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            flushes
        })
    };

    let mut answers: HashMap<u64, bool> = HashMap::new();
    let mut n = 0;
    while n < SENT {
        let first = n + 1;
        for id in first..first + CHUNK {
            sender.send(say(id, &id.to_string())).await;
        }
        n += CHUNK;
        while answers.len() < n as usize {
            let frame = sender.recv().await;
            if let Some(id) = frame["reply_to"].as_u64() {
                answers.insert(id, frame.get("error").is_none());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flushes = flushing.await.expect("the flusher");
    // The first publish after the last flush is refused (it finds no
    // script, and loads them again for the next one).
    let end = support::Said {
        from: "server".to_owned(),
        text: "end".to_owned(),
    };
    support::wait_until("the end marker is published", || async {
        node.service.publish("room:o", &end).await.is_ok()
    })
    .await;
    let received = tokio::time::timeout(support::DEADLINE, watching)
        .await
        .expect("the watcher sees the end")
        .expect("the watcher");

    let acked: Vec<u64> = (1..=SENT).filter(|id| answers[id]).collect();
    assert!(flushes > 10, "only {flushes} flushes");
    assert!(
        received.windows(2).all(|pair| pair[0] < pair[1]),
        "one connection's events came out of order: {:?}",
        received
            .windows(2)
            .filter(|pair| pair[0] >= pair[1])
            .take(5)
            .collect::<Vec<_>>()
    );
    let refused: Vec<u64> = (1..=SENT).filter(|id| !answers[id]).collect();
    let delivered_refused: Vec<&u64> = received.iter().filter(|n| refused.contains(n)).collect();
    assert!(
        delivered_refused.is_empty(),
        "refused, yet delivered: {delivered_refused:?}"
    );
    let missing: Vec<&u64> = acked.iter().filter(|n| !received.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, never delivered: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_events_keep_their_order_through_script_flushes() {
    let redis = RedisServer::start().await;
    let node = Node::serve(redis.broker("s5:").await, policy(), config()).await;
    order_holds_while_scripts_vanish(&node, vec![redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connections_events_keep_their_order_through_script_flushes_in_a_cluster() {
    let cluster = RedisCluster::start().await;
    let node = Node::serve(cluster.broker("c5:").await, policy(), config()).await;
    order_holds_while_scripts_vanish(&node, cluster.urls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_go_through_at_once_after_a_master_restarts_empty() {
    let mut cluster = RedisCluster::start().await;
    let node = Node::serve(cluster.broker("c5r:").await, policy(), config()).await;
    // Topics on every master.
    let topics: Vec<String> = (0..30).map(|n| format!("room:{n}")).collect();
    for topic in &topics {
        node.publish(topic, "before".to_owned()).await;
    }
    // A master that restarts without data has no scripts; the broker loads
    // them again once it sees the master come back, so that no publish is
    // refused for want of one.
    let before = node.service.broker().metrics().reconnects;
    cluster.nodes[0].restart().await;
    cluster.wait_ok().await;
    support::wait_until("the broker resubscribes", || async {
        node.service.broker().metrics().reconnects > before
    })
    .await;
    for topic in &topics {
        let said = support::Said {
            from: "server".to_owned(),
            text: "after".to_owned(),
        };
        // The cluster client may still be reconnecting to the restarted
        // master's slots: retry a refused connection, but never a
        // missing script.
        let mut attempts = 0;
        loop {
            match node.service.publish(topic, &said).await {
                Ok(()) => break,
                Err(error) => {
                    let text = format!("{error:?}");
                    assert!(!text.contains("NOSCRIPT"), "{topic}: {text}");
                    attempts += 1;
                    assert!(attempts < 100, "{topic}: {text}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
