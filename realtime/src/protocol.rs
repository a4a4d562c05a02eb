//! Wire protocol version 1: the frames a client sends and receives.
//!
#![doc = include_str!("../docs/protocol.md")]

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::extract::ws::Utf8Bytes;
use serde::de::{DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::history::Position;

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
    /// The handler's `authorize_topic` refused a `$join`.
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

    /// The text as the WebSocket writer takes it.
    pub(crate) fn into_text(self) -> Utf8Bytes {
        self.0
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

/// The built-in control messages: a connection subscribes to more topics
/// than the one of its URL with `$join`, and unsubscribes with `$leave`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// `{"type": "$join", "data": {"topic": "room:2"}}`, with
    /// `"since": {"offset": 42, "epoch": "x7Fq"}` to resume.
    Join {
        topic: String,
        since: Option<crate::history::Position>,
    },
    /// `{"type": "$leave", "data": {"topic": "room:2"}}`
    Leave { topic: String },
    /// `{"type": "$presence", "data": {"topic": "lobby"}}`, answered with
    /// the topic's [`Presence`](crate::presence::Presence).
    Presence { topic: String },
    /// `{"type": "$ping", "id": 3}`, answered `{"reply_to": 3, "ok": "pong"}`:
    /// a client's heartbeat. Browsers neither show the server's WebSocket
    /// pings to a page nor let it send its own, so a client that wants to
    /// know the connection is alive asks.
    Ping,
}

/// The `data` of `$join` and `$leave`.
#[derive(Deserialize)]
struct TopicData {
    topic: String,
    #[serde(default)]
    since: Option<crate::history::Position>,
}

impl Control {
    /// The wire name of the subscribe message.
    pub(crate) const JOIN: &'static str = "$join";
    /// The wire name of the unsubscribe message.
    pub(crate) const LEAVE: &'static str = "$leave";
    /// The wire name of the heartbeat request.
    pub(crate) const PING: &'static str = "$ping";
    /// The wire name of the presence request.
    pub(crate) const PRESENCE: &'static str = "$presence";

    /// Reads a frame whose type starts with [`RESERVED_PREFIX`].
    pub(crate) fn decode<'a>(request: &Request<'a>) -> Result<Self, FrameError<'a>> {
        let kind = &*request.kind;
        if kind == Self::PING {
            return Ok(Self::Ping);
        }
        if kind != Self::JOIN && kind != Self::LEAVE && kind != Self::PRESENCE {
            return Err(FrameError {
                id: request.id,
                message: format!(
                    "unknown control message `{kind}`; known: `{}`, `{}`, `{}`, `{}`; type names starting with `{RESERVED_PREFIX}` are reserved",
                    Self::JOIN,
                    Self::LEAVE,
                    Self::PRESENCE,
                    Self::PING
                ),
            });
        }
        let TopicData { topic, since } = request.decode_data()?;
        if let Some(since) = &since
            && !crate::history::is_epoch(&since.epoch)
        {
            return Err(FrameError {
                id: request.id,
                message: format!(
                    "invalid `data.since.epoch` `{}`: 1 to 32 letters and digits",
                    since.epoch
                ),
            });
        }
        Ok(match kind {
            Self::JOIN => Self::Join { topic, since },
            Self::LEAVE => Self::Leave { topic },
            _ => Self::Presence { topic },
        })
    }
}

/// A client frame whose envelope was read: its type, its arguments, its id
/// and the topic it is about.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) kind: Cow<'a, str>,
    pub(crate) data: Option<&'a RawValue>,
    pub(crate) id: Option<&'a RawValue>,
    /// `None`: the topic of the connection's URL.
    pub(crate) topic: Option<Cow<'a, str>>,
    /// A broadcast published under this key within the window is
    /// acknowledged again, not published twice.
    pub(crate) idempotency_key: Option<Cow<'a, str>>,
}

/// The longest `idempotency_key`, in bytes: room for a UUID in any of its
/// spellings, and a bound on what a client makes the broker keep per key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 64;

/// A client frame that could not be turned into a message.
#[derive(Debug, Clone)]
pub(crate) struct FrameError<'a> {
    /// The frame's `id`, when it could be read, so the error can answer it.
    pub(crate) id: Option<&'a RawValue>,
    pub(crate) message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    idempotency_key: Option<Cow<'a, str>>,
}

/// The id alone, read when the envelope as a whole is wrong, so that the error
/// can still say which request it answers.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// Reads the envelope `{"type": ..., "data": ..., "id": ...}` of a text frame.
pub(crate) fn read_envelope(text: &str) -> Result<Request<'_>, FrameError<'_>> {
    match serde_json::from_str::<Envelope<'_>>(text) {
        Ok(envelope) => {
            if envelope.id.is_some_and(|id| !is_valid_id(id)) {
                return Err(FrameError {
                    id: None,
                    message: "`id` must be a number or a string".to_owned(),
                });
            }
            if envelope
                .idempotency_key
                .as_ref()
                .is_some_and(|key| key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
            {
                return Err(FrameError {
                    id: envelope.id,
                    message: format!(
                        "`idempotency_key` must be a string of 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
                    ),
                });
            }
            Ok(Request {
                kind: envelope.kind,
                data: envelope.data,
                id: envelope.id,
                topic: envelope.topic,
                idempotency_key: envelope.idempotency_key,
            })
        }
        Err(error) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|frame| frame.id)
                .filter(|id| is_valid_id(id));
            let message = if error.is_syntax() || error.is_eof() {
                format!("malformed JSON: {}", without_position(&error))
            } else {
                format!(
                    "malformed frame: {}; expected {{\"type\": \"...\", \"data\": {{...}}, \"id\": ...}}",
                    without_position(&error)
                )
            };
            Err(FrameError { id, message })
        }
    }
}

fn is_valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

impl<'a> Request<'a> {
    /// Deserializes the handler's message type from this frame's type and data.
    ///
    /// The message type is an enum tagged by `type` with its fields under
    /// `data` (`#[serde(tag = "type", content = "data")]`), which is what
    /// `#[realtime_handler]` generates. A frame without `data` is read as if it
    /// carried `"data": {}`, so a message whose arguments are all optional can
    /// leave it out.
    pub(crate) fn decode<M: DeserializeOwned>(&self) -> Result<M, FrameError<'a>> {
        let fields = FrameFields {
            kind: Some(&self.kind),
            data: Some(match self.data {
                Some(data) => data,
                None => empty_object(),
            }),
        };
        let deserializer = serde::de::value::MapAccessDeserializer::new(fields);
        serde_path_to_error::deserialize(deserializer).map_err(|error| FrameError {
            id: self.id,
            message: describe(&error, ""),
        })
    }

    /// Deserializes the frame's `data` alone (`{}` when it has none).
    fn decode_data<T: DeserializeOwned>(&self) -> Result<T, FrameError<'a>> {
        let data = match self.data {
            Some(data) => data,
            None => empty_object(),
        };
        serde_path_to_error::deserialize(data.into_deserializer()).map_err(|error| FrameError {
            id: self.id,
            message: describe(&error, "data."),
        })
    }
}

/// `{}`, for a frame that has no `data`.
fn empty_object() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).expect("`{}` is valid JSON"))
}

/// Turns a decoding error into the message of an error frame: what was wrong,
/// and where.
/// `prefix` goes before the error's path: `data.` when `data` itself was
/// deserialized, so that the path still names the field as the client wrote it.
fn describe(error: &serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> String {
    let mut inner = without_position(error.inner());
    // serde names the expected shape by the generated enum ("expected struct
    // variant RoomClientMessage::Say"): Rust, not protocol.
    if let Some(at) = inner.find(", expected struct variant ") {
        inner.truncate(at);
        inner.push_str(", expected an object");
    }
    if let Some(rest) = inner.strip_prefix("unknown variant ") {
        // serde says "unknown variant `x`, expected one of `a`, `b`, `c`",
        // "expected `a` or `b`" for two: one list, the same for every count.
        let (name, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let known = known.strip_prefix("one of ").unwrap_or(known);
        let known = known.replace("` or `", "`, `");
        return if known.is_empty() {
            format!("unknown type {name}")
        } else {
            format!("unknown type {name}; known types: {known}")
        };
    }
    // Paths start at the fields we feed in: "data.limit" names the field.
    let path = error.path().to_string();
    match path.as_str() {
        "" | "." | "data" => format!("invalid `data`: {inner}"),
        _ => format!("invalid field `{prefix}{path}`: {inner}"),
    }
}

/// serde_json's message without " at line 1 column 9", which points into a
/// buffer the client never sees.
fn without_position(error: &serde_json::Error) -> String {
    let mut text = error.to_string();
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    text
}

/// Presents `type` and `data` to the message's `Deserialize` impl as a
/// two-entry map, so the adjacently tagged enum reads the tag first and then
/// deserializes `data` straight from the client's bytes, without buffering.
struct FrameFields<'a> {
    kind: Option<&'a str>,
    data: Option<&'a RawValue>,
}

impl<'de> MapAccess<'de> for FrameFields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = if self.kind.is_some() {
            "type"
        } else if self.data.is_some() {
            "data"
        } else {
            return Ok(None);
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        if let Some(kind) = self.kind.take() {
            return seed.deserialize(kind.into_deserializer());
        }
        let data = self
            .data
            .take()
            .expect("serde asks for a value after each key");
        seed.deserialize(data.into_deserializer())
    }
}

/// Serializes `value` as JSON, appended to `buffer`.
fn to_json<T: Serialize + ?Sized>(
    buffer: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(buffer, value)
}

/// `{"topic": <topic>, "event": <event>}`: the frame every subscriber of
/// `topic` receives, serialized once.
///
/// # Errors
///
/// Fails when the event's `Serialize` impl fails.
pub(crate) fn event_frame<E: Serialize + ?Sized>(
    topic: &str,
    event: &E,
) -> Result<Frame, serde_json::Error> {
    let mut buffer = Vec::with_capacity(64 + topic.len());
    buffer.extend_from_slice(b"{\"topic\":");
    to_json(&mut buffer, topic)?;
    buffer.extend_from_slice(b",\"event\":");
    to_json(&mut buffer, event)?;
    buffer.push(b'}');
    Ok(utf8(buffer))
}

/// `{"topic": <topic>, "subscribed": {"offset": .., "epoch": .., "recovered": ..}}`:
/// a subscription to a topic with history is live. `recovered` is there
/// when the client asked to resume.
pub(crate) fn subscribed_frame(topic: &str, position: &Position, recovered: Option<bool>) -> Frame {
    let mut text = position_frame(topic, "subscribed", position);
    text.pop();
    text.pop();
    if let Some(recovered) = recovered {
        let _ = write!(text, ",\"recovered\":{recovered}");
    }
    text.push_str("}}");
    Frame::from(text)
}

/// `{"topic": <topic>, "reset": {"offset": .., "epoch": ..}}`: events of a
/// live subscription were lost; the client reloads its state.
pub(crate) fn reset_frame(topic: &str, position: &Position) -> Frame {
    Frame::from(position_frame(topic, "reset", position))
}

/// `{"topic":<topic>,`: the start of a `join` or `leave` frame, which a
/// broker completes with [`presence_frame`] (the Redis broker's script
/// does the same in Lua).
pub(crate) fn presence_head(topic: &str) -> String {
    let mut text = String::with_capacity(12 + topic.len());
    text.push_str("{\"topic\":");
    text.push_str(&serde_json::to_string(topic).expect("a string always serializes"));
    text.push(',');
    text
}

/// `{"topic": <topic>, "<join|leave>": {"user": <user as JSON>}}`, from
/// [`presence_head`].
pub(crate) fn presence_frame(head: &str, kind: &str, user: &str) -> Frame {
    Frame::from(format!("{head}\"{kind}\":{{\"user\":{user}}}}}"))
}

/// `{"topic": <topic>, "presence": {"clients": .., "users": {..}}}`: the
/// whole of a topic's presence, sent to an instance's subscribers when its
/// link to the broker came back (the joins and leaves published meanwhile
/// never came); the client replaces its list with it.
pub(crate) fn presence_list_frame(topic: &str, presence: &crate::presence::Presence) -> Frame {
    let mut text = presence_head(topic);
    text.push_str("\"presence\":");
    text.push_str(&serde_json::to_string(presence).expect("presence always serializes"));
    text.push('}');
    Frame::from(text)
}

/// `{"topic": <topic>, "<name>": {"offset": .., "epoch": ..}}`.
fn position_frame(topic: &str, name: &str, position: &Position) -> String {
    let mut text = String::with_capacity(64 + topic.len());
    text.push_str("{\"topic\":");
    text.push_str(&serde_json::to_string(topic).expect("a string always serializes"));
    // An epoch is letters and digits: nothing to escape.
    let _ = write!(
        text,
        ",\"{name}\":{{\"offset\":{},\"epoch\":\"{}\"}}}}",
        position.offset, position.epoch
    );
    text
}

/// `{"reply_to": <id>, "ok": <value>}`: a direct method's answer.
pub(crate) fn reply_frame(id: Option<&RawValue>, value: &RawValue) -> Frame {
    let mut text = String::with_capacity(24 + value.get().len());
    text.push('{');
    push_reply_to(&mut text, id);
    text.push_str("\"ok\":");
    text.push_str(value.get());
    text.push('}');
    Frame::from(text)
}

/// `{"reply_to": <id>, "ok": null}`: an acknowledgement.
pub(crate) fn ack_frame(id: &RawValue) -> Frame {
    published_frame(id, None)
}

/// A broadcast's acknowledgement: `{"reply_to": <id>, "ok": {"offset": ..,
/// "epoch": ..}}` with the event's position on a topic with history,
/// `"ok": null` on one without.
pub(crate) fn published_frame(id: &RawValue, position: Option<&Position>) -> Frame {
    let mut text = String::with_capacity(64);
    text.push('{');
    push_reply_to(&mut text, Some(id));
    match position {
        // An epoch is letters and digits: nothing to escape.
        Some(position) => {
            let _ = write!(
                text,
                "\"ok\":{{\"offset\":{},\"epoch\":\"{}\"}}}}",
                position.offset, position.epoch
            );
        }
        None => text.push_str("\"ok\":null}"),
    }
    Frame::from(text)
}

/// `{"reply_to": <id>, "error": {"code": <code>, "message": <message>}}`.
pub(crate) fn error_frame(id: Option<&RawValue>, code: u16, message: &str) -> Frame {
    let mut text = String::with_capacity(48 + message.len());
    text.push('{');
    push_reply_to(&mut text, id);
    // A u16 and a JSON string cannot fail to format.
    let _ = write!(text, "\"error\":{{\"code\":{code},\"message\":");
    text.push_str(&serde_json::to_string(message).expect("a string always serializes"));
    text.push_str("}}");
    Frame::from(text)
}

fn push_reply_to(text: &mut String, id: Option<&RawValue>) {
    if let Some(id) = id {
        text.push_str("\"reply_to\":");
        text.push_str(id.get());
        text.push(',');
    }
}

fn utf8(buffer: Vec<u8>) -> Frame {
    // serde_json writes valid UTF-8 only, so the check cannot fail; it is done
    // once per event, where the event is serialized, not per subscriber.
    Frame(Utf8Bytes::try_from(buffer).expect("serde_json writes UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "type", content = "data", rename_all = "snake_case")]
    enum Msg {
        Say { text: String },
        History { limit: u32 },
        Ping {},
        Opt { note: Option<String> },
    }

    fn decode(text: &str) -> Result<Msg, String> {
        let request = read_envelope(text).map_err(|e| e.message)?;
        request.decode::<Msg>().map_err(|e| e.message)
    }

    #[test]
    fn decodes_type_data_and_id() {
        let request = read_envelope(r#"{"type":"say","data":{"text":"hi"},"id":7}"#).unwrap();
        assert_eq!(request.id.map(RawValue::get), Some("7"));
        assert_eq!(
            request.decode::<Msg>().unwrap(),
            Msg::Say { text: "hi".into() }
        );
    }

    #[test]
    fn data_may_come_before_type() {
        assert_eq!(
            decode(r#"{"id":"a","data":{"limit":3},"type":"history"}"#),
            Ok(Msg::History { limit: 3 })
        );
    }

    #[test]
    fn absent_data_reads_as_empty_object() {
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(Msg::Ping {}));
        assert_eq!(decode(r#"{"type":"opt"}"#), Ok(Msg::Opt { note: None }));
    }

    #[test]
    fn unknown_type_lists_known_types() {
        assert_eq!(
            decode(r#"{"type":"sya","data":{}}"#),
            Err("unknown type `sya`; known types: `say`, `history`, `ping`, `opt`".into())
        );
    }

    #[test]
    fn two_known_types_are_listed_as_any_other_count() {
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", content = "data", rename_all = "snake_case")]
        enum Two {
            Say {},
            History {},
        }
        let error = read_envelope(r#"{"type":"sya"}"#)
            .expect("a request")
            .decode::<Two>()
            .expect_err("unknown");
        assert_eq!(
            error.message,
            "unknown type `sya`; known types: `say`, `history`"
        );
    }

    #[test]
    fn wrong_field_type_names_field_and_type() {
        assert_eq!(
            decode(r#"{"type":"history","data":{"limit":"x"}}"#),
            Err("invalid field `data.limit`: invalid type: string \"x\", expected u32".into())
        );
    }

    #[test]
    fn missing_field_is_named() {
        assert_eq!(
            decode(r#"{"type":"say","data":{}}"#),
            Err("invalid `data`: missing field `text`".into())
        );
    }

    #[test]
    fn data_of_the_wrong_shape_names_no_rust_type() {
        for data in [r#""hello""#, "[1]", "3"] {
            let frame = format!(r#"{{"type":"say","data":{data}}}"#);
            let message = decode(&frame).unwrap_err();
            assert!(
                message.starts_with("invalid `data`: ")
                    && message.ends_with(", expected an object"),
                "{message}"
            );
            assert!(!message.contains("Msg"), "{message}");
        }
    }

    #[test]
    fn malformed_json_keeps_no_position() {
        assert_eq!(
            decode("{nope"),
            Err("malformed JSON: key must be a string".into())
        );
    }

    #[test]
    fn missing_type_is_a_malformed_frame_with_its_id() {
        let error = read_envelope(r#"{"data":{},"id":3}"#).unwrap_err();
        assert_eq!(error.id.map(RawValue::get), Some("3"));
        assert!(
            error
                .message
                .starts_with("malformed frame: missing field `type`")
        );
    }

    #[test]
    fn object_id_is_refused() {
        let error = read_envelope(r#"{"type":"say","id":{}}"#).unwrap_err();
        assert!(error.id.is_none());
    }

    #[test]
    fn frames_have_the_documented_shape() {
        let id = RawValue::from_string("7".into()).unwrap();
        let ok = RawValue::from_string("[1,2]".into()).unwrap();
        assert_eq!(
            reply_frame(Some(&id), &ok).as_str(),
            r#"{"reply_to":7,"ok":[1,2]}"#
        );
        assert_eq!(reply_frame(None, &ok).as_str(), r#"{"ok":[1,2]}"#);
        assert_eq!(ack_frame(&id).as_str(), r#"{"reply_to":7,"ok":null}"#);
        assert_eq!(
            error_frame(Some(&id), 400, "bad \"x\"").as_str(),
            r#"{"reply_to":7,"error":{"code":400,"message":"bad \"x\""}}"#
        );
        assert_eq!(
            event_frame("room:1", &serde_json::json!({"text": "hi"}))
                .unwrap()
                .as_str(),
            r#"{"topic":"room:1","event":{"text":"hi"}}"#
        );
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;

    fn control(text: &str) -> Result<Control, String> {
        let request = read_envelope(text).map_err(|e| e.message)?;
        Control::decode(&request).map_err(|e| e.message)
    }

    #[test]
    fn reads_join_and_leave() {
        assert_eq!(
            control(r#"{"type":"$join","data":{"topic":"a"}}"#),
            Ok(Control::Join {
                topic: "a".into(),
                since: None
            })
        );
        assert_eq!(
            control(r#"{"type":"$leave","data":{"topic":"a"}}"#),
            Ok(Control::Leave { topic: "a".into() })
        );
        assert_eq!(
            control(r#"{"type":"$presence","data":{"topic":"a"}}"#),
            Ok(Control::Presence { topic: "a".into() })
        );
    }

    #[test]
    fn presence_frames_escape_the_topic() {
        let frame = presence_frame(&presence_head("a\"b"), "join", r#""carol""#);
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["topic"], "a\"b");
        assert_eq!(value["join"]["user"], "carol");
    }

    #[test]
    fn names_a_wrong_field_as_the_client_wrote_it() {
        assert_eq!(
            control(r#"{"type":"$join","data":{"topic":5}}"#),
            Err("invalid field `data.topic`: invalid type: integer `5`, expected a string".into())
        );
        assert_eq!(
            control(r#"{"type":"$join"}"#),
            Err("invalid `data`: missing field `topic`".into())
        );
    }

    #[test]
    fn refuses_an_unknown_control_message() {
        assert_eq!(
            control(r#"{"type":"$subscribe"}"#),
            Err("unknown control message `$subscribe`; known: `$join`, `$leave`, `$presence`, `$ping`; type names starting with `$` are reserved".into())
        );
    }
}
