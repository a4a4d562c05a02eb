//! Positions at their edges: a quiet topic whose history expired while a
//! member stayed still lets newcomers in (on Redis and in memory); a Redis
//! restarted without persistence, from an older snapshot, or with
//! `appendfsync everysec`, starts a new epoch, so that no client resumes
//! into reused offsets, while one that keeps every write (`appendfsync
//! always`, `Durability::Durable`) keeps its positions; a catch-up
//! that would fill the outbound queue ends in `recovered: false` rather than
//! a 1013 the client would meet again at every reconnect.

mod support;

use std::time::Duration;

use realtime::RedisConfig;
use realtime::broker::Broker;
use realtime::broker::redis::Durability;
use realtime::history::{HistoryPolicy, Position, Retention};
use realtime::testing::TestClient;
use realtime::{Config, MemoryBroker, RedisBroker};
use serde_json::{Value, json};
use support::{Node, RedisServer, position, redis_config, subscribed};

fn policy(ttl: Duration) -> HistoryPolicy {
    HistoryPolicy::none().keep("room:*", Retention::new(1000, ttl))
}

/// A private directory for one Redis's files.
fn data_dir(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "realtime-{name}-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create a data directory");
    dir.to_str().expect("a UTF-8 temp path").to_owned()
}

/// Three newcomers and a `$join` get in after the topic's history is gone
/// while `member` stayed; `member` is told with a `reset`, and a line said
/// afterwards reaches every one of them.
async fn newcomers_get_in<B: Broker>(node: &Node<B>, member: &mut TestClient, before: &Position) {
    let mut newcomers = Vec::new();
    for n in 0..3 {
        let url = node.server.ws_url("/ws/room:q");
        let mut newcomer = TestClient::connect(&url, &format!("newcomer{n}"))
            .await
            .unwrap_or_else(|error| panic!("newcomer {n} refused ({:?}): {error}", error.status()));
        let live = subscribed(&mut newcomer).await;
        assert_ne!(position(&live, "subscribed").epoch, before.epoch, "{live}");
        newcomers.push(newcomer);
    }
    let mut joiner = node.connect("lobby", "joiner").await;
    let answer = joiner.join("room:q", 1).await;
    assert_eq!(answer.get("error"), None, "{answer}");

    let reset = member.recv().await;
    assert!(reset.get("reset").is_some(), "{reset}");
    assert_ne!(position(&reset, "reset").epoch, before.epoch);

    node.publish("room:q", "after".to_owned()).await;
    for client in newcomers.iter_mut().chain([member, &mut joiner]) {
        // The joiner's `subscribed` frame may come first.
        let event = loop {
            let frame = client.recv_event().await;
            if frame.get("event").is_some() {
                break frame;
            }
        };
        assert_eq!(event["event"]["text"], "after", "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_topic_whose_history_expired_lets_newcomers_in_on_redis() {
    let redis = RedisServer::start().await;
    let node = Node::with_history(
        redis.broker("quiet:").await,
        policy(Duration::from_secs(600)),
    )
    .await;
    let mut member = node.connect("room:q", "member").await;
    let first = subscribed(&mut member).await;
    node.publish("room:q", "hello".to_owned()).await;
    member.recv_event().await;

    // What the keys' expiry does to a topic quiet for longer than its
    // history's time to live.
    let mut admin = redis.admin().await;
    redis::cmd("DEL")
        .arg("quiet:{room:q}:meta")
        .arg("quiet:{room:q}:history")
        .exec_async(&mut admin)
        .await
        .expect("DEL");

    newcomers_get_in(&node, &mut member, &position(&first, "subscribed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_topic_whose_history_expired_lets_newcomers_in_in_memory() {
    let ttl = Duration::from_secs(1);
    let node = Node::with_history(MemoryBroker::new(), policy(ttl)).await;
    let mut member = node.connect("room:q", "member").await;
    let first = subscribed(&mut member).await;
    node.publish("room:q", "hello".to_owned()).await;
    member.recv_event().await;
    // The history's time to live is what is tested: it has to pass.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;

    newcomers_get_in(&node, &mut member, &position(&first, "subscribed")).await;
}

/// Publishes `texts` from the server side, retrying each while the broker
/// reconnects.
async fn publish_all<B: Broker>(node: &Node<B>, texts: impl IntoIterator<Item = String>) {
    for text in texts {
        let said = support::Said {
            from: "server".to_owned(),
            text,
        };
        support::wait_until("a publish goes through", || async {
            node.service.publish("room:s", &said).await.is_ok()
        })
        .await;
    }
}

/// Ten events acknowledged (with `snapshot`, an RDB snapshot taken at the
/// fifth, in the directory `args` name), Redis killed
/// after `before_kill` and started again with `args`, seven new lines; a
/// client that saw the tenth resumes. Returns where it resumed from, its
/// `subscribed` frame and the events before it.
async fn resume_across_a_restart(
    args: &[&str],
    snapshot: bool,
    settings: RedisConfig,
    before_kill: impl AsyncFnOnce(&RedisServer),
) -> (Position, Value, Vec<Value>) {
    let mut redis = RedisServer::start_with(args).await;
    let broker = RedisBroker::connect(&redis.url(), settings)
        .await
        .expect("connect to the test Redis");
    let node = Node::with_history(broker, policy(Duration::from_secs(600))).await;
    let mut client = node.connect("room:s", "alice").await;
    let first = subscribed(&mut client).await;
    publish_all(&node, (1..=5).map(|n| n.to_string())).await;
    let mut admin = redis.admin().await;
    if snapshot {
        redis::cmd("SAVE")
            .exec_async(&mut admin)
            .await
            .expect("SAVE");
    }
    publish_all(&node, (6..=10).map(|n| n.to_string())).await;
    let mut last = 0;
    while last < 10 {
        last = client.recv_event().await["offset"]
            .as_u64()
            .expect("an offset");
    }
    let seen = Position {
        offset: last,
        epoch: position(&first, "subscribed").epoch,
    };
    client.close().await;
    before_kill(&redis).await;

    redis.restart().await;
    support::wait_until("the broker reconnects", || async {
        node.service.broker().metrics().reconnects >= 1
    })
    .await;
    publish_all(&node, (11..=17).map(|n| n.to_string())).await;

    let mut back = node.connect(&format!("room:s?since={seen}"), "alice").await;
    let mut frames = Vec::new();
    let live = loop {
        let frame = back.recv().await;
        if frame.get("subscribed").is_some() {
            break frame;
        }
        frames.push(frame);
    };
    (seen, live, frames)
}

/// A client that resumed across a restart was told it could not recover:
/// a new epoch.
fn told((seen, live, frames): (Position, Value, Vec<Value>)) {
    assert_eq!(
        live["subscribed"]["recovered"], false,
        "resumed into reused offsets: {live}, after {frames:?}"
    );
    assert_ne!(position(&live, "subscribed").epoch, seen.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_older_snapshot_starts_a_new_epoch() {
    let dir = data_dir("snapshot");
    let args = ["--dir", &dir, "--dbfilename", "dump.rdb"];
    told(resume_across_a_restart(&args, true, redis_config("snapshot:"), async |_| {}).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_starts_a_new_epoch_after_a_restart() {
    let dir = data_dir("none");
    let args = ["--dir", &dir];
    told(resume_across_a_restart(&args, false, redis_config("none:"), async |_| {}).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_appendfsync_everysec_starts_a_new_epoch_after_a_restart() {
    let dir = data_dir("everysec");
    let args = [
        "--dir",
        &dir,
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ];
    // Even with every write on disk by the kill, positions are not trusted
    // by default: everysec may lose the last second, and the broker cannot
    // tell whether it did.
    let restarted = resume_across_a_restart(&args, false, redis_config("everysec:"), async |_| {
        // Past the next fsync: the file holds every event.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await;
    told(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_redis_keeps_positions_across_a_restart() {
    let dir = data_dir("always");
    let args = [
        "--dir",
        &dir,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let mut settings = redis_config("always:");
    settings.durability = Durability::Durable;
    let (seen, live, frames) = resume_across_a_restart(&args, false, settings, async |_| {}).await;
    assert_eq!(live["subscribed"]["recovered"], true, "{live}");
    assert_eq!(position(&live, "subscribed").epoch, seen.epoch);
    let texts: Vec<&str> = frames
        .iter()
        .map(|frame| frame["event"]["text"].as_str().expect("an event"))
        .collect();
    assert_eq!(texts, ["11", "12", "13", "14", "15", "16", "17"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_as_long_as_the_queue_ends_in_not_recovered_instead_of_1013() {
    let mut config = Config::default();
    config.outbound_queue = 16;
    let node = Node::serve(
        MemoryBroker::new(),
        policy(Duration::from_secs(600)),
        config,
    )
    .await;
    let mut client = node.connect("room:c", "alice").await;
    let first = subscribed(&mut client).await;
    let seen = position(&first, "subscribed");
    client.close().await;

    // Fifteen missed events and the `subscribed` frame fit a queue of 16.
    for n in 0..15 {
        node.publish("room:c", format!("missed {n}")).await;
    }
    let mut back = node.connect(&format!("room:c?since={seen}"), "alice").await;
    for n in 0..15 {
        let event = back.recv().await;
        assert_eq!(event["event"]["text"], format!("missed {n}"), "{event}");
    }
    let live = subscribed(&mut back).await;
    assert_eq!(live["subscribed"]["recovered"], true, "{live}");
    back.close().await;

    // Sixteen do not: the client is told, and stays connected, every time.
    node.publish("room:c", "missed 15".to_owned()).await;
    for attempt in 0..2 {
        let mut back = node.connect(&format!("room:c?since={seen}"), "alice").await;
        let live = subscribed(&mut back).await;
        assert_eq!(
            live["subscribed"]["recovered"], false,
            "attempt {attempt}: {live}"
        );
        node.publish("room:c", format!("live {attempt}")).await;
        let event = back.recv_event().await;
        assert_eq!(event["event"]["text"], format!("live {attempt}"), "{event}");
        back.close().await;
    }

    // The same through `$join`.
    let mut joiner = node.connect("lobby", "bob").await;
    joiner
        .send(json!({"type": "$join", "data": {"topic": "room:c", "since": seen}, "id": 1}))
        .await;
    let live = loop {
        let frame = joiner.recv().await;
        if frame.get("subscribed").is_some() {
            break frame;
        }
        assert_eq!(frame.get("error"), None, "{frame}");
    };
    assert_eq!(live["subscribed"]["recovered"], false, "{live}");
    let ack = joiner.recv_reply().await;
    assert_eq!(ack["ok"], Value::Null, "{ack}");
}
