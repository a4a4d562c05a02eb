//! A connection as the rest of the instance reaches it: the bounded queue
//! of its write task, and the switch that ends it.
//!
//! A leaf below both [`handler`](crate::handler) and `connection`: it knows
//! frames, feeds and close codes, nothing of handlers, services or the read
//! loop, so that [`Context`](crate::Context) can hold an [`Outbox`] without
//! depending on the connection's machinery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use tokio::time::Instant;

use crate::hub::Feed;
use crate::protocol::{Frame, close_code};
use crate::telemetry::Counters;
use crate::util::{Fired, Signal, millis};

mod queue;

use queue::{Queue, Refused};

/// What the write task does next, besides the events it reads from its
/// topics' rings.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame for this client alone: an answer, an error, or an event
    /// sent with `Context::send`.
    Frame(Frame),
    /// The answer to a `$presence`, written when the writer reaches the
    /// connection's mark in the topic's ring (`Event::asked`): after the
    /// joins and leaves the answer counts, before those it does not.
    Answer(Frame),
    /// A heartbeat: a ping, or the text heartbeat the client asked for.
    Ping,
    /// Start writing the events of one more topic.
    Subscribe(Box<Feed>),
    /// Stop writing a topic's events.
    Unsubscribe(Arc<str>),
    /// The last frame: a close frame with this code, after everything queued
    /// before it.
    Close(u16),
}

impl Outbound {
    /// The bytes it holds, as the queue's byte bound counts them.
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Frame(frame) | Self::Answer(frame) => frame.as_str().len(),
            _ => 0,
        }
    }
}

/// What the instance asks of a connection's read loop, for its user
/// (`Service::subscribe_user`, `Service::unsubscribe_user`): the read loop
/// owns the subscriptions, so it carries them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Order {
    /// Subscribe to the topic, if the handler authorizes it.
    Join(Arc<str>),
    /// Leave the topic.
    Leave(Arc<str>),
}

/// How a connection stands, shared by its read loop, its write task and
/// every holder of its [`Outbox`]: what waits to be written, whether it must
/// end at once, with which close code, and the service's counters.
#[derive(Debug)]
pub(crate) struct Status {
    queue: Queue,
    /// Fires when the connection must end at once, without waiting for its
    /// queue: a slow reader, a failed write, or the write task ending.
    abort: Signal,
    /// The close code to send on abort; 0 when no close frame should be sent.
    abort_code: AtomicU16,
    /// The reason to send with it, when the code's own will not do (the
    /// application's, for `Service::disconnect_user`).
    abort_reason: std::sync::OnceLock<Box<str>>,
    /// The read whose mark in a topic's ring is where this connection's
    /// `$presence` answer goes (0: none). One ask is out at a time per
    /// connection, so one number is enough.
    awaiting: AtomicU64,
    /// When the client last sent a frame ([`millis`]), for the heartbeat's
    /// idle timeout.
    last_seen: AtomicU32,
    /// Whether the heartbeat is a text frame (`?heartbeat=text`) rather
    /// than a WebSocket ping. (In the padding after `abort_code`.)
    text_heartbeat: AtomicBool,
    counters: Arc<Counters>,
}

impl Status {
    /// Ends the connection now with `code` (0: no close frame). The first
    /// reason wins.
    pub(crate) fn abort(&self, code: u16) {
        let _ = self
            .abort_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.abort.fire();
    }

    /// Ends the connection now with `code` and `reason`, unless it was
    /// ended already.
    pub(crate) fn abort_with(&self, code: u16, reason: &str) {
        if self
            .abort_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = self.abort_reason.set(reason.into());
        }
        self.abort.fire();
    }

    /// The reason an abort gave, if any.
    pub(crate) fn abort_reason(&self) -> Option<&str> {
        self.abort_reason.get().map(|reason| &**reason)
    }

    /// Ends the connection with 1013 because it fell behind (a slow
    /// close), counted once.
    pub(crate) fn close_slow(&self) {
        if !self.abort.is_fired() {
            self.counters.slow_close();
            tracing::debug!("client fell behind its outbound bound; closing it with 1013");
        }
        self.abort(close_code::TRY_AGAIN_LATER);
    }

    /// Whether the connection was aborted.
    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.is_fired()
    }

    /// Resolves once the connection is aborted; see [`Signal::fired`].
    pub(crate) fn aborted(&self) -> Fired<'_> {
        self.abort.fired()
    }

    /// Tells the read loop that orders wait for it (`Users::order`).
    pub(crate) fn poke(&self) {
        self.abort.poke();
    }

    /// Whether orders were sent since the last look; clears it.
    pub(crate) fn take_poke(&self) -> bool {
        self.abort.take_poke()
    }

    /// Resolves once the connection is aborted or [`poke`](Self::poke)d.
    pub(crate) fn aborted_or_poked(&self) -> Fired<'_> {
        self.abort.fired_or_poked()
    }

    /// Waits for the mark of read `group`: the writer stops at it.
    pub(crate) fn await_mark(&self, group: u64) {
        self.awaiting.store(group, Ordering::Release);
    }

    /// Whether a mark of read `group` is this connection's.
    pub(crate) fn awaits(&self, group: u64) -> bool {
        self.awaiting.load(Ordering::Acquire) == group
    }

    /// The close code an abort asked for; 0 for none.
    pub(crate) fn abort_code(&self) -> u16 {
        self.abort_code.load(Ordering::Acquire)
    }

    /// Notes that the client sent a frame at `now`.
    pub(crate) fn seen(&self, now: Instant) {
        self.last_seen.store(millis(now), Ordering::Relaxed);
    }

    /// When the client last sent a frame ([`millis`]).
    pub(crate) fn last_seen(&self) -> u32 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Makes the connection's heartbeat a text frame (`?heartbeat=text`).
    pub(crate) fn heartbeat_in_text(&self) {
        self.text_heartbeat.store(true, Ordering::Relaxed);
    }

    /// The connection's heartbeat frame: a ping, or the text heartbeat.
    pub(crate) fn heartbeat_frame(&self) -> bytes::Bytes {
        crate::websocket::framing::heartbeat(self.text_heartbeat.load(Ordering::Relaxed))
    }

    /// Queues a heartbeat ping, unless the queue is full: a client that far
    /// behind gets no ping, and the next frame that finds the queue full
    /// closes it with 1013.
    pub(crate) fn ping(&self) {
        let _ = self.queue.push(Outbound::Ping);
    }

    /// The service's counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The connection's own queue, which the write task reads.
    pub(crate) fn queue(&self) -> &Queue {
        &self.queue
    }
}

/// The sending side of one connection: what queues frames for its write
/// task, and ends it.
///
/// Held by the connection's read loop and its [`Context`](crate::Context)
/// (for `send`); the write task reads the queue through the same
/// [`Status`].
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    status: Arc<Status>,
}

impl Outbox {
    /// A new connection's queue of at most `max_frames` frames and
    /// `max_bytes` bytes; the write task reads it through
    /// [`status`](Self::status).
    pub(crate) fn new(max_frames: usize, max_bytes: usize, counters: Arc<Counters>) -> Self {
        let status = Arc::new(Status {
            queue: Queue::new(max_frames, max_bytes, Arc::clone(&counters.queued_bytes)),
            abort: Signal::default(),
            abort_code: AtomicU16::new(0),
            abort_reason: std::sync::OnceLock::new(),
            awaiting: AtomicU64::new(0),
            last_seen: AtomicU32::new(millis(Instant::now())),
            text_heartbeat: AtomicBool::new(false),
            counters,
        });
        Self { status }
    }

    /// Queues `frame` without waiting. A full queue means the client reads
    /// too slowly: it is closed with 1013 and the frame is dropped, so that
    /// no one else waits for it. Returns whether the frame was queued.
    pub(crate) fn push(&self, frame: Frame) -> bool {
        self.queue(Outbound::Frame(frame))
    }

    /// Queues the answer to a `$presence`, which waits for the
    /// connection's mark in the topic's ring; as [`push`](Self::push).
    pub(crate) fn push_answer(&self, frame: Frame) -> bool {
        self.queue(Outbound::Answer(frame))
    }

    /// Hands the write task one more topic's ring, after its catch-up; the
    /// topic's events are written from the ring's next new event on.
    pub(crate) fn subscribe(&self, mut feed: Feed) -> bool {
        self.catch_up(&mut feed) && self.queue(Outbound::Subscribe(Box::new(feed)))
    }

    /// Queues a feed's catch-up frames, which come before any of its ring's
    /// events: all of them, or (if they do not fit the queue's room now)
    /// the feed's fallback, which says the missed events are not coming.
    pub(crate) fn catch_up(&self, feed: &mut Feed) -> bool {
        let frames = std::mem::take(&mut feed.catch_up);
        // Counted by the queue from here on: the reservation goes.
        let _reserved = feed.reserved.take();
        let mut recovered = feed.recovered;
        let queued = match self
            .status
            .queue
            .push_all(frames.into_iter().map(Outbound::Frame).collect())
        {
            Ok(()) => true,
            Err(Refused::Full) => match feed.fallback.take() {
                Some(fallback) => {
                    recovered = Some(false);
                    self.push(fallback)
                }
                None => {
                    self.status.close_slow();
                    false
                }
            },
            Err(Refused::Closed) => false,
        };
        if queued && let Some(recovered) = recovered {
            self.counters().resumed(recovered);
        }
        queued
    }

    /// Tells the write task to stop writing `topic`'s events.
    pub(crate) fn unsubscribe(&self, topic: Arc<str>) -> bool {
        self.queue(Outbound::Unsubscribe(topic))
    }

    /// Queues the close frame with `code` behind everything already queued,
    /// past the queue's bounds: it is the last frame.
    pub(crate) fn close(&self, code: u16) {
        if self.status.queue.push_last(Outbound::Close(code)).is_err() {
            self.abort(code);
        }
    }

    /// Ends the connection now; see [`Status::abort`].
    pub(crate) fn abort(&self, code: u16) {
        self.status.abort(code);
    }

    /// The connection's status, for the write task and the read loop.
    pub(crate) fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// The service's counters.
    pub(crate) fn counters(&self) -> &Counters {
        self.status.counters()
    }

    fn queue(&self, item: Outbound) -> bool {
        match self.status.queue.push(item) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.status.close_slow();
                false
            }
            Err(Refused::Closed) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_owned())
    }

    #[test]
    fn a_full_queue_refuses_the_frame_and_aborts_with_1013() {
        let outbox = Outbox::new(2, 1024, Arc::default());
        assert!(outbox.push(frame("a")));
        assert!(outbox.push(frame("b")));
        assert!(!outbox.status().is_aborted());

        assert!(!outbox.push(frame("c")));
        assert!(outbox.status().is_aborted());
        assert_eq!(outbox.status().abort_code(), 1013);
        assert_eq!(outbox.counters().slow_closes.load(Ordering::Relaxed), 1);
        // What was queued before stays, in order.
        let queue = outbox.status().queue();
        assert!(matches!(queue.try_pop(), Some(Outbound::Frame(text)) if text.as_str() == "a"));
    }

    #[test]
    fn a_push_after_the_writer_ended_is_refused_without_an_abort() {
        let outbox = Outbox::new(2, 1024, Arc::default());
        outbox.status().queue().close();
        assert!(!outbox.push(frame("a")));
        assert!(!outbox.status().is_aborted());
    }
}
