//! The server's frames as the bytes that go on the wire, made once.
//!
//! A server's frames are not masked (RFC 6455, 5.1), so one event's frame is
//! the same bytes for every subscriber: its head and payload are put
//! together once per instance and every subscriber's socket writes those
//! bytes (see [`queued`](super::queued)), with no copy per subscriber. A
//! frame of a connection's own (a reply, an error) is put together in the
//! connection's scratch buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// The most a server frame's head takes: two bytes and an 8-byte length
/// (no mask key).
pub(crate) const HEAD_ROOM: usize = 10;

/// The first byte of a whole text frame: FIN and opcode 1.
const TEXT: u8 = 0x81;

/// The first byte of a whole compressed text frame: FIN, RSV1 (RFC 7692's
/// "Per-Message Compressed" bit) and opcode 1.
pub(crate) const COMPRESSED_TEXT: u8 = 0xC1;

/// A ping with no payload: what the heartbeat sends.
pub(crate) const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// The heartbeat as a text frame, `{"heartbeat":{}}`, for a client that
/// asked for it (`?heartbeat=text`): a page sees no WebSocket ping, so a
/// client in a browser that watches for silence would otherwise ask with
/// `$ping`, a round trip of its own on top of the server's.
pub(crate) const TEXT_HEARTBEAT: Bytes = Bytes::from_static(b"\x81\x10{\"heartbeat\":{}}");

/// The heartbeat frame a connection gets: [`TEXT_HEARTBEAT`] if it asked
/// for it, [`PING`] otherwise.
pub(crate) fn heartbeat(in_text: bool) -> Bytes {
    match in_text {
        true => TEXT_HEARTBEAT,
        false => PING,
    }
}

/// A whole text frame of `payload`, in bytes of its own.
pub(crate) fn text(payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(head_len(payload.len()) + payload.len());
    put(&mut frame, TEXT, payload);
    frame.freeze()
}

/// The room a connection's scratch buffer takes at a time: the frames of a
/// batch are put together in one allocation, which the next batch reuses
/// once they have been written.
const SCRATCH: usize = 4096;

/// A whole text frame of `payload`, put together at the end of `scratch`
/// and split off it: the space is reused once every frame split off before
/// it has been written and dropped.
pub(crate) fn text_in(scratch: &mut BytesMut, payload: &[u8]) -> Bytes {
    let need = head_len(payload.len()) + payload.len();
    if scratch.capacity() < need {
        scratch.reserve(need.max(SCRATCH));
    }
    put(scratch, TEXT, payload);
    scratch.split().freeze()
}

/// Writes a frame's head into the last bytes of the `HEAD_ROOM` at the
/// front of `room_and_payload` and returns the frame, with no copy of the
/// payload: for a payload made in place, as DEFLATE output is.
pub(crate) fn finish(mut room_and_payload: Vec<u8>, first: u8) -> Bytes {
    debug_assert!(room_and_payload.len() >= HEAD_ROOM);
    let len = room_and_payload.len() - HEAD_ROOM;
    let at = HEAD_ROOM - head_len(len);
    let mut head = &mut room_and_payload[at..HEAD_ROOM];
    put_head(&mut head, first, len);
    Bytes::from(room_and_payload).slice(at..)
}

/// The payload of a frame made here.
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    let len = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[len..]
}

/// The length of an unmasked head for a payload of `len` bytes.
fn head_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

fn put(out: &mut BytesMut, first: u8, payload: &[u8]) {
    put_head(out, first, payload.len());
    out.put_slice(payload);
}

fn put_head(out: &mut impl BufMut, first: u8, len: usize) {
    out.put_u8(first);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same frame as tungstenite makes it.
    fn tungstenite_text(payload: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(payload).unwrap().to_owned();
        let frame = tungstenite::protocol::frame::Frame::message(
            text,
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        );
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_text_heartbeat_is_a_whole_text_frame() {
        assert_eq!(TEXT_HEARTBEAT, tungstenite_text(br#"{"heartbeat":{}}"#));
        assert_eq!(heartbeat(true), TEXT_HEARTBEAT);
        assert_eq!(heartbeat(false), PING);
    }

    #[test]
    fn frames_are_the_bytes_tungstenite_writes_at_every_length_form() {
        let mut scratch = BytesMut::new();
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 70_000] {
            let body = "x".repeat(len);
            let expected = tungstenite_text(body.as_bytes());
            assert_eq!(text(body.as_bytes()), expected, "{len} bytes");
            assert_eq!(
                text_in(&mut scratch, body.as_bytes()),
                expected,
                "{len} bytes, in the scratch buffer"
            );
            assert_eq!(payload(&expected), body.as_bytes());
        }
    }

    #[test]
    fn a_frame_finished_in_its_room_has_the_head_of_its_length() {
        for len in [0, 125, 126, 0xFFFF, 0x10000] {
            let mut room = vec![0; HEAD_ROOM];
            room.extend(std::iter::repeat_n(7u8, len));
            let frame = finish(room, COMPRESSED_TEXT);
            assert_eq!(frame[0], COMPRESSED_TEXT);
            assert_eq!(payload(&frame).len(), len);
            assert!(payload(&frame).iter().all(|byte| *byte == 7));
        }
    }

    #[test]
    fn the_scratch_buffer_is_reused_once_its_frames_are_dropped() {
        let mut scratch = BytesMut::new();
        let first = text_in(&mut scratch, b"one");
        let start = first.as_ptr() as usize;
        drop(first);
        // Three chunks' worth, each frame written (dropped) before the
        // next: all of them in the first chunk's space.
        let payload = [b'x'; 100];
        for _ in 0..3 * SCRATCH / 102 {
            let frame = text_in(&mut scratch, &payload);
            let at = frame.as_ptr() as usize;
            assert!((start..start + SCRATCH).contains(&at), "no new allocation");
        }
    }
}
