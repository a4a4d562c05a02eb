//! The two halves of an upgraded socket: the read loop's, which reads
//! messages through tungstenite, and the write task's, which queues whole
//! frames and flushes them.
//!
//! Both halves reach the socket under one lock, taken for a single poll and
//! never held across a wait (as `tokio::io::split` does). The heartbeat
//! takes it too, without waiting, to write a ping when neither task is
//! writing ([`Pinger`]). A poll is short:
//! at most one message read (a compressed one inflated within
//! `Config::max_frame_bytes`), one frame queued, or one batch written. tungstenite needs
//! the whole socket on either side: reading, it answers pings and the
//! close handshake by itself; and the write task's flush goes through it so
//! that what tungstenite wrote last is finished first (see
//! [`queued`](super::queued)).

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::Socket;
use crate::util::Mutex;

/// The read loop's half: the client's messages.
pub(crate) struct Incoming(Arc<Mutex<Socket>>);

/// The write task's half.
pub(crate) struct Outgoing(Arc<Mutex<Socket>>);

/// What writes the heartbeat's pings into the socket without the write
/// task: see [`Pinger::ping`]. Holds the socket weakly: the connection's
/// end closes it and frees its buffers, and only the shared half's own
/// allocation (about 400 bytes) waits for the heartbeat to drop its entry,
/// at most one `Config::ping_interval` later.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pinger(Weak<Mutex<Socket>>);

/// A queued frame was refused: tungstenite answered the client's close,
/// and nothing may be sent after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client closed the connection")]
pub(crate) struct PeerClosed;

/// Splits an upgraded socket in two.
pub(crate) fn split(socket: Socket) -> (Incoming, Outgoing) {
    let shared = Arc::new(Mutex::new(socket));
    (Incoming(Arc::clone(&shared)), Outgoing(shared))
}

impl Stream for Incoming {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut socket = self.0.lock();
        let next = Pin::new(&mut *socket).poll_next(cx);
        if let Poll::Ready(Some(Ok(Message::Close(_)))) = &next {
            // Under the lock that tungstenite's answer is written under: a
            // frame queued from now on goes after that answer, so none is.
            socket.get_mut().peer_closed();
        }
        next
    }
}

impl Incoming {
    /// The socket's [`Pinger`].
    pub(crate) fn pinger(&self) -> Pinger {
        Pinger(Arc::downgrade(&self.0))
    }

    /// After the close handshake was begun and the client still sends:
    /// ends the server's side of the TCP connection (the close frame has
    /// been written), then reads and drops what comes until the client ends
    /// its side, at most `limit` bytes. Dropping a socket with input unread
    /// would reset the connection, and a reset can reach the client before
    /// it reads the close frame: the client would see the connection drop
    /// with no code. Read below the frame guard, whose rate limit would
    /// otherwise slow this down, and without parsing a frame.
    pub(crate) async fn discard(&mut self, limit: usize) {
        let shutdown = std::future::poll_fn(|cx| {
            Pin::new(self.0.lock().get_mut().get_mut().get_mut()).poll_shutdown(cx)
        });
        if shutdown.await.is_err() {
            return;
        }
        let mut left = limit;
        std::future::poll_fn(|cx| {
            let mut socket = self.0.lock();
            let io = socket.get_mut().get_mut().get_mut();
            let mut buffer = [0u8; 4096];
            while left > 0 {
                let mut read = ReadBuf::new(&mut buffer);
                match Pin::new(&mut *io).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                        left = left.saturating_sub(read.filled().len());
                    }
                    // The client's end, or an error: nothing more comes.
                    Poll::Ready(_) => return Poll::Ready(()),
                }
            }
            Poll::Ready(())
        })
        .await;
    }
}

impl Pinger {
    /// Writes a heartbeat `frame` (a ping, or the text heartbeat) into the
    /// socket now, on the caller's thread,
    /// and returns true; or returns false when the write task must send it:
    /// the socket is in use or has frames waiting, is full, closing or
    /// gone. A ping written here costs the socket's write and nothing else,
    /// where one sent by the write task also wakes it and has it look at
    /// its queue and every ring it reads; with one ping per connection per
    /// interval, that waking was most of what an idle connection cost the
    /// framework.
    pub(crate) fn ping(&self, frame: Bytes) -> bool {
        let Some(socket) = self.0.upgrade() else {
            return false;
        };
        // Never waits: a poll holds the lock briefly, but a read may be
        // inflating a large message.
        let Some(mut socket) = socket.try_lock() else {
            return false;
        };
        socket.get_mut().write_now(frame)
    }
}

impl Outgoing {
    /// Queues one whole frame (see [`framing`](super::framing)) to be
    /// written at the next flush. Refused once tungstenite has answered the
    /// client's close.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PeerClosed> {
        match self.0.lock().get_mut().push(frame) {
            true => Ok(()),
            false => Err(PeerClosed),
        }
    }

    /// Writes what is queued, and whatever tungstenite has to send.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), tungstenite::Error>> {
        Pin::new(&mut *self.0.lock()).poll_flush(cx)
    }

    /// Sends a close frame, after whatever was queued. tungstenite sends
    /// it, so that it knows the handshake began and answers no other.
    pub(crate) async fn close_with(&self, frame: CloseFrame) -> Result<(), tungstenite::Error> {
        self.0.lock().get_mut().closing();
        std::future::poll_fn(|cx| Pin::new(&mut *self.0.lock()).poll_ready(cx)).await?;
        Pin::new(&mut *self.0.lock()).start_send(Message::Close(Some(frame)))?;
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Ends the close handshake from this side (tungstenite sends a close
    /// frame if none was sent or answered yet), and flushes.
    pub(crate) async fn finish(&self) -> Result<(), tungstenite::Error> {
        self.0.lock().get_mut().closing();
        std::future::poll_fn(|cx| Pin::new(&mut *self.0.lock()).poll_close(cx)).await
    }
}
