//! A chat: rooms are topics, `say` broadcasts a line to the room on every
//! instance, `history` answers the room's last lines to the sender. The page
//! at `/` is a small JavaScript client (no framework) served from this binary.
//!
//! Run it:
//!
//! ```text
//! cargo run --example chat                         # http://127.0.0.1:3000, memory broker
//! ```
//!
//! Two instances that share one Redis (both need `REDIS_URL`):
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ PORT=3000 cargo run --example chat
//! REDIS_URL=redis://127.0.0.1:6379/ PORT=3001 cargo run --example chat
//! ```
//!
//! For the demo, the token is the user's name: any non-empty name is
//! accepted. The room `admin` is only for the user `admin` (403 for anyone
//! else), to show topic authorization. Ctrl-C or SIGTERM close every socket
//! with 1001 before the process exits.

mod history;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::Html;
use axum::routing::get;
use realtime::auth::validate_with;
use realtime::prelude::*;
use realtime::{AuthError, Broker, MemoryBroker, RedisBroker, Service};
use serde::Serialize;

use history::{History, Line};

/// Shared by every connection of this instance.
#[derive(Debug)]
struct ChatState {
    history: History,
}

/// What everyone in a room receives when someone speaks.
#[derive(Debug, Clone, Serialize)]
struct Said {
    from: String,
    text: String,
    at: u64,
}

/// Longest line, in characters.
const MAX_TEXT: usize = 2000;

/// The chat's handler: one `#[broadcast]`, one `#[direct]`, one topic rule.
struct Chat;

#[realtime_handler]
impl Chat {
    /// Posts a line to the room: every member, on every instance, gets it.
    #[broadcast]
    async fn say(
        &self,
        ctx: &Context<ChatState, String>,
        text: String,
    ) -> Result<Said, HandlerError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HandlerError::bad_request("say something: `text` is empty"));
        }
        if text.chars().count() > MAX_TEXT {
            return Err(HandlerError::bad_request(format!(
                "a line holds at most {MAX_TEXT} characters"
            )));
        }
        let line = Line {
            from: ctx.user_id().clone(),
            text: text.to_owned(),
            at: now_millis(),
        };
        ctx.state().history.push(ctx.topic(), &line).await?;
        Ok(Said {
            from: line.from,
            text: line.text,
            at: line.at,
        })
    }

    /// The room's last `limit` lines (at most 100), oldest first.
    #[direct]
    async fn history(
        &self,
        ctx: &Context<ChatState, String>,
        limit: u32,
    ) -> Result<Vec<Line>, HandlerError> {
        ctx.state().history.last(ctx.topic(), limit as usize).await
    }

    /// Only the user `admin` may enter the room `admin`.
    #[authorize_topic]
    async fn may_enter(&self, _state: &ChatState, user: &String, room: &str) -> bool {
        room != "admin" || user == "admin"
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The demo's validator: the token is the name; any non-empty name up to 32
/// characters is accepted.
fn demo_validator() -> impl realtime::TokenValidator<UserId = String> {
    validate_with(|token: &str| {
        let name = token.trim();
        if name.is_empty() || name.chars().count() > 32 {
            Err(AuthError::InvalidToken)
        } else {
            Ok(name.to_owned())
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,realtime=info".into()),
        )
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, got `{port}`"))?,
        Err(_) => 3000,
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let broker = RedisBroker::connect(&url, Default::default()).await?;
            let client = redis::Client::open(url.as_str())?;
            let history = History::Redis(client.get_multiplexed_async_connection().await?);
            tracing::info!(%addr, redis = %url, "chat with the Redis broker");
            serve(addr, broker, history).await
        }
        Err(_) => {
            let history = History::Memory(Default::default());
            tracing::info!(%addr, "chat with the memory broker");
            serve(addr, MemoryBroker::new(), history).await
        }
    }
}

async fn serve<B: Broker>(
    addr: std::net::SocketAddr,
    broker: B,
    history: History,
) -> Result<(), Box<dyn std::error::Error>> {
    let state = Arc::new(ChatState { history });
    let service = Service::builder(Chat, state, demo_validator())
        .with_broker(broker)
        .build()?;
    let app = Chat::router(service.clone())
        .route("/", get(|| async { Html(include_str!("index.html")) }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("open http://{addr}/");
    // `realtime::serve` rather than `axum::serve`: a deadline for request
    // heads, a bound on connections not yet upgraded, and one deadline for
    // the whole shutdown (every socket closed with 1001 within 10 s).
    realtime::serve(listener, app)
        .with_graceful_shutdown(async {
            stop_signal().await;
            tracing::info!("shutting down: closing every socket with 1001");
        })
        .with_service(service)
        .shutdown_timeout(Duration::from_secs(10))
        .await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
