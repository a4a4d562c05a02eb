//! The write side of an upgraded socket: whole frames, made elsewhere and
//! shared, written between tungstenite's own writes.
//!
//! tungstenite copies every message it sends into its write buffer. The
//! connection's write task does not send its frames through it: it queues
//! here frames that are already bytes ([`framing`](super::framing)), most of
//! them an event's frame shared by every subscriber, and they are written
//! from where they are, up to 64 frames in one `writev`. tungstenite still writes
//! what it sends by itself (pongs, the close handshake) through this
//! wrapper, and the two never cut into each other's frames:
//!
//! - before tungstenite's bytes, the queued frames are written whole (they
//!   were queued first);
//! - while tungstenite's last write was cut short, the rest of its bytes
//!   come next, and the queued frames wait.
//!
//! The heartbeat's ping may be written from outside both tasks
//! ([`Queued::write_now`]), only where it cuts into no frame, passes no
//! queued one, follows no close, and takes no task's place in waiting for
//! the socket.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this many frames go in one `writev` (the write task queues at
/// most `Config::write_batch` before it flushes; Linux takes 1024 slices).
const MAX_SLICES: usize = 64;

/// A queue kept after it was written, up to this many frames' room: a
/// connection with steady traffic writes without allocating.
const KEEP: usize = 8;

/// An upgraded socket whose writes are frames queued here, and tungstenite's.
#[derive(Debug)]
pub(crate) struct Queued<S> {
    inner: S,
    frames: Vec<Bytes>,
    /// Frames at the front of `frames` written whole.
    sent: u32,
    /// Bytes of the next frame already written.
    offset: u32,
    /// tungstenite's last write was cut short: the rest of its bytes go
    /// before any queued frame.
    theirs_open: bool,
    /// tungstenite read the client's close frame: its next write answers
    /// it.
    peer_closed: bool,
    /// tungstenite has written since the client's close, so its answer is
    /// out (after every frame queued before it): nothing more is queued.
    sealed: bool,
    /// The write task began the close handshake: a frame from outside it
    /// ([`write_now`](Self::write_now)) could follow the close frame, so
    /// none is written.
    closing: bool,
    /// The socket's last write was refused (it was full): a task waits for
    /// it to drain, with its waker registered, which a write from outside
    /// the tasks must not replace.
    blocked: bool,
}

impl<S> Queued<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            frames: Vec::new(),
            sent: 0,
            offset: 0,
            theirs_open: false,
            peer_closed: false,
            sealed: false,
            closing: false,
            blocked: false,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Queues one whole frame, to be written at the next flush; false
    /// (and not queued) once tungstenite has answered the client's close,
    /// since no frame may follow that answer.
    pub(crate) fn push(&mut self, frame: Bytes) -> bool {
        if self.sealed {
            return false;
        }
        self.frames.push(frame);
        true
    }

    /// Marks that tungstenite read the client's close frame. Frames queued
    /// until tungstenite writes its answer go before it.
    pub(crate) fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Marks that the write task is sending its close frame: from now on
    /// only the write task writes.
    pub(crate) fn closing(&mut self) {
        self.closing = true;
    }
}

impl<S: AsyncWrite + Unpin> Queued<S> {
    /// Writes one whole frame now, from outside the tasks (the heartbeat's
    /// ping), if nothing is waiting to be written, no task waits for the
    /// socket to drain, and the socket takes it without waiting. Returns
    /// whether it was written whole; if not, the write task must send it:
    /// it finishes what was begun here (the rest is queued first). A
    /// refusal here registers no task for the socket's readiness (the call
    /// waits on nobody), which is harmless only because no task was
    /// registered: that is what `blocked` makes sure of.
    pub(crate) fn write_now(&mut self, frame: Bytes) -> bool {
        let idle = self.frames.is_empty() && !self.theirs_open && !self.blocked;
        if !idle || self.closing || self.peer_closed || self.sealed {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.inner).poll_write(&mut cx, &frame) {
            Poll::Ready(Ok(written)) if written == frame.len() => true,
            Poll::Ready(Ok(written)) if written > 0 => {
                self.offset = written as u32;
                self.frames.push(frame);
                false
            }
            // Nothing written: the socket is full (the write task will find
            // it so too), or failed (the write task will find that too).
            _ => false,
        }
    }

    /// Writes the queued frames, as many in one call as the socket takes.
    fn poll_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while (self.sent as usize) < self.frames.len() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let waiting = &self.frames[self.sent as usize..];
            let count = waiting.len().min(MAX_SLICES);
            for (slice, frame) in slices.iter_mut().zip(waiting) {
                *slice = IoSlice::new(frame);
            }
            slices[0] = IoSlice::new(&waiting[0][self.offset as usize..]);
            let written = Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]);
            self.blocked = written.is_pending();
            let mut written = ready!(written)?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while written > 0 {
                let frame = &self.frames[self.sent as usize];
                let left = frame.len() - self.offset as usize;
                if written < left {
                    self.offset += written as u32;
                    break;
                }
                written -= left;
                self.sent += 1;
                self.offset = 0;
            }
        }
        // A queue larger than a steady connection needs is given back once
        // written (a burst's batches grow it again, a few allocations per
        // batch of up to `Config::write_batch`), so that an idle
        // connection keeps at most `KEEP` frames' room.
        if self.frames.capacity() > KEEP {
            self.frames = Vec::new();
        } else {
            self.frames.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Queued<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Queued<S> {
    /// tungstenite's write: after the queued frames, unless its own last
    /// write is not finished.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.theirs_open {
            ready!(this.poll_queued(cx))?;
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.blocked = written.is_pending();
        let written = ready!(written)?;
        this.theirs_open = written < buf.len();
        this.sealed |= this.peer_closed;
        Poll::Ready(Ok(written))
    }

    /// Writes the queued frames too: the write task's flush goes through
    /// tungstenite's, which ends here.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // tungstenite flushes only once its own bytes are all written.
        debug_assert!(!this.theirs_open, "a flush inside tungstenite's write");
        if !this.theirs_open {
            ready!(this.poll_queued(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::Message;
    use tungstenite::protocol::Role;

    use super::*;
    use crate::websocket::framing;

    /// A socket that takes at most a few bytes per write and refuses every
    /// other write, so that every frame, queued or tungstenite's, is cut
    /// short over and over, and left unfinished between flushes.
    #[derive(Default)]
    struct Trickle {
        written: Vec<u8>,
        calls: usize,
        most_slices: usize,
    }

    impl Trickle {
        /// Whether this call is refused (after waking its task at once).
        fn stall(&mut self, cx: &mut Context<'_>) -> bool {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return true;
            }
            false
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            this.most_slices = this.most_slices.max(bufs.len());
            let (mut room, mut taken) = (7, 0);
            for buf in bufs {
                let take = buf.len().min(room);
                this.written.extend_from_slice(&buf[..take]);
                (room, taken) = (room - take, taken + take);
                if room == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_frames_and_tungstenites_never_cut_into_each_other() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let io = Queued::new(Trickle::default());
        let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let long = "y".repeat(300);
        let ping = Bytes::from(vec![b'p'; 100]);
        assert!(socket.get_mut().push(framing::text(b"first")));
        assert!(socket.get_mut().push(framing::text(long.as_bytes())));
        // tungstenite's own frame (a pong it answers with, say), left
        // unfinished, then more frames queued behind it.
        assert!(socket.poll_ready_unpin(&mut cx).is_ready());
        socket
            .start_send_unpin(Message::Ping(ping.clone()))
            .unwrap();
        for _ in 0..100 {
            assert!(socket.poll_flush_unpin(&mut cx).is_pending());
            if socket.get_ref().theirs_open {
                break;
            }
        }
        assert!(
            socket.get_ref().theirs_open,
            "cut inside tungstenite's frame"
        );
        assert!(socket.get_mut().push(framing::text(b"third")));
        let _ = socket.poll_flush_unpin(&mut cx);
        assert!(socket.get_mut().push(framing::PING));
        socket.flush().await.unwrap();

        let io = socket.into_inner().inner;
        assert!(io.most_slices > 1, "queued frames go out together");
        // Read the bytes back as a client would: every frame whole. (The
        // server's end stays open: the client answers the pings.)
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut server, &io.written)
            .await
            .unwrap();
        let mut reader = WebSocketStream::from_raw_socket(&mut client, Role::Client, None).await;
        let mut got = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), reader.next()).await
        {
            got.push(message.unwrap());
        }
        assert_eq!(
            got,
            [
                Message::text("first"),
                Message::text(long),
                Message::Ping(ping),
                Message::text("third"),
                Message::Ping(Bytes::new()),
            ]
        );
    }

    #[tokio::test]
    async fn a_frame_written_now_goes_only_where_no_frame_is_cut() {
        let frame = || framing::text(b"a frame longer than one write");
        let mut queued = Queued::new(Trickle::default());
        // Refused while a queued frame waits: it would cut into nothing,
        // but it would pass the frames queued before it.
        assert!(queued.push(framing::text(b"queued")));
        assert!(!queued.write_now(framing::PING));
        std::future::poll_fn(|cx| queued.poll_queued(cx))
            .await
            .unwrap();
        // Free: written at once, but the socket takes 7 bytes a call (and
        // refuses every other call: then nothing is written or queued), so
        // the rest is queued and goes first at the next flush.
        for _ in 0..2 {
            assert!(!queued.write_now(frame()), "written whole in one call");
            if !queued.frames.is_empty() {
                break;
            }
        }
        assert_eq!(queued.offset, 7);
        assert!(!queued.write_now(framing::PING), "a frame is cut");
        std::future::poll_fn(|cx| queued.poll_queued(cx))
            .await
            .unwrap();
        // A ping is shorter than one call: written whole, once the socket
        // takes a call.
        let mut written = false;
        for _ in 0..2 {
            written = queued.write_now(framing::PING);
            assert!(queued.frames.is_empty(), "refused: nothing queued");
            if written {
                break;
            }
        }
        assert!(written);
        let mut expected = framing::text(b"queued").to_vec();
        expected.extend_from_slice(&frame());
        expected.extend_from_slice(&framing::PING);
        assert_eq!(queued.inner.written, expected);
        // Never once the close handshake began, from either side: refused
        // without a call to the socket.
        queued.closing();
        refused_without_a_write(&mut queued);
        let mut closed = Queued::new(Trickle::default());
        closed.peer_closed();
        refused_without_a_write(&mut closed);
    }

    /// Asserts that `write_now` refuses a ping without calling the socket.
    fn refused_without_a_write(queued: &mut Queued<Trickle>) {
        let calls = queued.inner.calls;
        assert!(!queued.write_now(framing::PING));
        assert_eq!(queued.inner.calls, calls, "the socket was called");
    }

    #[tokio::test]
    async fn no_frame_is_written_now_while_a_task_waits_for_the_socket_or_inside_tungstenites_frame()
     {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut socket =
            WebSocketStream::from_raw_socket(Queued::new(Trickle::default()), Role::Server, None)
                .await;
        assert!(
            socket.get_mut().write_now(framing::PING),
            "the socket is free"
        );
        // tungstenite's own frame (a pong, say) refused by a full socket,
        // with nothing queued: the task that flushes it waits, and its
        // waker must stay the socket's.
        assert!(socket.poll_ready_unpin(&mut cx).is_ready());
        socket
            .start_send_unpin(Message::Ping(Bytes::from(vec![b'p'; 100])))
            .unwrap();
        assert!(socket.poll_flush_unpin(&mut cx).is_pending());
        assert!(socket.get_ref().frames.is_empty() && !socket.get_ref().theirs_open);
        refused_without_a_write(socket.get_mut());
        // Then cut short.
        while !socket.get_ref().theirs_open {
            assert!(socket.poll_flush_unpin(&mut cx).is_pending());
        }
        refused_without_a_write(socket.get_mut());
        socket.flush().await.unwrap();
        let queued = socket.get_mut();
        let written = (0..2).any(|_| queued.write_now(framing::PING));
        assert!(written, "free again");
    }

    #[tokio::test]
    async fn a_queue_gives_its_room_back_once_written_if_larger_than_needed() {
        let mut queued = Queued::new(Trickle::default());
        for frames in [64, KEEP] {
            for _ in 0..frames {
                assert!(queued.push(framing::PING));
            }
            std::future::poll_fn(|cx| queued.poll_queued(cx))
                .await
                .unwrap();
            if frames > KEEP {
                assert_eq!(queued.frames.capacity(), 0, "a burst's room is given back");
            } else {
                assert!(queued.frames.capacity() >= KEEP, "a small queue is kept");
            }
        }
    }
}
