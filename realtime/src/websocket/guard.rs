//! The read side of an upgraded socket, watched frame by frame before
//! tungstenite reads it.
//!
//! tungstenite hands over whole messages only. A client that opens a
//! fragmented message and then sends empty continuation frames (6 bytes
//! each) never completes one: no message reaches the rate limit, none grows
//! toward the size limit, and its pongs keep it past the idle timeout, while
//! parsing the frames costs the server a core. So every frame is counted
//! here, on the bytes as they come off the socket:
//!
//! - frames past `Config::max_frames_per_sec` (a bucket as deep as one
//!   second's worth) are not read until the bucket refills: the client's
//!   own socket waits, and nobody else's;
//! - a message in more than `Config::max_fragments` frames, or still
//!   unfinished `Config::fragment_timeout` after its first frame, ends the
//!   connection with 1008;
//! - a 64-bit payload length with its top bit set (RFC 6455, 5.2) ends it
//!   with 1002.
//!
//! Only frame heads are parsed (2 to 14 bytes); payloads are skipped by
//! arithmetic. The scan runs on every byte tungstenite reads, from the first
//! byte after the upgrade, so it cannot be put out of step with the frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::protocol::close_code;
use crate::util::millis;

/// The limits a [`Guarded`] socket applies; copied from the service's
/// `Config`, small, since every socket keeps them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    frames_per_sec: u32,
    max_fragments: u32,
    /// Milliseconds.
    fragment_timeout: u32,
}

impl Limits {
    pub(crate) fn new(frames_per_sec: u32, max_fragments: u32, fragment_timeout: Duration) -> Self {
        Self {
            frames_per_sec: frames_per_sec.max(1),
            max_fragments,
            fragment_timeout: u32::try_from(fragment_timeout.as_millis()).unwrap_or(u32::MAX),
        }
    }

    fn fragment_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.fragment_timeout))
    }
}

/// The time from `then` to `now`, both from `util::millis` (the clocks a
/// socket keeps are 4 bytes each).
fn since(now: u32, then: u32) -> Duration {
    Duration::from_millis(u64::from(now.wrapping_sub(then)))
}

/// Why the guard ended a connection: the read fails with this inside an
/// `io::Error`, and the read loop closes with its [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// A message came in more frames than the limit.
    #[error("a message in more than {0} frames")]
    TooManyFragments(u32),
    /// A fragmented message was not finished in time.
    #[error("a fragmented message unfinished after {0:?}")]
    FragmentTimeout(Duration),
    /// A frame's 64-bit length had its most significant bit set.
    #[error("a frame length with its most significant bit set")]
    BadLength,
}

impl Violation {
    /// The close code of the violation.
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::TooManyFragments(_) | Self::FragmentTimeout(_) => close_code::POLICY,
            Self::BadLength => close_code::PROTOCOL_ERROR,
        }
    }

    /// The violation inside an error of a read, if that is what it is.
    pub(crate) fn of(error: &io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// Where the scan is in the byte stream.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// The head being read: its bytes so far, and how many.
    head: [u8; 14],
    have: u8,
    /// Frames of the fragmented message now open; 0 when none is.
    fragments: u32,
}

/// An upgraded socket whose reads are scanned frame by frame; writes pass
/// through.
#[derive(Debug)]
pub(crate) struct Guarded<S> {
    inner: S,
    limits: Limits,
    scan: Scan,
    /// Frames the client may still send now; below zero, reading waits.
    tokens: f32,
    /// When the bucket was last refilled ([`millis`]).
    refilled: u32,
    /// When the open fragmented message began ([`millis`]).
    opened: Option<u32>,
    /// Made only while reading waits for the bucket: an idle socket holds
    /// no timer.
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            scan: Scan {
                skip: 0,
                head: [0; 14],
                have: 0,
                fragments: 0,
            },
            tokens: limits.frames_per_sec as f32,
            refilled: millis(Instant::now()),
            opened: None,
            wait: None,
        }
    }

    /// Refills the bucket for the time since the last refill, up to one
    /// second's worth.
    fn refill(&mut self, now: Instant) {
        let now = millis(now);
        let rate = self.limits.frames_per_sec as f32;
        let elapsed = since(now, self.refilled).as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
    }

    /// Scans `bytes`, just read; counts their frames against the bucket.
    fn scan(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Violation> {
        let mut frames = 0u32;
        while !bytes.is_empty() {
            if self.scan.skip > 0 {
                let skipped = (bytes.len() as u64).min(self.scan.skip);
                self.scan.skip -= skipped;
                bytes = &bytes[skipped as usize..];
                continue;
            }
            let have = usize::from(self.scan.have);
            // The head's length is known from its first two bytes.
            let need = if have < 2 {
                2
            } else {
                head_len(self.scan.head[1])
            };
            let take = (need - have).min(bytes.len());
            self.scan.head[have..have + take].copy_from_slice(&bytes[..take]);
            self.scan.have += take as u8;
            bytes = &bytes[take..];
            let have = usize::from(self.scan.have);
            if have < 2 || have < head_len(self.scan.head[1]) {
                continue;
            }
            self.scan.have = 0;
            frames += 1;
            self.scan.skip = payload_len(&self.scan.head)?;
            self.frame(self.scan.head[0], now)?;
        }
        self.tokens -= frames as f32;
        Ok(())
    }

    /// Follows the fragments of a message through one frame's first byte.
    fn frame(&mut self, first: u8, now: Instant) -> Result<(), Violation> {
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        match opcode {
            // Text or binary: a message begins; unfinished, it is fragmented.
            1 | 2 if !fin => {
                self.scan.fragments = 1;
                self.opened = Some(millis(now));
            }
            // A continuation: one more fragment of the open message.
            0 if self.scan.fragments > 0 => {
                self.scan.fragments += 1;
                if self.scan.fragments > self.limits.max_fragments {
                    return Err(Violation::TooManyFragments(self.limits.max_fragments));
                }
                if fin {
                    self.scan.fragments = 0;
                    self.opened = None;
                }
            }
            // Control frames, whole messages, and what tungstenite refuses
            // itself (a continuation with nothing open, a reserved opcode).
            _ => {}
        }
        if let Some(opened) = self.opened
            && since(millis(now), opened) > self.limits.fragment_timeout()
        {
            return Err(Violation::FragmentTimeout(self.limits.fragment_timeout()));
        }
        Ok(())
    }
}

/// A frame head's length, from its second byte: 2, the extended length (2
/// or 8), and the mask key (4) if the mask bit is set.
fn head_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length of a whole head.
fn payload_len(head: &[u8; 14]) -> Result<u64, Violation> {
    match head[1] & 0x7F {
        126 => Ok(u64::from(u16::from_be_bytes([head[2], head[3]]))),
        127 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&head[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(Violation::BadLength);
            }
            Ok(len)
        }
        len => Ok(u64::from(len)),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tokens < 0.0 {
            let now = Instant::now();
            this.refill(now);
            if this.tokens < 0.0 {
                // In debt: wait until the bucket is back at zero.
                let short = -this.tokens / this.limits.frames_per_sec as f32;
                let until = now + Duration::from_secs_f32(short);
                let wait = this.wait.get_or_insert_with(|| {
                    metrics::counter!(crate::telemetry::READS_THROTTLED).increment(1);
                    Box::pin(tokio::time::sleep_until(until))
                });
                wait.as_mut().reset(until);
                ready!(wait.as_mut().poll(cx));
                this.refill(Instant::now());
            }
            this.wait = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let now = Instant::now();
        this.refill(now);
        this.scan(read, now)
            .map_err(|violation| io::Error::new(io::ErrorKind::InvalidData, violation))?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guarded<()> {
        Guarded::new((), Limits::new(100, 4, Duration::from_secs(10)))
    }

    /// A masked client frame: its head, mask key and `payload`.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first];
        match payload.len() {
            len @ 0..=125 => bytes.push(0x80 | len as u8),
            len @ 126..=65535 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_are_counted_whatever_the_reads_cut() {
        let mut guard = guard();
        let mut stream = Vec::new();
        stream.extend(frame(0x81, b"hello"));
        stream.extend(frame(0x81, &[b'x'; 300]));
        stream.extend(frame(0x89, b""));
        // One byte at a time: the heads are put back together.
        let now = Instant::now();
        for byte in &stream {
            guard.scan(std::slice::from_ref(byte), now).unwrap();
        }
        assert_eq!(guard.tokens, 97.0);
        assert_eq!(guard.scan.skip, 0);
        assert_eq!(guard.scan.have, 0);
    }

    #[test]
    fn a_message_in_too_many_fragments_is_refused() {
        let mut guard = guard();
        let now = Instant::now();
        let mut stream = frame(0x01, b"a");
        for _ in 0..3 {
            stream.extend(frame(0x00, b""));
        }
        // A ping between fragments is allowed, and not a fragment.
        stream.extend(frame(0x89, b""));
        guard.scan(&stream, now).unwrap();
        assert_eq!(
            guard.scan(&frame(0x00, b""), now),
            Err(Violation::TooManyFragments(4))
        );
    }

    #[test]
    fn a_finished_message_closes_its_fragments() {
        let mut guard = guard();
        let now = Instant::now();
        for _ in 0..10 {
            let mut stream = frame(0x01, b"a");
            stream.extend(frame(0x00, b"b"));
            stream.extend(frame(0x80, b"c"));
            guard.scan(&stream, now).unwrap();
        }
        assert_eq!(guard.scan.fragments, 0);
        assert!(guard.opened.is_none());
    }

    #[test]
    fn a_fragmented_message_has_a_deadline() {
        let mut guard = guard();
        let start = Instant::now();
        guard.scan(&frame(0x01, b"a"), start).unwrap();
        let late = start + Duration::from_secs(11);
        // Even a pong, which is not part of the message, finds it late.
        assert_eq!(
            guard.scan(&frame(0x8A, b""), late),
            Err(Violation::FragmentTimeout(Duration::from_secs(10)))
        );
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_refused() {
        let mut guard = guard();
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(guard.scan(&head, Instant::now()), Err(Violation::BadLength));
        assert_eq!(Violation::BadLength.code(), 1002);
    }
}
