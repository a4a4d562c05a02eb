//! A user's publishes draw from one budget per instance, in bytes and in
//! new topics, whatever connection or path they take (a `#[broadcast]`
//! answer, `Context::publish`): past it each is refused with error 429 and
//! not published, so no user can grow the broker's memory without bound.
//! Measured with Redis's own `used_memory`, and with the bytes the service
//! acknowledged, on Redis and on the in-process broker.

mod support;

use std::time::Duration;

use realtime::broker::Broker;
use realtime::history::{HistoryPolicy, Retention};
use realtime::testing::TestClient;
use realtime::{Config, MemoryBroker};
use serde_json::{Value, json};
use support::{Node, RedisServer, ack, say};
use tokio::time::Instant;

fn policy() -> HistoryPolicy {
    HistoryPolicy::none().keep("room:*", Retention::new(1000, Duration::from_secs(600)))
}

/// Bytes this Redis holds in memory.
async fn used_memory(redis: &RedisServer) -> u64 {
    redis.info_number("memory", "used_memory").await
}

/// Whether `answer` is error 429 naming `what`.
fn refused(answer: &Value, what: &str) -> bool {
    answer["error"]["code"] == 429
        && answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_past_the_budget_add_nothing_to_redis() {
    let redis = RedisServer::start().await;
    let mut config = Config::default();
    config.max_new_topics_per_user_per_min = 10;
    let node = Node::serve(redis.broker("budget:").await, policy(), config).await;
    let before = used_memory(&redis).await;

    // 200 lines of 12 KB, each into a room nobody wrote in: 2.4 MB of
    // history without the budget.
    let line = "x".repeat(12 * 1024);
    let mut mallory = node.connect("lobby", "mallory").await;
    let started = Instant::now();
    let mut published = 0u64;
    for n in 0..200 {
        let data = json!({"topic": format!("room:{n}"), "text": line});
        let answer = mallory.request("post", data, n).await;
        if answer == ack(n) {
            published += 1;
        } else {
            assert!(refused(&answer, "new topics per minute"), "{answer}");
        }
    }
    // Ten at once, and one more each six seconds.
    let refilled = started.elapsed().as_secs() / 6 + 1;
    assert!(
        (10..=10 + refilled).contains(&published),
        "{published} new rooms published"
    );
    let grown = used_memory(&redis).await.saturating_sub(before);
    assert!(grown < 1024 * 1024, "Redis grew by {grown} bytes");

    // A room this instance follows is not new: it still takes the line.
    // Another user has a budget of its own.
    let mut bob = node.connect("room:0", "bob").await;
    support::subscribed(&mut bob).await;
    let said = mallory
        .request("post", json!({"topic": "room:0", "text": "again"}), 1000)
        .await;
    assert_eq!(said, ack(1000));
    let said = bob
        .request("post", json!({"topic": "room:new", "text": "hi"}), 1)
        .await;
    assert_eq!(said, ack(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_new_rooms_past_the_budget_is_refused_and_adds_no_key() {
    let redis = RedisServer::start().await;
    let mut config = Config::default();
    config.max_new_topics_per_user_per_min = 10;
    let node = Node::serve(redis.broker("open:").await, policy(), config).await;
    let url = |n: u64| node.server.ws_url(&format!("/ws/room:{n}"));

    // Sockets that open new room names, and say nothing: each room's
    // position is kept by Redis for the history's time to live.
    let mut opened = 0u64;
    for n in 0..30 {
        match TestClient::connect(&url(n), "mallory").await {
            Ok(mut client) => {
                support::subscribed(&mut client).await;
                client.close().await;
                opened += 1;
            }
            Err(error) => assert_eq!(error.status(), Some(429), "{error}"),
        }
    }
    assert!((10..=11).contains(&opened), "{opened} rooms opened");
    let mut lobby = node.connect("lobby", "mallory").await;
    let joined = lobby.join("room:100", 1).await;
    assert_eq!(joined["error"]["code"], 429, "{joined}");

    let mut admin = redis.admin().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("open:*")
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(keys.len() <= 11, "{} keys: {keys:?}", keys.len());

    // Another user opens its own.
    let mut bob = node.connect("room:200", "bob").await;
    support::subscribed(&mut bob).await;
}

/// Two connections of one user send 12 KB lines to a room as fast as the
/// rate limit lets them; returns the bytes acknowledged, the bound the
/// budget allows for the time it took, and whether a bystander could still
/// publish.
async fn flood<B: Broker>(node: &Node<B>) -> (usize, usize, bool) {
    let line = "y".repeat(12 * 1024);
    let mut first = node.connect("room:a", "mallory").await;
    let mut second = node.connect("room:a", "mallory").await;
    let started = Instant::now();
    let (mut published, mut refusals) = (0usize, 0usize);
    for n in 0..60 {
        let client = if n % 2 == 0 { &mut first } else { &mut second };
        client.send(say(n, &line)).await;
        let answer = loop {
            let frame = client.recv().await;
            if frame.get("reply_to").is_some() {
                break frame;
            }
        };
        if answer.get("ok").is_some() {
            published += line.len();
        } else {
            assert!(refused(&answer, "bytes per second"), "{answer}");
            refusals += 1;
        }
    }
    assert!(refusals > 0, "the budget never refused");
    // 32 KiB a second, 128 KiB at once, and a line of slack for the frame
    // around each.
    let secs = started.elapsed().as_secs_f64();
    let bound = 128 * 1024 + (32.0 * 1024.0 * secs) as usize + line.len();
    let mut bob = node.connect("room:a", "bob").await;
    bob.send(say(1, "still here")).await;
    let bystander = loop {
        let frame = bob.recv().await;
        if frame.get("reply_to").is_some() {
            break frame.get("ok").is_some();
        }
    };
    (published, bound, bystander)
}

fn bytes_config() -> Config {
    let mut config = Config::default();
    config.max_publish_bytes_per_user_per_sec = 32 * 1024;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_bytes_are_bounded_across_its_connections_on_redis() {
    let redis = RedisServer::start().await;
    let node = Node::serve(redis.broker("bytes:").await, policy(), bytes_config()).await;
    let (published, bound, bystander) = flood(&node).await;
    assert!(
        published <= bound,
        "{published} bytes past a bound of {bound}"
    );
    assert!(bystander, "another user's line was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_bytes_are_bounded_across_its_connections_in_memory() {
    let node = Node::serve(MemoryBroker::new(), policy(), bytes_config()).await;
    let (published, bound, bystander) = flood(&node).await;
    assert!(
        published <= bound,
        "{published} bytes past a bound of {bound}"
    );
    assert!(bystander, "another user's line was refused");
}
