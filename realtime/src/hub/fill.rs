//! The hub's side of its broker ([`Fan`]): frames go into the rings, and a
//! gap in a topic's offsets, or a link that came back, starts a read of the
//! topic's history ([`Filler`]) that fills the ring before newer events.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Hub;
use crate::broker::{Broker, BrokerError, Fanout, HistoryQuery, Presence};
use crate::history::HistoryPolicy;
use crate::protocol::{self, Frame};
use crate::util::{Backoff, Jitter};

/// The pauses between attempts to read a topic's history while the broker
/// fails: a single reader of its topic, so no jitter.
const RETRY: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(2),
    Jitter::None,
);

/// How long a fill waits for the ring's subscribers to read a part before
/// it adds the next one anyway.
const PART_WAIT: Duration = Duration::from_secs(1);

/// What the hub hands back to the service that owns it.
pub(crate) trait Owner: Send + Sync + 'static {
    /// The broker's link came back: presence entries are written again,
    /// clients sent the whole list.
    fn relinked(self: Arc<Self>);

    /// The answer to the `$presence` numbered `asker`, at its place in
    /// the topic's stream.
    fn answer_presence(&self, topic: &str, asker: u64, presence: &Presence);

    /// A message of the service's own control topic, sent by an instance
    /// to every one (`Service::disconnect_user`).
    fn control(&self, frame: &Frame);
}

/// The topic the instances of a service tell each other things on. Clients
/// cannot subscribe to it.
pub(crate) const CONTROL_TOPIC: &str = "$realtime:control";

/// Reads topics' histories into their rings: the hub, the broker, and the
/// policy that says how much of each topic is kept.
#[derive(Debug)]
pub(crate) struct Filler<B> {
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<B>,
    pub(crate) history: HistoryPolicy,
}

impl<B: Broker> Filler<B> {
    /// Starts the task that fills `topic`'s ring from its history.
    pub(crate) fn start(self: &Arc<Self>, topic: Arc<str>) {
        self.hub.counters.gap_fill();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Arc::clone(self).fill(topic));
        }
    }

    /// Fills the ring of a topic with history from its history until it is
    /// live again, retrying while the broker fails; ends early if the topic
    /// loses its last local subscriber.
    async fn fill(self: Arc<Self>, topic: Arc<str>) {
        let mut attempt = 0u32;
        loop {
            let read = {
                // At most a few reads at once per instance; after a
                // reconnect every topic with history wants one.
                let _permit = self.hub.reads.acquire().await;
                self.read_into_ring(&topic).await
            };
            let wait = match read {
                Ok(true) => return,
                // More to read (a long gap comes in parts), or live events
                // came past the read: read on once the subscribers have room
                // for another part.
                Ok(false) => {
                    attempt = 0;
                    if !self.room_for_a_part(&topic).await {
                        return;
                    }
                    Duration::from_millis(1)
                }
                Err(error) => {
                    tracing::debug!(topic = &*topic, %error, "reading history to fill a gap failed; retrying");
                    attempt = attempt.saturating_add(1);
                    RETRY.wait(attempt - 1)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until `topic`'s ring has room for another part of a gap (its
    /// subscribers read what came), at most [`PART_WAIT`]: a subscriber that
    /// does not read must not hold the others back (it falls behind and is
    /// closed with 1013). False if the topic has no local subscriber left.
    async fn room_for_a_part(&self, topic: &str) -> bool {
        let hub = &self.hub;
        let deadline = tokio::time::Instant::now() + PART_WAIT;
        loop {
            match hub.unread(topic) {
                None => return false,
                Some(unread) if unread <= hub.max_gap() => return true,
                Some(_) if tokio::time::Instant::now() >= deadline => return true,
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// One read of the history into the ring; whether the ring is live
    /// again (or the topic gone).
    pub(crate) async fn read_into_ring(&self, topic: &str) -> Result<bool, BrokerError> {
        let Some(retention) = self.history.retention(topic) else {
            return Ok(true);
        };
        let Some(from) = self.hub.read_from(topic) else {
            return Ok(true);
        };
        // At most what the ring may take at once; a longer gap comes in
        // parts.
        let limit = match from.since {
            Some(_) => retention.size().min(self.hub.max_gap()),
            None => 0,
        };
        let read = self
            .broker
            .history(topic, HistoryQuery::from(from.since, limit), &retention)
            .await?;
        Ok(self.hub.apply_read(topic, from, read))
    }
}

/// What a broker hands its frames to: the hub's rings. Weak, since the
/// broker that holds it lives in the service that holds the hub.
pub(crate) struct Fan<B> {
    /// Strong: the hub holds no broker, and every frame goes through here.
    pub(crate) hub: Arc<Hub>,
    pub(crate) filler: Weak<Filler<B>>,
    pub(crate) owner: Weak<dyn Owner>,
}

impl<B: Broker> Fan<B> {
    fn fill(&self, topic: Arc<str>) {
        if let Some(filler) = self.filler.upgrade() {
            filler.start(topic);
        }
    }
}

impl<B: Broker> Fanout for Fan<B> {
    fn deliver(&self, topic: &str, frame: Frame) {
        if topic == CONTROL_TOPIC {
            if let Some(owner) = self.owner.upgrade() {
                owner.control(&frame);
            }
            return;
        }
        self.hub.deliver(topic, &frame);
    }

    fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) {
        if self.hub.deliver_at(topic, offset, epoch, frame) {
            tracing::debug!(
                topic,
                offset,
                "gap in a topic's offsets; reading its history"
            );
            self.fill(topic.into());
        }
    }

    fn reconnected(&self) {
        for topic in self.hub.hold_all() {
            self.fill(topic);
        }
        if let Some(owner) = self.owner.upgrade() {
            owner.relinked();
        }
    }

    fn presence(&self, topic: &str, asker: Option<u64>, presence: &Presence) {
        match asker {
            None => self.deliver(topic, protocol::presence_list_frame(topic, presence)),
            Some(asker) => {
                if let Some(owner) = self.owner.upgrade() {
                    owner.answer_presence(topic, asker, presence);
                }
            }
        }
    }
}
