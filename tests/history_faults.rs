//! Gap fill on the node: while a third node publishes at 200 events a
//! second, Redis is restarted, the subscriber connections are killed, or
//! Redis is frozen. Clients on both subscribing nodes end with every event
//! whose publish was acknowledged, in order, once each; a publish that got
//! an error was not delivered (after a freeze), or at least not twice.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use realtime::RedisConfig;
use realtime::broker::redis::Durability;
use realtime::history::{HistoryPolicy, Retention};
use realtime::testing::TestClient;
use realtime::{Config, RedisBroker};
use serde_json::Value;
use support::{Node, RedisCluster, RedisServer, redis_config};
use tokio::time::Instant;

const TOPIC: &str = "room:f";
/// One publish every 5 ms: 200 a second.
const PERIOD: Duration = Duration::from_millis(5);

struct Cluster {
    redis: RedisServer,
    subscribers: [Node<RedisBroker>; 2],
    publisher: Node<RedisBroker>,
}

async fn nodes(prefix: &str, redis_args: &[&str]) -> Cluster {
    nodes_with(redis_config(prefix), redis_args, Config::default()).await
}

/// The broker settings for a Redis that keeps every acknowledged write
/// (`appendfsync always`): positions outlive its restarts.
fn durable(prefix: &str) -> RedisConfig {
    let mut settings = redis_config(prefix);
    settings.durability = Durability::Durable;
    settings
}

/// As [`nodes`], the subscribing nodes with `config`.
async fn nodes_with(settings: RedisConfig, redis_args: &[&str], config: Config) -> Cluster {
    let redis = RedisServer::start_with(redis_args).await;
    let policy =
        HistoryPolicy::none().keep("room:*", Retention::new(10_000, Duration::from_secs(600)));
    let node = |config: Config| {
        let (redis, policy, settings) = (&redis, policy.clone(), &settings);
        async move {
            let broker = RedisBroker::connect(&redis.url(), settings.clone())
                .await
                .expect("connect to the test Redis");
            Node::serve(broker, policy, config).await
        }
    };
    let a = node(config.clone()).await;
    let b = node(config).await;
    let publisher = node(Config::default()).await;
    Cluster {
        redis,
        subscribers: [a, b],
        publisher,
    }
}

/// What the publishing node did: the numbers it published, acknowledged
/// or refused.
#[derive(Debug, Default)]
struct Published {
    acked: Vec<u64>,
    refused: Vec<u64>,
    /// The longest a publish took to answer.
    slowest: Duration,
}

/// Publishes numbers at 200 a second for `total`, running `fault` once
/// `after` has passed; returns what was acknowledged and refused.
async fn publish_through<F: Future<Output = ()>>(
    publisher: &Node<RedisBroker>,
    total: Duration,
    after: Duration,
    fault: F,
) -> Published {
    let mut published = Published::default();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(PERIOD);
    let mut fault = std::pin::pin!(async {
        tokio::time::sleep(after).await;
        fault.await;
    });
    let mut faulted = false;
    let mut n = 0u64;
    while start.elapsed() < total {
        tokio::select! {
            () = &mut fault, if !faulted => faulted = true,
            _ = ticker.tick() => {
                n += 1;
                let said = support::Said { from: "c".to_owned(), text: n.to_string() };
                let began = Instant::now();
                match publisher.service.publish(TOPIC, &said).await {
                    Ok(()) => published.acked.push(n),
                    Err(_) => published.refused.push(n),
                }
                published.slowest = published.slowest.max(began.elapsed());
            }
        }
    }
    if !faulted {
        fault.await;
    }
    published
}

/// The numbers a client receives until it has seen `last`; resets and
/// other frames are skipped.
async fn received_through(client: &mut TestClient, last: u64) -> Vec<u64> {
    let mut numbers = Vec::new();
    let deadline = Instant::now() + support::DEADLINE;
    while numbers.last() != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "timed out; received {} so far",
            numbers.len()
        );
        let frame: Value = client.recv().await;
        if let Some(text) = frame["event"]["text"].as_str() {
            numbers.push(text.parse().expect("a number"));
        }
    }
    numbers
}

/// Checks one client's numbers against what was published.
fn check(who: &str, numbers: &[u64], published: &Published, strict: bool) {
    let unique: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "{who}: duplicates");
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order"
    );
    let missing: Vec<u64> = published
        .acked
        .iter()
        .copied()
        .filter(|n| !unique.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: acknowledged but never delivered: {missing:?}"
    );
    let refused_but_delivered: Vec<u64> = published
        .refused
        .iter()
        .copied()
        .filter(|n| unique.contains(n))
        .collect();
    if strict {
        assert!(
            refused_but_delivered.is_empty(),
            "{who}: refused but delivered: {refused_but_delivered:?}"
        );
    } else {
        // A Redis killed between running a publish and answering it; rare.
        eprintln!(
            "{who}: {} refused but delivered",
            refused_but_delivered.len()
        );
    }
}

async fn clients(subscribers: &[Node<RedisBroker>; 2]) -> Vec<TestClient> {
    let mut clients = Vec::new();
    for (node, user) in subscribers.iter().zip(["alice", "bob"]) {
        let mut client = node.connect(TOPIC, user).await;
        let frame = client.recv().await;
        assert!(frame.get("subscribed").is_some(), "{frame}");
        clients.push(client);
    }
    clients
}

async fn until_connected<'a>(nodes: impl Iterator<Item = &'a Node<RedisBroker>>) {
    let deadline = Instant::now() + support::DEADLINE;
    for node in nodes {
        while !node.service.broker().metrics().connected {
            assert!(Instant::now() < deadline, "a broker did not reconnect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn ends_with_every_acknowledged_event(cluster: &mut Cluster, fault: Fault) {
    let redis = &mut cluster.redis;
    let act = async {
        match fault {
            Fault::Restart => redis.restart().await,
            Fault::KillSubscribers => {
                let mut admin = redis.admin().await;
                let killed: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut admin)
                    .await
                    .expect("CLIENT KILL");
                assert!(killed >= 2, "killed {killed} subscriber connections");
            }
            Fault::Freeze => {
                redis.freeze();
                tokio::time::sleep(Duration::from_secs(5)).await;
                redis.thaw();
            }
            Fault::MasterRestart => unreachable!("a cluster fault"),
        }
    };
    through_a_fault(&cluster.subscribers, &cluster.publisher, fault, act).await;
}

/// Runs `act` (of kind `fault`) while `publisher` publishes, then checks
/// what the clients of `subscribers` received.
async fn through_a_fault(
    subscribers: &[Node<RedisBroker>; 2],
    publisher: &Node<RedisBroker>,
    fault: Fault,
    act: impl Future<Output = ()>,
) {
    let mut clients = clients(subscribers).await;
    let strict = matches!(fault, Fault::Freeze);
    let published = publish_through(
        publisher,
        Duration::from_secs(4),
        Duration::from_secs(1),
        act,
    )
    .await;
    until_connected(subscribers.iter().chain([publisher])).await;
    // One more, acknowledged, so that each client knows where to stop.
    let last = published.acked.len() as u64 + published.refused.len() as u64 + 1;
    let said = support::Said {
        from: "c".to_owned(),
        text: last.to_string(),
    };
    let deadline = Instant::now() + support::DEADLINE;
    while publisher.service.publish(TOPIC, &said).await.is_err() {
        assert!(Instant::now() < deadline, "publishing works again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut published = published;
    published.acked.push(last);
    eprintln!(
        "{fault:?}: {} acknowledged, {} refused",
        published.acked.len(),
        published.refused.len()
    );
    // The command timeout is 2 s; nothing waits much longer.
    assert!(
        published.slowest < Duration::from_secs(3),
        "a publish hung for {:?}",
        published.slowest
    );
    if !matches!(fault, Fault::KillSubscribers) {
        assert!(
            !published.refused.is_empty(),
            "the fault refused some publishes"
        );
    }
    for (client, who) in clients.iter_mut().zip(["node a", "node b"]) {
        let numbers = received_through(client, last).await;
        check(who, &numbers, &published, strict);
    }
    for node in subscribers {
        let metrics = node.service.metrics();
        eprintln!(
            "{fault:?}: gap fills {}, resets {}",
            metrics.gap_fills, metrics.resets
        );
        assert!(
            metrics.gap_fills >= 1,
            "the node read its gap from the history"
        );
        assert_eq!(metrics.resets, 0, "the history filled every gap");
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Restart,
    MasterRestart,
    KillSubscribers,
    Freeze,
}

/// (d) Redis restarted (killed and started again) while a node publishes
/// at 200/s. Redis writes every command to its append-only file before it
/// answers (`appendfsync always`), so the history outlives the restart: the
/// nodes fill their gaps from it, including the events that were on their
/// way to a subscriber when Redis died. The brokers are told so
/// (`Durability::Durable`): positions stay valid across the restart.
/// (Without persistence a restart loses the history; the nodes then send
/// `reset`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_event() {
    let dir = std::env::temp_dir().join(format!("realtime-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the append-only file");
    let dir_arg = dir.to_str().expect("a UTF-8 temp path").to_owned();
    let args = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir_arg,
    ];
    let mut cluster = nodes_with(durable("fault-restart:"), &args, Config::default()).await;
    ends_with_every_acknowledged_event(&mut cluster, Fault::Restart).await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// (e) The subscriber connections killed (`CLIENT KILL TYPE pubsub`) while
/// a node publishes: the nodes fill their gaps from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscribers_fill_their_gap() {
    let mut cluster = nodes("fault-kill:", &[]).await;
    ends_with_every_acknowledged_event(&mut cluster, Fault::KillSubscribers).await;
}

/// (e) with rings of 16 events: the gap is longer than a ring may take at
/// once, and the nodes fill it in parts instead of resetting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_the_ring_is_filled_in_parts() {
    let mut config = Config::default();
    config.topic_backlog = 16;
    let mut cluster = nodes_with(redis_config("fault-parts:"), &[], config).await;
    ends_with_every_acknowledged_event(&mut cluster, Fault::KillSubscribers).await;
}

/// (h) Redis frozen for 5 s: publishes answer errors within the command
/// timeout, nothing hangs, and a refused publish never shows up later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_publishes_nothing_behind_the_senders_back() {
    let mut cluster = nodes("fault-freeze:", &[]).await;
    ends_with_every_acknowledged_event(&mut cluster, Fault::Freeze).await;
}

/// (f) As (d) on a local 3-master Redis Cluster (sharded Pub/Sub, the
/// topic's keys and channel in one slot), restarting the master that owns
/// the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_restart_loses_no_acknowledged_event() {
    let mut cluster = RedisCluster::start_with(true).await;
    let policy =
        HistoryPolicy::none().keep("room:*", Retention::new(10_000, Duration::from_secs(600)));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let broker = RedisBroker::connect_cluster(cluster.urls(), durable("fault-cluster:"))
            .await
            .expect("connect to the test cluster");
        nodes.push(Node::with_history(broker, policy.clone()).await);
    }
    let publisher = nodes.pop().expect("three nodes");
    let subscribers: [Node<RedisBroker>; 2] = nodes.try_into().map_err(|_| ()).expect("two nodes");
    // The master that owns the topic's slot.
    let channel = format!("fault-cluster:{{{TOPIC}}}");
    let mut clients_first = clients(&subscribers).await;
    let mut owner = None;
    for (index, node) in cluster.nodes.iter().enumerate() {
        if node.shardnumsub_here(&channel).await > 0 {
            owner = Some(index);
        }
    }
    let owner = owner.expect("one master owns the channel");
    for client in clients_first.drain(..) {
        client.close().await;
    }
    let master = &mut cluster.nodes[owner];
    let act = async {
        master.restart().await;
    };
    through_a_fault(&subscribers, &publisher, Fault::MasterRestart, act).await;
}
