//! One socket: its bounded outbound queue, its write task and its read loop.
//!
//! A connection costs two tasks: the read loop (the task axum gives the
//! upgraded socket) and one write task. Nothing is spawned per message. The
//! read loop handles a client's frames one after another, in the order they
//! arrived; every frame for the client, whoever produced it, goes through the
//! one outbound queue, which the write task drains in batches (feed several
//! frames, flush once). No lock is held across a socket write.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::broker::BrokerError;
use crate::handler::ConnectionId;

mod reader;
mod writer;

pub(crate) use reader::{Session, run};

/// What the write task sends next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame: an answer, an error or an event.
    Frame(Utf8Bytes),
    /// A heartbeat ping.
    Ping,
    /// The last frame: a close frame with this code, after everything queued
    /// before it.
    Close(u16),
}

/// Counters shared by every connection of one service.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) slow_closes: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) idle_closes: AtomicU64,
}

/// A one-way switch that is cheap to look at: an atomic flag for the loops
/// to check per frame, and a token to wake a task that waits for it.
/// (`CancellationToken::is_cancelled` takes a lock, shared by every clone:
/// too dear per frame.)
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    /// Flips the switch and wakes the waiters; later calls do nothing more.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether [`fire`](Self::fire) was called.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once the switch is flipped. Create it once per loop and poll
    /// it only when there is nothing else to do.
    pub(crate) fn fired(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// State shared by a connection's read loop, its write task and everyone
/// holding its [`Outbox`].
#[derive(Debug)]
struct Shared {
    /// Fires when the connection must end at once, without waiting for its
    /// queue: a slow reader, a failed write, or the write task ending.
    abort: Signal,
    /// The close code to send on abort; 0 when no close frame should be sent.
    abort_code: AtomicU16,
    counters: Arc<Counters>,
}

impl Shared {
    /// Ends the connection now with `code` (0: no close frame). The first
    /// reason wins.
    fn abort(&self, code: u16) {
        let _ = self
            .abort_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.abort.fire();
    }
}

/// The sending side of one connection's outbound queue.
///
/// Cloned into the topic registry (for fan-out) and into the connection's
/// [`Context`](crate::Context) (for `send`).
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues `frame` without waiting. A full queue means the client reads
    /// too slowly: it is closed with 1013 and the frame is dropped, so that
    /// no one else waits for it. Returns whether the frame was queued.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(Outbound::Frame(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.shared.abort.is_fired() {
                    self.shared
                        .counters
                        .slow_closes
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("outbound queue full; closing a slow client with 1013");
                }
                self.shared
                    .abort(crate::protocol::close_code::TRY_AGAIN_LATER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A new connection's queue: the [`Outbox`] to register and the receiver its
/// write task will drain.
pub(crate) fn queue(
    capacity: usize,
    counters: Arc<Counters>,
) -> (Outbox, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(Shared {
        abort: Signal::default(),
        abort_code: AtomicU16::new(0),
        counters,
    });
    (Outbox { tx, shared }, rx)
}

/// The service as a connection sees it: where the events its handler
/// produces go, and where it follows more topics.
pub(crate) trait Publisher: Send + Sync {
    /// A connection's place among a topic's subscribers; dropping it leaves
    /// the topic.
    type Membership: Send;

    /// Publishes one event frame on `topic`.
    fn publish(
        &self,
        topic: &str,
        frame: Bytes,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Adds the connection to `topic`'s subscribers (subscribing the instance
    /// at the broker if it is the first); returns the shared topic name.
    fn follow(
        &self,
        topic: &str,
        id: ConnectionId,
        outbox: &Outbox,
    ) -> impl Future<Output = Result<(Arc<str>, Self::Membership), BrokerError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_the_frame_and_aborts_with_1013() {
        let (outbox, mut rx) = queue(2, Arc::default());
        assert!(outbox.push("a".into()));
        assert!(outbox.push("b".into()));
        assert!(!outbox.shared.abort.is_fired());

        assert!(!outbox.push("c".into()));
        assert!(outbox.shared.abort.is_fired());
        assert_eq!(outbox.shared.abort_code.load(Ordering::Acquire), 1013);
        assert_eq!(
            outbox.shared.counters.slow_closes.load(Ordering::Relaxed),
            1
        );
        // What was queued before stays, in order.
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(text)) if text.as_str() == "a"));
    }

    #[test]
    fn a_push_after_the_writer_ended_is_refused_without_an_abort() {
        let (outbox, rx) = queue(2, Arc::default());
        drop(rx);
        assert!(!outbox.push("a".into()));
        assert!(!outbox.shared.abort.is_fired());
    }
}
