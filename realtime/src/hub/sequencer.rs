//! [`Sequencer`]: how an instance keeps the ring of a topic with history
//! gapless. The ring gets every offset once, in order. A live event that
//! does not follow the last one (a gap, or a new epoch), or a broker link
//! that came back, makes the sequencer hold live events while the missing ones
//! are read from the history; the read is applied, then the held events.
//! Only when the history cannot fill the gap does the ring get a `reset`.
//!
//! It also keeps the last [`RECENT`] events it put in the ring, so that a
//! subscriber that resumes from among them is answered here, with no read
//! of the history: after an instance's crash its clients come back to the
//! others a few events behind.

use std::collections::VecDeque;

use super::{Event, Outlet};
use crate::broker::{History, Sequenced};
use crate::protocol::{self, Frame, Position};

/// The events a sequencer keeps of those it put in its ring last. A few
/// seconds of a busy room; 64 references to frames the ring holds anyway
/// (about 2.5 KiB per topic with history, once it has had that many).
pub(crate) const RECENT: usize = 64;

/// Where a topic's ring stands.
#[derive(Debug)]
pub(crate) struct Sequencer {
    /// Tells this sequencer from a later one of the same topic (the topic lost
    /// its last local subscriber and got a new one), so that a read made
    /// for the old one is not applied to it.
    id: u64,
    /// The epoch of the ring's events; `None` until the first read.
    epoch: Option<String>,
    /// The offset of the last event put in the ring.
    last: u64,
    /// Bumped when the ring restarts from a new position (a `reset`), so
    /// that a subscriber can tell whether its own read of the history still
    /// fits the ring.
    generation: u64,
    /// `Some` while a read of the history is due or runs: the live events
    /// that came meanwhile.
    held: Option<Vec<Held>>,
    /// Events were dropped from `held` (it was full), or the link was lost
    /// while a read ran: read again before going live.
    again: bool,
    /// The last events put in the ring, oldest first: consecutive offsets
    /// of `epoch`, the last one `last`.
    recent: VecDeque<Sequenced>,
}

/// A live event held while the history is read, with its epoch.
#[derive(Debug)]
struct Held {
    epoch: String,
    event: Sequenced,
}

/// Where a read of the history for a sequencer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadFrom {
    /// The sequencer it is for.
    pub(crate) sequencer: u64,
    /// The last offset in the ring; `None` for a ring without a position
    /// yet, which reads the position alone.
    pub(crate) since: Option<u64>,
}

impl Sequencer {
    /// A new topic's sequencer: no position yet, live events held until the
    /// first read.
    pub(crate) fn new(id: u64) -> Self {
        Self {
            id,
            epoch: None,
            last: 0,
            generation: 0,
            held: Some(Vec::new()),
            again: false,
            recent: VecDeque::new(),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    pub(crate) fn read_from(&self) -> ReadFrom {
        ReadFrom {
            sequencer: self.id,
            since: self.epoch.as_ref().map(|_| self.last),
        }
    }

    /// Puts a live event in the ring if it is the next one; drops one the
    /// ring has. Otherwise holds it (at most `max_held`; past that, the
    /// history has it); returns whether a read of the history must start.
    pub(crate) fn live(
        &mut self,
        ring: &Outlet,
        offset: u64,
        epoch: &str,
        frame: Frame,
        max_held: usize,
    ) -> bool {
        if let Some(held) = &mut self.held {
            if held.len() < max_held {
                held.push(Held {
                    epoch: epoch.to_owned(),
                    event: Sequenced { offset, frame },
                });
            } else {
                self.again = true;
            }
            return false;
        }
        if self.epoch.as_deref() == Some(epoch) {
            if offset <= self.last {
                return false;
            }
            if offset == self.last + 1 {
                self.put(ring, offset, frame);
                return false;
            }
        }
        self.held = Some(vec![Held {
            epoch: epoch.to_owned(),
            event: Sequenced { offset, frame },
        }]);
        true
    }

    /// Puts the next event in the ring, and keeps it among the recent ones.
    fn put(&mut self, ring: &Outlet, offset: u64, frame: Frame) {
        debug_assert_eq!(
            offset,
            self.last + 1,
            "the ring gets every offset once, in order"
        );
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        ring.send(offset, &frame);
        self.recent.push_back(Sequenced { offset, frame });
        self.last = offset;
    }

    /// What a subscriber resuming from `since` missed, if the ring's recent
    /// events hold all of it: the events after `since` up to where the ring
    /// stands, and that position. A receiver of the ring taken at the same
    /// moment gets every event after it, so the two give every offset once.
    /// `None` (the history must be read) for another epoch, a position
    /// ahead of the ring, or more than `limit` events or `max_bytes` bytes
    /// of frames.
    pub(crate) fn recent_since(
        &self,
        since: &Position,
        limit: usize,
        max_bytes: usize,
    ) -> Option<History> {
        let epoch = self.epoch.as_deref()?;
        if epoch != since.epoch || since.offset > self.last {
            return None;
        }
        let missed = usize::try_from(self.last - since.offset).ok()?;
        if missed > limit || missed > self.recent.len() {
            return None;
        }
        let events: Vec<Sequenced> = self
            .recent
            .iter()
            .skip(self.recent.len() - missed)
            .cloned()
            .collect();
        let bytes: usize = events.iter().map(|event| event.frame.as_str().len()).sum();
        if bytes > max_bytes {
            return None;
        }
        debug_assert!(
            events
                .first()
                .is_none_or(|first| first.offset == since.offset + 1)
        );
        Some(History {
            position: Position {
                offset: self.last,
                epoch: epoch.to_owned(),
            },
            events,
        })
    }

    /// Holds live events for a read of the history (the broker's link came
    /// back); returns whether a read must start (none is due yet).
    pub(crate) fn hold(&mut self) -> bool {
        if self.held.is_some() {
            self.again = true;
            return false;
        }
        self.held = Some(Vec::new());
        true
    }

    /// Applies a read of the history made `from` here, then the held events
    /// that follow it. A read may hold part of a gap only (the reader reads
    /// in parts, so that the ring's subscribers are not overrun); the rest
    /// comes with the next read. Returns whether the ring is live again;
    /// false: read again from [`read_from`](Self::read_from).
    pub(crate) fn apply(
        &mut self,
        ring: &Outlet,
        topic: &str,
        from: ReadFrom,
        read: History,
    ) -> bool {
        if from.sequencer != self.id || from != self.read_from() {
            // Made for an earlier sequencer, or before this one moved: the read
            // due for its present state is another.
            return from.sequencer != self.id;
        }
        match (&self.epoch, from.since) {
            (None, _) => {
                self.epoch = Some(read.position.epoch.clone());
                self.last = read.position.offset;
            }
            (Some(epoch), Some(since))
                if *epoch == read.position.epoch && read.continues(since) =>
            {
                for event in read.events {
                    if event.offset == self.last + 1 {
                        self.put(ring, event.offset, event.frame);
                    }
                }
            }
            (Some(epoch), _) => {
                // The gap cannot be filled: the history was lost (a new
                // epoch) or trimmed past it. Subscribers reload. After a new epoch the ring restarts from its
                // beginning, which the next read fills: nothing Redis
                // accepted since is lost.
                let position = match *epoch == read.position.epoch {
                    true => read.position,
                    false => Position {
                        offset: 0,
                        epoch: read.position.epoch,
                    },
                };
                ring.send(Event::RESET, &protocol::reset_frame(topic, &position));
                self.recent.clear();
                self.epoch = Some(position.epoch);
                self.last = position.offset;
                self.generation += 1;
                // Held events stay held until the next read from here.
                return false;
            }
        }
        let synced = self.epoch.as_deref() == Some(&*read.position.epoch);
        let behind = synced && self.last < read.position.offset;
        let mut held = self.held.take().unwrap_or_default();
        held.sort_by_key(|held| held.event.offset);
        let mut rest = Vec::new();
        for held in held {
            if self.epoch.as_deref() != Some(&*held.epoch) {
                if !synced {
                    rest.push(held);
                }
                // Else an epoch the history no longer has: it is gone.
                continue;
            }
            let offset = held.event.offset;
            if rest.is_empty() && offset <= self.last {
                continue;
            }
            if rest.is_empty() && offset == self.last + 1 {
                self.put(ring, offset, held.event.frame);
                continue;
            }
            rest.push(held);
        }
        if rest.is_empty() && !behind && !self.again {
            return true;
        }
        self.again = false;
        self.held = Some(rest);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Ring;

    fn frame(offset: u64) -> Frame {
        Frame::from(format!(
            r#"{{"topic":"t","offset":{offset},"event":{offset}}}"#
        ))
    }

    fn read(epoch: &str, offset: u64, events: &[u64]) -> History {
        History {
            position: Position {
                offset,
                epoch: epoch.to_owned(),
            },
            events: events
                .iter()
                .map(|&offset| Sequenced {
                    offset,
                    frame: frame(offset),
                })
                .collect(),
        }
    }

    fn drain(receiver: &mut Ring) -> Vec<u64> {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|event| event.offset)
            .collect()
    }

    /// A sequencer at offset `last` of epoch "e", live.
    fn live_at(last: u64) -> (Sequencer, Outlet, Ring) {
        let (ring, receiver) = Outlet::new(64, usize::MAX);
        let mut sequencer = Sequencer::new(1);
        let from = sequencer.read_from();
        assert!(sequencer.apply(&ring, "t", from, read("e", last, &[])));
        (sequencer, ring, receiver)
    }

    #[test]
    fn a_gap_is_read_before_newer_events() {
        let (mut sequencer, ring, mut receiver) = live_at(3);
        assert!(!sequencer.live(&ring, 4, "e", frame(4), 16));
        assert!(
            sequencer.live(&ring, 7, "e", frame(7), 16),
            "a gap starts a read"
        );
        assert!(
            !sequencer.live(&ring, 8, "e", frame(8), 16),
            "held while reading"
        );
        let from = sequencer.read_from();
        assert_eq!(from.since, Some(4));
        assert!(sequencer.apply(&ring, "t", from, read("e", 7, &[5, 6, 7])));
        assert_eq!(drain(&mut receiver), [4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_stale_read_is_ignored() {
        let (mut sequencer, ring, mut receiver) = live_at(3);
        assert!(sequencer.live(&ring, 6, "e", frame(6), 16));
        let stale = ReadFrom {
            sequencer: 0,
            since: Some(3),
        };
        assert!(sequencer.apply(&ring, "t", stale, read("e", 9, &[4, 5, 6, 7, 8, 9])));
        assert!(drain(&mut receiver).is_empty());
    }

    #[test]
    fn a_new_epoch_resets_then_fills_from_its_start() {
        let (mut sequencer, ring, mut receiver) = live_at(3);
        assert!(sequencer.live(&ring, 2, "f", frame(2), 16));
        // An event of the lost epoch, held too: dropped once the new one is read.
        assert!(!sequencer.live(&ring, 5, "e", frame(5), 16));
        let from = sequencer.read_from();
        assert!(!sequencer.apply(&ring, "t", from, read("f", 2, &[])));
        assert_eq!(sequencer.generation(), 1);
        let from = sequencer.read_from();
        assert_eq!(from.since, Some(0));
        assert!(sequencer.apply(&ring, "t", from, read("f", 2, &[1, 2])));
        assert_eq!(drain(&mut receiver), [Event::RESET, 1, 2]);
    }

    #[test]
    fn a_long_gap_is_filled_in_parts() {
        let (mut sequencer, ring, mut receiver) = live_at(3);
        assert!(sequencer.live(&ring, 20, "e", frame(20), 16));
        let from = sequencer.read_from();
        assert!(!sequencer.apply(&ring, "t", from, read("e", 20, &[4, 5, 6, 7, 8, 9, 10, 11])));
        let from = sequencer.read_from();
        assert_eq!(from.since, Some(11));
        let rest: Vec<u64> = (12..=20).collect();
        assert!(sequencer.apply(&ring, "t", from, read("e", 20, &rest)));
        assert_eq!(drain(&mut receiver), (4..=20).collect::<Vec<_>>());
        assert_eq!(sequencer.generation(), 0, "no reset");
    }

    fn at(epoch: &str, offset: u64) -> Position {
        Position {
            offset,
            epoch: epoch.to_owned(),
        }
    }

    fn offsets(history: &History) -> Vec<u64> {
        history.events.iter().map(|event| event.offset).collect()
    }

    #[test]
    fn a_resume_from_among_the_recent_events_is_answered_here() {
        let (mut sequencer, ring, _receiver) = live_at(3);
        for offset in 4..=10 {
            assert!(!sequencer.live(&ring, offset, "e", frame(offset), 16));
        }
        let missed = sequencer
            .recent_since(&at("e", 7), 100, usize::MAX)
            .expect("held here");
        assert_eq!(offsets(&missed), [8, 9, 10]);
        assert_eq!(missed.position, at("e", 10));
        let none = sequencer
            .recent_since(&at("e", 10), 100, usize::MAX)
            .expect("held here");
        assert!(none.events.is_empty());
        assert_eq!(none.position, at("e", 10));
        // Before what the ring has kept (it started at 3), ahead of the
        // ring, another epoch, past the limits: the history decides.
        assert!(
            sequencer
                .recent_since(&at("e", 2), 100, usize::MAX)
                .is_none()
        );
        assert!(
            sequencer
                .recent_since(&at("e", 11), 100, usize::MAX)
                .is_none()
        );
        assert!(
            sequencer
                .recent_since(&at("f", 7), 100, usize::MAX)
                .is_none()
        );
        assert!(sequencer.recent_since(&at("e", 7), 2, usize::MAX).is_none());
        let three_frames: usize = (8..=10).map(|offset| frame(offset).as_str().len()).sum();
        assert!(
            sequencer
                .recent_since(&at("e", 7), 100, three_frames)
                .is_some()
        );
        assert!(
            sequencer
                .recent_since(&at("e", 7), 100, three_frames - 1)
                .is_none()
        );
    }

    #[test]
    fn the_recent_events_are_the_last_ones_and_a_reset_forgets_them() {
        let (mut sequencer, ring, _receiver) = live_at(0);
        let last = RECENT as u64 + 10;
        for offset in 1..=last {
            assert!(!sequencer.live(&ring, offset, "e", frame(offset), 16));
        }
        let oldest = last - RECENT as u64;
        let all = sequencer
            .recent_since(&at("e", oldest), usize::MAX, usize::MAX)
            .expect("kept");
        assert_eq!(offsets(&all), (oldest + 1..=last).collect::<Vec<_>>());
        assert!(
            sequencer
                .recent_since(&at("e", oldest - 1), usize::MAX, usize::MAX)
                .is_none()
        );
        // Filled from a read: kept the same way.
        assert!(sequencer.live(&ring, last + 3, "e", frame(last + 3), 16));
        let from = sequencer.read_from();
        assert!(sequencer.apply(&ring, "t", from, read("e", last + 2, &[last + 1, last + 2])));
        let tail = sequencer
            .recent_since(&at("e", last), 100, usize::MAX)
            .expect("kept");
        assert_eq!(offsets(&tail), [last + 1, last + 2, last + 3]);
        // A new epoch: what the ring had is no resume's any more.
        assert!(sequencer.live(&ring, 1, "f", frame(1), 16));
        let from = sequencer.read_from();
        assert!(!sequencer.apply(&ring, "t", from, read("f", 1, &[])));
        assert!(
            sequencer
                .recent_since(&at("e", last), 100, usize::MAX)
                .is_none()
        );
        // Where the ring restarted: nothing missed up to it; the ring
        // brings the rest once the read of the new epoch is applied.
        let start = sequencer
            .recent_since(&at("f", 0), 100, usize::MAX)
            .expect("the ring's start");
        assert!(start.events.is_empty());
        assert!(
            sequencer
                .recent_since(&at("f", 1), 100, usize::MAX)
                .is_none(),
            "ahead of the ring"
        );
    }
}
