//! Presence at its edges: after Redis restarts empty, a user who left while
//! it was down can never be announced as leaving, so the instance sends its
//! clients the whole list again once it relinks; and more than a thousand
//! entries that expire together all leave at once, within the bound.

mod support;

use std::sync::Arc;
use std::time::Duration;

use realtime::Config;
use realtime::broker::Broker;
use realtime::history::HistoryPolicy;
use realtime::presence::{PresencePolicy, PresenceUpdate, Tracking};
use realtime::testing::TestClient;
use serde_json::Value;
use support::{DEADLINE, Node, RedisServer};
use tokio::time::Instant;

fn announced(ttl: Duration) -> PresencePolicy {
    PresencePolicy::none()
        .track("lobby", Tracking::Announced)
        .ttl(ttl)
}

/// Reads frames until one satisfies `wanted`; panics after the deadline.
async fn until_frame(
    client: &mut TestClient,
    what: &str,
    mut wanted: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        if wanted(&frame) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_clients_get_the_whole_list_again() {
    let mut redis = RedisServer::start().await;
    // No linger: the leave is due at once, while Redis is down.
    let policy = announced(Duration::from_secs(30)).linger(Duration::ZERO);
    let a = Node::with_presence(redis.broker("p6:").await, policy.clone()).await;
    let b = Node::with_presence(redis.broker("p6:").await, policy).await;
    let mut watcher = a.connect("lobby", "watcher").await;
    let leaver = b.connect("lobby", "leaver").await;
    until_frame(&mut watcher, "the leaver's join", |frame| {
        frame["join"]["user"] == "leaver"
    })
    .await;

    // The leaver goes while Redis is down: its leave can never be written,
    // and once Redis comes back empty there is no entry left to expire.
    redis.stop();
    leaver.close().await;
    redis.restart().await;

    let list = until_frame(&mut watcher, "the whole list", |frame| {
        frame.get("presence").is_some()
    })
    .await;
    assert_eq!(list["topic"], "lobby", "{list}");
    let users = list["presence"]["users"].as_object().expect("users by id");
    assert!(users.contains_key("watcher"), "{list}");
    assert!(!users.contains_key("leaver"), "a ghost: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_thousand_expired_entries_leave_together() {
    const GHOSTS: usize = 1500;
    let redis = RedisServer::start().await;
    // Room for every leave frame in the ring and the watcher's queue.
    let mut config = Config::default();
    config.topic_backlog = 4096;
    config.outbound_queue = 4096;
    let policy = announced(Duration::from_secs(6));
    let node = Node::serve_all(
        redis.broker("p9:").await,
        HistoryPolicy::none(),
        policy.clone(),
        config,
    )
    .await;
    let mut watcher = node.connect("lobby", "watcher").await;
    until_frame(&mut watcher, "the watcher's own join", |frame| {
        frame["join"]["user"] == "watcher"
    })
    .await;

    // An instance that wrote 1,500 entries and died without a word.
    let ghost = redis.broker("p9:").await;
    let joined: Vec<(String, Arc<str>)> = (0..GHOSTS)
        .map(|n| (format!("ghost:{n}"), format!("\"g{n}\"").into()))
        .collect();
    let ttl = Duration::from_secs(1);
    for part in joined.chunks(500) {
        let update = PresenceUpdate::new(part, &[], ttl, false);
        ghost.update_presence("lobby", update).await.expect("write");
    }
    let written = Instant::now();
    drop(ghost);

    let mut leaves = Vec::new();
    while leaves.len() < GHOSTS {
        until_frame(&mut watcher, "the ghosts' leaves", |frame| {
            frame.get("leave").is_some()
        })
        .await;
        leaves.push(Instant::now());
    }
    let first = leaves[0];
    let last = leaves[GHOSTS - 1];
    // One refresh of the live instance sweeps them all: no second round
    // (a refresh period, 2 s, later) for the ones past the first thousand.
    assert!(
        last - first < policy.refresh_every() / 2,
        "the leaves spread over {:?}",
        last - first
    );
    assert!(
        last - written <= ttl + policy.refresh_every() + Duration::from_secs(2),
        "the last leave came {:?} after the write",
        last - written
    );
}

/// Users in a `$presence` answer or a `presence` frame.
fn users(presence: &Value) -> Vec<String> {
    presence["users"]
        .as_object()
        .map(|users| users.keys().cloned().collect())
        .unwrap_or_default()
}

/// Connects and disconnects `user` on `node` until `stop`; after each
/// connect it asks `$presence` at once, which must count it: its own
/// subscription is written before the read. Returns the answers that
/// left it out.
async fn churn(
    node: Arc<Node>,
    user: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Value> {
    let mut missing = Vec::new();
    let mut id = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut client = node.connect("lobby", &user).await;
        id += 1;
        client
            .send(serde_json::json!({"type": "$presence", "data": {"topic": "lobby"}, "id": id}))
            .await;
        let answer = until_frame(&mut client, "the answer", |frame| frame["reply_to"] == id).await;
        if !users(&answer["ok"]).contains(&user) {
            missing.push(answer);
        }
        client.close().await;
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_answer_counts_the_asker_and_keeps_the_order_of_joins_and_leaves() {
    let redis = RedisServer::start().await;
    // No linger: every close is a leave, as many as the churn can make;
    // and every one announced, which the order of answers is checked
    // against.
    let policy = announced(Duration::from_secs(30))
        .linger(Duration::ZERO)
        .max_announcements(u32::MAX);
    let a = Node::with_presence(redis.broker("p10:").await, policy.clone()).await;
    let b = Arc::new(Node::with_presence(redis.broker("p10:").await, policy).await);
    let mut watcher = a.connect("lobby", "watcher").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..4)
        .map(|n| tokio::spawn(churn(Arc::clone(&b), format!("c{n}"), Arc::clone(&stop))))
        .collect();

    // The watcher asks again and again. A join or leave that comes before
    // an answer must agree with it: the answer is the list at one point
    // of the topic's stream, so what came before it is in it, and what it
    // lacks comes after it.
    let mut contradicted = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    let mut id = 0;
    while Instant::now() < until {
        // Within the rate limit.
        tokio::time::sleep(Duration::from_millis(20)).await;
        id += 1;
        watcher
            .send(serde_json::json!({"type": "$presence", "data": {"topic": "lobby"}, "id": id}))
            .await;
        let mut last: std::collections::HashMap<String, bool> = Default::default();
        let answer = until_frame(&mut watcher, "the answer", |frame| {
            if let Some(user) = frame["join"]["user"].as_str() {
                last.insert(user.to_owned(), true);
            }
            if let Some(user) = frame["leave"]["user"].as_str() {
                last.insert(user.to_owned(), false);
            }
            frame["reply_to"] == id
        })
        .await;
        let listed = users(&answer["ok"]);
        for (user, joined) in last {
            if joined != listed.contains(&user) {
                contradicted.push(format!(
                    "{} {user} before {answer}",
                    if joined { "join" } else { "leave" }
                ));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut missing = Vec::new();
    for churner in churners {
        missing.extend(churner.await.expect("the churner"));
    }
    assert!(
        missing.is_empty() && contradicted.is_empty(),
        "{} answers without their asker ({:?}); {} of {id} answers overtaken by a join or leave ({:?})",
        missing.len(),
        missing.first(),
        contradicted.len(),
        contradicted.first()
    );
}

/// Opens and closes connections under a new name each time until `stop`;
/// returns how many visits it made.
async fn visits<B: Broker>(
    node: Arc<Node<B>>,
    name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let mut count = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let client = node.connect("lobby", &format!("{name}-{count}")).await;
        drop(client.into_inner());
        count += 1;
    }
    count
}

fn churn_policy() -> PresencePolicy {
    announced(Duration::from_secs(30))
        .linger(Duration::ZERO)
        .max_announcements(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_under_new_names_costs_members_a_bounded_number_of_frames() {
    let redis = RedisServer::start().await;
    let a = Node::with_presence(redis.broker("p11:").await, churn_policy()).await;
    let b = Node::with_presence(redis.broker("p11:").await, churn_policy()).await;
    bounded_churn(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_is_bounded_on_the_memory_broker_too() {
    let hub = realtime::MemoryBroker::new();
    let a = Node::with_presence(hub.clone(), churn_policy()).await;
    let b = Node::with_presence(hub, churn_policy()).await;
    bounded_churn(a, b).await;
}

/// Each visit under a new name is a join and a leave. Past the budget of
/// announcements (20 a second in `churn_policy`) the changes go
/// unannounced, and the whole list follows a second later.
async fn bounded_churn<B: Broker>(a: Node<B>, b: Node<B>) {
    let b = Arc::new(b);
    let mut watcher = a.connect("lobby", "watcher").await;
    until_frame(&mut watcher, "the watcher's own join", |frame| {
        frame["join"]["user"] == "watcher"
    })
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..4)
        .map(|n| tokio::spawn(visits(Arc::clone(&b), format!("v{n}"), Arc::clone(&stop))))
        .collect();
    // The watcher keeps the list as a page does: a list replaces it, a
    // join or leave changes it.
    let mut listed = std::collections::BTreeSet::from(["watcher".to_owned()]);
    let mut frames = 0u64;
    let mut lists = 0u64;
    let mut apply = |frame: &Value, listed: &mut std::collections::BTreeSet<String>| {
        if let Some(user) = frame["join"]["user"].as_str() {
            listed.insert(user.to_owned());
        } else if let Some(user) = frame["leave"]["user"].as_str() {
            listed.remove(user);
        } else if frame.get("presence").is_some() {
            *listed = users(&frame["presence"]).into_iter().collect();
            lists += 1;
        } else {
            return;
        }
        frames += 1;
    };
    let churning = Duration::from_secs(3);
    let until = Instant::now() + churning;
    while let Ok(frame) = tokio::time::timeout_at(until, watcher.recv()).await {
        apply(&frame, &mut listed);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut made = 0;
    for churner in churners {
        made += churner.await.expect("the churner");
    }
    // Once the churn ends, the list the watcher keeps comes back to the
    // truth: itself alone.
    let settle = Instant::now() + DEADLINE;
    while listed != std::collections::BTreeSet::from(["watcher".to_owned()]) {
        let frame = tokio::time::timeout_at(settle, watcher.recv())
            .await
            .unwrap_or_else(|_| panic!("the watcher's list stayed {listed:?}"));
        apply(&frame, &mut listed);
    }
    // Two frames per visit without the bound; with it, at most the
    // budget a second (plus its burst) and a list a second.
    let seconds = churning.as_secs() + 2;
    assert!(
        made >= 200,
        "only {made} visits: the churn did not test the bound"
    );
    assert!(
        frames <= 20 * (seconds + 1) + seconds + 1,
        "{frames} frames ({lists} lists) for {made} visits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_presence_asks_of_one_topic_share_reads() {
    let redis = RedisServer::start().await;
    // A backlog below the number of asks: a mark per ask in the topic's
    // ring would put every member a ring behind (closed with 1013).
    let mut config = Config::default();
    config.topic_backlog = 64;
    let node = Node::serve_all(
        redis.broker("p12:").await,
        HistoryPolicy::none(),
        announced(Duration::from_secs(30)),
        config,
    )
    .await;
    let mut members = Vec::new();
    for n in 0..100 {
        members.push(node.connect("lobby", &format!("m{n}")).await);
    }
    // Every join written (an answer counts them all), then all ask at once.
    let mut last = members.pop().expect("a member");
    let answer = last
        .request("$presence", serde_json::json!({"topic": "lobby"}), 1)
        .await;
    assert_eq!(answer["ok"]["clients"], 100, "{answer}");
    members.push(last);

    let before = redis.script_calls().await;
    for member in &mut members {
        member
            .send(serde_json::json!({"type": "$presence", "data": {"topic": "lobby"}, "id": 2}))
            .await;
    }
    for member in &mut members {
        let answer = until_frame(member, "the answer", |frame| frame["reply_to"] == 2).await;
        assert_eq!(answer["ok"]["clients"], 100, "{answer}");
    }
    let calls = redis.script_calls().await - before;
    // One read per ask before; now the asks that come while a read is out
    // share the next one.
    assert!(calls <= 30, "{calls} script calls for 100 asks");
    // And one mark per read: nobody fell behind.
    assert_eq!(node.service.metrics().slow_closes, 0);
    let pong = members[0].request("$ping", serde_json::json!({}), 3).await;
    assert_eq!(pong["ok"], "pong");
}
