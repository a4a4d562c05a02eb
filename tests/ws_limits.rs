//! Backpressure, the connection limit and the heartbeat.

mod support;

use std::time::Duration;

use realtime::Config;
use realtime::testing::{Closed, TestClient};
use serde_json::json;
use support::room::{RoomServer, Said};
use support::wait_until;

#[tokio::test]
async fn client_that_never_reads_is_closed_while_a_fast_one_gets_everything() {
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 50;
    let mut config = Config::default();
    config.topic_backlog = 256;
    let server = RoomServer::with_config(config).await;
    let slow = server.connect("firehose", "slow").await;
    let mut fast = server.connect("firehose", "fast").await;

    // 16 KiB events: 32 MB in all, far more than the slow client's socket
    // buffers and queue can hold.
    let text = "x".repeat(16 * 1024);
    let mut n = 0;
    for _ in 0..BATCHES {
        for _ in 0..PER_BATCH {
            let event = Said {
                from: n.to_string(),
                text: text.clone(),
            };
            server.service.publish("firehose", &event).await.unwrap();
            n += 1;
        }
        // The fast client keeps up: it reads each batch before the next.
        for expected in n - PER_BATCH..n {
            let frame = fast.recv().await;
            assert_eq!(frame["event"]["from"], expected.to_string());
        }
    }
    assert_eq!(
        server.service.metrics().slow_closes,
        1,
        "only the slow client was closed"
    );
    wait_until("the slow client's connection ends", || async {
        server.service.connections() == 1
    })
    .await;
    // Whatever the slow client reads now ends in 1013 or a dropped socket.
    let mut slow = slow;
    let closed = slow.recv_close().await;
    assert!(
        matches!(closed, Closed::Frame(1013, _) | Closed::Dropped),
        "slow client ended with {closed:?}"
    );
    let echo = fast.request("echo", json!({"text": "ok"}), 1).await;
    assert_eq!(echo["ok"], "ok");
}

#[tokio::test]
async fn connections_past_the_limit_get_503_before_the_upgrade() {
    let mut config = Config::default();
    config.max_connections = 2;
    let server = RoomServer::with_config(config).await;
    let first = server.connect("lobby", "a").await;
    let _second = server.connect("lobby", "b").await;
    let refused = TestClient::connect(&server.url("lobby"), "c")
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(503));

    first.close().await;
    wait_until("a place frees up", || async {
        server.service.connections() == 1
    })
    .await;
    server.connect("lobby", "c").await;
}

#[tokio::test]
async fn silent_peer_is_closed_with_1008_after_the_idle_timeout() {
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(300);
    // Long enough for the client to read the close frame while the server
    // still waits for its answer: once the server drops the socket, the
    // client's queued pongs fail to write before it reaches the close frame.
    config.close_timeout = Duration::from_secs(8);
    let server = RoomServer::with_config(config).await;
    // Never reads, so never answers the server's pings.
    let mut silent = server.connect("lobby", "silent").await;
    wait_until("the server gives up on the silent client", || async {
        server.service.metrics().idle_closes == 1
    })
    .await;
    assert_eq!(
        silent.recv_close().await,
        Closed::Frame(1008, "policy violation: rate limit or idle timeout".into())
    );
    silent.close().await;
    wait_until("the connection ends", || async {
        server.service.connections() == 0
    })
    .await;
}

#[tokio::test]
async fn peer_that_answers_pings_stays_connected() {
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(300);
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("lobby", "alive").await;
    // Reading answers pings (tungstenite queues the pong and sends it on the
    // next read); a second is three idle timeouts.
    assert!(client.is_silent_for(Duration::from_secs(1)).await);
    let echo = client.request("echo", json!({"text": "still"}), 1).await;
    assert_eq!(echo["ok"], "still");
}

/// `?heartbeat=text`: the heartbeat comes as `{"heartbeat":{}}`, which a
/// page can see, and the client stays by answering with a `$ping` that has
/// no id (which gets no answer).
#[tokio::test]
async fn a_client_that_asks_for_text_heartbeats_stays_by_answering_them() {
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(300);
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("lobby?heartbeat=text", "alive").await;
    // A second is three idle timeouts; every text frame is a heartbeat.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut heard = 0;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(client.recv().await, json!({"heartbeat": {}}));
        heard += 1;
        client.send(json!({"type": "$ping"})).await;
    }
    assert!(heard >= 3, "{heard} heartbeats in a second");
    let echo = client.request("echo", json!({"text": "still"}), 1).await;
    assert_eq!(echo["ok"], "still");
    assert_eq!(server.service.metrics().idle_closes, 0);
}

/// A text heartbeat is no WebSocket ping: a client that reads it and never
/// answers is silent, and is closed with 1008 like one that never reads.
#[tokio::test]
async fn a_client_that_asks_for_text_heartbeats_and_never_answers_is_closed() {
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(300);
    let server = RoomServer::with_config(config).await;
    let mut client = server.connect("lobby?heartbeat=text", "mute").await;
    assert_eq!(client.recv().await, json!({"heartbeat": {}}));
    assert_eq!(
        client.recv_close().await,
        Closed::Frame(1008, "policy violation: rate limit or idle timeout".into())
    );
    assert_eq!(server.service.metrics().idle_closes, 1);
}

/// Any other `heartbeat` is refused before the upgrade, as a bad `since` is.
#[tokio::test]
async fn a_heartbeat_other_than_text_or_ping_is_refused_with_400() {
    let server = RoomServer::with_config(Config::default()).await;
    let refused = TestClient::connect(&server.url("lobby?heartbeat=loud"), "alice")
        .await
        .expect_err("an unknown heartbeat is refused");
    assert_eq!(refused.status(), Some(400));
    let mut client = server.connect("lobby?heartbeat=ping", "alice").await;
    let echo = client.request("echo", json!({"text": "in"}), 1).await;
    assert_eq!(echo["ok"], "in");
}

#[tokio::test]
async fn client_that_sends_without_ever_reading_is_closed_too() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let mut config = Config::default();
    config.outbound_queue = 16;
    config.max_messages_per_sec = 1_000_000;
    config.rate_burst = 1_000_000;
    let server = RoomServer::with_config(config).await;
    let mut bystander = server.connect("lobby", "bystander").await;
    let (mut sink, _unread) =
        futures_util::StreamExt::split(server.connect("lobby", "hog").await.into_inner());
    // Each echo queues a 32 KiB answer that is never read: the hog's queue
    // fills while its frames keep arriving, and it must still be closed.
    let text = "y".repeat(32 * 1024);
    let frame = format!(r#"{{"type": "echo", "data": {{"text": "{text}"}}}}"#);
    let sending =
        tokio::spawn(async move { while sink.send(Message::text(frame.clone())).await.is_ok() {} });
    wait_until("the hog is closed as a slow reader", || async {
        server.service.metrics().slow_closes == 1
    })
    .await;
    wait_until("the hog's connection ends", || async {
        server.service.connections() == 1
    })
    .await;
    sending.abort();
    let echo = bystander.request("echo", json!({"text": "fine"}), 1).await;
    assert_eq!(echo["ok"], "fine");
}

/// The text heartbeat amid a stream of events: written by the sweep when
/// the socket is free and by the write task when it is busy (the path a
/// heartbeat queued behind events takes), it is always a whole frame
/// between whole events, and no WebSocket ping comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_heartbeats_amid_a_stream_of_events_leave_every_frame_whole() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    const EVENTS: usize = 3_000;
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(20);
    config.topic_backlog = EVENTS;
    config.outbound_queue = EVENTS;
    let server = RoomServer::with_config(config).await;
    let mut socket = server
        .connect("stream?heartbeat=text", "reader")
        .await
        .into_inner();
    let publisher = publish_stream(&server, EVENTS);
    let (mut events, mut heartbeats) = (0, 0);
    while events < EVENTS {
        let message = tokio::time::timeout(support::DEADLINE, socket.next())
            .await
            .expect("a frame within the deadline")
            .expect("the connection is open")
            .expect("a whole frame");
        let Message::Text(text) = message else {
            panic!("only text frames, got {message:?}");
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame == json!({"heartbeat": {}}) {
            heartbeats += 1;
        } else if frame.get("event").is_some() {
            assert_eq!(frame["event"]["text"], events.to_string(), "in order");
            events += 1;
        }
    }
    publisher.await.unwrap();
    assert!(heartbeats > 0, "no heartbeat came in {EVENTS} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_amid_a_stream_of_events_leave_every_frame_whole_and_the_close_clean() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{Error, Message};

    const EVENTS: usize = 3_000;
    // A ping every few milliseconds, written by the heartbeat straight into
    // the socket whenever the write task is not using it.
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(20);
    config.topic_backlog = EVENTS;
    config.outbound_queue = EVENTS;
    let server = RoomServer::with_config(config).await;
    let mut socket = server.connect("stream", "reader").await.into_inner();
    let publisher = publish_stream(&server, EVENTS);
    let (mut events, mut pings) = (0, 0);
    while events < EVENTS {
        let message = tokio::time::timeout(support::DEADLINE, socket.next())
            .await
            .expect("a frame within the deadline")
            .expect("the connection is open")
            .expect("a whole frame");
        match message {
            Message::Ping(_) => {
                pings += 1;
                assert!(pings < 100_000, "pings but no events past {events}");
            }
            Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame.get("event").is_some() {
                    assert_eq!(frame["event"]["text"], events.to_string(), "in order");
                    events += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.unwrap();
    assert!(pings > 0, "no ping came in {EVENTS} events");

    // Closed by the server while pings keep coming due: the close frame,
    // then the end (a frame after the close would be tungstenite's
    // `ReceivedAfterClosing` error). The window is short, so this is a
    // check of the path end to end; the unit tests of `Queued::write_now`
    // hold each rule.
    server
        .service
        .disconnect_user(&"reader".to_owned(), "enough")
        .await
        .unwrap();
    let mut closed = false;
    while let Some(next) = tokio::time::timeout(support::DEADLINE, socket.next())
        .await
        .expect("the end within the deadline")
    {
        match next {
            Ok(Message::Close(_)) => closed = true,
            Ok(_) => assert!(!closed, "a frame after the close"),
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => break,
            Err(error) => panic!("after the close: {error}"),
        }
    }
    assert!(closed, "no close frame");
}

/// Publishes `events` numbered events on `stream` from the server side, in
/// bursts of 100 a few milliseconds apart.
fn publish_stream(server: &RoomServer, events: usize) -> tokio::task::JoinHandle<()> {
    let service = server.service.clone();
    tokio::spawn(async move {
        for n in 0..events {
            let said = Said {
                from: "publisher".to_owned(),
                text: n.to_string(),
            };
            service.publish("stream", &said).await.unwrap();
            if n % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
}
