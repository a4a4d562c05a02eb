//! [`MemoryBroker`]: fan-out between the services of one process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::{
    Broker, BrokerError, History, HistoryQuery, Idempotency, Incoming, Presence, PresenceUpdate,
    Retention, Sequenced,
};
use crate::protocol::{self, Frame, Position};
use crate::util::{Mutex, RwLock};

mod table;

use table::{Change, Table};

/// Appends and reads between two sweeps of expired histories: often enough
/// that abandoned topics do not pile up, rare enough to cost nothing per
/// event.
const SWEEP_EVERY: u64 = 1024;

/// The embedded broker: delivers frames to every service in this process that
/// shares it. The default of [`Service`](crate::Service).
///
/// Clones share one hub, and each clone is a node of its own: two services
/// built with clones of one `MemoryBroker` behave like two instances on one
/// Redis. Publishing delivers synchronously into the subscribed services:
/// a publish has reached every one when it returns. One topic's publishes
/// reach every node in one order: each holds the topic's lock while it
/// delivers, so two publishers cannot interleave differently per node.
///
/// Presence is one table per topic, with the same expiry as in Redis.
///
/// Topics with history keep their last events in a ring per topic, with an
/// offset and an epoch, as Redis keeps them in a stream; a history expires
/// `ttl` after its last event, and the next event starts a new epoch.
///
/// # Examples
///
/// ```
/// use realtime::MemoryBroker;
///
/// let hub = MemoryBroker::new();
/// let for_node_a = hub.clone();
/// let for_node_b = hub;
/// # let _ = (for_node_a, for_node_b);
/// ```
#[derive(Debug, Default)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    /// This handle's place in the hub, set by `attach`.
    member: OnceLock<usize>,
}

/// The members subscribed to one topic, with where to deliver to each.
type Members = Vec<(usize, Incoming)>;

#[derive(Debug, Default)]
struct Hub {
    /// Every attached service, by member index.
    members: Mutex<Vec<Incoming>>,
    /// Topic -> members subscribed to it. Read on every publish, written on
    /// the first and last subscriber of a topic per member. Each topic's
    /// lock is held while a publish delivers, which gives the topic one order.
    topics: RwLock<HashMap<Box<str>, Mutex<Members>>>,
    /// Topic -> its history. Held while an event with history is delivered,
    /// so offsets and delivery have one order.
    histories: Mutex<Histories>,
    /// Topic -> who is in it. Held while joins and leaves are delivered, so
    /// that they reach every node in one order.
    presences: Mutex<HashMap<Box<str>, Table>>,
    /// Idempotency keys published, per topic. Taken after `histories` when
    /// both are held.
    remembered: Mutex<Remembered>,
}

/// Until when a key is remembered, and the position its event got (on a
/// topic with history).
type Recorded = (Instant, Option<Position>);

/// The idempotency keys of recent publishes, by (topic, key).
#[derive(Debug, Default)]
struct Remembered {
    keys: HashMap<(Box<str>, Box<str>), Recorded>,
    /// Lookups, to time the sweeps.
    calls: u64,
}

impl Remembered {
    /// What `key` of `topic` got when it was published within its window;
    /// `None` if it was not.
    fn seen(&mut self, topic: &str, key: &str) -> Option<Option<Position>> {
        let now = Instant::now();
        self.calls += 1;
        if self.calls.is_multiple_of(SWEEP_EVERY) {
            self.keys.retain(|_, (until, _)| *until > now);
        }
        let (until, position) = self.keys.get(&(topic.into(), key.into()))?;
        (*until > now).then(|| position.clone())
    }

    fn remember(&mut self, topic: &str, once: Idempotency<'_>, position: Option<Position>) {
        let until = Instant::now() + once.window;
        self.keys
            .insert((topic.into(), once.key.into()), (until, position));
    }
}

#[derive(Debug)]
struct Histories {
    topics: HashMap<Box<str>, Kept>,
    /// Appends and reads, to time the sweeps.
    calls: u64,
    /// Bytes of every kept frame.
    bytes: usize,
    /// The most `bytes` may reach; past it appends are refused.
    budget: usize,
}

impl Default for Histories {
    fn default() -> Self {
        Self {
            topics: HashMap::new(),
            calls: 0,
            bytes: 0,
            budget: MemoryBroker::DEFAULT_HISTORY_BUDGET,
        }
    }
}

/// One topic's history.
#[derive(Debug)]
struct Kept {
    epoch: String,
    offset: u64,
    events: VecDeque<Sequenced>,
    /// Bytes of `events`' frames.
    bytes: usize,
    expires: Instant,
}

impl Histories {
    /// `topic`'s history, new (offset 0, a new epoch) if it had none or it
    /// expired. An append (`touch`) moves its expiry to `ttl` from now; a
    /// read leaves it, as in Redis.
    fn get(&mut self, topic: &str, retention: &Retention, touch: bool) -> &mut Kept {
        self.sweep();
        let now = Instant::now();
        let expires = now + retention.ttl();
        let kept = self
            .topics
            .entry(topic.into())
            .or_insert_with(|| Kept::new(expires));
        if kept.expires <= now {
            self.bytes -= kept.bytes;
            *kept = Kept::new(expires);
        }
        if touch {
            kept.expires = expires;
        }
        kept
    }

    /// Drops expired histories, once every [`SWEEP_EVERY`] calls: reads
    /// create histories too, so both count.
    fn sweep(&mut self) {
        self.calls += 1;
        if self.calls.is_multiple_of(SWEEP_EVERY) {
            self.sweep_now();
        }
    }

    /// Drops expired histories now.
    fn sweep_now(&mut self) {
        let now = Instant::now();
        let bytes = &mut self.bytes;
        self.topics.retain(|_, kept| {
            let live = kept.expires > now;
            if !live {
                *bytes -= kept.bytes;
            }
            live
        });
    }
}

impl Kept {
    fn new(expires: Instant) -> Self {
        Self {
            epoch: crate::util::random_id(),
            offset: 0,
            events: VecDeque::new(),
            bytes: 0,
            expires,
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

impl MemoryBroker {
    /// The default bound on the bytes of all topics' histories: 256 MiB.
    pub const DEFAULT_HISTORY_BUDGET: usize = 256 * 1024 * 1024;

    /// A new hub with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new hub whose topics' histories hold at most `bytes` of frames in
    /// all (default [`DEFAULT_HISTORY_BUDGET`](Self::DEFAULT_HISTORY_BUDGET)).
    /// Past it, an event of a topic with history is refused with
    /// [`BrokerError::HistoryFull`] (its sender gets error 503) until
    /// histories expire: the process's memory, not the clients, sets the
    /// bound. Handles cloned from it share it.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = realtime::MemoryBroker::with_history_budget(64 * 1024 * 1024);
    /// let _other_node = hub.clone();
    /// ```
    pub fn with_history_budget(bytes: usize) -> Self {
        let hub = Hub {
            histories: Mutex::new(Histories {
                budget: bytes,
                ..Histories::default()
            }),
            ..Hub::default()
        };
        Self {
            hub: Arc::new(hub),
            member: OnceLock::new(),
        }
    }

    fn member(&self) -> Result<(usize, Incoming), BrokerError> {
        let index = *self.member.get().ok_or_else(|| {
            BrokerError::Unavailable("the memory broker is not attached to a service".into())
        })?;
        let members = self.hub.members.lock();
        Ok((index, members[index].clone()))
    }
}

impl Clone for MemoryBroker {
    /// Another node on the same hub, to attach to another service.
    fn clone(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            member: OnceLock::new(),
        }
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, incoming: Incoming) {
        let mut members = self.hub.members.lock();
        members.push(incoming);
        let index = members.len() - 1;
        // A handle attached twice keeps its first place: `Service` attaches once.
        let _ = self.member.set(index);
    }

    async fn publish(
        &self,
        topic: &str,
        frame: Frame,
        once: Option<Idempotency<'_>>,
    ) -> Result<(), BrokerError> {
        if let Some(once) = once {
            let mut remembered = self.hub.remembered.lock();
            if remembered.seen(topic, once.key).is_some() {
                return Ok(());
            }
            remembered.remember(topic, once, None);
        }
        let topics = self.hub.topics.read();
        if let Some(members) = topics.get(topic) {
            // Delivery only puts the frame in each node's ring: short, and
            // never waits, so holding the topic's lock across it is cheap.
            let members = members.lock();
            for (_, incoming) in members.iter() {
                incoming.deliver(topic, frame.clone());
            }
        }
        Ok(())
    }

    fn supports_history(&self) -> bool {
        true
    }

    async fn append(
        &self,
        topic: &str,
        frame: Frame,
        retention: &Retention,
        once: Option<Idempotency<'_>>,
    ) -> Result<Position, BrokerError> {
        let mut histories = self.hub.histories.lock();
        if let Some(once) = once {
            let mut remembered = self.hub.remembered.lock();
            if let Some(Some(position)) = remembered.seen(topic, once.key) {
                return Ok(position);
            }
        }
        let size = frame.as_str().len();
        if histories.bytes + size > histories.budget {
            // Expired histories may still hold the room: look now, not at
            // the next timed sweep.
            histories.sweep_now();
            if histories.bytes + size > histories.budget {
                return Err(BrokerError::HistoryFull);
            }
        }
        let kept = histories.get(topic, retention, true);
        let offset = kept.offset + 1;
        let frame = protocol::with_offset(&frame, offset)
            .ok_or_else(|| BrokerError::Invalid("not an event frame".into()))?;
        kept.offset = offset;
        let added = frame.as_str().len();
        kept.events.push_back(Sequenced {
            offset,
            frame: frame.clone(),
        });
        let mut removed = 0;
        while kept.events.len() > retention.size() {
            if let Some(dropped) = kept.events.pop_front() {
                removed += dropped.frame.as_str().len();
            }
        }
        kept.bytes = kept.bytes + added - removed;
        let position = kept.position();
        histories.bytes = histories.bytes + added - removed;
        if let Some(once) = once {
            self.hub
                .remembered
                .lock()
                .remember(topic, once, Some(position.clone()));
        }
        // Delivered under the histories' lock: offsets reach every node in
        // their order.
        let topics = self.hub.topics.read();
        if let Some(members) = topics.get(topic) {
            let members = members.lock();
            for (_, incoming) in members.iter() {
                incoming.deliver_at(topic, offset, &position.epoch, frame.clone());
            }
        }
        Ok(position)
    }

    async fn history(
        &self,
        topic: &str,
        query: HistoryQuery<'_>,
        retention: &Retention,
    ) -> Result<History, BrokerError> {
        let mut histories = self.hub.histories.lock();
        let kept = histories.get(topic, retention, false);
        let position = kept.position();
        // Contiguous for a slice; a ring of at most `Retention::MAX_SIZE`
        // rotates at most once per wrap.
        let events = query
            .select(&position.epoch, kept.events.make_contiguous())
            .to_vec();
        Ok(History { position, events })
    }

    fn supports_presence(&self) -> bool {
        true
    }

    async fn update_presence(
        &self,
        topic: &str,
        update: PresenceUpdate<'_>,
    ) -> Result<(), BrokerError> {
        let mut presences = self.hub.presences.lock();
        let table = presences.entry(topic.into()).or_default();
        let changes = table.apply(Instant::now(), &update);
        if table.is_empty() {
            presences.remove(topic);
        }
        if update.announce {
            self.hub.announce(topic, &changes);
        }
        Ok(())
    }

    async fn presence(&self, topic: &str, announce: bool) -> Result<Presence, BrokerError> {
        let mut presences = self.hub.presences.lock();
        let Some(table) = presences.get_mut(topic) else {
            return Ok(Presence::default());
        };
        let mut changes = Vec::new();
        table.sweep(Instant::now(), &mut changes);
        let presence = table.presence();
        if table.is_empty() {
            presences.remove(topic);
        }
        if announce {
            self.hub.announce(topic, &changes);
        }
        Ok(presence)
    }

    async fn resend_presence(&self, topic: &str, asker: Option<u64>) -> Result<(), BrokerError> {
        let (_, incoming) = self.member()?;
        // Under the presences' lock, which joins and leaves are delivered
        // under too: the list and the events keep one order.
        let mut presences = self.hub.presences.lock();
        let presence = self.hub.swept_presence(&mut presences, topic);
        incoming.presence(topic, asker, &presence);
        Ok(())
    }

    async fn announce_presence(&self, topic: &str) -> Result<(), BrokerError> {
        // As `resend_presence`, to every member.
        let mut presences = self.hub.presences.lock();
        let presence = self.hub.swept_presence(&mut presences, topic);
        let topics = self.hub.topics.read();
        if let Some(members) = topics.get(topic) {
            for (_, incoming) in members.lock().iter() {
                incoming.presence(topic, None, &presence);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        let (index, incoming) = self.member()?;
        let mut topics = self.hub.topics.write();
        let members = topics.entry(topic.into()).or_default().get_mut();
        if !members.iter().any(|(member, _)| *member == index) {
            members.push((index, incoming));
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError> {
        let (index, _) = self.member()?;
        let mut topics = self.hub.topics.write();
        if let Some(members) = topics.get_mut(topic) {
            let members = members.get_mut();
            members.retain(|(member, _)| *member != index);
            if members.is_empty() {
                topics.remove(topic);
            }
        }
        Ok(())
    }
}

impl Hub {
    /// Delivers `changes` of `topic`'s presence as `join` and `leave` frames
    /// to its subscribed nodes; called under the presences' lock.
    /// `topic`'s presence now, after sweeping the expired entries (whose
    /// leaves are announced first). Called under the presences' lock, which
    /// joins and leaves are delivered under too.
    fn swept_presence(&self, presences: &mut HashMap<Box<str>, Table>, topic: &str) -> Presence {
        let Some(table) = presences.get_mut(topic) else {
            return Presence::default();
        };
        let mut changes = Vec::new();
        table.sweep(Instant::now(), &mut changes);
        self.announce(topic, &changes);
        table.presence()
    }

    fn announce(&self, topic: &str, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let topics = self.topics.read();
        let Some(members) = topics.get(topic) else {
            return;
        };
        let members = members.lock();
        let head = protocol::presence_head(topic);
        for change in changes {
            let frame = match change {
                Change::Join(user) => protocol::presence_frame(&head, "join", user),
                Change::Leave(user) => protocol::presence_frame(&head, "leave", user),
            };
            for (_, incoming) in members.iter() {
                incoming.deliver(topic, frame.clone());
            }
        }
    }
}

impl MemoryBroker {
    /// Topics this handle's node is subscribed to, sorted; for tests and
    /// diagnostics.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let Some(index) = self.member.get() else {
            return Vec::new();
        };
        let topics = self.hub.topics.read();
        let mut names: Vec<String> = topics
            .iter()
            .filter(|(_, members)| members.lock().iter().any(|(member, _)| member == index))
            .map(|(topic, _)| topic.to_string())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting() -> (Incoming, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        (
            Incoming::new(move |_, _| {
                seen.fetch_add(1, Ordering::Relaxed);
            }),
            count,
        )
    }

    #[tokio::test]
    async fn delivers_to_subscribed_nodes_only() {
        let hub = MemoryBroker::new();
        let (a, b) = (hub.clone(), hub.clone());
        let (incoming_a, count_a) = counting();
        let (incoming_b, count_b) = counting();
        a.attach(incoming_a);
        b.attach(incoming_b);
        a.subscribe("t").await.unwrap();
        b.publish("t", Frame::from("x".to_owned()), None)
            .await
            .unwrap();
        assert_eq!(count_a.load(Ordering::Relaxed), 1);
        assert_eq!(count_b.load(Ordering::Relaxed), 0);
        a.unsubscribe("t").await.unwrap();
        b.publish("t", Frame::from("x".to_owned()), None)
            .await
            .unwrap();
        assert_eq!(count_a.load(Ordering::Relaxed), 1);
        assert!(a.subscribed_topics().is_empty());
    }
}
