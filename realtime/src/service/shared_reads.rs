//! One read of a topic's history for the subscriptions to it that arrive
//! together.
//!
//! After an instance's crash its clients come back to the others at once,
//! each resuming the same few topics from about the same offset; a read
//! per client would be thousands of the same script call. Each subscriber
//! takes its place in the topic's ring *before* its read starts (so that
//! the history, then the ring, give it every offset once), so it cannot
//! use a read that is already under way: that read may have been made
//! before its place was taken. It joins the *next* one instead. The first
//! subscriber of a quiet topic reads at once; those that come while a read
//! runs wait for it to end and share one read, made from the lowest offset
//! any of them needs. Each takes the events past its own offset, and reads
//! on its own only when that is not exactly what its own read would have
//! given (the shared one, from further back, could not be whole).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::broker::BrokerError;
use crate::history::{History, Position};
use crate::util::Mutex;

/// The reads of every topic of one instance.
#[derive(Debug, Default)]
pub(crate) struct SharedReads {
    /// Topics with a subscription waiting for a read, and how many wait;
    /// the last to leave removes its topic.
    topics: Mutex<HashMap<Arc<str>, Held>>,
}

/// A topic's reads and the subscriptions waiting for them.
type Held = (Arc<Topic>, usize);

#[derive(Debug, Default)]
struct Topic {
    /// Held while a read runs; the subscriptions of the next wait here.
    reading: tokio::sync::Mutex<()>,
    /// The next read, which subscriptions join until it starts.
    next: Mutex<Option<Arc<Read>>>,
}

/// One read and the subscriptions that share it.
#[derive(Debug)]
struct Read {
    /// What it reads; widened by each subscription that joins.
    want: Mutex<Want>,
    /// Its outcome, once made.
    outcome: OnceLock<Result<History, BrokerError>>,
}

/// The events after `from` in `epoch`, or the position alone (`None`).
type Want = Option<Position>;

impl SharedReads {
    /// Reads what a subscription to `topic` from `since` needs (the events
    /// after it, or with `None` the position alone) with `read`, which
    /// makes one read of the history from a position (the events after it)
    /// or of the position alone. `waiting` counts the subscriptions inside
    /// this call.
    pub(crate) async fn read<F, Fut>(
        &self,
        topic: &Arc<str>,
        since: Option<&Position>,
        waiting: &AtomicUsize,
        read: F,
    ) -> Result<History, BrokerError>
    where
        F: Fn(Want) -> Fut,
        Fut: Future<Output = Result<History, BrokerError>>,
    {
        let _waiting = Waiting::enter(waiting);
        let entry = Entry::enter(self, topic);
        let Some(shared) = entry.topic.join(since) else {
            // Another epoch than the next read's: rare (a client from
            // before a history was lost); it reads alone.
            return read(since.cloned()).await;
        };
        let outcome = {
            let _turn = entry.topic.reading.lock().await;
            match shared.outcome.get() {
                Some(outcome) => outcome,
                None => {
                    // The first of its subscriptions to have its turn: no
                    // one joins it from now on.
                    entry.topic.start(&shared);
                    let want = shared.want.lock().clone();
                    match read(want).await {
                        Ok(history) => shared.outcome.get_or_init(|| Ok(history)),
                        // The reader keeps its error as it came; the others
                        // get a copy.
                        Err(error) => {
                            let _ = shared.outcome.set(Err(copy(&error)));
                            return Err(error);
                        }
                    }
                }
            }
        };
        let view = view(outcome, since, &shared.want.lock());
        match view {
            Some(view) => view,
            None => read(since.cloned()).await,
        }
    }
}

impl Topic {
    /// Joins the next read, opening one if none is open. `None` if the
    /// open one reads another epoch.
    fn join(&self, since: Option<&Position>) -> Option<Arc<Read>> {
        let mut next = self.next.lock();
        let Some(read) = &*next else {
            let read = Arc::new(Read {
                want: Mutex::new(since.cloned()),
                outcome: OnceLock::new(),
            });
            *next = Some(Arc::clone(&read));
            return Some(read);
        };
        let Some(since) = since else {
            // The position alone: any read gives it.
            return Some(Arc::clone(read));
        };
        let mut want = read.want.lock();
        match &mut *want {
            None => *want = Some(since.clone()),
            Some(from) if from.epoch == since.epoch => from.offset = from.offset.min(since.offset),
            Some(_) => return None,
        }
        drop(want);
        Some(Arc::clone(read))
    }

    /// Closes `read` to newcomers, if it is still the open one (a reader
    /// that went away before finishing may have closed it already).
    fn start(&self, read: &Arc<Read>) {
        let mut next = self.next.lock();
        if next.as_ref().is_some_and(|open| Arc::ptr_eq(open, read)) {
            *next = None;
        }
    }
}

/// What a subscription from `since` takes of a read made for `want`:
/// exactly what a read of its own would have answered, or `None` when the
/// shared read cannot tell (it could not be whole from further back).
fn view(
    outcome: &Result<History, BrokerError>,
    since: Option<&Position>,
    want: &Want,
) -> Option<Result<History, BrokerError>> {
    let history = match outcome {
        Ok(history) => history,
        Err(error) => return Some(Err(copy(error))),
    };
    let position_alone = || {
        Some(Ok(History {
            position: history.position.clone(),
            events: Vec::new(),
        }))
    };
    let Some(since) = since else {
        return position_alone();
    };
    if history.position.epoch != since.epoch {
        // Its own read, of its epoch, would have answered the position.
        return position_alone();
    }
    if want.as_ref() == Some(since) {
        // The read was its own.
        return Some(Ok(history.clone()));
    }
    let events: Vec<_> = history
        .events
        .iter()
        .filter(|event| event.offset > since.offset)
        .cloned()
        .collect();
    let mine = History {
        position: history.position.clone(),
        events,
    };
    let whole = mine.continues(since.offset)
        && mine
            .events
            .last()
            .is_none_or(|last| last.offset == mine.position.offset);
    whole.then_some(Ok(mine))
}

/// A read's error, for each subscription that shared it: the same kind
/// (the same answer to the client), the source's message in words.
fn copy(error: &BrokerError) -> BrokerError {
    let words = |source: &(dyn std::error::Error + Send + Sync)| source.to_string().into();
    match error {
        BrokerError::Unavailable(source) => BrokerError::Unavailable(words(&**source)),
        BrokerError::Timeout(after) => BrokerError::Timeout(*after),
        BrokerError::Invalid(source) => BrokerError::Invalid(words(&**source)),
        BrokerError::InvalidTopic(topic) => BrokerError::InvalidTopic(topic.clone()),
        BrokerError::Unsupported(what) => BrokerError::Unsupported(what),
        BrokerError::ReplayBudget => BrokerError::ReplayBudget,
        BrokerError::TopicBudget => BrokerError::TopicBudget,
        BrokerError::HistoryFull => BrokerError::HistoryFull,
    }
}

/// A subscription counted as waiting for its read until it leaves.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscription's hold on its topic's entry; the last to leave removes
/// it, so that topics no one reads now cost nothing.
struct Entry<'a> {
    reads: &'a SharedReads,
    name: &'a Arc<str>,
    topic: Arc<Topic>,
}

impl<'a> Entry<'a> {
    fn enter(reads: &'a SharedReads, name: &'a Arc<str>) -> Self {
        let mut topics = reads.topics.lock();
        let (topic, users) = topics.entry(Arc::clone(name)).or_default();
        *users += 1;
        Self {
            reads,
            name,
            topic: Arc::clone(topic),
        }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut topics = self.reads.topics.lock();
        if let Some((_, users)) = topics.get_mut(self.name) {
            *users -= 1;
            if *users == 0 {
                topics.remove(self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;
    use crate::history::Sequenced;
    use crate::protocol::Frame;

    /// A history of offsets 1..=`last` in epoch `e`.
    fn history(last: u64) -> Vec<Sequenced> {
        (1..=last)
            .map(|offset| Sequenced {
                offset,
                frame: Frame::from_utf8(bytes::Bytes::from_static(b"{}")).expect("UTF-8"),
            })
            .collect()
    }

    fn at(offset: u64) -> Position {
        Position {
            offset,
            epoch: "e".to_owned(),
        }
    }

    /// A history of 20 events, of which a read takes at most `limit` and
    /// only whole; counts its reads and waits `pause` in each.
    struct Store {
        limit: usize,
        reads: AtomicU64,
        pause: Duration,
    }

    impl Store {
        async fn read(&self, want: Want) -> Result<History, BrokerError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.pause).await;
            let all = history(20);
            let events = match want {
                Some(from) if from.epoch == "e" => {
                    let after: Vec<_> =
                        all.into_iter().filter(|e| e.offset > from.offset).collect();
                    match after.len() <= self.limit {
                        true => after,
                        false => Vec::new(),
                    }
                }
                _ => Vec::new(),
            };
            Ok(History {
                position: at(20),
                events,
            })
        }
    }

    async fn resume(
        reads: &SharedReads,
        store: &Store,
        since: Option<Position>,
    ) -> Result<History, BrokerError> {
        let waiting = AtomicUsize::new(0);
        let topic: Arc<str> = "t".into();
        reads
            .read(&topic, since.as_ref(), &waiting, |want| store.read(want))
            .await
    }

    fn offsets(history: &History) -> Vec<u64> {
        history.events.iter().map(|e| e.offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_during_a_read_share_the_next_and_take_their_own_part() {
        let reads = SharedReads::default();
        let store = Store {
            limit: 100,
            reads: AtomicU64::new(0),
            pause: Duration::from_millis(10),
        };
        let (first, others) = tokio::join!(resume(&reads, &store, Some(at(15))), async {
            // While the first read runs.
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::join!(
                resume(&reads, &store, Some(at(12))),
                resume(&reads, &store, Some(at(18))),
                resume(&reads, &store, None),
                resume(&reads, &store, Some(at(20))),
            )
        });
        assert_eq!(offsets(&first.unwrap()), [16, 17, 18, 19, 20]);
        let (a, b, c, d) = others;
        assert_eq!(offsets(&a.unwrap()), (13..=20).collect::<Vec<_>>());
        assert_eq!(offsets(&b.unwrap()), [19, 20]);
        let c = c.unwrap();
        assert!(c.events.is_empty());
        assert_eq!(c.position, at(20));
        assert!(d.unwrap().events.is_empty());
        assert_eq!(store.reads.load(Ordering::Relaxed), 2);
        assert!(reads.topics.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_the_shared_read_cannot_serve_reads_alone() {
        let reads = SharedReads::default();
        // 5 events at most: from 12 (8 events) a read is not whole, from 17
        // (3) it is.
        let store = Store {
            limit: 5,
            reads: AtomicU64::new(0),
            pause: Duration::from_millis(10),
        };
        let (_, (far, near)) = tokio::join!(resume(&reads, &store, Some(at(19))), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::join!(
                resume(&reads, &store, Some(at(12))),
                resume(&reads, &store, Some(at(17))),
            )
        });
        assert!(far.unwrap().events.is_empty(), "not whole: position alone");
        assert_eq!(offsets(&near.unwrap()), [18, 19, 20]);
        // The first, the shared one from 12, and 17's own.
        assert_eq!(store.reads.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn another_epoch_reads_alone_and_errors_reach_every_sharer() {
        let reads = SharedReads::default();
        let store = Store {
            limit: 100,
            reads: AtomicU64::new(0),
            pause: Duration::from_millis(10),
        };
        let old = Position {
            offset: 3,
            epoch: "old".to_owned(),
        };
        let (_, (same, other)) = tokio::join!(resume(&reads, &store, Some(at(19))), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::join!(
                resume(&reads, &store, Some(at(18))),
                resume(&reads, &store, Some(old)),
            )
        });
        assert_eq!(offsets(&same.unwrap()), [19, 20]);
        assert!(other.unwrap().events.is_empty());
        assert_eq!(store.reads.load(Ordering::Relaxed), 3);

        let failed = AtomicU64::new(0);
        let failing = |_: Want| async {
            failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(BrokerError::Timeout(Duration::from_secs(2)))
        };
        let topic: Arc<str> = "t".into();
        let waiting = AtomicUsize::new(0);
        let (one, two, three) = (at(1), at(2), at(3));
        let (a, (b, c)) = tokio::join!(reads.read(&topic, Some(&one), &waiting, failing), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::join!(
                reads.read(&topic, Some(&two), &waiting, failing),
                reads.read(&topic, Some(&three), &waiting, failing),
            )
        });
        for outcome in [a, b, c] {
            assert!(matches!(outcome, Err(BrokerError::Timeout(_))));
        }
        assert_eq!(failed.load(Ordering::Relaxed), 2);
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_goes_away_leaves_its_read_to_the_others() {
        let reads = SharedReads::default();
        let store = Store {
            limit: 100,
            reads: AtomicU64::new(0),
            pause: Duration::from_millis(10),
        };
        let (first, (gone, stays)) = tokio::join!(resume(&reads, &store, Some(at(19))), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::join!(
                // Joins the next read and has its turn first, then goes
                // away (its client left) halfway through the read.
                tokio::time::timeout(
                    Duration::from_millis(14),
                    resume(&reads, &store, Some(at(15)))
                ),
                resume(&reads, &store, Some(at(16))),
            )
        });
        assert_eq!(offsets(&first.unwrap()), [20]);
        assert!(gone.is_err(), "went away");
        // The read it left was made again, still from 15.
        assert_eq!(offsets(&stays.unwrap()), [17, 18, 19, 20]);
        assert_eq!(store.reads.load(Ordering::Relaxed), 3);
        assert!(reads.topics.lock().is_empty());
    }
}
