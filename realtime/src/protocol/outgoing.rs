//! Frames out: events, positions, presence, answers and errors, written
//! straight to their JSON text.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Frame, Position};

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

/// `{"topic": <topic>, "subscribed": {}}`: the server subscribed the
/// connection to a topic without history (`Service::subscribe_user`);
/// its events follow.
pub(crate) fn joined_frame(topic: &str) -> Frame {
    let mut text = presence_head(topic);
    text.push_str("\"subscribed\":{}}");
    Frame::from(text)
}

/// `{"topic": <topic>, "unsubscribed": {}}`: the server unsubscribed the
/// connection from the topic (`Service::unsubscribe_user`); no event of
/// it follows.
pub(crate) fn unsubscribed_frame(topic: &str) -> Frame {
    let mut text = presence_head(topic);
    text.push_str("\"unsubscribed\":{}}");
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
pub(crate) fn presence_list_frame<P: Serialize>(topic: &str, presence: &P) -> Frame {
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

/// The answer to a `$refresh`: `{"reply_to": <id>, "ok": {"expires_in":
/// <seconds>}}`, `null` for a token that does not expire.
pub(crate) fn refreshed_frame(id: &RawValue, left: Option<std::time::Duration>) -> Frame {
    let mut text = String::with_capacity(48);
    text.push('{');
    push_reply_to(&mut text, Some(id));
    match left {
        Some(left) => {
            let _ = write!(text, "\"ok\":{{\"expires_in\":{}}}}}", left.as_secs());
        }
        None => text.push_str("\"ok\":{\"expires_in\":null}}"),
    }
    Frame::from(text)
}

/// `{"expiring": {"expires_in": <seconds>}}`: the connection's token runs
/// out in that many seconds; the client sends `$refresh` with a fresh one,
/// or is closed with 3000 then.
pub(crate) fn expiring_frame(left: u64) -> Frame {
    Frame::from(format!("{{\"expiring\":{{\"expires_in\":{left}}}}}"))
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
    let message = bounded(message);
    let mut text = String::with_capacity(48 + message.len());
    text.push('{');
    push_reply_to(&mut text, id);
    // A u16 and a JSON string cannot fail to format.
    let _ = write!(text, "\"error\":{{\"code\":{code},\"message\":");
    text.push_str(&serde_json::to_string(&*message).expect("a string always serializes"));
    text.push_str("}}");
    Frame::from(text)
}

/// The longest error message sent, in bytes: a message that quotes the
/// client's input (an unknown type, serde's "invalid type: string ...")
/// would otherwise send a 64 KiB frame back for each 64 KiB one.
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// `message`, cut at a character boundary to at most
/// [`MAX_ERROR_MESSAGE_BYTES`] with `…` at the end when it is longer.
fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return message.into();
    }
    let ellipsis = '…';
    let mut end = MAX_ERROR_MESSAGE_BYTES - ellipsis.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &message[..end]).into()
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
    Frame::from_utf8(buffer.into()).expect("serde_json writes UTF-8")
}

/// Inserts `"offset":<offset>,` into an event frame
/// (`{"topic":...,"event":...}`) before its event: the frame of an event
/// with a position. `None` if `frame` is not an event frame.
pub(crate) fn with_offset(frame: &Frame, offset: u64) -> Option<Frame> {
    let (head, tail) = split_event(frame)?;
    use std::fmt::Write;
    let mut text = String::with_capacity(frame.as_str().len() + 32);
    text.push_str(head);
    text.push_str("\"offset\":");
    // Writing a number into a String cannot fail.
    let _ = write!(text, "{offset},");
    text.push_str(tail);
    Some(Frame::from(text))
}

/// Splits an event frame before `"event":`: `({"topic":"t",` and
/// `"event":...}`. The topic is a JSON string, whose quotes are escaped, so
/// the first `,"event":` is the one that separates the two.
pub(crate) fn split_event(frame: &Frame) -> Option<(&str, &str)> {
    let text = frame.as_str();
    let at = text.find(",\"event\":")? + 1;
    Some(text.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_go_before_the_event() {
        let frame = crate::protocol::event_frame("a\",\"event\":", &1).unwrap();
        let sequenced = with_offset(&frame, 42).unwrap();
        let value: serde_json::Value = serde_json::from_str(sequenced.as_str()).unwrap();
        assert_eq!(value["topic"], "a\",\"event\":");
        assert_eq!(value["offset"], 42);
        assert_eq!(value["event"], 1);
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

    #[test]
    fn presence_frames_escape_the_topic() {
        let frame = presence_frame(&presence_head("a\"b"), "join", r#""carol""#);
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["topic"], "a\"b");
        assert_eq!(value["join"]["user"], "carol");
    }
}
