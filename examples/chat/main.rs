//! A chat: rooms are topics, `say` broadcasts a line to the room on every
//! instance, `history` answers the room's last lines to the sender. Every
//! room keeps its last 100 lines for 10 minutes in the framework's history
//! (in this process, or in Redis beside the broker): the same lines feed
//! `history` and let a page that lost its connection resume where it
//! stopped. The chat keeps no storage, and no Redis connection, of its own.
//! The page at `/` (no framework) is served from this binary: TypeScript
//! (`page/app.ts`) against the client generated from this handler, compiled
//! to the JavaScript in `page/dist`.
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
//! The typed TypeScript client of this handler and its AsyncAPI document
//! are generated from it (`#[realtime_handler(describe)]`), into
//! `clients/typescript/generated/`:
//!
//! ```text
//! cargo run --example chat -- generate clients/typescript/generated
//! ```
//!
//! Every room lists who is in it: the page asks `$presence` and follows the
//! `join` and `leave` events.
//!
//! For operators: `GET /metrics` (Prometheus text: the framework's series,
//! see `realtime::telemetry`), `GET /ready` (503 while Redis is unreachable
//! or the chat drains) and `GET /live`. Logs go to stderr, one JSON object
//! per line with `LOG_FORMAT=json`; `RUST_LOG=realtime=debug` logs every
//! frame, inside its connection's span. `DRAIN_SECS=5` keeps serving 5 s
//! after SIGTERM with `/ready` at 503 before closing the sockets. A browser
//! may open the page from the chat's own origin and from those
//! `ALLOWED_ORIGINS` lists (comma-separated; `https://*.example.com`
//! patterns too); an upgrade from another origin gets 403. `PING_MS` sets
//! the heartbeat's interval (25 000 by default).
//!
//! For the demo, the token is the user's name: any non-empty name is
//! accepted. With `JWT_SECRET` set (at least 32 bytes), tokens are HS256
//! JWTs instead (`sub` the name, `exp` `TOKEN_SECS` ahead, 60 by default),
//! which `POST /login` hands to anyone who names themselves (a demo: a real
//! login checks a password); the page asks it again before each token runs
//! out and sends the new one with `$refresh`, on the open socket. The page
//! asks `/login` in both modes; without `JWT_SECRET` it answers the name.
//!
//! `invite {user}` brings `user`'s pages, on every instance, into the
//! sender's room; `kick {user}` (only `admin` may) closes every one of
//! them with 3003. The room `admin` is only for the user `admin` (403 for
//! anyone else), to show topic authorization; an invitation into it is
//! refused the same way. Ctrl-C or SIGTERM close every socket with 1001
//! before the process exits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::header;
use axum::response::Html;
use axum::routing::get;
use realtime::auth::jwt::JwtValidator;
use realtime::auth::validate_with;
use realtime::history::{HistoryPolicy, Retention};
use realtime::prelude::*;
use realtime::presence::{PresencePolicy, Tracking};
use realtime::{AuthError, Broker, MemoryBroker, RedisBroker, Service};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What everyone in a room receives when someone speaks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Said {
    from: String,
    text: String,
    at: u64,
}

/// A line of the room's history: what was said, and its offset in the
/// room, which the page uses to merge the history with live lines.
#[derive(Debug, Serialize, JsonSchema)]
struct Line {
    offset: u64,
    #[serde(flatten)]
    said: Said,
}

/// The page's modules, compiled from `page/app.ts`, the generated client
/// and the client library (`npm run build:page` in clients/typescript), at
/// the paths their relative imports name.
const PAGE_SCRIPTS: &[(&str, &str)] = &[
    (
        "/static/examples/chat/page/app.js",
        include_str!("page/dist/examples/chat/page/app.js"),
    ),
    (
        "/static/clients/typescript/generated/chat.js",
        include_str!("page/dist/clients/typescript/generated/chat.js"),
    ),
    (
        "/static/clients/typescript/src/index.js",
        include_str!("page/dist/clients/typescript/src/index.js"),
    ),
    (
        "/static/clients/typescript/src/client.js",
        include_str!("page/dist/clients/typescript/src/client.js"),
    ),
    (
        "/static/clients/typescript/src/backoff.js",
        include_str!("page/dist/clients/typescript/src/backoff.js"),
    ),
    (
        "/static/clients/typescript/src/calls.js",
        include_str!("page/dist/clients/typescript/src/calls.js"),
    ),
    (
        "/static/clients/typescript/src/close.js",
        include_str!("page/dist/clients/typescript/src/close.js"),
    ),
    (
        "/static/clients/typescript/src/emitter.js",
        include_str!("page/dist/clients/typescript/src/emitter.js"),
    ),
    (
        "/static/clients/typescript/src/errors.js",
        include_str!("page/dist/clients/typescript/src/errors.js"),
    ),
    (
        "/static/clients/typescript/src/frames.js",
        include_str!("page/dist/clients/typescript/src/frames.js"),
    ),
    (
        "/static/clients/typescript/src/heartbeat.js",
        include_str!("page/dist/clients/typescript/src/heartbeat.js"),
    ),
    (
        "/static/clients/typescript/src/options.js",
        include_str!("page/dist/clients/typescript/src/options.js"),
    ),
    (
        "/static/clients/typescript/src/topics.js",
        include_str!("page/dist/clients/typescript/src/topics.js"),
    ),
];

/// Lines kept per room, and for how long after the room's last line.
const KEPT: usize = 100;
const KEPT_FOR: Duration = Duration::from_secs(600);

/// Longest line, in characters.
const MAX_TEXT: usize = 2000;

/// The chat's handler: one `#[broadcast]`, two `#[direct]`, one topic rule.
struct Chat;

#[realtime_handler(describe)]
impl Chat {
    /// Posts a line to the room: every member, on every instance, gets it.
    #[broadcast]
    async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(HandlerError::bad_request("say something: `text` is empty"));
        }
        if text.chars().count() > MAX_TEXT {
            return Err(HandlerError::bad_request(format!(
                "a line holds at most {MAX_TEXT} characters"
            )));
        }
        // Kept in the room's history and delivered in one step: a line is
        // in the history exactly when the room received it.
        Ok(Said {
            from: ctx.user_id().clone(),
            text: text.to_owned(),
            at: now_millis(),
        })
    }

    /// The room's last `limit` lines (at most 100), oldest first.
    #[direct]
    async fn history(
        &self,
        ctx: &Context<(), String>,
        limit: u32,
    ) -> Result<Vec<Line>, HandlerError> {
        let history = ctx.history(ctx.topic(), None, limit as usize).await?;
        // A line that does not parse was not written by this app; skip it.
        Ok(history
            .events
            .iter()
            .filter_map(|event| {
                let said = event.event().ok()?;
                Some(Line {
                    offset: event.offset,
                    said,
                })
            })
            .collect())
    }

    /// Ends every session of `user`, on every instance (close 3003); only
    /// `admin` may.
    #[direct]
    async fn kick(&self, ctx: &Context<(), String>, user: String) -> Result<(), HandlerError> {
        if ctx.user_id() != "admin" {
            return Err(HandlerError::new(403, "only admin may kick"));
        }
        ctx.disconnect_user(&user, &format!("kicked by {}", ctx.user_id()))
            .await
    }

    /// Brings `user` into this room: every connection of theirs, on every
    /// instance, joins it (if the room lets them in) and is told so.
    #[direct]
    async fn invite(&self, ctx: &Context<(), String>, user: String) -> Result<(), HandlerError> {
        ctx.subscribe_user(&user, ctx.topic()).await
    }

    /// Only the user `admin` may enter the room `admin`.
    #[authorize_topic]
    async fn may_enter(&self, _state: &(), user: &String, room: &str) -> bool {
        room != "admin" || user == "admin"
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A user's name: non-empty, at most 32 characters.
fn checked_name(name: &str) -> Result<String, AuthError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 32 {
        Err(AuthError::InvalidToken)
    } else {
        Ok(name.to_owned())
    }
}

/// How the chat's tokens are made and checked: the name itself, or HS256
/// JWTs signed with `JWT_SECRET`.
#[derive(Clone)]
enum Tokens {
    Names,
    Jwt {
        key: jsonwebtoken::EncodingKey,
        life: Duration,
    },
}

impl Tokens {
    /// From `JWT_SECRET` and `TOKEN_SECS`.
    fn from_env() -> Result<(Self, Option<JwtValidator>), Box<dyn std::error::Error>> {
        let Ok(secret) = std::env::var("JWT_SECRET") else {
            return Ok((Self::Names, None));
        };
        let validator = JwtValidator::hs256(secret.as_bytes())?;
        let secs: u64 = match std::env::var("TOKEN_SECS") {
            Ok(secs) => secs
                .parse()
                .map_err(|_| format!("TOKEN_SECS must be a number of seconds, got `{secs}`"))?,
            Err(_) => 60,
        };
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?;
        let tokens = Self::Jwt {
            key,
            life: Duration::from_secs(secs),
        };
        Ok((tokens, Some(validator)))
    }

    /// A token for `name`, and how many seconds it is good for.
    fn issue(&self, name: &str) -> Result<(String, Option<u64>), AuthError> {
        let name = checked_name(name)?;
        match self {
            Self::Names => Ok((name, None)),
            Self::Jwt { key, life } => {
                let exp = SystemTime::now() + *life;
                let exp = exp.duration_since(UNIX_EPOCH).map_or(0, |at| at.as_secs());
                let claims = serde_json::json!({"sub": name, "exp": exp});
                let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
                    .map_err(|_| AuthError::InvalidToken)?;
                Ok((token, Some(life.as_secs())))
            }
        }
    }
}

/// `POST /login` with `{"name": ..}`: `{"token": .., "expires_in": ..}`.
/// The demo's login takes anyone at their word.
async fn login(
    axum::extract::State(tokens): axum::extract::State<Tokens>,
    axum::Json(body): axum::Json<Login>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokens.issue(&body.name) {
        Ok((token, expires_in)) => {
            axum::Json(serde_json::json!({"token": token, "expires_in": expires_in}))
                .into_response()
        }
        Err(error) => {
            tracing::debug!(%error, "login refused");
            let refused = (
                axum::http::StatusCode::BAD_REQUEST,
                "a name is 1 to 32 characters",
            );
            refused.into_response()
        }
    }
}

/// What `POST /login` reads.
#[derive(serde::Deserialize)]
struct Login {
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [command, dir] = args.as_slice()
        && command == "generate"
    {
        return generate(std::path::Path::new(dir));
    }
    init_logs();
    // Before the service is built: the framework registers its per-message
    // series with the recorder it finds then.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ])?
        .install_recorder()?;
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
            tracing::info!(%addr, redis = %url, "chat with the Redis broker");
            serve(addr, broker, prometheus).await
        }
        Err(_) => {
            tracing::info!(%addr, "chat with the memory broker");
            serve(addr, MemoryBroker::new(), prometheus).await
        }
    }
}

/// Writes the typed TypeScript client (`chat.ts`, importing the client
/// library from `../src/index.js`) and the AsyncAPI document
/// (`chat.asyncapi.json`) into `dir`.
fn generate(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let api = Chat::describe();
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("chat.ts"), api.typescript("../src/index.js"))?;
    let document = serde_json::to_string_pretty(&api.asyncapi("1.0.0"))? + "\n";
    std::fs::write(dir.join("chat.asyncapi.json"), document)?;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); one JSON
/// object per line with `LOG_FORMAT=json`. Each connection's lines carry
/// its span: connection id, user and topic.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,realtime=info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        _ => logs.init(),
    }
}

async fn serve<B: Broker>(
    addr: std::net::SocketAddr,
    broker: B,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let (tokens, jwt) = Tokens::from_env()?;
    let builder = match jwt {
        Some(validator) => Service::builder(Chat, (), validator),
        None => Service::builder(Chat, (), validate_with(checked_name)),
    };
    let service = builder
        .config(chat_config(addr.port())?)
        .with_broker(broker)
        .history(HistoryPolicy::none().keep("*", Retention::new(KEPT, KEPT_FOR)))
        .presence(presence_policy()?)
        .build()?;
    // Histograms are folded into their buckets by this upkeep.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let mut app = Chat::router(service.clone())
        .merge(realtime::health::routes(service.clone()))
        .route("/metrics", get(move || async move { prometheus.render() }))
        .route("/login", axum::routing::post(login).with_state(tokens))
        .route("/", get(|| async { Html(include_str!("index.html")) }));
    for (path, source) in PAGE_SCRIPTS {
        let script = (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            *source,
        );
        app = app.route(path, get(move || async move { script }));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("open http://{addr}/");
    // `realtime::serve` rather than `axum::serve`: a deadline for request
    // heads, a bound on connections not yet upgraded, and one deadline for
    // the whole shutdown (every socket closed with 1001 within 10 s).
    realtime::serve(listener, app)
        .with_graceful_shutdown(async {
            stop_signal().await;
            tracing::info!("stopping: draining, then closing every socket with 1001");
        })
        .with_service(service)
        .drain_delay(drain_delay()?)
        .shutdown_timeout(Duration::from_secs(10))
        .await?;
    Ok(())
}

/// The service's limits: the defaults, and the origins the page may be
/// opened from: its own (`http://127.0.0.1:<port>`,
/// `http://localhost:<port>`) and those `ALLOWED_ORIGINS` adds, a
/// comma-separated list (`https://chat.example.com,https://*.example.com`).
/// A WebSocket client that is not a browser sends no `Origin` and is let in.
/// `PING_MS` sets the heartbeat's interval (default 25 000), for tests that
/// must see it come.
fn chat_config(port: u16) -> Result<realtime::Config, String> {
    let mut config = realtime::Config::default();
    config.allowed_origins = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    if let Ok(more) = std::env::var("ALLOWED_ORIGINS") {
        config.allowed_origins.extend(
            more.split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
                .map(str::to_owned),
        );
    }
    if let Ok(ms) = std::env::var("PING_MS") {
        let ms: u64 = ms
            .parse()
            .map_err(|_| format!("PING_MS must be a number of milliseconds, got `{ms}`"))?;
        config.ping_interval = Duration::from_millis(ms);
    }
    Ok(config)
}

/// `DRAIN_SECS`: how long the chat goes on serving after SIGTERM with
/// `/ready` answering 503, before it closes its sockets (default 0). A
/// second signal during it does not cut it short.
fn drain_delay() -> Result<Duration, String> {
    match std::env::var("DRAIN_SECS") {
        Ok(secs) => secs
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("DRAIN_SECS must be a number of seconds, got `{secs}`")),
        Err(_) => Ok(Duration::ZERO),
    }
}

/// Every room tracks who is in it and announces joins and leaves (rooms of
/// a demo are small). `PRESENCE_TTL_SECS` shortens how long a crashed
/// instance's users stay listed (default 30 s, plus a third).
fn presence_policy() -> Result<PresencePolicy, String> {
    let policy = PresencePolicy::none().track("*", Tracking::Announced);
    match std::env::var("PRESENCE_TTL_SECS") {
        Ok(secs) => {
            let secs: u64 = secs.parse().map_err(|_| {
                format!("PRESENCE_TTL_SECS must be a number of seconds, got `{secs}`")
            })?;
            Ok(policy.ttl(Duration::from_secs(secs)))
        }
        Err(_) => Ok(policy),
    }
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
