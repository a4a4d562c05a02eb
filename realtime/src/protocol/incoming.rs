//! Frames in: the envelope of a client frame, the message it carries, and
//! the built-in control messages.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess};
use serde_json::value::RawValue;

use super::{MAX_IDEMPOTENCY_KEY_BYTES, Position, RESERVED_PREFIX, is_epoch};

/// The built-in control messages: a connection subscribes to more topics
/// than the one of its URL with `$join`, and unsubscribes with `$leave`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// `{"type": "$join", "data": {"topic": "room:2"}}`, with
    /// `"since": {"offset": 42, "epoch": "x7Fq"}` to resume.
    Join {
        topic: String,
        since: Option<Position>,
    },
    /// `{"type": "$leave", "data": {"topic": "room:2"}}`
    Leave { topic: String },
    /// `{"type": "$presence", "data": {"topic": "lobby"}}`, answered with
    /// the topic's presence.
    Presence { topic: String },
    /// `{"type": "$ping", "id": 3}`, answered `{"reply_to": 3, "ok": "pong"}`:
    /// a client's heartbeat. Browsers neither show the server's WebSocket
    /// pings to a page nor let it send its own, so a client that wants to
    /// know the connection is alive asks.
    Ping,
    /// `{"type": "$refresh", "data": {"token": "..."}, "id": 4}`: the
    /// connection's token replaced by a fresh one, answered
    /// `{"reply_to": 4, "ok": {"expires_in": 3600}}`.
    Refresh { token: Token },
}

/// A token a client sent in a frame; its `Debug` form hides it, so that it
/// reaches no log.
#[derive(PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Token(pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The `data` of `$refresh`.
#[derive(Deserialize)]
struct RefreshData {
    token: Token,
}

/// The `data` of `$join` and `$leave`.
#[derive(Deserialize)]
struct TopicData {
    topic: String,
    #[serde(default)]
    since: Option<Position>,
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
    /// The wire name of the token refresh.
    pub(crate) const REFRESH: &'static str = "$refresh";

    /// Reads a frame whose type starts with [`RESERVED_PREFIX`].
    pub(crate) fn decode<'a>(request: &Request<'a>) -> Result<Self, FrameError<'a>> {
        let kind = &*request.kind;
        if kind == Self::PING {
            return Ok(Self::Ping);
        }
        if kind == Self::REFRESH {
            let RefreshData { token } = request.decode_data()?;
            return Ok(Self::Refresh { token });
        }
        if kind != Self::JOIN && kind != Self::LEAVE && kind != Self::PRESENCE {
            return Err(FrameError {
                id: request.id,
                message: format!(
                    "unknown control message `{kind}`; known: `{}`, `{}`, `{}`, `{}`, `{}`; type names starting with `{RESERVED_PREFIX}` are reserved",
                    Self::JOIN,
                    Self::LEAVE,
                    Self::PRESENCE,
                    Self::PING,
                    Self::REFRESH
                ),
            });
        }
        let TopicData { topic, since } = request.decode_data()?;
        if let Some(since) = &since
            && !is_epoch(&since.epoch)
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
                    message: format!(
                        "`id` must be a number or a string of at most {MAX_ID_BYTES} bytes"
                    ),
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

/// The longest `id` a client may send, in bytes as written: an answer
/// echoes it, and a request must not make its answer large.
pub(crate) const MAX_ID_BYTES: usize = 128;

/// Whether `id` is one an answer can echo as written: a string that reads
/// as one (a lone surrogate escape does not) or a number that reads as a
/// finite `f64` (`1e400` does not), of at most [`MAX_ID_BYTES`]. Anything
/// else, echoed, would be an answer a strict JSON reader refuses.
fn is_valid_id(id: &RawValue) -> bool {
    let raw = id.get();
    if raw.len() > MAX_ID_BYTES {
        return false;
    }
    match raw.as_bytes().first() {
        // Borrowed when there is no escape; decoded once when there is.
        Some(b'"') => {
            serde_json::from_str::<&str>(raw).is_ok() || serde_json::from_str::<String>(raw).is_ok()
        }
        Some(b'-' | b'0'..=b'9') => serde_json::from_str::<f64>(raw).is_ok_and(f64::is_finite),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_is_read_and_never_shown() {
        let text = r#"{"type":"$refresh","data":{"token":"s3cret-abc"},"id":1}"#;
        let request = read_envelope(text).unwrap();
        let control = Control::decode(&request).unwrap();
        assert_eq!(
            control,
            Control::Refresh {
                token: Token("s3cret-abc".to_owned())
            }
        );
        assert!(!format!("{control:?}").contains("s3cret"));
    }

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
            Err("unknown control message `$subscribe`; known: `$join`, `$leave`, `$presence`, `$ping`, `$refresh`; type names starting with `$` are reserved".into())
        );
    }
}
