//! A topic's ring as its readers see it: the events in it, and the feed a
//! new subscriber starts from.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::protocol::Frame;
use crate::websocket::{deflate, framing};

/// One topic's events as a connection's writer reads them: the receiving
/// end of the topic's ring, shared by every local subscriber.
pub(crate) type Ring = broadcast::Receiver<Event>;

/// One item of a topic's ring: a frame, and its offset when the topic keeps
/// history.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The event's offset; [`Event::PLAIN`] for a topic without history,
    /// [`Event::RESET`] for a `reset` frame.
    pub(crate) offset: u64,
    body: Body,
}

/// An event's frame as the bytes every subscriber writes (head and
/// payload, made once per instance), and for one that subscribers get
/// compressed, the room for its compressed frame. One of two, so that an
/// event is no larger than its frame and offset (the pointers leave a
/// niche for the tag): every topic's ring holds `Config::topic_backlog` of
/// them.
#[derive(Debug, Clone)]
enum Body {
    Plain(Bytes),
    Deflatable(Arc<Deflatable>),
}

/// A frame that subscribers which negotiated permessage-deflate get
/// compressed: made by the first of their writers, shared by the others
/// (one compression per event per instance).
#[derive(Debug)]
struct Deflatable {
    plain: Bytes,
    deflated: OnceLock<Bytes>,
}

impl Event {
    /// The offset of every event of a topic without history.
    pub(crate) const PLAIN: u64 = 0;
    /// The offset of a `reset` frame: never skipped, and what follows it
    /// counts from a new epoch.
    pub(crate) const RESET: u64 = u64::MAX;
    /// The bit of a mark: where the `$presence` answers of one read go
    /// (the rest of the offset is the read's number). Offsets and numbers
    /// stay far below it.
    const ASKED: u64 = 1 << 63;

    /// The mark of the answers of `$presence` read `group`.
    pub(crate) fn asked(group: u64) -> Self {
        Self {
            offset: Self::ASKED | group,
            body: Body::Plain(Bytes::new()),
        }
    }

    /// The read whose answers this event marks, if it is a mark.
    pub(crate) fn asker(&self) -> Option<u64> {
        (self.offset & Self::ASKED != 0 && self.offset != Self::RESET)
            .then_some(self.offset & !Self::ASKED)
    }

    /// The event's whole frame, to write as it is: compressed (made once
    /// for every subscriber) if `deflate` and the event is large enough
    /// for the service to compress it, plain otherwise. A plain event's
    /// bytes are moved out of it rather than cloned: every clone of the
    /// shared bytes is an atomic count that every subscriber's writer
    /// bumps.
    pub(crate) fn into_wire(self, deflate: bool) -> Bytes {
        match self.body {
            Body::Plain(plain) => plain,
            Body::Deflatable(shared) if !deflate => shared.plain.clone(),
            Body::Deflatable(shared) => shared
                .deflated
                .get_or_init(|| {
                    let payload = framing::payload(&shared.plain);
                    deflate::deflated_text(payload, deflate::Effort::Shared)
                })
                .clone(),
        }
    }
}

/// The sending end of a topic's ring.
#[derive(Debug)]
pub(crate) struct Outlet {
    sender: broadcast::Sender<Event>,
    /// Events of at least this many bytes get a shared slot for their
    /// compressed form (`Config::compression_min_bytes`); `usize::MAX` when
    /// the service does not compress, so that no event pays for one.
    deflate_min: usize,
}

impl Outlet {
    /// A ring of `capacity` events, and its first receiver.
    pub(crate) fn new(capacity: usize, deflate_min: usize) -> (Self, Ring) {
        let (sender, receiver) = broadcast::channel(capacity);
        (
            Self {
                sender,
                deflate_min,
            },
            receiver,
        )
    }

    /// Puts an event in the ring; without receivers it is dropped (every
    /// subscriber is leaving).
    pub(crate) fn send(&self, offset: u64, frame: &Frame) {
        let plain = framing::text(frame.as_bytes());
        let body = match frame.as_bytes().len() >= self.deflate_min {
            true => Body::Deflatable(Arc::new(Deflatable {
                plain,
                deflated: OnceLock::new(),
            })),
            false => Body::Plain(plain),
        };
        let _ = self.sender.send(Event { offset, body });
    }

    /// Puts a mark in the ring.
    pub(crate) fn mark(&self, group: u64) {
        let _ = self.sender.send(Event::asked(group));
    }

    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> Ring {
        self.sender.subscribe()
    }

    /// Events its slowest receiver has not read.
    pub(crate) fn len(&self) -> usize {
        self.sender.len()
    }
}

/// A topic as a connection's writer follows it: its ring, and for a
/// subscription that resumed, where the ring's events start to be new.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) topic: Arc<str>,
    pub(crate) ring: Ring,
    /// The start of a subscription to a topic with history: the events the
    /// client missed and the `subscribed` frame. They go in the
    /// connection's queue ahead of the feed (so its bounds count them), and
    /// are written before any of the ring's events.
    pub(crate) catch_up: Vec<Frame>,
    /// Ring events up to this offset were in the catch-up already (the ring
    /// was subscribed before the history was read, so it may hold some of
    /// them again); they are skipped. 0: nothing to skip.
    pub(crate) sent_through: u64,
    /// For a catch-up that recovers missed events: the `subscribed` frame
    /// that says they could not be (`recovered: false`), sent alone if the
    /// events do not fit the connection's queue now. A client told so
    /// reloads its state instead of being closed with 1013, which it would
    /// meet again at every reconnect while the topic stays quiet.
    pub(crate) fallback: Option<Frame>,
    /// Whether the subscription resumed with every missed event; `None`
    /// when it did not ask to resume. Counted once the client is told.
    pub(crate) recovered: Option<bool>,
    /// The catch-up's bytes, counted ahead in the instance's queued total
    /// until they are queued (see `Config::max_replay_bytes`).
    pub(crate) reserved: Option<Reservation>,
}

/// Bytes counted ahead in a total, given back when dropped: a resume's
/// missed events between the check against the replay budget and their
/// push into the connection's queue (which counts them itself), so that
/// resumes checked at the same moment see each other.
#[derive(Debug)]
pub(crate) struct Reservation {
    total: Arc<std::sync::atomic::AtomicUsize>,
    bytes: usize,
}

impl Reservation {
    /// Counts `bytes` in `total` if it stays within `budget`.
    pub(crate) fn take(
        total: &Arc<std::sync::atomic::AtomicUsize>,
        bytes: usize,
        budget: usize,
    ) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let before = total.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > budget {
            total.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            total: Arc::clone(total),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Outlet, Reservation};
    use crate::protocol::Frame;
    use crate::websocket::framing;

    #[test]
    fn every_subscriber_gets_the_same_bytes_framed_once() {
        let (outlet, mut first) = Outlet::new(8, 128);
        let mut second = outlet.subscribe();
        let short = Frame::from(r#"{"topic":"t","event":1}"#.to_owned());
        let long = Frame::from(format!(r#"{{"topic":"t","event":"{}"}}"#, "q".repeat(500)));
        outlet.send(0, &short);
        outlet.send(0, &long);
        outlet.send(0, &long);
        let mut wires = |deflate: bool| {
            let (a, b) = (first.try_recv().unwrap(), second.try_recv().unwrap());
            (a.into_wire(deflate), b.into_wire(deflate))
        };
        // A short event goes plain even where compression was negotiated:
        // one frame for both sockets.
        let (a, b) = wires(true);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy each");
        assert_eq!(framing::payload(&a), short.as_bytes());
        // A long one, compressed: made once, shared.
        let (a, b) = wires(true);
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a[0], framing::COMPRESSED_TEXT);
        // A long one to sockets without compression: its plain frame.
        let (a, b) = wires(false);
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(framing::payload(&a), long.as_bytes());
    }

    #[test]
    fn reservations_see_each_other_and_give_back_on_drop() {
        let total = Arc::new(AtomicUsize::new(0));
        let first = Reservation::take(&total, 600, 1000).expect("within the budget");
        assert!(
            Reservation::take(&total, 600, 1000).is_none(),
            "600 + 600 > 1000"
        );
        assert_eq!(
            total.load(Ordering::Relaxed),
            600,
            "a refusal counts nothing"
        );
        drop(first);
        assert_eq!(total.load(Ordering::Relaxed), 0);
        assert!(Reservation::take(&total, 600, 1000).is_some());
    }
}
