//! permessage-deflate (RFC 7692): the offer a client makes in its upgrade,
//! and the DEFLATE of one message either way.
//!
//! The server always answers with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692, 7.1.1.1 and 7.1.1.2 let it add
//! both to any offer it accepts). Each message is then compressed on its
//! own, in both directions, which is what makes the rest cheap:
//!
//! - an event compressed once serves every subscriber that negotiated the
//!   extension, since no subscriber's stream depends on what it was sent
//!   before;
//! - a connection keeps no compressor or window of its own, idle or not:
//!   the (de)compressors are one per thread, reset for each message.

use std::cell::RefCell;

use super::framing;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The server's answer to an offer it accepts.
pub(crate) const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to an offer that named `server_max_window_bits=15`, which
/// RFC 7692 (7.1.2.1) has the server accept by naming it back.
pub(crate) const ACCEPTED_WINDOW: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The four bytes a sync flush ends with, which RFC 7692 (7.2.1) has the
/// sender remove and the receiver put back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The room inflating asks for first; it doubles from there, up to the
/// limit and one byte, so that a small frame that inflates far is found
/// out before more than the limit is allocated (see [`inflate`]).
const INFLATE_STEP: usize = 16 * 1024;

/// The answer to the first of the offers in the request's
/// `Sec-WebSocket-Extensions` values that the server can accept, if one
/// is: a permessage-deflate offer whose parameters are all known, each at
/// most once, and whose `server_max_window_bits`, if any, is 15 (the
/// compressor's window is not made smaller; an offer that asks for that is
/// declined, and the socket runs without compression).
pub(crate) fn answer<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<&'static str> {
    values.into_iter().find_map(|value| {
        let value = std::str::from_utf8(value).ok()?;
        value.split(',').find_map(acceptable)
    })
}

/// The answer to one offer (`name; param; param=value`), if it can be
/// accepted.
fn acceptable(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(NAME))
    {
        return None;
    }
    let mut seen = [false; 4];
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let (at, ok) = match name {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            "server_max_window_bits" => (2, value == Some("15")),
            // The client's window: any size inflates with a 15-bit window.
            "client_max_window_bits" => (3, value.is_none_or(window_bits)),
            _ => return None,
        };
        if !ok || std::mem::replace(&mut seen[at], true) {
            return None;
        }
    }
    Some(if seen[2] { ACCEPTED_WINDOW } else { ACCEPTED })
}

/// Whether `value` is a window size RFC 7692 allows (8 to 15).
fn window_bits(value: &str) -> bool {
    value
        .parse::<u8>()
        .is_ok_and(|bits| (8..=15).contains(&bits))
        && !value.starts_with('0')
}

/// How hard to compress: an event shared by every subscriber is worth the
/// default level (once per instance); a frame of one connection's own is
/// compressed fast, since a reconnect storm's catch-ups are that, once per
/// client. For a 1 KiB quote (zlib-rs): level 6 gives 28.6 % of its bytes in
/// 14 µs, level 1 34 % in 4.3 µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effort {
    /// Level 6.
    Shared,
    /// Level 1.
    Own,
}

thread_local! {
    /// One compressor per level and thread, reset for every message: its
    /// state is hundreds of KiB, too much to make per message or keep per
    /// socket.
    static SHARED: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static OWN: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    /// One decompressor per thread, likewise.
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// `payload` compressed as one message (RFC 7692, 7.2.1), in a whole
/// compressed text frame: made in place behind the room for its head, so
/// the frame costs no copy of the compressed bytes.
pub(crate) fn deflated_text(payload: &[u8], effort: Effort) -> Bytes {
    framing::finish(
        compress(payload, effort, framing::HEAD_ROOM),
        framing::COMPRESSED_TEXT,
    )
}

/// `payload` compressed as one message's payload, without a frame.
#[cfg(test)]
pub(crate) fn deflate(payload: &[u8], effort: Effort) -> Bytes {
    Bytes::from(compress(payload, effort, 0))
}

/// DEFLATE with a sync flush, without its last four bytes, after `room`
/// zero bytes.
fn compress(payload: &[u8], effort: Effort, room: usize) -> Vec<u8> {
    let compressor = match effort {
        Effort::Shared => &SHARED,
        Effort::Own => &OWN,
    };
    compressor.with_borrow_mut(|compressor| {
        compressor.reset();
        // Enough for incompressible input (stored blocks add 5 bytes per
        // 64 KiB) and the flush.
        let mut out = Vec::with_capacity(room + payload.len() + payload.len() / 1024 * 5 + 64);
        out.resize(room, 0);
        let mut consumed = 0;
        loop {
            let before = compressor.total_in();
            compressor
                .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .expect("compressing into memory does not fail");
            consumed += (compressor.total_in() - before) as usize;
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InflateError {
    /// The bytes are not DEFLATE data.
    #[error("invalid compressed data")]
    Invalid,
    /// The message inflates past the limit.
    #[error("a compressed message inflates past {0} bytes")]
    TooBig(usize),
}

/// One message's payload inflated: `compressed` (which the four bytes RFC
/// 7692 has the sender remove are appended to) into at most `limit` bytes.
/// The output grows by doubling, never past `limit` and one byte, so a
/// message that would inflate past `limit` fails with no more than that
/// allocated for it.
///
/// A message whose DEFLATE data stops short (a block cut off) inflates to
/// what it holds, and bytes after a final block are ignored: a sync-flushed
/// stream has no end marker to tell a cut from a whole, and only the client
/// that sent it gets the shorter message (which the UTF-8 check or the
/// envelope's parser then refuses).
pub(crate) fn inflate(mut compressed: Vec<u8>, limit: usize) -> Result<Vec<u8>, InflateError> {
    compressed.extend_from_slice(&TAIL);
    DECOMPRESSOR.with_borrow_mut(|decompressor| {
        decompressor.reset(false);
        let mut out: Vec<u8> = Vec::new();
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig(limit));
                }
                let more = out.len().max(INFLATE_STEP);
                out.reserve_exact(more.min(limit + 1 - out.len()));
            }
            let (read, written) = (decompressor.total_in(), out.len());
            let status = decompressor
                .decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            consumed += (decompressor.total_in() - read) as usize;
            if out.len() > limit {
                return Err(InflateError::TooBig(limit));
            }
            let room = out.len() < out.capacity();
            if status == Status::StreamEnd || (consumed == compressed.len() && room) {
                return Ok(out);
            }
            if room && decompressor.total_in() == read && out.len() == written {
                // No progress with input left and room to write.
                return Err(InflateError::Invalid);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_read_as_rfc_7692_writes_them() {
        let accepts_one = |value: &str| answer([value.as_bytes()]).is_some();
        // The browsers', Node's and Python websockets' offer.
        let offer = "permessage-deflate; client_max_window_bits";
        assert_eq!(answer([offer.as_bytes()]), Some(ACCEPTED));
        // A server window named is named back (RFC 7692, 7.1.2.1).
        let offer = "permessage-deflate; server_max_window_bits=15; client_max_window_bits";
        assert_eq!(answer([offer.as_bytes()]), Some(ACCEPTED_WINDOW));
        assert!(accepts_one(
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        ));
        assert!(accepts_one("x-webkit-deflate-frame, permessage-deflate"));
        assert!(accepts_one(
            "permessage-deflate; client_max_window_bits=\"10\""
        ));
        // A window the compressor does not make smaller: declined.
        assert!(!accepts_one(
            "permessage-deflate; server_max_window_bits=10"
        ));
        // Unless a later offer can be taken.
        assert!(accepts_one(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(!accepts_one(
            "permessage-deflate; client_max_window_bits=16"
        ));
        assert!(!accepts_one(
            "permessage-deflate; client_max_window_bits=08"
        ));
        assert!(!accepts_one("permessage-deflate; unknown_param"));
        assert!(!accepts_one(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ));
        assert!(!accepts_one(
            "permessage-deflate; server_no_context_takeover=1"
        ));
        assert!(!accepts_one("x-webkit-deflate-frame"));
        assert_eq!(answer([]), None);
    }

    #[test]
    fn a_message_deflated_inflates_back() {
        let event = br#"{"topic":"quotes","event":"quote","data":{"symbol":"ACME","bid":101.25,"ask":101.27,"symbol2":"ACME"}}"#;
        let compressed = deflate(event, Effort::Shared);
        assert!(compressed.len() < event.len());
        assert!(!compressed.ends_with(&TAIL));
        assert_eq!(inflate(compressed.to_vec(), 1 << 20).unwrap(), event);
        // Each message on its own: the second is not smaller for the first.
        assert_eq!(deflate(event, Effort::Shared), compressed);
        let fast = deflate(event, Effort::Own);
        assert_eq!(inflate(fast.to_vec(), 1 << 20).unwrap(), event);
        // Empty and incompressible payloads too.
        assert_eq!(
            inflate(deflate(b"", Effort::Own).to_vec(), 10).unwrap(),
            b""
        );
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(
            inflate(deflate(&noise, Effort::Shared).to_vec(), 1 << 20).unwrap(),
            noise
        );
    }

    #[test]
    fn a_bomb_fails_before_its_output_is_allocated() {
        let zeros = vec![0u8; 10 << 20];
        let compressed = deflate(&zeros, Effort::Shared);
        assert!(compressed.len() < 20_000, "{}", compressed.len());
        assert_eq!(
            inflate(compressed.to_vec(), 64 * 1024),
            Err(InflateError::TooBig(64 * 1024))
        );
        // Exactly at the limit is allowed.
        assert_eq!(
            inflate(deflate(&zeros[..1000], Effort::Own).to_vec(), 1000)
                .unwrap()
                .len(),
            1000
        );
        assert_eq!(
            inflate(deflate(&zeros[..1001], Effort::Own).to_vec(), 1000),
            Err(InflateError::TooBig(1000))
        );
    }

    #[test]
    fn bytes_that_are_not_deflate_are_invalid() {
        // BTYPE 11 is reserved.
        assert_eq!(
            inflate(vec![0xff, 0xff, 0xff], 1000),
            Err(InflateError::Invalid)
        );
    }
}
