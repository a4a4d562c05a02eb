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

/// What [`Broker::history`](crate::Broker::history) reads of a topic: after
/// an offset or the last events, at most so many and so many bytes, and for
/// a resume only if all of it is there.
///
/// A read that could not be used is not made: a client resuming from
/// another epoch, from before what the history holds, or past what its
/// queue takes would otherwise make the broker read a whole history to have
/// it thrown away.
///
/// # Examples
///
/// ```
/// use realtime::history::HistoryQuery;
///
/// // A page of the last 50 events, within 64 KiB.
/// let page = HistoryQuery::last(50).max_bytes(64 * 1024);
/// // A client's resume from offset 12 of epoch "x7Fq": all or nothing.
/// let resume = HistoryQuery::after(12, 1000).epoch("x7Fq").whole();
/// assert_eq!(resume.since, Some(12));
/// assert_eq!(page.since, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryQuery<'a> {
    /// The events after this offset, oldest first; `None`: the last ones.
    pub since: Option<u64>,
    /// Read events only if the topic's epoch is this one: of another, a
    /// read answers the position alone. `None`: whatever the epoch.
    pub epoch: Option<&'a str>,
    /// At most this many events.
    pub limit: usize,
    /// At most this many bytes of frames. After `since`, the read stops
    /// before the event that would pass it; the last ones are the newest
    /// that fit.
    pub max_bytes: usize,
    /// After `since`, all or nothing: if the events do not start at
    /// `since + 1` (the history no longer reaches back that far) or do not
    /// all fit `limit` and `max_bytes`, none are read.
    pub whole: bool,
}

impl<'a> HistoryQuery<'a> {
    /// The last `limit` events.
    pub fn last(limit: usize) -> Self {
        Self {
            since: None,
            epoch: None,
            limit,
            max_bytes: usize::MAX,
            whole: false,
        }
    }

    /// The events after `since`, at most `limit`.
    pub fn after(since: u64, limit: usize) -> Self {
        Self {
            since: Some(since),
            ..Self::last(limit)
        }
    }

    /// The position alone: no events.
    pub fn position() -> Self {
        Self::last(0)
    }

    /// [`Self::after`] `since` when it is `Some`, else [`Self::last`].
    pub fn from(since: Option<u64>, limit: usize) -> Self {
        Self {
            since,
            ..Self::last(limit)
        }
    }

    /// Only if the topic's epoch is `epoch`.
    pub fn epoch(self, epoch: &'a str) -> Self {
        Self {
            epoch: Some(epoch),
            ..self
        }
    }

    /// At most `max_bytes` of frames.
    pub fn max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// All or nothing.
    pub fn whole(self) -> Self {
        Self {
            whole: true,
            ..self
        }
    }

    /// Applies the query to `events`, a topic's history of epoch `epoch`,
    /// oldest first: what a broker that holds its events in memory answers.
    pub fn select<'e>(&self, epoch: &str, events: &'e [Sequenced]) -> &'e [Sequenced] {
        if self.limit == 0 || self.epoch.is_some_and(|wanted| wanted != epoch) {
            return &[];
        }
        let size = |event: &Sequenced| event.frame.as_str().len();
        match self.since {
            None => {
                // The newest that fit, counted back from the end.
                let mut bytes = 0usize;
                let mut first = events.len();
                while first > 0 && events.len() - first < self.limit {
                    bytes = bytes.saturating_add(size(&events[first - 1]));
                    if bytes > self.max_bytes {
                        break;
                    }
                    first -= 1;
                }
                &events[first..]
            }
            Some(since) => {
                let start = events.partition_point(|event| event.offset <= since);
                let after = &events[start..];
                if self.whole
                    && after
                        .first()
                        .is_some_and(|first| Some(first.offset) != since.checked_add(1))
                {
                    return &[];
                }
                let mut bytes = 0usize;
                let mut end = 0;
                while end < after.len() && end < self.limit {
                    bytes = bytes.saturating_add(size(&after[end]));
                    if bytes > self.max_bytes {
                        break;
                    }
                    end += 1;
                }
                if self.whole && end < after.len() {
                    return &[];
                }
                &after[..end]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(offsets: std::ops::RangeInclusive<u64>) -> Vec<Sequenced> {
        offsets
            .map(|offset| Sequenced {
                offset,
                frame: Frame::from(format!("{offset:04}")),
            })
            .collect()
    }

    fn offsets(events: &[Sequenced]) -> Vec<u64> {
        events.iter().map(|event| event.offset).collect()
    }

    #[test]
    fn the_last_ones_are_the_newest_that_fit() {
        let kept = events(1..=10);
        assert_eq!(
            offsets(HistoryQuery::last(3).select("e", &kept)),
            [8, 9, 10]
        );
        let fit = HistoryQuery::last(5).max_bytes(8);
        assert_eq!(offsets(fit.select("e", &kept)), [9, 10]);
        assert!(HistoryQuery::position().select("e", &kept).is_empty());
    }

    #[test]
    fn a_whole_read_is_all_or_nothing() {
        let kept = events(5..=10);
        let resume = |since| HistoryQuery::after(since, 100).whole();
        assert_eq!(offsets(resume(6).select("e", &kept)), [7, 8, 9, 10]);
        // Before what the history holds: a gap.
        assert!(resume(2).select("e", &kept).is_empty());
        // More than fits.
        assert!(resume(4).max_bytes(8).select("e", &kept).is_empty());
        assert!(
            HistoryQuery::after(4, 2)
                .whole()
                .select("e", &kept)
                .is_empty()
        );
        // Another epoch.
        assert!(resume(6).epoch("other").select("e", &kept).is_empty());
        // Not whole: a part.
        assert_eq!(
            offsets(HistoryQuery::after(4, 2).select("e", &kept)),
            [5, 6]
        );
    }
}
