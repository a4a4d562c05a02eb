//! `RedisBroker::connect` when Redis cannot be used: a clear error in bounded
//! time, never a panic.

mod support;

use std::error::Error as _;
use std::time::Duration;

use realtime::RedisConfig;
use realtime::{BrokerError, RedisBroker};
use tokio::time::Instant;

/// The error and its sources, joined as a reporter would print them.
fn chain(error: &BrokerError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn quick_config() -> RedisConfig {
    let mut config = support::redis_config("startup:");
    config.connect_timeout = Duration::from_millis(500);
    config
}

#[tokio::test]
async fn nothing_listening_is_a_clear_error() {
    let port = support::free_port();
    let started = Instant::now();
    let error = RedisBroker::connect(&format!("redis://127.0.0.1:{port}"), quick_config())
        .await
        .expect_err("nothing listens on the port");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(error, BrokerError::Unavailable(_)));
    let text = chain(&error);
    assert!(
        text.starts_with(&format!(
            "broker unavailable: could not connect to Redis at 127.0.0.1:{port}: could not connect: "
        )),
        "{text}"
    );
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    // Accepts the TCP connection, then says nothing: a hung Redis.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let error = RedisBroker::connect(&format!("redis://127.0.0.1:{port}"), quick_config())
        .await
        .expect_err("the server never answers");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let text = chain(&error);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("no answer within 500ms"), "{text}");
}

#[tokio::test]
async fn invalid_url_is_an_error() {
    let error = RedisBroker::connect("http://example.invalid", RedisConfig::default())
        .await
        .expect_err("not a Redis URL");
    assert!(matches!(error, BrokerError::Invalid(_)), "{error:?}");
    assert!(
        chain(&error).contains("invalid Redis URL"),
        "{}",
        chain(&error)
    );
}

#[tokio::test]
async fn invalid_config_is_an_error() {
    let mut config = RedisConfig::default();
    config.reconnect_backoff_min = Duration::from_secs(10);
    let error = RedisBroker::connect("redis://127.0.0.1:1", config)
        .await
        .expect_err("backoff bounds are inverted");
    assert!(matches!(error, BrokerError::Invalid(_)), "{error:?}");
    assert!(
        chain(&error)
            .contains("`reconnect_backoff_min` (10s) is longer than `reconnect_backoff_max` (1s)"),
        "{}",
        chain(&error)
    );
}
