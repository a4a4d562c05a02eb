//! The server the benchmark measures: `say {text}` broadcasts the text to the
//! topic, `tick {quote}` broadcasts a JSON value (a quote, as a market feed
//! sends it), `echo {text}` answers it. Any `?token=` is accepted.
//!
//! ```text
//! PORT=4000 [REDIS_URL=redis://127.0.0.1:6379/] [HISTORY=1] [PRESENCE=quiet|announced] [COMPRESSION_MIN_BYTES=128] cargo run --release --example bench_server
//! ```
//!
//! `COMPRESSION_MIN_BYTES` sets `Config::compression_min_bytes`, the size
//! from which frames are compressed for clients that negotiated it.
//!
//! `PRESENCE` tracks who is in every topic (`announced`: with join and
//! leave events), with no linger, so that a leave is measured when it
//! happens.
//!
//! `realtime-bench matrix` builds and runs it side by side with the floor
//! server (see docs/PERFORMANCE.md).

use std::time::Duration;

use axum::serve::ListenerExt;
use realtime::auth::validate_with;
use realtime::history::{HistoryPolicy, Retention};
use realtime::prelude::*;
use realtime::presence::{PresencePolicy, Tracking};
use realtime::{Broker, Config, MemoryBroker, RedisBroker, Service};
use serde::Serialize;

/// The event every subscriber receives: `{"text": ...}` for `say`, the
/// quote itself for `tick`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Event {
    Text { text: String },
    Quote(serde_json::Value),
}

struct Bench;

#[realtime_handler(state = (), user = String)]
impl Bench {
    /// Broadcasts `text` to the topic.
    #[broadcast]
    async fn say(&self, text: String) -> Result<Event, HandlerError> {
        Ok(Event::Text { text })
    }

    /// Broadcasts `quote`, whatever JSON it is, as the event.
    #[broadcast]
    async fn tick(&self, quote: serde_json::Value) -> Result<Event, HandlerError> {
        Ok(Event::Quote(quote))
    }

    /// Answers `text` to the sender.
    #[direct]
    async fn echo(&self, text: String) -> Result<String, HandlerError> {
        Ok(text)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings (a lost Redis link, say) to stderr; `RUST_LOG` for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, got `{port}`"))?,
        Err(_) => 4000,
    };
    match std::env::var("REDIS_URL") {
        Ok(url) => serve(port, RedisBroker::connect(&url, Default::default()).await?).await,
        Err(_) => serve(port, MemoryBroker::new()).await,
    }
}

async fn serve<B: Broker>(port: u16, broker: B) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    // A load generator publishes far faster than a person; the limits that
    // protect a chat would only measure themselves here.
    config.max_messages_per_sec = 1_000_000;
    config.rate_burst = 1_000_000;
    config.max_publish_bytes_per_user_per_sec = 1 << 30;
    config.topic_backlog = 4096;
    config.max_connections = 20_000;
    if let Ok(min) = std::env::var("COMPRESSION_MIN_BYTES") {
        config.compression_min_bytes = min
            .parse()
            .map_err(|_| format!("COMPRESSION_MIN_BYTES must be a number, got `{min}`"))?;
    }
    // `HISTORY=1`: every topic keeps its last 1000 events, to measure what
    // history costs a publish.
    let history = match std::env::var("HISTORY").as_deref() {
        Ok("1") => HistoryPolicy::none().keep("*", Retention::new(1000, Duration::from_secs(60))),
        _ => HistoryPolicy::none(),
    };
    let presence = match std::env::var("PRESENCE").as_deref() {
        Ok("quiet") => PresencePolicy::none().track("*", Tracking::Quiet),
        Ok("announced") => PresencePolicy::none().track("*", Tracking::Announced),
        _ => PresencePolicy::none(),
    };
    let presence = presence.linger(Duration::ZERO);
    let service = Service::builder(Bench, (), validate_with(|token: &str| Ok(token.to_owned())))
        .with_broker(broker)
        .config(config)
        .history(history)
        .presence(presence)
        .build()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // TCP_NODELAY, as `realtime::serve` sets it: small frames must not wait
    // for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, Bench::router(service)).await?;
    Ok(())
}
