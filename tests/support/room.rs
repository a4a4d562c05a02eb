//! A hand-written handler for the runtime tests, and a server around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use realtime::auth::validate_with;
use realtime::handler::Outcome;
use realtime::testing::TestServer;
use realtime::{AuthError, Config, Context, HandlerError, MemoryBroker, MessageHandler, Service};
use serde::{Deserialize, Serialize};

/// What clients of [`Room`] send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub(crate) enum RoomMessage {
    /// Broadcast `text` to the topic.
    Say { text: String },
    /// Answer `text` back to the sender.
    Echo { text: String },
    /// Answer after `ms` milliseconds.
    Slow { ms: u64 },
    /// Fail with this code and message.
    Fail { code: u16, message: String },
    /// Handled, nothing to broadcast.
    Quiet {},
    /// Direct answer with the user's name, no arguments.
    Whoami {},
    /// Sends `text` to the sender alone through `Context::send`, then answers.
    Whisper { text: String },
    /// Direct answer with the topic the message is about.
    Here {},
    /// Publishes `text` on `topic` through `Context::publish`.
    Post { topic: String, text: String },
}

/// The event subscribers receive.
#[derive(Debug, Serialize)]
pub(crate) struct Said {
    /// Who said it.
    pub(crate) from: String,
    /// What was said.
    pub(crate) text: String,
}

/// Counters the hooks bump.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// `on_connect` calls.
    pub(crate) connects: AtomicUsize,
    /// `on_disconnect` calls.
    pub(crate) disconnects: AtomicUsize,
    /// `slow` requests whose handler has started.
    pub(crate) slow_started: AtomicUsize,
}

/// A chat-like handler written against the trait by hand.
#[derive(Debug)]
pub(crate) struct Room;

impl MessageHandler for Room {
    type ClientMessage = RoomMessage;
    type ServerEvent = Said;
    type AppState = Hooks;
    type UserId = String;

    async fn on_connect(&self, ctx: &Context<Hooks, String>) {
        ctx.state().connects.fetch_add(1, Ordering::SeqCst);
    }

    async fn on_disconnect(&self, ctx: &Context<Hooks, String>) {
        ctx.state().disconnects.fetch_add(1, Ordering::SeqCst);
    }

    async fn authorize_topic(&self, _: &Hooks, user: &String, topic: &str) -> bool {
        topic != "forbidden" || user == "admin"
    }

    async fn handle(
        &self,
        msg: RoomMessage,
        ctx: &Context<Hooks, String>,
    ) -> Result<Outcome<Said>, HandlerError> {
        match msg {
            RoomMessage::Echo { text } => Outcome::reply(&text),
            RoomMessage::Slow { ms } => {
                ctx.state().slow_started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Outcome::reply("done")
            }
            RoomMessage::Fail { code, message } => Err(HandlerError::new(code, message)),
            RoomMessage::Whoami {} => Outcome::reply(ctx.user_id()),
            RoomMessage::Here {} => Outcome::reply(ctx.topic()),
            RoomMessage::Whisper { text } => {
                ctx.send(&Said {
                    from: "server".to_owned(),
                    text,
                })?;
                Outcome::reply("sent")
            }
            RoomMessage::Say { text } => Ok(Outcome::Broadcast(Said {
                from: ctx.user_id().clone(),
                text,
            })),
            RoomMessage::Quiet {} => Ok(Outcome::Handled),
            RoomMessage::Post { topic, text } => {
                let said = Said {
                    from: ctx.user_id().clone(),
                    text,
                };
                ctx.publish(&topic, &said).await?;
                Ok(Outcome::Handled)
            }
        }
    }
}

/// A running server for [`Room`].
#[derive(Debug)]
pub(crate) struct RoomServer {
    /// The service, for publishing, metrics and shutdown.
    pub(crate) service: Service<Room>,
    /// The hook counters.
    pub(crate) hooks: Arc<Hooks>,
    /// The HTTP server.
    pub(crate) server: TestServer,
}

impl RoomServer {
    /// A server with the default config.
    pub(crate) async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    /// A server with `config`.
    pub(crate) async fn with_config(config: Config) -> Self {
        let hooks = Arc::new(Hooks::default());
        let validator = validate_with(|token: &str| {
            if token == "bad" {
                Err(AuthError::InvalidToken)
            } else {
                Ok(token.to_owned())
            }
        });
        let service = Service::builder(Room, Arc::clone(&hooks), validator)
            .with_broker(MemoryBroker::new())
            .config(config)
            .build()
            .expect("valid config");
        let server =
            TestServer::start(realtime::route::router(service.clone(), "/ws/{topic}")).await;
        Self {
            service,
            hooks,
            server,
        }
    }

    /// The WebSocket URL of `topic`.
    pub(crate) fn url(&self, topic: &str) -> String {
        self.server.ws_url(&format!("/ws/{topic}"))
    }

    /// Connects `user` to `topic`.
    pub(crate) async fn connect(&self, topic: &str, user: &str) -> realtime::testing::TestClient {
        super::connect(&self.server, topic, user).await
    }
}
