//! The chat example through a Redis restart: the chat keeps nothing in
//! Redis of its own (its history is the framework's, read through the
//! broker), so once the broker is back everything works again. Sends
//! during the outage get errors; within 3 s of Redis answering again,
//! `say` and `history` work on both instances, for connected and new
//! clients.

mod support;

use std::time::Duration;

use realtime::testing::TestClient;
use serde_json::{Value, json};
use support::RedisServer;
use support::chat::{enter, start_chat};
use tokio::time::Instant;

async fn say(client: &mut TestClient, text: &str, id: u64) -> Value {
    client.request("say", json!({ "text": text }), id).await
}

async fn history(client: &mut TestClient, id: u64) -> Value {
    client.request("history", json!({ "limit": 50 }), id).await
}

/// Whether `say` and `history` both work on `client`.
async fn works(client: &mut TestClient, text: &str, id: &mut u64) -> bool {
    *id += 2;
    let said = say(client, text, *id).await;
    let read = history(client, *id + 1).await;
    said.get("error").is_none()
        && read["ok"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line["text"] == text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_works_again_soon_after_redis_restarts() {
    let mut redis = RedisServer::start().await;
    let (_a, port_a) = start_chat(&redis.url());
    let (_b, port_b) = start_chat(&redis.url());
    let mut on_a = enter(port_a, "lobby", "alice").await;
    let mut on_b = enter(port_b, "lobby", "bob").await;
    let mut id = 0;
    assert!(works(&mut on_a, "before", &mut id).await);

    redis.stop();
    let during = say(&mut on_a, "during", 100).await;
    assert_eq!(during["error"]["code"], 503, "{during}");
    let during = history(&mut on_b, 101).await;
    assert_eq!(during["error"]["code"], 503, "{during}");

    redis.restart().await;
    let back = Instant::now();
    let mut n = 0;
    for (client, who) in [(&mut on_a, "a"), (&mut on_b, "b")] {
        loop {
            n += 1;
            if works(client, &format!("after {who} {n}"), &mut id).await {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "node {who} still failing after 3 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "both nodes work again {:?} after Redis came back",
        back.elapsed()
    );
    assert!(back.elapsed() <= Duration::from_secs(3));
    // New clients too, on both nodes.
    for port in [port_a, port_b] {
        let mut fresh = enter(port, "lobby", "carol").await;
        assert!(works(&mut fresh, &format!("fresh on {port}"), &mut id).await);
    }
}
