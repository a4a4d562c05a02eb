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
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::broker::Presence;
use crate::outbox::Outbox;
use crate::protocol;
use crate::util::Mutex;

/// The answers this instance waits to place, by number.
#[derive(Debug, Default)]
pub(crate) struct Asks {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Ask>>,
}

/// One `$presence` waiting for its answer.
#[derive(Debug)]
pub(crate) struct Ask {
    /// The connection that asked: the mark in the ring names it.
    pub(crate) conn: u64,
    outbox: Outbox,
    id: Option<Box<RawValue>>,
    answered: oneshot::Sender<()>,
}

impl Ask {
    /// Queues the answer, to be written at the connection's mark, which
    /// `mark` puts in the topic's ring; then tells the asker.
    pub(crate) fn answer(self, presence: &Presence, mark: impl FnOnce(u64)) {
        let value = serde_json::value::to_raw_value(presence).expect("presence always serializes");
        if self
            .outbox
            .push_answer(protocol::reply_frame(self.id.as_deref(), &value))
        {
            mark(self.conn);
        }
        let _ = self.answered.send(());
    }
}

impl Asks {
    /// Waits for an answer to the `$presence` with `id` of connection
    /// `conn`, behind `outbox`. Returns the ask, which stops waiting when
    /// dropped (the connection went away mid-read: its entry must not stay
    /// for an answer that may never come), and what fires once the answer
    /// is queued.
    pub(crate) fn add(
        &self,
        conn: u64,
        outbox: &Outbox,
        id: Option<&RawValue>,
    ) -> (Waiting<'_>, oneshot::Receiver<()>) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (answered, queued) = oneshot::channel();
        let ask = Ask {
            conn,
            outbox: outbox.clone(),
            id: id.map(ToOwned::to_owned),
            answered,
        };
        self.waiting.lock().insert(number, ask);
        let waiting = Waiting { asks: self, number };
        (waiting, queued)
    }

    /// Ask `number`, if it still waits.
    pub(crate) fn take(&self, number: u64) -> Option<Ask> {
        self.waiting.lock().remove(&number)
    }

    /// Stops waiting for ask `number`; whether it still waited.
    fn cancel(&self, number: u64) -> bool {
        self.waiting.lock().remove(&number).is_some()
    }
}

/// One ask as its asker holds it: its number, and its entry removed when
/// it is dropped.
#[derive(Debug)]
pub(crate) struct Waiting<'a> {
    asks: &'a Asks,
    number: u64,
}

impl Waiting<'_> {
    /// The number the broker's answer comes back with.
    pub(crate) fn number(&self) -> u64 {
        self.number
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
        let (first, mut queued) = asks.add(3, &outbox, Some(&id));
        let (second, _) = asks.add(3, &outbox, None);

        let mut marks = Vec::new();
        asks.take(first.number())
            .expect("waits")
            .answer(&Presence::default(), |conn| marks.push(conn));
        assert!(asks.take(first.number()).is_none(), "answered once");
        assert!(queued.try_recv().is_ok());
        assert!(second.cancel());
        assert!(asks.take(second.number()).is_none());
        assert!(!first.cancel(), "answered already");
        assert_eq!(marks, [3]);

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
        let (waiting, _) = asks.add(3, &outbox, None);
        let number = waiting.number();
        drop(waiting);
        assert!(asks.take(number).is_none(), "no entry left behind");
        assert!(asks.waiting.lock().is_empty());
    }
}
