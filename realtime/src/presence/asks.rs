//! `$presence` answers waiting for their place in a topic's stream.
//!
//! A client that follows a topic builds its list of users from one answer
//! and the joins and leaves after it. An answer read apart from the stream
//! can reach it after a join the read did not see, and the client drops
//! that user. So the answer is read by the broker at a point of the stream
//! and handed back through the instance's fan-out at that point
//! ([`Broker::resend_presence`](crate::broker::Broker::resend_presence));
//! here it waits, under a number, for that moment. Then the answer goes in
//! the connection's queue and a mark naming the connection in the topic's
//! ring, between the joins and leaves before the read and those after it;
//! the connection's writer holds the answer until it reaches the mark.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::broker::Presence;
use crate::outbox::Outbox;
use crate::protocol;
use crate::util::Mutex;

/// The answers this instance waits to place, each under the number of the
/// read that answers it (its group), and the reads of each topic.
///
/// Concurrent asks of one topic share one read: a read is out at a time
/// per topic ([`Gate`]), and every ask that comes while it is out joins the
/// next one. A thousand members asking at once cost the broker a few
/// reads, not a thousand.
#[derive(Debug, Default)]
pub(crate) struct Asks {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Ask>>,
    gates: Mutex<HashMap<Arc<str>, Arc<Gate>>>,
}

/// One `$presence` waiting for its answer.
#[derive(Debug)]
pub(crate) struct Ask {
    /// The read that answers it, whose mark in the ring is where the
    /// answer goes.
    group: u64,
    outbox: Outbox,
    id: Option<Box<RawValue>>,
    answered: oneshot::Sender<()>,
}

impl Ask {
    /// Queues the answer, `presence` as JSON, to be written at the read's
    /// mark in the topic's ring; whether it was queued.
    fn queue(&self, presence: &RawValue) -> bool {
        self.outbox
            .push_answer(protocol::reply_frame(self.id.as_deref(), presence))
    }
}

/// Answers every ask of a read: the list serialized once, each answer
/// queued, then one mark for them all, which `mark` puts in the topic's
/// ring; then each asker is told.
pub(crate) fn answer(asks: Vec<Ask>, presence: &Presence, mark: impl FnOnce()) {
    if asks.is_empty() {
        return;
    }
    let value = serde_json::value::to_raw_value(presence).expect("presence always serializes");
    let mut queued = false;
    for ask in &asks {
        queued |= ask.queue(&value);
    }
    if queued {
        mark();
    }
    for ask in asks {
        let _ = ask.answered.send(());
    }
}

/// One topic's reads: one out at a time, each for every ask that joined
/// its group before it started.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Held while a read is out.
    reading: tokio::sync::Mutex<()>,
    /// The group asks join now: the next read's.
    open: Mutex<Option<u64>>,
    /// The last group read (groups grow).
    read: AtomicU64,
}

impl Gate {
    /// Waits for the topic's turn; then whether `group` still needs its
    /// read (no other ask of it made the read), and if so closes the group
    /// to new asks. The read goes on while the returned guard is held.
    pub(crate) async fn turn(&self, group: u64) -> (tokio::sync::MutexGuard<'_, ()>, bool) {
        let turn = self.reading.lock().await;
        if self.read.load(Ordering::Acquire) >= group {
            return (turn, false);
        }
        let mut open = self.open.lock();
        if *open == Some(group) {
            *open = None;
        }
        (turn, true)
    }

    /// `group` was read: its other asks need no read of their own.
    pub(crate) fn done(&self, group: u64) {
        self.read.fetch_max(group, Ordering::AcqRel);
    }
}

impl Asks {
    /// Waits for an answer to the `$presence` with `id` of the connection
    /// behind `outbox`, of `topic`. Returns the ask, which stops
    /// waiting when dropped (the connection went away mid-read: its entry
    /// must not stay for an answer that may never come), what fires once
    /// the answer is queued, and the topic's gate, through which the read
    /// of the ask's group is made.
    pub(crate) fn add(
        &self,
        topic: &str,
        outbox: &Outbox,
        id: Option<&RawValue>,
    ) -> (Waiting<'_>, oneshot::Receiver<()>) {
        let gate = Arc::clone(self.gates.lock().entry(topic.into()).or_default());
        let number = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (answered, queued) = oneshot::channel();
        // In the group and among the waiting under the group's lock: a read
        // that closes the group after this finds the ask to answer.
        let group = {
            let mut open = gate.open.lock();
            let group = *open.get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed) + 1);
            let ask = Ask {
                group,
                outbox: outbox.clone(),
                id: id.map(ToOwned::to_owned),
                answered,
            };
            self.waiting.lock().insert(number, ask);
            group
        };
        outbox.status().await_mark(group);
        let waiting = Waiting {
            asks: self,
            topic: topic.into(),
            number,
            group,
            gate: Some(gate),
        };
        (waiting, queued)
    }

    /// The asks of group `group` still waiting.
    pub(crate) fn take(&self, group: u64) -> Vec<Ask> {
        let mut waiting = self.waiting.lock();
        let numbers: Vec<u64> = waiting
            .iter()
            .filter(|(_, ask)| ask.group == group)
            .map(|(number, _)| *number)
            .collect();
        numbers
            .iter()
            .filter_map(|number| waiting.remove(number))
            .collect()
    }

    /// Stops waiting for ask `number`; whether it still waited.
    fn cancel(&self, number: u64) -> bool {
        self.waiting.lock().remove(&number).is_some()
    }

    /// Lets go of `gate`, and forgets `topic`'s once no ask holds it.
    /// Under the map's lock, where every other hold is taken, so that two
    /// asks that end together cannot each see the other's.
    fn release(&self, topic: &str, gate: Arc<Gate>) {
        let mut gates = self.gates.lock();
        drop(gate);
        if gates
            .get(topic)
            .is_some_and(|gate| Arc::strong_count(gate) == 1)
        {
            gates.remove(topic);
        }
    }
}

/// One ask as its asker holds it: its number, its group and its topic's
/// gate; its entry is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Waiting<'a> {
    asks: &'a Asks,
    topic: Box<str>,
    number: u64,
    group: u64,
    /// Always there but in `drop`.
    gate: Option<Arc<Gate>>,
}

impl Waiting<'_> {
    /// The number of the read that answers it.
    pub(crate) fn group(&self) -> u64 {
        self.group
    }

    /// The topic's reads.
    pub(crate) fn gate(&self) -> &Gate {
        self.gate.as_ref().expect("held until dropped")
    }

    /// Stops waiting; whether the ask still waited (so that nothing was
    /// queued and the caller answers instead).
    pub(crate) fn cancel(&self) -> bool {
        self.asks.cancel(self.number)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.asks.cancel(self.number);
        if let Some(gate) = self.gate.take() {
            self.asks.release(&self.topic, gate);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::Outbound;

    #[test]
    fn an_answer_is_queued_and_marked_once_and_a_cancelled_ask_gets_none() {
        let asks = Asks::default();
        let outbox = Outbox::new(8, 1 << 16, Arc::default());
        let id = RawValue::from_string("7".to_owned()).unwrap();
        let (first, mut queued) = asks.add("t", &outbox, Some(&id));
        let (second, _) = asks.add("t", &outbox, None);
        assert_eq!(first.group(), second.group(), "one read for both");
        assert!(second.cancel());

        let mut marks = 0;
        answer(asks.take(first.group()), &Presence::default(), || {
            marks += 1
        });
        assert!(asks.take(first.group()).is_empty(), "answered once");
        assert!(queued.try_recv().is_ok());
        assert!(!first.cancel(), "answered already");
        assert_eq!(marks, 1, "one mark for the read");
        assert!(outbox.status().awaits(first.group()));

        let queue = outbox.status().queue();
        let Some(Outbound::Answer(frame)) = queue.try_pop() else {
            panic!("the answer");
        };
        assert!(
            frame.as_str().starts_with(r#"{"reply_to":7"#),
            "{}",
            frame.as_str()
        );
        assert!(queue.try_pop().is_none(), "one answer");
    }

    #[test]
    fn an_ask_whose_asker_went_away_is_forgotten() {
        let asks = Asks::default();
        let outbox = Outbox::new(8, 1 << 16, Arc::default());
        let (waiting, _) = asks.add("t", &outbox, None);
        let group = waiting.group();
        drop(waiting);
        assert!(asks.take(group).is_empty(), "no entry left behind");
        assert!(asks.waiting.lock().is_empty());
        assert!(asks.gates.lock().is_empty(), "nor a gate");
    }

    #[tokio::test]
    async fn asks_that_come_while_a_read_is_out_share_the_next_one() {
        let asks = Asks::default();
        let outbox = Outbox::new(8, 1 << 16, Arc::default());
        let (first, _) = asks.add("t", &outbox, None);
        let (turn, read) = first.gate().turn(first.group()).await;
        assert!(read, "the first ask reads");
        // While the first read is out, two more come: one group.
        let (second, _) = asks.add("t", &outbox, None);
        let (third, _) = asks.add("t", &outbox, None);
        assert_ne!(second.group(), first.group());
        assert_eq!(second.group(), third.group());
        first.gate().done(first.group());
        drop(turn);
        let (turn, read) = second.gate().turn(second.group()).await;
        assert!(read, "the second reads for both");
        second.gate().done(second.group());
        drop(turn);
        let (_turn, read) = third.gate().turn(third.group()).await;
        assert!(!read, "the third's group was read");
    }
}
