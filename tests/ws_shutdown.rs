//! Graceful shutdown: answers in flight are written, then every socket gets 1001.

mod support;

use std::sync::atomic::Ordering;

use realtime::testing::{Closed, TestClient};
use serde_json::json;
use support::room::RoomServer;
use support::{DEADLINE, wait_until};

#[tokio::test]
async fn shutdown_writes_answers_in_flight_then_closes_with_1001() {
    let server = RoomServer::start().await;
    let mut busy = server.connect("lobby", "busy").await;
    let mut idle = server.connect("lobby", "idle").await;
    busy.send(json!({"type": "slow", "data": {"ms": 300}, "id": 1}))
        .await;
    let hooks = std::sync::Arc::clone(&server.hooks);
    wait_until("the slow request is being handled", || async {
        hooks.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;

    let service = server.service.clone();
    let shutdown = tokio::spawn(async move { service.shutdown().await });

    assert_eq!(busy.recv().await, json!({"reply_to": 1, "ok": "done"}));
    assert_eq!(
        busy.recv_close().await,
        Closed::Frame(1001, "server shutting down".into())
    );
    assert_eq!(
        idle.recv_close().await,
        Closed::Frame(1001, "server shutting down".into())
    );
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("shutdown resolves once every connection has ended")
        .unwrap();
    assert_eq!(server.service.connections(), 0);
}

/// What a test relies on to see every `on_disconnect` before it returns.
#[tokio::test]
async fn shutdown_returns_after_every_on_disconnect() {
    let server = RoomServer::start().await;
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol"] {
        clients.push(server.connect("lobby", user).await);
    }
    wait_until("three connects", || async {
        server.hooks.connects.load(Ordering::SeqCst) == 3
    })
    .await;

    tokio::time::timeout(DEADLINE, server.service.shutdown())
        .await
        .expect("shutdown within the deadline");
    assert_eq!(server.hooks.disconnects.load(Ordering::SeqCst), 3);
    drop(clients);
}

#[tokio::test]
async fn new_connections_are_refused_with_503_after_shutdown() {
    let server = RoomServer::start().await;
    server.service.shutdown().await;
    let refused = TestClient::connect(&server.url("lobby"), "late")
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(503));
}

#[tokio::test]
async fn a_client_that_keeps_sending_does_not_hold_shutdown_back() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut config = realtime::Config::default();
    config.max_messages_per_sec = 1_000_000;
    config.rate_burst = 1_000_000;
    let server = RoomServer::with_config(config).await;
    let flooder = server.connect("lobby", "flooder").await;
    let (mut sink, mut stream) = flooder.into_inner().split();
    // Sends as fast as the socket takes frames, until the server hangs up.
    let sending = tokio::spawn(async move {
        let frame = r#"{"type": "echo", "data": {"text": "more"}}"#;
        let mut sent = 0u64;
        while sink.send(Message::text(frame)).await.is_ok() {
            sent += 1;
        }
        sent
    });
    // The read loop handles frames back to back now.
    let first = tokio::time::timeout(DEADLINE, stream.next()).await;
    assert!(matches!(first, Ok(Some(Ok(Message::Text(_))))));

    tokio::time::timeout(DEADLINE, server.service.shutdown())
        .await
        .expect("shutdown ends a connection whose client never stops sending");
    let close = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|frame| u16::from(frame.code));
            }
        }
        None
    })
    .await
    .expect("the close frame arrives");
    assert_eq!(close, Some(1001));
    assert!(sending.await.unwrap() > 0);
}
