//! The application's side: [`MessageHandler`], the per-connection
//! [`Context`] and the typed [`HandlerError`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::protocol::error_code;

mod context;

pub(crate) use context::Publish;
pub use context::{ConnectionId, Context};

/// A failure a handler reports to the client that sent the message.
///
/// The `code` and `message` go on the wire in an error frame
/// (`{"reply_to": 7, "error": {"code": 404, "message": "no such room"}}`);
/// the optional source is logged and never sent.
///
/// # Examples
///
/// ```
/// use realtime::HandlerError;
///
/// fn find(room: &str) -> Result<u32, HandlerError> {
///     if room == "lobby" { Ok(1) } else { Err(HandlerError::not_found(format!("no room `{room}`"))) }
/// }
///
/// let error = find("attic").unwrap_err();
/// assert_eq!(error.code(), 404);
/// assert_eq!(error.message(), "no room `attic`");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct HandlerError {
    code: u16,
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl HandlerError {
    /// An error with a code (HTTP status style) and a message for the client.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// Code 400: the request was understood but is not acceptable.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// Code 403: this user may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }

    /// Code 404: what the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// Code 500 with a generic message; `source` is logged, never sent.
    pub fn internal(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(error_code::INTERNAL, "internal error").with_source(source)
    }

    /// Attaches the underlying error, for logs only.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The code sent to the client.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<serde_json::Error> for HandlerError {
    /// A JSON error inside a handler is the server's: usually a reply or an
    /// event that does not serialize. It becomes code 500, with the serde
    /// error kept as the (logged) source.
    fn from(error: serde_json::Error) -> Self {
        Self::new(error_code::INTERNAL, "could not encode the answer as JSON").with_source(error)
    }
}

/// A direct method's answer, already serialized as JSON.
///
/// It becomes the `ok` of the reply frame: `{"reply_to": 7, "ok": <reply>}`.
///
/// # Examples
///
/// ```
/// use realtime::handler::Reply;
///
/// let reply = Reply::json(&vec!["a", "b"]).unwrap();
/// assert_eq!(reply.as_json(), r#"["a","b"]"#);
/// ```
#[derive(Debug, Clone)]
pub struct Reply(Box<RawValue>);

impl Reply {
    /// Serializes `value` as the answer.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] with code 500 when `value` does not serialize.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, HandlerError> {
        Ok(Self(serde_json::value::to_raw_value(value)?))
    }

    /// The answer's JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    pub(crate) fn raw(&self) -> &RawValue {
        &self.0
    }
}

/// What became of one client message; the service turns it into frames.
///
/// # Examples
///
/// ```
/// use realtime::handler::Outcome;
///
/// let answer: Outcome<String> = Outcome::reply(&["a", "b"]).unwrap();
/// assert!(matches!(answer, Outcome::Reply(reply) if reply.as_json() == r#"["a","b"]"#));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<E> {
    /// Answer the sender: `{"reply_to": id, "ok": ...}`.
    Reply(Reply),
    /// Publish this event to every subscriber of the message's topic, then
    /// acknowledge the sender if its frame had an id.
    Broadcast(E),
    /// Handled, nothing to send; acknowledged like a broadcast.
    Handled,
}

impl<E> Outcome<E> {
    /// Answers the sender with `value` serialized as JSON.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] with code 500 when `value` does not serialize.
    pub fn reply<T: Serialize + ?Sized>(value: &T) -> Result<Self, HandlerError> {
        Reply::json(value).map(Self::Reply)
    }
}

/// The application's logic: what to do with each client message.
///
/// `#[realtime_handler]` writes this impl from an annotated impl block; it
/// can also be written by hand: one `handle` that matches on the message and
/// says what became of it ([`Outcome`]), as below.
///
/// Messages are an enum tagged by `type` with the arguments under `data`
/// (`#[serde(tag = "type", content = "data")]`), with struct variants: the
/// service feeds a frame without `data` as `"data": {}`.
///
/// Every method returns `impl Future + Send`, so the impl may write them as
/// `async fn`.
///
/// # Examples
///
/// ```
/// use realtime::{Context, HandlerError, MessageHandler};
/// use realtime::handler::Outcome;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", content = "data", rename_all = "snake_case")]
/// enum ChatMessage {
///     Say { text: String },
///     Ping {},
/// }
///
/// #[derive(Serialize)]
/// struct Said { from: String, text: String }
///
/// struct Chat;
///
/// impl MessageHandler for Chat {
///     type ClientMessage = ChatMessage;
///     type ServerEvent = Said;
///     type AppState = ();
///     type UserId = String;
///
///     async fn handle(
///         &self,
///         msg: ChatMessage,
///         ctx: &Context<(), String>,
///     ) -> Result<Outcome<Said>, HandlerError> {
///         match msg {
///             // Answered to the sender only.
///             ChatMessage::Ping {} => Outcome::reply("pong"),
///             // Published to every subscriber of the topic.
///             ChatMessage::Say { text } => {
///                 Ok(Outcome::Broadcast(Said { from: ctx.user_id().clone(), text }))
///             }
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    note = "write `#[realtime_handler]` on `impl {Self} {{ ... }}`, or implement `MessageHandler` by hand"
)]
pub trait MessageHandler: Send + Sync + Sized + 'static {
    /// What clients send: an enum tagged by `type`, with `data`.
    type ClientMessage: DeserializeOwned + Send + Sync + 'static;
    /// What subscribers receive, as the `event` of an event frame.
    type ServerEvent: Serialize + Send + Sync + 'static;
    /// Shared application state, handed to every [`Context`].
    type AppState: Send + Sync + 'static;
    /// Who a connection belongs to, as the token validator returns it.
    type UserId: Clone + fmt::Debug + Send + Sync + 'static;

    /// The wire names of [`ClientMessage`](Self::ClientMessage)'s messages:
    /// the values the `type` label of the frame series takes (see
    /// [`telemetry`](crate::telemetry)). `#[realtime_handler]` fills it; a
    /// hand-written handler that leaves it empty has its messages counted
    /// as `message`.
    const MESSAGE_TYPES: &'static [&'static str] = &[];

    /// Runs once a connection is upgraded and subscribed, before its first
    /// message is read. The default does nothing.
    fn on_connect(
        &self,
        ctx: &Context<Self::AppState, Self::UserId>,
    ) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// Decides whether `user` may subscribe to `topic`; `false` answers the
    /// upgrade request with HTTP 403. Runs before the upgrade, and again for
    /// each topic the connection asks to subscribe to with `$join` (then
    /// `false` answers an error frame with code 403). The default allows
    /// every topic.
    fn authorize_topic(
        &self,
        state: &Self::AppState,
        user: &Self::UserId,
        topic: &str,
    ) -> impl Future<Output = bool> + Send {
        let _ = (state, user, topic);
        async { true }
    }

    /// Runs once the connection is subscribed to `topic` with `$join`,
    /// before the client's acknowledgement. The URL's topic has
    /// [`on_connect`](Self::on_connect) instead. The default does nothing.
    fn on_join(
        &self,
        ctx: &Context<Self::AppState, Self::UserId>,
        topic: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, topic);
        async {}
    }

    /// Runs once for each [`on_join`](Self::on_join), when the connection
    /// is no longer subscribed to that topic: after a `$leave` (before its
    /// acknowledgement), or when the connection ended while still subscribed
    /// (before [`on_disconnect`](Self::on_disconnect)). The default does
    /// nothing.
    fn on_leave(
        &self,
        ctx: &Context<Self::AppState, Self::UserId>,
        topic: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, topic);
        async {}
    }

    /// Handles one message: answer the sender ([`Outcome::Reply`]), publish
    /// an event to every subscriber of the message's topic, on every
    /// instance ([`Outcome::Broadcast`]), or nothing ([`Outcome::Handled`]).
    /// An error is answered to the sender as an error frame.
    ///
    /// The service calls it for one message of a connection at a time, in
    /// the order the client sent them.
    fn handle(
        &self,
        msg: Self::ClientMessage,
        ctx: &Context<Self::AppState, Self::UserId>,
    ) -> impl Future<Output = Result<Outcome<Self::ServerEvent>, HandlerError>> + Send;

    /// Runs once when the connection is gone, however it ended (close frame,
    /// dropped TCP connection, limit, shutdown). The default does nothing.
    fn on_disconnect(
        &self,
        ctx: &Context<Self::AppState, Self::UserId>,
    ) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}
