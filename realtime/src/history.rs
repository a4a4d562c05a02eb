//! Positions and history: which topics keep their recent events, where a
//! topic stands, and what a subscriber that comes back may ask for.
//!
//! A topic with history gives every event a position: an offset (+1 per
//! event, per topic) and an epoch (a short random string that changes only
//! when the history itself was lost, e.g. Redis restarted empty). A client
//! that resumes with the last position it saw gets exactly the events it
//! missed, or is told that they are gone. The application picks the topics
//! with a [`HistoryPolicy`].

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::pattern::Rules;
use crate::protocol::Frame;

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

/// Which topics keep history, and how much: rules by topic pattern, then
/// an optional function. The first rule that matches wins. The default
/// keeps none.
///
/// A pattern is a topic name, or a prefix followed by `*`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::history::{HistoryPolicy, Retention};
///
/// let policy = HistoryPolicy::none()
///     .keep("room:*", Retention::new(100, Duration::from_secs(600)))
///     .keep_with(|topic| topic.ends_with(":log").then(|| Retention::new(1000, Duration::from_secs(3600))));
/// assert_eq!(policy.retention("room:1").map(|r| r.size()), Some(100));
/// assert_eq!(policy.retention("job:7:log").map(|r| r.size()), Some(1000));
/// assert!(policy.retention("lobby").is_none());
/// ```
#[derive(Clone, Default)]
pub struct HistoryPolicy {
    rules: Rules<Retention>,
}

impl HistoryPolicy {
    /// No topic keeps history.
    pub fn none() -> Self {
        Self::default()
    }

    /// Topics matching `pattern` (a name, or a prefix and `*`) keep `retention`.
    pub fn keep(mut self, pattern: &str, retention: Retention) -> Self {
        self.rules.push(pattern, retention);
        self
    }

    /// Asks `decide` about topics no pattern matched.
    pub fn keep_with(
        mut self,
        decide: impl Fn(&str) -> Option<Retention> + Send + Sync + 'static,
    ) -> Self {
        self.rules.set_hook(decide);
        self
    }

    /// Whether any topic may keep history under this policy.
    pub fn keeps_any(&self) -> bool {
        self.rules.any()
    }

    /// How much of `topic`'s past to keep; `None`: nothing.
    pub fn retention(&self, topic: &str) -> Option<Retention> {
        self.rules.find(topic)
    }
}

impl fmt::Debug for HistoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryPolicy")
            .field("rules", &self.rules)
            .finish()
    }
}

/// Where a topic stands: the offset of its last event and the epoch of its
/// history. Also what a client resumes from.
///
/// # Examples
///
/// ```
/// use realtime::history::Position;
///
/// let since: Position = "42.x7Fq".parse().unwrap();
/// assert_eq!(since.offset, 42);
/// assert_eq!(since.epoch, "x7Fq");
/// assert_eq!(since.to_string(), "42.x7Fq");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub struct Position {
    /// The last event's offset; 0 before the first.
    pub offset: u64,
    /// Changes only when the history was lost.
    pub epoch: String,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.offset, self.epoch)
    }
}

/// A position that does not read as `<offset>.<epoch>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a position reads `<offset>.<epoch>`, as in `42.x7Fq`")]
pub struct PositionError;

impl std::str::FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let (offset, epoch) = text.split_once('.').ok_or(PositionError)?;
        let offset = offset.parse().map_err(|_| PositionError)?;
        if !is_epoch(epoch) {
            return Err(PositionError);
        }
        Ok(Self {
            offset,
            epoch: epoch.to_owned(),
        })
    }
}

/// Whether `text` can be an epoch: 1 to 32 ASCII letters and digits, so it
/// never needs escaping in a frame, a key or a URL.
pub(crate) fn is_epoch(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new random epoch: 8 letters and digits.
pub(crate) fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
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

/// Why a topic's history could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The service's [`HistoryPolicy`] keeps no history for this topic.
    #[error("topic `{0}` keeps no history")]
    NotKept(String),
    /// The broker could not be read.
    #[error("could not read the history")]
    Broker(#[from] crate::broker::BrokerError),
}

/// Inserts `"offset":<offset>,` into an event frame
/// (`{"topic":...,"event":...}`) before its event: the frame of an event
/// with a position. `None` if `frame` is not an event frame.
pub(crate) fn with_offset(frame: &Frame, offset: u64) -> Option<Frame> {
    let (head, tail) = split_event(frame)?;
    use std::fmt::Write;
    let mut text = String::with_capacity(frame.as_str().len() + 32);
    text.push_str(head);
    text.push_str("\"offset\":");
    // Writing a number into a String cannot fail.
    let _ = write!(text, "{offset},");
    text.push_str(tail);
    Some(Frame::from(text))
}

/// Splits an event frame before `"event":`: `({"topic":"t",` and
/// `"event":...}`. The topic is a JSON string, whose quotes are escaped, so
/// the first `,"event":` is the one that separates the two.
pub(crate) fn split_event(frame: &Frame) -> Option<(&str, &str)> {
    let text = frame.as_str();
    let at = text.find(",\"event\":")? + 1;
    Some(text.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_go_before_the_event() {
        let frame = crate::protocol::event_frame("a\",\"event\":", &1).unwrap();
        let sequenced = with_offset(&frame, 42).unwrap();
        let value: serde_json::Value = serde_json::from_str(sequenced.as_str()).unwrap();
        assert_eq!(value["topic"], "a\",\"event\":");
        assert_eq!(value["offset"], 42);
        assert_eq!(value["event"], 1);
    }

    #[test]
    fn positions_parse_strictly() {
        assert!("42".parse::<Position>().is_err());
        assert!("x.abc".parse::<Position>().is_err());
        assert!("4.a-b".parse::<Position>().is_err());
        assert!("4.".parse::<Position>().is_err());
        assert_eq!("0.Ab9".parse::<Position>().unwrap().offset, 0);
    }

    #[test]
    fn epochs_are_valid() {
        assert!(is_epoch(&new_epoch()));
        assert_ne!(new_epoch(), new_epoch());
    }

    #[test]
    fn first_matching_rule_wins() {
        let policy = HistoryPolicy::none()
            .keep("a", Retention::new(1, Duration::ZERO))
            .keep("a*", Retention::new(2, Duration::ZERO));
        assert_eq!(policy.retention("a").unwrap().size(), 1);
        assert_eq!(policy.retention("ab").unwrap().size(), 2);
        assert_eq!(policy.retention("a").unwrap().ttl(), Duration::from_secs(1));
    }
}
