//! What a broker keeps of a topic with history: how much
//! ([`Retention`]), its events ([`Sequenced`]) and a read of them
//! ([`History`]).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

use crate::protocol::{Frame, Position};

/// How much of a topic's past to keep: the last `size` events, for `ttl`
/// after the topic's last event.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::history::Retention;
///
/// let chat = Retention::new(100, Duration::from_secs(600));
/// assert_eq!(chat.size(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    size: usize,
    ttl: Duration,
}

impl Retention {
    /// At most this many events per topic: a recovery reads at most that
    /// many, so it bounds what a resuming client makes the server hold.
    pub const MAX_SIZE: usize = 100_000;

    /// Keeps the last `size` events (clamped to 1..=[`MAX_SIZE`](Self::MAX_SIZE))
    /// until `ttl` (at least one second) has passed without a new event.
    pub fn new(size: usize, ttl: Duration) -> Self {
        Self {
            size: size.clamp(1, Self::MAX_SIZE),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    /// Events kept per topic.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long a topic's history outlives its last event.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// One event of a topic's history: its offset and its frame, as clients
/// receive it (`{"topic": ..., "offset": ..., "event": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// The event's offset in its topic.
    pub offset: u64,
    /// The frame, with the offset in it.
    pub frame: Frame,
}

impl Sequenced {
    /// The event inside the frame, deserialized.
    ///
    /// # Errors
    ///
    /// When the frame's `event` is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::history::Sequenced;
    /// use realtime::protocol::Frame;
    ///
    /// let line = Sequenced {
    ///     offset: 3,
    ///     frame: Frame::from(r#"{"topic":"t","offset":3,"event":"hi"}"#.to_owned()),
    /// };
    /// assert_eq!(line.event::<String>().unwrap(), "hi");
    /// ```
    pub fn event<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        #[derive(Deserialize)]
        struct Envelope<T> {
            event: T,
        }
        serde_json::from_str::<Envelope<T>>(self.frame.as_str()).map(|envelope| envelope.event)
    }
}

/// A read of a topic's history: some of its events, in order, and where the
/// topic stands.
///
/// # Examples
///
/// ```
/// use realtime::history::{History, Position};
///
/// let empty = History { position: Position { offset: 0, epoch: "x7Fq".into() }, events: vec![] };
/// assert!(empty.continues(0));
/// assert!(!empty.continues(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The topic's current position (its last event's offset, its epoch).
    pub position: Position,
    /// The events read, oldest first.
    pub events: Vec<Sequenced>,
}

impl History {
    /// Whether these events follow `offset` with nothing missing between:
    /// the first is `offset + 1`, or there is none and `offset` is the
    /// current position. (The epoch is the caller's to compare.)
    pub fn continues(&self, offset: u64) -> bool {
        match self.events.first() {
            Some(first) => Some(first.offset) == offset.checked_add(1),
            None => offset == self.position.offset,
        }
    }
}
