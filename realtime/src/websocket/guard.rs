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
//! arithmetic (except a compressed message's, below). The scan runs on every byte tungstenite reads, from the first
//! byte after the upgrade, so it cannot be put out of step with the frames.
//!
//! On a socket that negotiated permessage-deflate the guard also reads the
//! compressed messages, which tungstenite would refuse (it knows no
//! extension, so RSV1 is a protocol error to it): their frames are taken out
//! of the stream, their payloads unmasked and gathered, and the message,
//! inflated within the size limit, is handed to tungstenite as one plain
//! frame in their place. A message that is not DEFLATE data ends the
//! connection with 1007, one that inflates past `Config::max_frame_bytes`
//! with 1009 (before more than that is allocated), a frame that breaks the
//! extension's rules (RSV1 on a continuation, a new message inside a
//! compressed one, an unmasked frame) with 1002. Everything else passes as
//! it came, in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::protocol::close_code;
use crate::util::millis;

use super::deflate::{self, InflateError};

/// The limits a [`Guarded`] socket applies; copied from the service's
/// `Config`, small, since every socket keeps them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    frames_per_sec: u32,
    max_fragments: u32,
    /// Milliseconds.
    fragment_timeout: u32,
    /// The largest message a compressed one may inflate to; 0 on a socket
    /// without permessage-deflate, whose compressed frames pass to
    /// tungstenite, which refuses them.
    inflate_limit: u32,
}

impl Limits {
    pub(crate) fn new(frames_per_sec: u32, max_fragments: u32, fragment_timeout: Duration) -> Self {
        Self {
            frames_per_sec: frames_per_sec.max(1),
            max_fragments,
            fragment_timeout: u32::try_from(fragment_timeout.as_millis()).unwrap_or(u32::MAX),
            inflate_limit: 0,
        }
    }

    /// The limits of a socket that negotiated permessage-deflate: its
    /// compressed messages are read, and inflate to at most `max_message`
    /// bytes.
    pub(crate) fn inflating(self, max_message: usize) -> Self {
        Self {
            inflate_limit: u32::try_from(max_message).unwrap_or(u32::MAX).max(1),
            ..self
        }
    }

    fn deflate(&self) -> bool {
        self.inflate_limit != 0
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
    /// A compressed message was not DEFLATE data.
    #[error("invalid compressed data")]
    BadCompression,
    /// A compressed message inflated, or would, past the limit.
    #[error("a compressed message larger than {0} bytes")]
    Inflated(u32),
    /// A frame broke permessage-deflate's rules: RSV1 on a continuation, a
    /// new message inside a compressed one, an unmasked compressed frame.
    #[error("a frame that breaks permessage-deflate")]
    Extension,
}

impl Violation {
    /// The close code of the violation.
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::TooManyFragments(_) | Self::FragmentTimeout(_) => close_code::POLICY,
            Self::BadLength | Self::Extension => close_code::PROTOCOL_ERROR,
            Self::BadCompression => close_code::INVALID_DATA,
            Self::Inflated(_) => close_code::TOO_BIG,
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
    /// Whether the current frame is part of a compressed message, taken
    /// out of the stream rather than passed on.
    capture: bool,
}

/// What a scan of bytes just read leaves for tungstenite.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    /// The bytes to hand on: the first `keep`, moved there in place.
    keep: usize,
    /// Where the scan stopped, after a compressed message's last frame:
    /// the bytes from here on come after that message and are scanned once
    /// it is handed on.
    rest: Option<usize>,
}

/// A compressed message being read, and the bytes that wait to be handed
/// to tungstenite. Made when a compressed message begins and dropped as
/// soon as all of it is empty again: an idle socket holds none.
#[derive(Debug, Default)]
struct Inflating {
    /// The opcode of the compressed message now open (1 or 2); 0 when none is.
    opcode: u8,
    /// Its payload so far, unmasked.
    compressed: Vec<u8>,
    /// The last message inflated, as one plain frame, and how much of it
    /// was handed on.
    ready: Vec<u8>,
    handed: usize,
    /// Bytes read after the end of a compressed message, not scanned yet.
    unread: Vec<u8>,
}

impl Inflating {
    fn is_empty(&self) -> bool {
        self.opcode == 0 && self.ready.is_empty() && self.unread.is_empty()
    }
}

/// An upgraded socket whose reads are scanned frame by frame; writes pass
/// through.
#[derive(Debug)]
pub(crate) struct Guarded<S> {
    inner: S,
    limits: Limits,
    scan: Scan,
    /// Frames of the fragmented message now open; 0 when none is. (Here
    /// rather than in [`Scan`], whose padding it would grow: every socket
    /// keeps a guard.)
    fragments: u32,
    /// Frames the client may still send now; below zero, reading waits.
    tokens: f32,
    /// When the bucket was last refilled ([`millis`]).
    refilled: u32,
    /// When the open fragmented message began ([`millis`]); meaningful
    /// only while one is open (`fragments > 0`), which saves an option's
    /// tag.
    opened: u32,
    /// Made only while reading waits for the bucket: an idle socket holds
    /// no timer.
    wait: Option<Pin<Box<Sleep>>>,
    /// Only while a compressed message is read or handed on.
    inflating: Option<Box<Inflating>>,
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
                capture: false,
            },
            fragments: 0,
            tokens: limits.frames_per_sec as f32,
            refilled: millis(Instant::now()),
            opened: 0,
            wait: None,
            inflating: None,
        }
    }

    /// The socket itself, read past the guard: for what is thrown away
    /// unread after the close.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
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
    /// The frames of compressed messages are taken out (the rest is moved
    /// up in place); the scan stops after a compressed message's last frame,
    /// whose inflated frame must be handed on before what follows it.
    fn scan(&mut self, bytes: &mut [u8], now: Instant) -> Result<Scanned, Violation> {
        let mut frames = 0u32;
        let scanned = self.scan_frames(bytes, now, &mut frames);
        self.tokens -= frames as f32;
        scanned
    }

    /// [`scan`](Self::scan)'s loop; `frames` counts the frames begun.
    fn scan_frames(
        &mut self,
        bytes: &mut [u8],
        now: Instant,
        frames: &mut u32,
    ) -> Result<Scanned, Violation> {
        let (mut read, mut kept) = (0, 0);
        while read < bytes.len() {
            if self.scan.skip > 0 {
                let take = ((bytes.len() - read) as u64).min(self.scan.skip) as usize;
                if self.scan.capture {
                    self.gather(&bytes[read..read + take]);
                } else {
                    keep(bytes, read, take, &mut kept);
                }
                read += take;
                self.scan.skip -= take as u64;
                if self.scan.skip == 0 && self.scan.capture && self.captured()? {
                    return Ok(Scanned {
                        keep: kept,
                        rest: (read < bytes.len()).then_some(read),
                    });
                }
                continue;
            }
            let have = usize::from(self.scan.have);
            if have == 0 {
                self.scan.capture = self.captures(bytes[read])?;
            }
            // The head's length is known from its first two bytes.
            let need = if have < 2 {
                2
            } else {
                head_len(self.scan.head[1])
            };
            let take = (need - have).min(bytes.len() - read);
            self.scan.head[have..have + take].copy_from_slice(&bytes[read..read + take]);
            if !self.scan.capture {
                keep(bytes, read, take, &mut kept);
            }
            read += take;
            self.scan.have += take as u8;
            let have = usize::from(self.scan.have);
            if have < 2 || have < head_len(self.scan.head[1]) {
                continue;
            }
            self.scan.have = 0;
            *frames += 1;
            self.scan.skip = payload_len(&self.scan.head)?;
            self.frame(self.scan.head[0], now)?;
            if self.scan.capture {
                self.open_payload()?;
                if self.scan.skip == 0 && self.captured()? {
                    return Ok(Scanned {
                        keep: kept,
                        rest: (read < bytes.len()).then_some(read),
                    });
                }
            }
        }
        Ok(Scanned {
            keep: kept,
            rest: None,
        })
    }

    /// Whether the frame that begins with `first` is part of a compressed
    /// message; opens one on a data frame with RSV1.
    fn captures(&mut self, first: u8) -> Result<bool, Violation> {
        // RSV2 and RSV3 mean nothing here: such a frame passes, and
        // tungstenite refuses it (1002).
        if !self.limits.deflate() || first & 0x30 != 0 {
            return Ok(false);
        }
        let rsv1 = first & 0x40 != 0;
        let open = self.inflating.as_ref().is_some_and(|open| open.opcode != 0);
        match first & 0x0F {
            1 | 2 if open => Err(Violation::Extension),
            // Inside a plain fragmented message: tungstenite refuses it.
            1 | 2 if !rsv1 || self.fragments > 0 => Ok(false),
            opcode @ (1 | 2) => {
                self.inflating.get_or_insert_default().opcode = opcode;
                Ok(true)
            }
            0 if open && rsv1 => Err(Violation::Extension),
            0 if open => Ok(true),
            // Control frames, plain messages, and what tungstenite refuses
            // itself (RSV1 on a control frame).
            _ => Ok(false),
        }
    }

    /// Checks a compressed frame's head: masked, as a client's frames must
    /// be, and within the size limit with what came before.
    fn open_payload(&mut self) -> Result<(), Violation> {
        if self.scan.head[1] & 0x80 == 0 {
            return Err(Violation::Extension);
        }
        let limit = self.limits.inflate_limit;
        let gathered = self
            .inflating
            .as_ref()
            .map_or(0, |open| open.compressed.len());
        // DEFLATE makes a message larger only by its blocks' heads (5 bytes
        // per stored block): compressed data twice the limit is no message
        // within it, from any compressor a client would use.
        let bound = 2 * u64::from(limit) + 1024;
        if gathered as u64 + self.scan.skip > bound {
            return Err(Violation::Inflated(limit));
        }
        Ok(())
    }

    /// Unmasks and keeps payload bytes of a compressed frame.
    fn gather(&mut self, bytes: &[u8]) {
        let head = &self.scan.head;
        let len = head_len(head[1]);
        let mask = [head[len - 4], head[len - 3], head[len - 2], head[len - 1]];
        // Where these bytes are in the payload, for the mask's phase.
        let at = payload_len(head).unwrap_or(0) - self.scan.skip;
        let open = self.inflating.get_or_insert_default();
        open.compressed.extend(
            bytes
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[(at as usize + i) % 4]),
        );
    }

    /// At the end of a compressed frame's payload: if it was the message's
    /// last, inflates it into the frame to hand on; returns whether it was.
    fn captured(&mut self) -> Result<bool, Violation> {
        if self.scan.head[0] & 0x80 == 0 {
            return Ok(false);
        }
        let limit = self.limits.inflate_limit;
        let open = self.inflating.get_or_insert_default();
        let opcode = std::mem::take(&mut open.opcode);
        let compressed = std::mem::take(&mut open.compressed);
        let plain = deflate::inflate(compressed, limit as usize).map_err(|error| match error {
            InflateError::Invalid => Violation::BadCompression,
            InflateError::TooBig(_) => Violation::Inflated(limit),
        })?;
        debug_assert!(
            open.ready.is_empty(),
            "a frame is handed on before the next is read"
        );
        open.ready = plain_frame(opcode, &plain);
        open.handed = 0;
        Ok(true)
    }

    /// Drops the state of compressed messages once nothing is left in it.
    fn tidy(&mut self) {
        if self.inflating.as_ref().is_some_and(|open| open.is_empty()) {
            self.inflating = None;
        }
    }

    /// Waits while the bucket is in debt.
    fn throttle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.tokens < 0.0 {
            let now = Instant::now();
            self.refill(now);
            if self.tokens < 0.0 {
                // In debt: wait until the bucket is back at zero.
                let short = -self.tokens / self.limits.frames_per_sec as f32;
                let until = now + Duration::from_secs_f32(short);
                let wait = self.wait.get_or_insert_with(|| {
                    metrics::counter!(crate::telemetry::READS_THROTTLED).increment(1);
                    Box::pin(tokio::time::sleep_until(until))
                });
                wait.as_mut().reset(until);
                ready!(wait.as_mut().poll(cx));
                self.refill(Instant::now());
            }
            self.wait = None;
        }
        Poll::Ready(())
    }

    /// Follows the fragments of a message through one frame's first byte.
    fn frame(&mut self, first: u8, now: Instant) -> Result<(), Violation> {
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        match opcode {
            // Text or binary: a message begins; unfinished, it is fragmented.
            1 | 2 if !fin => {
                self.fragments = 1;
                self.opened = millis(now);
            }
            // A continuation: one more fragment of the open message.
            0 if self.fragments > 0 => {
                self.fragments += 1;
                if self.fragments > self.limits.max_fragments {
                    return Err(Violation::TooManyFragments(self.limits.max_fragments));
                }
                if fin {
                    self.fragments = 0;
                }
            }
            // Control frames, whole messages, and what tungstenite refuses
            // itself (a continuation with nothing open, a reserved opcode).
            _ => {}
        }
        if self.fragments > 0 && since(millis(now), self.opened) > self.limits.fragment_timeout() {
            return Err(Violation::FragmentTimeout(self.limits.fragment_timeout()));
        }
        Ok(())
    }
}

/// Moves `len` bytes at `from` to `*kept` (they stay where they are until a
/// frame has been taken out before them).
fn keep(bytes: &mut [u8], from: usize, len: usize, kept: &mut usize) {
    if from != *kept {
        bytes.copy_within(from..from + len, *kept);
    }
    *kept += len;
}

/// `payload` as one final, masked client frame of `opcode` (with a zero
/// mask key, which leaves it as it is): what tungstenite, which asks a
/// client's frames to be masked, reads in place of a compressed message.
fn plain_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    masked_head(&mut frame, 0x80 | opcode, payload.len(), [0; 4]);
    frame.extend_from_slice(payload);
    frame
}

/// A client frame's head: `first` (FIN, RSV bits, opcode), the masked
/// length of a `len`-byte payload, and the `mask` key.
fn masked_head(out: &mut Vec<u8>, first: u8, len: usize, mask: [u8; 4]) {
    out.push(first);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
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
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // An inflated message first, then what was read after it, then
            // the socket.
            let before = buf.filled().len();
            if let Some(open) = this.inflating.as_deref_mut()
                && open.handed < open.ready.len()
            {
                let take = buf.remaining().min(open.ready.len() - open.handed);
                buf.put_slice(&open.ready[open.handed..open.handed + take]);
                open.handed += take;
                if open.handed == open.ready.len() {
                    open.ready = Vec::new();
                }
                this.tidy();
                return Poll::Ready(Ok(()));
            }
            match this.inflating.as_deref_mut() {
                Some(open) if !open.unread.is_empty() => {
                    let take = buf.remaining().min(open.unread.len());
                    buf.put_slice(&open.unread[..take]);
                    open.unread.drain(..take);
                }
                _ => {
                    ready!(this.throttle(cx));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    if buf.filled().len() == before {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let now = Instant::now();
            this.refill(now);
            let read = &mut buf.filled_mut()[before..];
            let scanned = this
                .scan(read, now)
                .map_err(|violation| io::Error::new(io::ErrorKind::InvalidData, violation))?;
            if let Some(rest) = scanned.rest {
                // Ahead of anything unread already: it was read before.
                let open = this.inflating.get_or_insert_default();
                open.unread.splice(0..0, read[rest..].iter().copied());
            }
            buf.set_filled(before + scanned.keep);
            this.tidy();
            if scanned.keep > 0 {
                return Poll::Ready(Ok(()));
            }
            // All of it was a compressed message's: hand on its frame, or
            // read on.
        }
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

    /// A masked client frame: its head, mask key and `payload` (masked).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut bytes = Vec::new();
        masked_head(&mut bytes, first, payload.len(), mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        bytes
    }

    /// A socket that gives `stream` a few bytes per read.
    struct Trickle {
        stream: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let take = this
                .step
                .min(buf.remaining())
                .min(this.stream.len() - this.at);
            buf.put_slice(&this.stream[this.at..this.at + take]);
            this.at += take;
            Poll::Ready(Ok(()))
        }
    }

    /// Everything tungstenite would read from `stream` behind a guard that
    /// negotiated compression, `step` bytes per socket read into a buffer
    /// of `room`.
    async fn read_all(stream: Vec<u8>, step: usize, room: usize) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let limits = Limits::new(1000, 8, Duration::from_secs(10)).inflating(64 * 1024);
        let mut guard = Guarded::new(
            Trickle {
                stream,
                at: 0,
                step,
            },
            limits,
        );
        let mut out = Vec::new();
        let mut buf = vec![0; room];
        loop {
            let read = guard.read(&mut buf).await?;
            if read == 0 {
                assert!(guard.inflating.is_none(), "nothing kept once read");
                return Ok(out);
            }
            out.extend_from_slice(&buf[..read]);
        }
    }

    #[tokio::test]
    async fn compressed_messages_are_read_in_place_whatever_the_reads_cut() {
        let text = br#"{"type":"say","data":{"text":"hello hello hello hello"}}"#;
        let deflated = deflate::deflate(text, deflate::Effort::Own);
        let (first, second) = deflated.split_at(deflated.len() / 2);
        let mut stream = frame(0x81, b"plain");
        // In one frame, then in two with a ping between them.
        stream.extend(frame(0xC1, &deflated));
        stream.extend(frame(0x41, first));
        stream.extend(frame(0x89, b"p"));
        stream.extend(frame(0x80, second));
        stream.extend(frame(0x82, b"after"));
        let mut expected = frame(0x81, b"plain");
        expected.extend(plain_frame(0x1, text));
        expected.extend(frame(0x89, b"p"));
        expected.extend(plain_frame(0x1, text));
        expected.extend(frame(0x82, b"after"));
        for (step, room) in [(1, 4096), (3, 5), (7, 64), (4096, 4096), (4096, 9)] {
            let read = read_all(stream.clone(), step, room).await.unwrap();
            assert_eq!(read, expected, "step {step}, room {room}");
        }
    }

    #[tokio::test]
    async fn a_broken_compressed_message_ends_the_socket_with_its_code() {
        let code = |stream: Vec<u8>| async move {
            let error = read_all(stream, 4096, 4096).await.unwrap_err();
            Violation::of(&error).map(Violation::code)
        };
        // Not DEFLATE data: 1007.
        assert_eq!(code(frame(0xC1, &[0xff, 0xff, 0xff])).await, Some(1007));
        // 10 MiB of zeros in a few KiB: 1009, past the 64 KiB limit.
        let bomb = deflate::deflate(&vec![0; 10 << 20], deflate::Effort::Own);
        assert_eq!(code(frame(0xC1, &bomb)).await, Some(1009));
        // RSV1 on a continuation, a new message inside a compressed one: 1002.
        let mut stream = frame(0x41, &deflate::deflate(b"a", deflate::Effort::Own));
        stream.extend(frame(0xC0, b""));
        assert_eq!(code(stream).await, Some(1002));
        let mut stream = frame(0x41, &deflate::deflate(b"a", deflate::Effort::Own));
        stream.extend(frame(0x81, b"b"));
        assert_eq!(code(stream).await, Some(1002));
        // A compressed frame larger than anything within the limit: 1009
        // from its head, before its payload is read.
        let mut head = vec![0xC1, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(head).await, Some(1009));
    }

    #[tokio::test]
    async fn without_the_extension_compressed_frames_pass_to_be_refused() {
        use tokio::io::AsyncReadExt;
        let stream = frame(0xC1, &deflate::deflate(b"a", deflate::Effort::Own));
        let limits = Limits::new(1000, 8, Duration::from_secs(10));
        let mut guard = Guarded::new(
            Trickle {
                stream: stream.clone(),
                at: 0,
                step: 4096,
            },
            limits,
        );
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, stream);
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
            guard.scan(&mut [*byte], now).unwrap();
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
        guard.scan(&mut stream, now).unwrap();
        assert_eq!(
            guard.scan(&mut frame(0x00, b""), now),
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
            guard.scan(&mut stream, now).unwrap();
        }
        assert_eq!(guard.fragments, 0);
        assert_eq!(guard.fragments, 0, "no message open");
    }

    #[test]
    fn a_fragmented_message_has_a_deadline() {
        let mut guard = guard();
        let start = Instant::now();
        guard.scan(&mut frame(0x01, b"a"), start).unwrap();
        let late = start + Duration::from_secs(11);
        // Even a pong, which is not part of the message, finds it late.
        assert_eq!(
            guard.scan(&mut frame(0x8A, b""), late),
            Err(Violation::FragmentTimeout(Duration::from_secs(10)))
        );
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_refused() {
        let mut guard = guard();
        let mut head = vec![0x81, 0x80 | 127];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            guard.scan(&mut head, Instant::now()),
            Err(Violation::BadLength)
        );
        assert_eq!(Violation::BadLength.code(), 1002);
    }
}
