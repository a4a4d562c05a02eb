//! Wire protocol version 1: the frames a client sends and receives.
//!
#![doc = include_str!("../../docs/protocol.md")]

use tungstenite::Utf8Bytes;

mod incoming;
mod outgoing;
mod position;

pub(crate) use incoming::{Control, Request, read_envelope};
#[cfg(feature = "redis")]
pub(crate) use outgoing::split_event;
pub(crate) use outgoing::{
    ack_frame, error_frame, event_frame, expiring_frame, joined_frame, presence_frame,
    presence_head, presence_list_frame, published_frame, refreshed_frame, reply_frame, reset_frame,
    subscribed_frame, unsubscribed_frame, with_offset,
};
pub(crate) use position::is_epoch;
pub use position::{Position, PositionError};

/// WebSocket close codes the server sends (RFC 6455, section 7.4.1).
pub mod close_code {
    /// A normal close. The server does not start one; it answers a client's
    /// close with the client's code.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down (or restarting).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol: an unmasked frame, a
    /// reserved opcode or bit.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent a binary frame; this protocol speaks JSON text only.
    pub const UNSUPPORTED: u16 = 1003;
    /// The client sent a text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The client broke a policy: it flooded past the rate limit or stayed
    /// silent past the idle timeout.
    pub const POLICY: u16 = 1008;
    /// The client sent a frame larger than `Config::max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error the server cannot recover from on this socket.
    /// Reserved: no path sends it today, since handler errors are answered
    /// with error frames and the socket stays open.
    pub const ERROR: u16 = 1011;
    /// The client read too slowly: its outbound queue was full.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection's token expired (registered for WebSocket as
    /// "Unauthorized"): the client connects again with a fresh token.
    pub const UNAUTHORIZED: u16 = 3000;
    /// The server ended the user's sessions (`Service::disconnect_user`;
    /// registered for WebSocket as "Forbidden"): the client does not
    /// reconnect.
    pub const FORBIDDEN: u16 = 3003;
}

/// The reason text sent with each close code the server uses.
pub(crate) fn close_reason(code: u16) -> &'static str {
    match code {
        close_code::NORMAL => "bye",
        close_code::GOING_AWAY => "server shutting down",
        close_code::PROTOCOL_ERROR => "websocket protocol error",
        close_code::UNSUPPORTED => "binary frames are not supported; send JSON text",
        close_code::INVALID_DATA => "text frame is not valid UTF-8",
        close_code::POLICY => "policy violation: rate limit or idle timeout",
        close_code::TOO_BIG => "frame too large",
        close_code::TRY_AGAIN_LATER => "too slow: outbound queue full",
        close_code::FORBIDDEN => "the server ended this user's sessions",
        close_code::UNAUTHORIZED => {
            "token expired: send $refresh before it does, or connect with a fresh token"
        }
        _ => "",
    }
}

/// Codes carried in the `error` object of an error frame. They follow the
/// HTTP status codes a web developer already knows.
pub mod error_code {
    /// The frame could not be understood: not JSON, no `type`, an unknown
    /// type, a missing or mistyped field, a topic the connection does not
    /// follow.
    pub const BAD_REQUEST: u16 = 400;
    /// A `$refresh` whose token the validator refused.
    pub const UNAUTHORIZED: u16 = 401;
    /// The handler's `authorize_topic` refused a `$join`, or a `$refresh`
    /// brought another user's token.
    pub const FORBIDDEN: u16 = 403;
    /// The client is sending faster than `Config::max_messages_per_sec`.
    pub const TOO_MANY_REQUESTS: u16 = 429;
    /// The handler failed in a way that is not the client's fault.
    pub const INTERNAL: u16 = 500;
    /// The broker could not take the event; it reached nobody.
    pub const UNAVAILABLE: u16 = 503;
}

/// Prefix of the type names reserved for built-in control messages.
pub const RESERVED_PREFIX: char = '$';

/// One serialized server frame: the exact JSON text a client receives,
/// in a shared buffer that is cheap to clone.
///
/// An event is serialized once, into a `Frame`; that frame is what crosses
/// the [`Broker`](crate::Broker) and what every local subscriber's writer
/// sends. Its UTF-8 is checked once: where it is built, or where it comes
/// in from the network ([`Frame::from_utf8`]).
///
/// # Examples
///
/// ```
/// use realtime::protocol::Frame;
///
/// let frame = Frame::from_utf8(bytes::Bytes::from_static(br#"{"topic":"t","event":1}"#))
///     .expect("valid UTF-8");
/// assert_eq!(frame.as_str(), r#"{"topic":"t","event":1}"#);
/// assert!(Frame::from_utf8(bytes::Bytes::from_static(b"\xff")).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// Checks that `bytes` are UTF-8, for a frame that came from outside
    /// the process (a broker's connection).
    ///
    /// # Errors
    ///
    /// [`std::str::Utf8Error`] when they are not.
    pub fn from_utf8(bytes: bytes::Bytes) -> Result<Self, std::str::Utf8Error> {
        Utf8Bytes::try_from(bytes).map(Self)
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame's bytes, as a broker sends them.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The longest `idempotency_key`, in bytes: room for a UUID in any of its
/// spellings, and a bound on what a client makes the broker keep per key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 64;
