//! Helpers for applications' own tests: a server on `127.0.0.1:0` and a
//! client that speaks the protocol over a real WebSocket.
//!
//! Every wait has a deadline ([`DEADLINE`]) and panics with what it was
//! waiting for, so a broken test fails with a reason instead of hanging.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo(app: axum::Router) {
//! use realtime::testing::{TestClient, TestServer};
//!
//! let server = TestServer::start(app).await;
//! let mut client = TestClient::connect(&server.ws_url("/ws/lobby"), "alice").await.unwrap();
//! client.send(serde_json::json!({"type": "say", "data": {"text": "hi"}, "id": 1})).await;
//! let event = client.recv().await;
//! assert_eq!(event["event"]["text"], "hi");
//! # }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any helper here waits before it gives up and panics.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// An axum app served on `127.0.0.1:0` until dropped.
///
/// Dropping it stops accepting, but does not end the connections already
/// open: their `on_disconnect` hooks run when they end, which may be after
/// the test has returned (then never). A test that checks what
/// `on_disconnect` did closes its clients first
/// ([`TestClient::close`]), or calls [`Service::shutdown`](crate::Service::shutdown),
/// which closes every connection and returns once each one's
/// `on_disconnect` has run.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Binds a free port on 127.0.0.1 and serves `app` on it.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub async fn start(app: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why [`TestClient::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server answered the upgrade request with this HTTP status.
    #[error("upgrade refused with HTTP {0}")]
    Refused(StatusCode),
    /// The connection itself failed.
    #[error("could not connect")]
    Io(#[source] tungstenite::Error),
    /// No answer within [`DEADLINE`].
    #[error("no answer within the deadline")]
    Timeout,
}

impl ConnectError {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused(status) => Some(status.as_u16()),
            _ => None,
        }
    }
}

/// What the server ended a connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Closed {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl Closed {
    /// The close code, if a close frame came.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Frame(code, _) => Some(*code),
            Self::Dropped => None,
        }
    }
}

/// A WebSocket client that speaks protocol v1, for tests.
///
/// Frames it read while looking for another kind (an event that arrived
/// before the answer [`request`](Self::request) waits for) are kept, in
/// order, for the next [`recv`](Self::recv), [`recv_event`](Self::recv_event)
/// or [`recv_reply`](Self::recv_reply): a test never loses one.
#[derive(Debug)]
pub struct TestClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    held: std::collections::VecDeque<Value>,
}

impl TestClient {
    /// Connects to `url` with `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Refused`] carries the HTTP status of a refused upgrade.
    pub async fn connect(url: &str, token: &str) -> Result<Self, ConnectError> {
        let mut request = url.into_client_request().map_err(ConnectError::Io)?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|error| ConnectError::Io(tungstenite::Error::HttpFormat(error.into())))?;
        request.headers_mut().insert("authorization", value);
        Self::connect_request(request).await
    }

    /// Connects with a request the caller built (other headers, no token).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_request(
        request: tungstenite::handshake::client::Request,
    ) -> Result<Self, ConnectError> {
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(DEADLINE, connecting).await {
            Err(_) => Err(ConnectError::Timeout),
            Ok(Ok((socket, _))) => Ok(Self {
                socket,
                held: std::collections::VecDeque::new(),
            }),
            Ok(Err(tungstenite::Error::Http(response))) => {
                Err(ConnectError::Refused(response.status()))
            }
            Ok(Err(error)) => Err(ConnectError::Io(error)),
        }
    }

    /// Sends `value` as a JSON text frame.
    ///
    /// # Panics
    ///
    /// When the frame cannot be written.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a raw text frame.
    ///
    /// # Panics
    ///
    /// When the frame cannot be written.
    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text)).await;
    }

    /// Sends any WebSocket message (a binary frame, say).
    ///
    /// # Panics
    ///
    /// When the frame cannot be written.
    pub async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(DEADLINE, self.socket.send(message))
            .await
            .expect("send within the deadline")
            .expect("send a frame");
    }

    /// Sends `{"type": kind, "data": data, "id": id}` and returns the frame
    /// that answers it (the first with `reply_to == id`); frames that arrive
    /// first are kept for the next `recv`.
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv).
    pub async fn request(&mut self, kind: &str, data: Value, id: u64) -> Value {
        self.send(serde_json::json!({"type": kind, "data": data, "id": id}))
            .await;
        self.answer_to(id).await
    }

    /// Sends `message` with `id` and returns the frame that answers it, as
    /// [`request`](Self::request) does. `message` is a value of the
    /// client-message enum that `#[realtime_handler(..., serialize)]`
    /// generates, so that a renamed method or argument fails to compile
    /// instead of failing the test.
    ///
    /// ```
    /// use realtime::prelude::*;
    /// use realtime::testing::TestClient;
    ///
    /// struct Chat;
    ///
    /// #[realtime_handler(state = (), user = String, serialize)]
    /// impl Chat {
    ///     #[direct]
    ///     async fn echo(&self, text: String) -> Result<String, HandlerError> {
    ///         Ok(text)
    ///     }
    /// }
    ///
    /// async fn echo_hi(client: &mut TestClient) -> serde_json::Value {
    ///     let message = ChatClientMessage::Echo { text: "hi".into() };
    ///     client.call(&message, 1).await // {"reply_to": 1, "ok": "hi"}
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// When `message` does not serialize to a JSON object, and as
    /// [`recv`](Self::recv).
    pub async fn call<M: serde::Serialize>(&mut self, message: &M, id: u64) -> Value {
        let mut frame = serde_json::to_value(message).expect("the message serializes");
        let Some(fields) = frame.as_object_mut() else {
            panic!("a client message serializes to an object, got {frame}");
        };
        fields.insert("id".to_owned(), Value::from(id));
        self.send(frame).await;
        self.answer_to(id).await
    }

    /// The frame with `reply_to == id`; frames that arrive first are kept.
    async fn answer_to(&mut self, id: u64) -> Value {
        let id = Value::from(id);
        self.recv_where(|frame| frame.get("reply_to") == Some(&id))
            .await
    }

    /// The next event frame (`{"topic": ..., "event": ...}`); other frames
    /// that arrive first are kept for the next `recv`.
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_event(&mut self) -> Value {
        self.recv_where(|frame| frame.get("topic").is_some()).await
    }

    /// The next answer (`{"reply_to": ..., "ok": ...}` or an error frame);
    /// event frames that arrive first are kept for the next `recv`.
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_reply(&mut self) -> Value {
        self.recv_where(|frame| frame.get("topic").is_none()).await
    }

    /// The first frame, held or new, that `wanted` accepts; the others stay
    /// held, in order.
    async fn recv_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.held.iter().position(&wanted) {
            return self.held.remove(at).expect("the position is in range");
        }
        loop {
            let frame = self.recv_new().await;
            if wanted(&frame) {
                return frame;
            }
            self.held.push_back(frame);
        }
    }

    /// Subscribes to one more topic: sends `$join` with `id` and returns the
    /// answer (`{"reply_to": id, "ok": null}` once subscribed).
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv).
    pub async fn join(&mut self, topic: &str, id: u64) -> Value {
        self.request("$join", serde_json::json!({ "topic": topic }), id)
            .await
    }

    /// Unsubscribes from a `$join`ed topic: sends `$leave` with `id` and
    /// returns the answer.
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv).
    pub async fn leave(&mut self, topic: &str, id: u64) -> Value {
        self.request("$leave", serde_json::json!({ "topic": topic }), id)
            .await
    }

    /// The next text frame, parsed as JSON; pings are skipped.
    ///
    /// # Panics
    ///
    /// When nothing arrives within [`DEADLINE`], the connection closes, or
    /// the frame is not JSON text.
    pub async fn recv(&mut self) -> Value {
        match self.held.pop_front() {
            Some(frame) => frame,
            None => self.recv_new().await,
        }
    }

    /// The next text frame from the socket.
    async fn recv_new(&mut self) -> Value {
        match self.next_message().await {
            Ok(Message::Text(text)) => serde_json::from_str(&text).expect("a JSON text frame"),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Waits for the server to end the connection and says how; text frames
    /// that arrive first are skipped.
    ///
    /// # Panics
    ///
    /// When the connection is still open after [`DEADLINE`].
    pub async fn recv_close(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the server closes the connection within the deadline");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed::Frame(u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed::Frame(u16::from(CloseCode::Status), String::new());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Closed::Dropped,
            }
        }
    }

    /// Whether no text frame arrives within `window`. Only for asserting a
    /// negative after a positive has been waited for.
    pub async fn is_silent_for(&mut self, window: Duration) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(_) => return false,
            }
        }
    }

    /// Sends a close frame and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(DEADLINE, self.socket.close(None)).await;
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }

    /// The underlying tokio-tungstenite stream.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.socket
    }

    async fn next_message(&mut self) -> Result<Message, String> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| "no frame within the deadline".to_owned())?;
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(message)) => return Ok(message),
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the connection ended".to_owned()),
            }
        }
    }
}
