//! The chat example's operator endpoints over real sockets: `/ready` and
//! `/live` (ready while Redis answers, 503 `broker disconnected` while it
//! is down and ready again after, 503 `draining` and still live between
//! SIGTERM and the close of the sockets), `/metrics` in Prometheus text,
//! and JSON logs with `LOG_FORMAT=json`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::chat::start_chat_with;
use support::{DEADLINE, RedisServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `GET path` on the chat at `port`: the status and the body, or `None`
/// if nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?.to_owned();
    Some((status, body))
}

/// Waits until `GET path` answers `status` with `body`.
async fn until(port: u16, path: &str, status: u16, body: &str) -> Duration {
    let start = Instant::now();
    loop {
        let answer = get(port, path).await;
        if answer
            .as_ref()
            .is_some_and(|(s, b)| *s == status && b == body)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{path} never answered {status} {body}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_redis_and_the_drain_while_live_stays() {
    let mut redis = RedisServer::start().await;
    let port = free_port();
    let chat = start_chat_with(&redis.url(), port, &[("DRAIN_SECS", "3")]);
    until(port, "/ready", 200, "ready").await;
    assert_eq!(get(port, "/live").await, Some((200, "live".to_owned())));

    redis.stop();
    let noticed = until(port, "/ready", 503, "broker disconnected").await;
    println!("/ready said 503 {noticed:?} after Redis stopped");
    assert_eq!(get(port, "/live").await, Some((200, "live".to_owned())));
    redis.restart().await;
    let back = until(port, "/ready", 200, "ready").await;
    println!("/ready said 200 {back:?} after Redis was back");

    let status = Command::new("kill")
        .args(["-TERM", &chat.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    until(port, "/ready", 503, "draining").await;
    assert_eq!(get(port, "/live").await, Some((200, "live".to_owned())));
    // After the drain delay the chat stops listening and exits.
    let start = Instant::now();
    while get(port, "/live").await.is_some() {
        assert!(start.elapsed() < DEADLINE, "the chat never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_logs_are_json_lines() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let mut chat = Command::new(support::chat::chat_binary())
        .env("PORT", port.to_string())
        .env("REDIS_URL", redis.url())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,realtime=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the chat");
    let logs = chat.stderr.take().expect("piped");
    let chat = support::chat::Process(chat);
    support::chat::wait_for_port(port, "the chat");

    let url = format!("ws://127.0.0.1:{port}/ws/lobby");
    let mut alice = realtime::testing::TestClient::connect(&url, "alice")
        .await
        .expect("connect");
    let said = alice
        .request("say", serde_json::json!({"text": "hi"}), 1)
        .await;
    assert!(said.get("error").is_none(), "{said}");

    let (status, body) = get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    for line in [
        "realtime_connections 1",
        "realtime_connections_accepted_total 1",
        "realtime_events_published_total 1",
        "realtime_frames_received_total{type=\"say\"} 1",
    ] {
        assert!(body.contains(line), "no `{line}` in:\n{body}");
    }
    drop(alice);
    drop(chat);

    // Every line is a JSON object; a frame's line carries its connection's
    // span: id, user and topic.
    let lines: Vec<String> = BufReader::new(logs).lines().map_while(Result::ok).collect();
    assert!(!lines.is_empty());
    let mut framed = false;
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if value["fields"]["message"] == "frame" {
            assert_eq!(value["fields"]["kind"], "say");
            assert_eq!(value["span"]["topic"], "lobby");
            assert!(
                value["span"]["user"]
                    .as_str()
                    .is_some_and(|user| user.contains("alice"))
            );
            assert!(value["span"]["conn"].is_string());
            framed = true;
        }
    }
    assert!(framed, "no frame line in {lines:#?}");
}
