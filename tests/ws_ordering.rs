//! One order per topic: every subscriber of a topic receives the same
//! sequence, whoever published and on whichever instance; and a handler
//! that changes state and publishes under its own lock delivers the changes
//! in order.

mod support;

use realtime::Service;
use realtime::auth::validate_with;
use realtime::history::HistoryPolicy;
use realtime::prelude::*;
use realtime::testing::{TestClient, TestServer};
use serde::Serialize;
use serde_json::{Value, json};
use support::{connect, memory_nodes};

const PUBLISHERS: usize = 3;
const PER_PUBLISHER: usize = 150;

/// The texts of the next `count` events.
async fn texts(client: &mut TestClient, count: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(count);
    for _ in 0..count {
        let frame = client.recv_event().await;
        texts.push(frame["event"]["text"].as_str().expect("a text").to_owned());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_sees_one_sequence_across_publishers_and_nodes() {
    // Two instances on one in-process hub, each served on its own port.
    let (a, b) = memory_nodes(HistoryPolicy::none()).await;
    let mut subscribers = Vec::new();
    for (n, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        subscribers.push(node.connect("board", &format!("sub{n}")).await);
    }
    let mut publishers = Vec::new();
    for n in 0..PUBLISHERS {
        let node = if n % 2 == 0 { &a } else { &b };
        publishers.push(node.connect("board", &format!("pub{n}")).await);
    }
    // Every publisher sends its burst at once, on its own task.
    let sending: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(n, mut client)| {
            tokio::spawn(async move {
                for seq in 0..PER_PUBLISHER {
                    client
                        .send(json!({"type": "say", "data": {"text": format!("{n}:{seq}")}}))
                        .await;
                }
                client
            })
        })
        .collect();
    let total = PUBLISHERS * PER_PUBLISHER;
    let mut sequences = Vec::new();
    for subscriber in &mut subscribers {
        sequences.push(texts(subscriber, total).await);
    }
    for task in sending {
        task.await.expect("a publisher");
    }
    for (n, sequence) in sequences.iter().enumerate().skip(1) {
        assert_eq!(sequence, &sequences[0], "subscriber {n} saw another order");
    }
    // Each publisher's own events keep the order it sent them in.
    for publisher in 0..PUBLISHERS {
        let own: Vec<&String> = sequences[0]
            .iter()
            .filter(|text| text.starts_with(&format!("{publisher}:")))
            .collect();
        let expected: Vec<String> = (0..PER_PUBLISHER)
            .map(|seq| format!("{publisher}:{seq}"))
            .collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>());
    }
}

/// The shared counter of a board.
#[derive(Debug, Default)]
struct Board {
    count: tokio::sync::Mutex<u64>,
}

#[derive(Debug, Serialize)]
struct Count {
    value: u64,
}

struct Counter;

#[realtime_handler]
impl Counter {
    /// Adds `by` and publishes the new total under the same lock.
    #[broadcast]
    async fn increment(
        &self,
        ctx: &Context<Board, String>,
        by: u64,
    ) -> Result<Option<Count>, HandlerError> {
        let mut count = ctx.state().count.lock().await;
        *count += by;
        ctx.publish(ctx.topic(), &Count { value: *count }).await?;
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_changed_and_published_under_one_lock_arrives_in_order() {
    let service = Service::builder(
        Counter,
        Board::default(),
        validate_with(|t: &str| Ok(t.to_owned())),
    )
    .build()
    .expect("the default config is valid");
    let server = TestServer::start(Counter::router(service)).await;
    let mut watchers = Vec::new();
    for n in 0..3 {
        watchers.push(connect(&server, "board:1", &format!("watcher{n}")).await);
    }
    let clicking: Vec<_> = (0..2)
        .map(|n| {
            let url = server.ws_url("/ws/board:1");
            tokio::spawn(async move {
                let mut client = TestClient::connect(&url, &format!("clicker{n}"))
                    .await
                    .expect("connect");
                for id in 0..150u64 {
                    client
                        .send(json!({"type": "increment", "data": {"by": 1}, "id": id}))
                        .await;
                }
                // Every increment is acknowledged once its total was published.
                for id in 0..150u64 {
                    assert_eq!(
                        client.recv_reply().await,
                        json!({"reply_to": id, "ok": null})
                    );
                }
                client
            })
        })
        .collect();
    for watcher in &mut watchers {
        let values: Vec<Value> = {
            let mut values = Vec::with_capacity(300);
            for _ in 0..300 {
                values.push(watcher.recv_event().await["event"]["value"].clone());
            }
            values
        };
        let expected: Vec<Value> = (1..=300u64).map(Value::from).collect();
        assert_eq!(values, expected, "the totals arrive in order, none skipped");
    }
    for task in clicking {
        task.await.expect("a clicker");
    }
}
