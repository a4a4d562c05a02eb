//! This instance's topics: a ring per topic with local subscribers, which
//! every subscriber's writer reads, the [`Sequencer`] that keeps the ring of
//! a topic with history gapless, and the reads of the history that fill its
//! gaps ([`fill`]).
//!
//! A broker hands every frame of a subscribed topic to the hub ([`Fan`]):
//! one write into the topic's ring, whatever the number of subscribers.
//! The hub knows frames, positions and the broker's interface; nothing of
//! connections, handlers or the service.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::{Mutex as StdMutex, RwLock};

use crate::broker::History;
use crate::protocol::Frame;
use crate::telemetry;
use crate::telemetry::Counters;

mod fill;
mod ring;
mod sequencer;

pub(crate) use fill::{CONTROL_TOPIC, Fan, Filler, Owner};
pub(crate) use ring::{Event, Feed, Outlet, Reservation, Ring};
use sequencer::{ReadFrom, Sequencer};

/// Reads of the history that fill gaps in rings, at most at once per
/// instance.
const MAX_CONCURRENT_READS: usize = 16;

/// The topics with local subscribers, each with its ring: what a broker's
/// frames fan out to.
#[derive(Debug)]
pub(crate) struct Hub {
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    /// Frames per ring (`Config::topic_backlog`).
    backlog: usize,
    /// See [`Outlet`]: `usize::MAX` when nothing is compressed.
    deflate_min: usize,
    pub(crate) counters: Arc<Counters>,
    /// The id of the next topic's [`Sequencer`].
    next_sequencer: AtomicU64,
    /// Bounds the reads of the history that fill gaps at once: after a
    /// reconnect every topic with history needs one.
    pub(crate) reads: tokio::sync::Semaphore,
}

/// A subscriber's place in a topic's ring: see [`Hub::add`].
pub(crate) struct Added {
    pub(crate) name: Arc<str>,
    pub(crate) ring: Ring,
    pub(crate) generation: u64,
    pub(crate) new: bool,
    /// For a subscriber resuming from among the ring's recent events: what
    /// it missed, up to where `ring` starts.
    pub(crate) recent: Option<History>,
}

/// A subscriber's resume, and the bounds of what it may be given (see
/// [`Sequencer::recent_since`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume<'a> {
    pub(crate) since: &'a crate::protocol::Position,
    pub(crate) limit: usize,
    pub(crate) max_bytes: usize,
}

/// One topic on this instance.
#[derive(Debug)]
struct Topic {
    /// Every event of the topic goes in once; each subscriber's writer reads
    /// it from there.
    ring: Outlet,
    /// Local subscriptions. The writers' ring receivers may outlive theirs
    /// for a moment, so the ring's own receiver count is not this.
    subscribers: usize,
    /// For a topic with history: where its ring stands. A std lock, taken
    /// per event of the topic and never across an `.await`.
    sequencer: Option<StdMutex<Sequencer>>,
}

impl Topic {
    /// The ring's generation and epoch (0 and none for a topic without
    /// history).
    pub(crate) fn position(&self) -> (u64, Option<String>) {
        self.sequencer.as_ref().map_or((0, None), |sequencer| {
            let sequencer = sequencer.lock();
            (sequencer.generation(), sequencer.epoch().map(str::to_owned))
        })
    }
}

impl Hub {
    pub(crate) fn new(backlog: usize, deflate_min: usize, counters: Arc<Counters>) -> Self {
        Self {
            topics: RwLock::default(),
            backlog,
            deflate_min,
            counters,
            next_sequencer: AtomicU64::new(1),
            reads: tokio::sync::Semaphore::new(MAX_CONCURRENT_READS),
        }
    }

    /// Puts `frame` in `topic`'s ring: one write, whatever the number of
    /// subscribers, no task, no wait. The ring keeps one order for every
    /// subscriber; a subscriber that falls a whole ring behind is closed
    /// with 1013 by its writer.
    pub(crate) fn deliver(&self, topic: &str, frame: &Frame) {
        let topics = self.topics.read();
        if let Some(entry) = topics.get(topic) {
            // No receiver left: every subscriber is leaving; nothing to do.
            entry.ring.send(Event::PLAIN, frame);
        }
    }

    /// Puts the mark of the answers of `$presence` read `group` in
    /// `topic`'s ring, after every frame delivered so far: one mark for
    /// every ask the read answers.
    pub(crate) fn mark_answer(&self, topic: &str, group: u64) {
        let topics = self.topics.read();
        if let Some(entry) = topics.get(topic) {
            entry.ring.mark(group);
        }
    }

    /// Puts an event of a topic with history in its ring, in offset order;
    /// returns whether a read of the history must start to fill a gap.
    pub(crate) fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) -> bool {
        let topics = self.topics.read();
        let Some(entry) = topics.get(topic) else {
            return false;
        };
        match &entry.sequencer {
            Some(sequencer) => {
                sequencer
                    .lock()
                    .live(&entry.ring, offset, epoch, frame, self.backlog)
            }
            None => {
                // The policy keeps no history for it here: a plain event.
                entry.ring.send(Event::PLAIN, &frame);
                false
            }
        }
    }

    /// Holds live events of every topic with history, whose rings missed
    /// what was published while the broker's link was down; returns the
    /// topics whose read must start.
    pub(crate) fn hold_all(&self) -> Vec<Arc<str>> {
        let topics = self.topics.read();
        topics
            .iter()
            .filter(|(_, entry)| {
                entry
                    .sequencer
                    .as_ref()
                    .is_some_and(|sequencer| sequencer.lock().hold())
            })
            .map(|(name, _)| Arc::clone(name))
            .collect()
    }

    /// Holds `topic`'s live events for a read of its history, as after the
    /// broker's link came back; whether the read must start (none is due).
    pub(crate) fn hold(&self, topic: &str) -> bool {
        let topics = self.topics.read();
        topics
            .get(topic)
            .and_then(|entry| entry.sequencer.as_ref())
            .is_some_and(|sequencer| sequencer.lock().hold())
    }

    /// Where a read of `topic`'s history should start; `None` if the topic
    /// has no local subscriber or history any more.
    pub(crate) fn read_from(&self, topic: &str) -> Option<ReadFrom> {
        let topics = self.topics.read();
        let sequencer = topics.get(topic)?.sequencer.as_ref()?;
        Some(sequencer.lock().read_from())
    }

    /// The most events a read may put in a ring at once: half of it, so
    /// that subscribers still reading the rest are not overrun.
    pub(crate) fn max_gap(&self) -> usize {
        (self.backlog / 2).max(1)
    }

    /// Events in `topic`'s ring that its slowest subscriber has not read;
    /// `None` if the topic has no local subscriber.
    pub(crate) fn unread(&self, topic: &str) -> Option<usize> {
        let topics = self.topics.read();
        topics.get(topic).map(|entry| entry.ring.len())
    }

    /// Applies a read of the history; whether the ring is live again (or
    /// the topic gone).
    pub(crate) fn apply_read(&self, topic: &str, from: ReadFrom, read: History) -> bool {
        let topics = self.topics.read();
        let Some((entry, sequencer)) = topics
            .get(topic)
            .and_then(|entry| Some((entry, entry.sequencer.as_ref()?)))
        else {
            return true;
        };
        let mut sequencer = sequencer.lock();
        let generation = sequencer.generation();
        let live = sequencer.apply(&entry.ring, topic, from, read);
        if sequencer.generation() != generation {
            self.counters.reset();
        }
        live
    }

    /// A new receiver of `topic`'s ring, and the ring's generation and
    /// epoch, taken together.
    pub(crate) fn ring(&self, topic: &str) -> Option<(Ring, u64, Option<String>)> {
        let topics = self.topics.read();
        let entry = topics.get(topic)?;
        let (generation, epoch) = entry.position();
        Some((entry.ring.subscribe(), generation, epoch))
    }

    /// Adds a subscriber; returns the shared topic name, a receiver of
    /// every event from now on with the ring's generation at that moment,
    /// whether the topic is new here (its ring, if it keeps history, has no
    /// position yet), and for a `resume` whose missed events the ring's
    /// recent ones hold, those. The write lock keeps every event out while
    /// the receiver and the recent events are taken, so that together they
    /// give every offset once.
    pub(crate) fn add(&self, topic: &str, history: bool, resume: Option<Resume<'_>>) -> Added {
        let mut topics = self.topics.write();
        if let Some(name) = topics
            .get_key_value(topic)
            .map(|(name, _)| Arc::clone(name))
        {
            let entry = topics.get_mut(topic).expect("present: just found");
            entry.subscribers += 1;
            let (generation, recent) = match &entry.sequencer {
                Some(sequencer) => {
                    let sequencer = sequencer.lock();
                    let recent = resume.and_then(|resume| {
                        sequencer.recent_since(resume.since, resume.limit, resume.max_bytes)
                    });
                    (sequencer.generation(), recent)
                }
                None => (0, None),
            };
            return Added {
                name,
                ring: entry.ring.subscribe(),
                generation,
                new: false,
                recent,
            };
        }
        let name: Arc<str> = topic.into();
        metrics::gauge!(telemetry::SUBSCRIBED_TOPICS).increment(1.0);
        let (ring, receiver) = Outlet::new(self.backlog, self.deflate_min);
        let id = self.next_sequencer.fetch_add(1, Ordering::Relaxed);
        let sequencer = history.then(|| StdMutex::new(Sequencer::new(id)));
        topics.insert(
            Arc::clone(&name),
            Topic {
                ring,
                subscribers: 1,
                sequencer,
            },
        );
        Added {
            name,
            ring: receiver,
            generation: 0,
            new: true,
            recent: None,
        }
    }

    /// Removes a subscriber; returns whether the topic has none left here.
    pub(crate) fn remove(&self, topic: &str) -> bool {
        let mut topics = self.topics.write();
        let Some(entry) = topics.get_mut(topic) else {
            return true;
        };
        entry.subscribers -= 1;
        if entry.subscribers == 0 {
            topics.remove(topic);
            metrics::gauge!(telemetry::SUBSCRIBED_TOPICS).decrement(1.0);
            return true;
        }
        false
    }

    /// Topics with local subscribers.
    pub(crate) fn len(&self) -> usize {
        self.topics.read().len()
    }

    /// The names of the topics with local subscribers.
    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        let topics = self.topics.read();
        topics.keys().cloned().collect()
    }

    pub(crate) fn has_subscribers(&self, topic: &str) -> bool {
        self.topics.read().contains_key(topic)
    }
}
