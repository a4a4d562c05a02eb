//! `realtime_connection_ends_total`: every connection's end is counted,
//! labelled by who ended it and its code, and the series are there, at 0,
//! before the first end. Read with `metrics-util`'s debugging recorder,
//! which a test binary can install once: hence a file of its own.

mod support;

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use realtime::history::HistoryPolicy;
use realtime::testing::TestClient;
use realtime::{Config, MemoryBroker};
use serde_json::json;
use support::{Node, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The ends counted so far, `by,code` → count; a snapshot swaps each
/// counter for zero, so the reads are added up in `totals`.
fn ends(snapshotter: &Snapshotter, totals: &mut HashMap<String, u64>) -> HashMap<String, u64> {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key.name() != realtime::telemetry::CONNECTION_ENDS {
            continue;
        }
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
                .unwrap_or_default()
        };
        let DebugValue::Counter(count) = value else {
            panic!("{} is a counter", key.name());
        };
        *totals
            .entry(format!("{},{}", label("by"), label("code")))
            .or_default() += count;
    }
    totals.clone()
}

/// Closes `client` with a close frame of `code` and waits for the answer.
async fn close_with(client: TestClient, code: CloseCode) {
    let mut socket = client.into_inner();
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    socket
        .close(Some(frame))
        .await
        .expect("send the close frame");
    while let Some(Ok(_)) = socket.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_is_counted_by_who_ended_it_and_its_code() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the one recorder of this test binary");
    let mut totals = HashMap::new();
    let mut config = Config::default();
    config.max_messages_per_sec = 5;
    config.rate_burst = 5;
    config.topic_backlog = 64;
    let node = Node::serve(MemoryBroker::new(), HistoryPolicy::none(), config).await;

    // From the start: registered when the service was built, before any end.
    let before = ends(&snapshotter, &mut totals);
    for series in [
        "client,1000",
        "client,1001",
        "client,1005",
        "none,1006",
        "server,1001",
        "server,1008",
        "server,1013",
    ] {
        assert_eq!(before.get(series), Some(&0), "{series} at 0: {before:?}");
    }

    // The client's own closes: 1000, 1001 (a closed tab), and a close
    // frame with no code (1005).
    close_with(node.connect("room", "a").await, CloseCode::Normal).await;
    close_with(node.connect("room", "b").await, CloseCode::Away).await;
    node.connect("room", "c").await.close().await;

    // No close at all: the TCP connection dropped (1006).
    drop(node.connect("room", "d").await.into_inner());

    // The server's 1008: a client that keeps flooding past the rate limit.
    // Sent until the server stops taking them: it may close before the
    // last is written.
    let mut flooder = node.connect("room", "e").await.into_inner();
    for id in 0..100 {
        let frame = json!({"type": "echo", "data": {"text": "x"}, "id": id});
        if flooder
            .send(Message::text(frame.to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut code = None;
    while let Some(Ok(message)) = flooder.next().await {
        if let Message::Close(frame) = message {
            code = frame.map(|frame| u16::from(frame.code));
            break;
        }
    }
    // The close frame, unless the reset of a socket closed with unread
    // frames overtook it; the count below is what this test is about.
    assert!(matches!(code, Some(1008) | None), "{code:?}");

    // The server's 1013: a client that never reads falls a ring behind.
    let _slow = node.connect("firehose", "f").await;
    let text = "x".repeat(16 * 1024);
    for n in 0..2000 {
        node.publish("firehose", format!("{n}{text}")).await;
        if node.service.metrics().slow_closes > 0 {
            break;
        }
    }

    let expected = [
        ("client,1000", 1),
        ("client,1001", 1),
        ("client,1005", 1),
        ("none,1006", 1),
        ("server,1008", 1),
        ("server,1013", 1),
    ];
    wait_until("every end is counted", || {
        let now = ends(&snapshotter, &mut totals);
        let done = expected
            .iter()
            .all(|(series, count)| now.get(*series) == Some(count));
        async move { done }
    })
    .await;
    let now = ends(&snapshotter, &mut totals);
    let counted: u64 = now.values().sum();
    assert_eq!(counted, 6, "one end each, nothing else: {now:?}");
}
