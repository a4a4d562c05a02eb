//! The framework's series through the `metrics` facade, read with
//! `metrics-util`'s debugging recorder: each moves for its cause (frames by
//! type, a refused upgrade, a slow client's 1013, a close code, publishes and
//! deliveries, a Redis restart), and no label holds a topic or a user.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use realtime::prelude::*;
use realtime::testing::TestClient;
use realtime::{Config, MessageHandler};
use serde_json::json;
use support::{Node, RedisServer, redis_config, wait_until};

/// Every series so far: name and sorted labels → value (histograms:
/// their number of samples). A snapshot of the debugging recorder swaps
/// each value for zero, so the reads are added up here.
fn read(snapshotter: &Snapshotter, totals: &mut HashMap<String, f64>) -> HashMap<String, f64> {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = match value {
            DebugValue::Counter(count) => count as f64,
            DebugValue::Gauge(gauge) => gauge.into_inner(),
            DebugValue::Histogram(samples) => samples.len() as f64,
        };
        *totals.entry(name).or_default() += value;
    }
    totals.clone()
}

fn value(series: &HashMap<String, f64>, name: &str) -> f64 {
    series.get(name).copied().unwrap_or(0.0)
}

struct Echo;

#[realtime_handler(state = (), user = String)]
impl Echo {
    #[direct]
    async fn echo(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }

    #[broadcast(name = "shout")]
    async fn say(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

#[test]
fn the_macro_lists_the_wire_names() {
    assert_eq!(<Echo as MessageHandler>::MESSAGE_TYPES, ["echo", "shout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_moves_for_its_cause() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut totals = HashMap::new();
    recorder
        .install()
        .expect("the one recorder of this test binary");
    let mut redis = RedisServer::start().await;
    let mut config = Config::default();
    config.topic_backlog = 64;
    let node = Node::start_with(&redis.url(), redis_config("metrics:"), config).await;

    // Frames by type: a message of the (hand-written) handler, a control
    // message, and what no one knows.
    let mut alice = node.connect("room:1", "alice").await;
    let said = alice.request("say", json!({"text": "hi"}), 1).await;
    assert_eq!(said["ok"], json!(null), "{said}");
    let pong = alice.request("$ping", json!({}), 2).await;
    assert_eq!(pong["ok"], "pong");
    alice.send_text("not json").await;
    alice.send_text(r#"{"type":"no_such_type"}"#).await;
    let _ = alice.recv().await;
    let _ = alice.recv().await;

    // Refused upgrades: no token, a forbidden topic.
    let no_token = TestClient::connect(&node.server.ws_url("/ws/room:1"), "").await;
    assert!(no_token.is_err());
    let forbidden = TestClient::connect(&node.server.ws_url("/ws/forbidden"), "bob").await;
    assert!(forbidden.is_err());

    // A binary frame is closed with 1003: one close frame sent.
    let mut binary = node.connect("room:1", "carol").await;
    binary
        .send_message(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await;
    assert_eq!(binary.recv_close().await.code(), Some(1003));

    // A client that never reads falls a ring behind: closed (1013 if its
    // socket still takes the close frame, which a full one does not).
    let _slow = node.connect("firehose", "slow").await;
    let text = "x".repeat(16 * 1024);
    for n in 0..2000 {
        node.publish("firehose", format!("{n}{text}")).await;
        if node.service.metrics().slow_closes > 0 {
            break;
        }
    }
    wait_until("the slow client is closed", || async {
        node.service.metrics().slow_closes == 1
    })
    .await;

    let series = read(&snapshotter, &mut totals);
    for (name, at_least) in [
        ("realtime_frames_received_total{type=message}", 1.0),
        ("realtime_frames_received_total{type=$ping}", 1.0),
        ("realtime_frames_received_total{type=invalid}", 2.0),
        ("realtime_handler_duration_seconds{type=message}", 1.0),
        ("realtime_upgrade_refused_total{status=401}", 1.0),
        ("realtime_upgrade_refused_total{status=403}", 1.0),
        ("realtime_connections_accepted_total{}", 2.0),
        ("realtime_events_published_total{}", 2.0),
        ("realtime_events_delivered_total{}", 2.0),
        ("realtime_broker_publish_duration_seconds{}", 2.0),
        ("realtime_slow_closes_total{}", 1.0),
        ("realtime_connection_ends_total{by=server,code=1003}", 1.0),
        ("realtime_subscribed_topics{}", 1.0),
    ] {
        assert!(
            value(&series, name) >= at_least,
            "{name} is {}, expected at least {at_least}; all: {series:#?}",
            value(&series, name)
        );
    }
    // No label names a topic or a user.
    for name in series.keys() {
        assert!(
            !name.contains("room:1") && !name.contains("alice") && !name.contains("firehose"),
            "{name}"
        );
    }

    // Redis restarts: the broker reconnects, and a publish meanwhile fails.
    redis.stop();
    let refused = alice.request("say", json!({"text": "during"}), 3).await;
    assert_eq!(refused["error"]["code"], 503, "{refused}");
    redis.restart().await;
    wait_until("the broker is back", || async {
        node.metrics().reconnects >= 1
    })
    .await;
    wait_until("the slow client's connection has ended", || async {
        node.service.connections() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let series = read(&snapshotter, &mut totals);
    assert!(value(&series, "realtime_broker_reconnects_total{}") >= 1.0);
    assert!(value(&series, "realtime_broker_publish_errors_total{}") >= 1.0);
    assert_eq!(value(&series, "realtime_connections{}"), 1.0, "alice alone");
}
