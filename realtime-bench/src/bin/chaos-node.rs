//! The server that `realtime-bench chaos` runs twice against one Redis (or
//! one Redis Cluster) and then breaks: a room handler whose `say(text)`
//! broadcasts `{from, text}`, history on `room:*` (100 000 events, 10
//! minutes), presence on `room:*` announced with a short time to live, the
//! token is the user's name. It is not part of the product.
//!
//! Settings, from the environment:
//!
//! - `PORT`: where it listens on 127.0.0.1 (default 3000);
//! - `REDIS_URL` (one Redis), or `REDIS_NODES` (comma-separated URLs of a
//!   Redis Cluster's nodes: sharded Pub/Sub);
//! - `DURABLE=1`: [`Durability::Durable`] (only for a Redis with
//!   `appendfsync always` that never fails over);
//! - `PRESENCE_TTL_MS` (default 3000) and `PRESENCE_LINGER_MS` (default 0);
//! - `RUST_LOG` (default `warn`), to stderr.
//!
//! Routes: `/ws/{topic}`, `/ready`, `/live`.
//!
//! Run: `PORT=4000 REDIS_URL=redis://127.0.0.1:6379/ cargo run --release -p realtime-bench --bin chaos-node`

use std::time::Duration;

use realtime::RedisConfig;
use realtime::auth::validate_with;
use realtime::broker::redis::Durability;
use realtime::history::{HistoryPolicy, Retention};
use realtime::prelude::*;
use realtime::presence::{PresencePolicy, Tracking};
use realtime::{AuthError, Config, RedisBroker, Service};
use serde::{Deserialize, Serialize};

/// What every member of a room receives when someone speaks.
#[derive(Debug, Serialize, Deserialize)]
struct Said {
    from: String,
    text: String,
}

/// The chaos run's room handler.
struct ChaosRoom;

#[realtime_handler]
impl ChaosRoom {
    /// Posts `text` to the room, as the connection's user.
    #[broadcast]
    async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
        Ok(Said {
            from: ctx.user_id().clone(),
            text,
        })
    }
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name} must be a number, got `{value}`")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let port = u16::try_from(env_number("PORT", 3000)?).map_err(|_| "PORT out of range")?;
    let mut redis = RedisConfig::default();
    if std::env::var("DURABLE").is_ok_and(|value| value == "1") {
        redis.durability = Durability::Durable;
    }
    let broker = match (std::env::var("REDIS_NODES"), std::env::var("REDIS_URL")) {
        (Ok(nodes), _) => {
            RedisBroker::connect_cluster(nodes.split(',').map(str::trim), redis).await?
        }
        (Err(_), Ok(url)) => RedisBroker::connect(&url, redis).await?,
        (Err(_), Err(_)) => return Err("set REDIS_URL or REDIS_NODES".into()),
    };
    let mut config = Config::default();
    // The load is small, but retries after a fault come in bursts: nothing
    // here may be throttled.
    config.max_messages_per_sec = 10_000;
    config.rate_burst = 20_000;
    let presence = PresencePolicy::none()
        .track("room:*", Tracking::Announced)
        .ttl(Duration::from_millis(env_number("PRESENCE_TTL_MS", 3000)?))
        .linger(Duration::from_millis(env_number("PRESENCE_LINGER_MS", 0)?));
    let validator = validate_with(|token: &str| {
        if token.is_empty() || token.len() > 64 {
            Err(AuthError::InvalidToken)
        } else {
            Ok(token.to_owned())
        }
    });
    let service = Service::builder(ChaosRoom, (), validator)
        .with_broker(broker)
        .config(config)
        .history(
            HistoryPolicy::none().keep("room:*", Retention::new(100_000, Duration::from_secs(600))),
        )
        .presence(presence)
        .build()?;
    let app = ChaosRoom::router(service.clone()).merge(realtime::health::routes(service.clone()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    realtime::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .with_service(service)
        .shutdown_timeout(Duration::from_secs(2))
        .await?;
    Ok(())
}
