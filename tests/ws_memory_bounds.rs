//! What a client can make the server hold in replies: one reply is capped
//! (`Config::max_reply_bytes`), and a client that asks for large replies
//! and never reads is closed with 1013 once its queue holds
//! `Config::outbound_queue_bytes`, with the server's memory bounded.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use realtime::auth::validate_with;
use realtime::prelude::*;
use realtime::testing::TestServer;
use realtime::{Config, Service};
use serde_json::json;
use support::{DEADLINE, connect};
use tokio_tungstenite::tungstenite::Message;

struct Blobs;

#[realtime_handler(state = (), user = String)]
impl Blobs {
    /// Answers `bytes` bytes of text.
    #[direct]
    async fn blob(&self, bytes: usize) -> Result<String, HandlerError> {
        Ok("x".repeat(bytes))
    }
}

async fn server(config: Config) -> TestServer {
    let service = Service::builder(Blobs, (), validate_with(|t: &str| Ok(t.to_owned())))
        .config(config)
        .build()
        .expect("a valid config");
    TestServer::start(Blobs::router(service)).await
}

/// This process's resident memory, from /proc.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

#[tokio::test]
async fn a_reply_over_the_cap_is_an_error_and_the_connection_stays() {
    let server = server(Config::default()).await;
    let mut client = connect(&server, "blobs", "alice").await;
    let answer = client.request("blob", json!({"bytes": 300_000}), 1).await;
    // The reply frame: the JSON string and `{"reply_to":1,"ok":...}`.
    assert_eq!(
        answer,
        json!({"reply_to": 1, "error": {"code": 500,
            "message": "reply too large: 300022 bytes, at most 262144"}})
    );
    let answer = client.request("blob", json!({"bytes": 3}), 2).await;
    assert_eq!(answer, json!({"reply_to": 2, "ok": "xxx"}));
}

#[tokio::test]
async fn a_client_that_asks_for_large_replies_and_never_reads_is_closed_with_1013() {
    let server = server(Config::default()).await;
    let before = resident_bytes();
    let client = connect(&server, "blobs", "mallory").await;
    let mut socket = client.into_inner();
    // 200 requests (the default burst) for 200 KB each: 40 MB of replies if
    // they were all held.
    for id in 0..200 {
        let frame = json!({"type": "blob", "data": {"bytes": 200_000}, "id": id});
        if socket.feed(Message::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    let _ = socket.flush().await;
    // The most the server holds while it answers: sampled for a second,
    // long enough for every request to be handled.
    let mut grown = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        grown = grown.max(resident_bytes().saturating_sub(before));
    }

    // Reading now: what the socket buffers held, then the close.
    let read = async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(close) = message {
                return close.map(|close| u16::from(close.code));
            }
        }
        None
    };
    let code = tokio::time::timeout(DEADLINE, read).await.expect("a close");
    assert_eq!(code, Some(1013));
    // The queue holds at most 1 MiB; the rest is socket buffers (kernel
    // memory) and the allocator's slack. Unbounded, it was 40 MB.
    assert!(grown < 24 << 20, "the server grew by {grown} bytes");

    // Others are still served.
    let mut alice = connect(&server, "blobs", "alice").await;
    let answer = alice.request("blob", json!({"bytes": 1}), 1).await;
    assert_eq!(answer, json!({"reply_to": 1, "ok": "x"}));
}
