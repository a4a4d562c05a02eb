//! One instance's side of presence: its own connections per tracked topic,
//! written to the broker in batches and refreshed while they stay.
//!
//! Subscribes and leaves arrive as messages on a channel and cost the
//! connection nothing but the send. One task applies them: whatever arrived
//! while the previous write was out goes in the next, one broker call per
//! topic, so a burst of a thousand joins to one room is a few calls, not a
//! thousand. A leave waits out the policy's linger first, so a client that
//! comes back (a reload, a reconnect to another instance) never leaves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{PresencePolicy, PresenceUpdate};
use crate::broker::Broker;
use crate::util::Mutex;

/// Clients in one broker call at most: a refresh of a very large room is
/// split, so that no single call holds the broker long.
const MAX_BATCH: usize = 1000;

/// Topics written at once: a refresh writes every tracked topic, and the
/// broker's connection takes a bounded number of commands in flight.
const CONCURRENT_WRITES: usize = 32;

/// How long a failed write waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a topic stays muted once past its announcement budget, before
/// its whole list is sent.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// What the service tells its instance's keeper.
#[derive(Debug)]
pub(crate) enum Message {
    /// A connection subscribed to a tracked topic.
    Add {
        topic: Arc<str>,
        conn: u64,
        user: Arc<str>,
        announce: bool,
    },
    /// It unsubscribed (after the linger, it no longer counts).
    Remove { topic: Arc<str>, conn: u64 },
    /// The broker's link came back, perhaps to a Redis that lost its data:
    /// write every entry again now, and answer once they are written.
    Refresh(oneshot::Sender<()>),
    /// The service stopped: remove every lingering connection now, write,
    /// and answer.
    Flush(oneshot::Sender<()>),
    /// Answer once every change sent before is written: a `$presence`
    /// counts its own connection.
    Written(oneshot::Sender<()>),
}

/// The sending side, held by the service; the task starts with the first
/// message, inside the runtime.
#[derive(Debug)]
pub(crate) struct Keeper {
    node: Box<str>,
    messages: mpsc::UnboundedSender<Message>,
    /// Whether the task runs: looked at on every send, so that only the
    /// first takes the lock.
    started: AtomicBool,
    waiting: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
}

impl Keeper {
    pub(crate) fn new() -> Self {
        let (messages, receiver) = mpsc::unbounded_channel();
        Self {
            node: crate::util::random_id().into(),
            messages,
            started: AtomicBool::new(false),
            waiting: Mutex::new(Some(receiver)),
        }
    }

    /// Sends `message`, starting the task first if it has not started.
    pub(crate) fn send<B: Broker>(
        &self,
        broker: &Arc<B>,
        policy: &PresencePolicy,
        message: Message,
    ) {
        if !self.started() {
            self.start(broker, policy);
        }
        // The task ends only when every sender is gone.
        let _ = self.messages.send(message);
    }

    /// Starts the task, unless another caller did, or there is no runtime
    /// (then the messages wait in the channel for a later start).
    fn start<B: Broker>(&self, broker: &Arc<B>, policy: &PresencePolicy) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut waiting = self.waiting.lock();
        if let Some(receiver) = waiting.take() {
            let node = self.node.clone();
            runtime.spawn(run(Arc::clone(broker), node, policy.clone(), receiver));
            self.started.store(true, Ordering::Release);
        }
    }

    /// Whether the task runs (something was tracked).
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// This instance's connections in one tracked topic, and what the broker
/// has not been told yet.
#[derive(Debug, Default)]
struct Topic {
    announce: bool,
    /// Connection → its user as JSON, and its subscriptions here: one, or
    /// two when it left and joined again while the leave lingered.
    clients: HashMap<u64, (Arc<str>, u32)>,
    joined: HashSet<u64>,
    left: HashSet<u64>,
    /// Write every client again (the periodic refresh, or after a failure).
    refresh: bool,
    /// Joins and leaves this instance may still announce now.
    budget: Budget,
    /// Changes were written unannounced: the whole list goes to every
    /// subscriber once the resync is due, and nothing is announced till
    /// then.
    muted: bool,
}

/// A topic's announcements: a bucket of `PresencePolicy::max_announcements`
/// a second, as deep.
#[derive(Debug, Default)]
struct Budget {
    spent: f32,
    at: Option<Instant>,
}

impl Budget {
    /// Whether the bucket was drawn from within the last second, so that it
    /// may not be full yet.
    fn recent(&self, now: Instant) -> bool {
        self.at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
    }

    /// Takes `changes` if the bucket holds them.
    fn take(&mut self, changes: usize, per_second: u32, now: Instant) -> bool {
        let rate = per_second as f32;
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f32() * rate;
            self.spent = (self.spent - refill).max(0.0);
        }
        self.at = Some(now);
        if self.spent + changes as f32 > rate {
            return false;
        }
        self.spent += changes as f32;
        true
    }
}

impl Topic {
    fn pending(&self) -> bool {
        self.refresh || !self.joined.is_empty() || !self.left.is_empty()
    }
}

/// A leave waiting out the linger.
#[derive(Debug)]
struct Lingering {
    due: Instant,
    topic: Arc<str>,
    conn: u64,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<Arc<str>, Topic>,
    lingering: VecDeque<Lingering>,
    /// Muted topics and when their list is due, in that order (the delay
    /// is one).
    resyncs: VecDeque<(Instant, Arc<str>)>,
}

impl State {
    fn add(&mut self, topic: Arc<str>, conn: u64, user: Arc<str>, announce: bool) {
        let entry = self.topics.entry(topic).or_default();
        entry.announce = announce;
        let (_, subscriptions) = entry.clients.entry(conn).or_insert((user, 0));
        *subscriptions += 1;
        if *subscriptions == 1 {
            entry.left.remove(&conn);
            entry.joined.insert(conn);
        }
    }

    fn remove(&mut self, topic: &str, conn: u64) {
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        let Some((_, subscriptions)) = entry.clients.get_mut(&conn) else {
            return;
        };
        *subscriptions -= 1;
        if *subscriptions == 0 {
            entry.clients.remove(&conn);
            entry.joined.remove(&conn);
            entry.left.insert(conn);
        }
    }

    /// Applies the leaves whose linger ended by `now` (all with `None`).
    fn end_lingering(&mut self, now: Option<Instant>) {
        while let Some(first) = self.lingering.front() {
            if now.is_some_and(|now| first.due > now) {
                break;
            }
            let Lingering { topic, conn, .. } = self.lingering.pop_front().expect("just seen");
            self.remove(&topic, conn);
        }
    }

    fn refresh_all(&mut self) {
        for topic in self.topics.values_mut() {
            topic.refresh = !topic.clients.is_empty() || topic.refresh;
        }
    }

    fn pending(&self) -> bool {
        self.topics.values().any(Topic::pending)
    }
}

/// One topic's write: what it sends, and what to put back if it fails.
struct Write {
    topic: Arc<str>,
    joined: Vec<(String, Arc<str>)>,
    left: Vec<String>,
    left_conns: Vec<u64>,
    announce: bool,
}

async fn run<B: Broker>(
    broker: Arc<B>,
    node: Box<str>,
    policy: PresencePolicy,
    mut messages: mpsc::UnboundedReceiver<Message>,
) {
    let mut state = State::default();
    let mut refresh = tokio::time::interval_at(
        Instant::now() + policy.refresh_every(),
        policy.refresh_every(),
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut received = Vec::with_capacity(256);
    let mut retry_at: Option<Instant> = None;
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let linger_due = state.lingering.front().map(|lingering| lingering.due);
        let resync_due = state.resyncs.front().map(|(due, _)| *due);
        tokio::select! {
            count = messages.recv_many(&mut received, 4096) => {
                if count == 0 {
                    // The service is gone.
                    return;
                }
                for message in received.drain(..) {
                    match message {
                        Message::Add { topic, conn, user, announce } => {
                            state.add(topic, conn, user, announce);
                        }
                        Message::Remove { topic, conn } if policy.linger_time().is_zero() => {
                            state.remove(&topic, conn);
                        }
                        Message::Remove { topic, conn } => {
                            let due = Instant::now() + policy.linger_time();
                            state.lingering.push_back(Lingering { due, topic, conn });
                        }
                        Message::Refresh(done) => {
                            state.refresh_all();
                            retry_at = None;
                            flushed.push(done);
                        }
                        Message::Flush(done) => {
                            state.end_lingering(None);
                            flushed.push(done);
                        }
                        Message::Written(done) => flushed.push(done),
                    }
                }
            }
            () = sleep_until(linger_due) => state.end_lingering(Some(Instant::now())),
            _ = refresh.tick() => state.refresh_all(),
            () = sleep_until(retry_at) => retry_at = None,
            () = sleep_until(resync_due) => {}
        }
        if retry_at.is_none()
            && state.pending()
            && !write(&*broker, &node, &policy, &mut state).await
        {
            retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        // After the writes: a list read now holds every change written.
        resync(&*broker, &mut state).await;
        if !state.pending() {
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// Sends the whole list of every muted topic whose resync is due to every
/// subscriber, and lets the topic announce again.
async fn resync<B: Broker>(broker: &B, state: &mut State) {
    let now = Instant::now();
    while let Some((due, _)) = state.resyncs.front() {
        if *due > now {
            break;
        }
        let (_, topic) = state.resyncs.pop_front().expect("just seen");
        if let Err(error) = broker.announce_presence(&topic).await {
            tracing::debug!(topic = &*topic, %error, "presence list not sent; again later");
            state.resyncs.push_back((now + RETRY_AFTER, topic));
            return;
        }
        if let Some(entry) = state.topics.get_mut(&topic) {
            entry.muted = false;
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes every topic's pending changes; whether all of them went through.
/// A failed topic is written whole again later.
async fn write<B: Broker>(
    broker: &B,
    node: &str,
    policy: &PresencePolicy,
    state: &mut State,
) -> bool {
    let key = |conn: u64| format!("{node}:{conn}");
    let per_second = policy.announcements_per_second();
    let now = Instant::now();
    let mut writes = Vec::new();
    for (name, topic) in &mut state.topics {
        if !topic.pending() {
            continue;
        }
        // Only new joins are announced; a refresh writes every client again.
        let changes = topic.joined.len();
        let conns: Vec<u64> = match std::mem::take(&mut topic.refresh) {
            true => topic.clients.keys().copied().collect(),
            false => topic.joined.iter().copied().collect(),
        };
        topic.joined.clear();
        let joined = conns
            .into_iter()
            .filter_map(|conn| {
                let (user, _) = topic.clients.get(&conn)?;
                Some((key(conn), Arc::clone(user)))
            })
            .collect();
        let left_conns: Vec<u64> = topic.left.drain().collect();
        let mut announce = topic.announce && !topic.muted;
        if announce
            && !topic
                .budget
                .take(changes + left_conns.len(), per_second, now)
        {
            // Past the budget: written unannounced, and the whole list in
            // a second replaces every join and leave not sent.
            announce = false;
            topic.muted = true;
            state
                .resyncs
                .push_back((now + RESYNC_AFTER, Arc::clone(name)));
        }
        writes.push(Write {
            topic: Arc::clone(name),
            joined,
            left: left_conns.iter().map(|conn| key(*conn)).collect(),
            left_conns,
            announce,
        });
    }
    let ttl = policy.entry_ttl();
    // Set by the first failure: the writes not started yet are put back
    // untried, so that a broker that hangs costs one round of timeouts, not
    // one per topic.
    let failing = &AtomicBool::new(false);
    let failed: Vec<Write> = futures_util::stream::iter(writes)
        .map(|write| async move {
            let mut left: &[String] = &write.left;
            let mut parts = write.joined.chunks(MAX_BATCH);
            loop {
                if failing.load(Ordering::Relaxed) {
                    return Some(write);
                }
                let joined = parts.next().unwrap_or_default();
                let update = PresenceUpdate::new(joined, left, ttl, write.announce);
                if let Err(error) = broker.update_presence(&write.topic, update).await {
                    tracing::debug!(topic = &*write.topic, %error, "presence write failed; retrying");
                    failing.store(true, Ordering::Relaxed);
                    return Some(write);
                }
                left = &[];
                if parts.len() == 0 {
                    return None;
                }
            }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let ok = failed.is_empty();
    for write in failed {
        if let Some(topic) = state.topics.get_mut(&write.topic) {
            topic.refresh = true;
            topic.left.extend(write.left_conns);
        }
    }
    // A topic no connection holds goes, unless it is muted (its list is
    // still owed) or spent some of its budget within the last second: a
    // topic that empties between visits must not come back with a full one.
    state.topics.retain(|_, topic| {
        !topic.clients.is_empty() || topic.pending() || topic.muted || topic.budget.recent(now)
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_and_a_join_of_one_connection_cancel_out() {
        let mut state = State::default();
        let topic: Arc<str> = "t".into();
        state.add(Arc::clone(&topic), 1, "\"a\"".into(), false);
        state.add(Arc::clone(&topic), 1, "\"a\"".into(), false);
        state.remove(&topic, 1);
        let entry = &state.topics[&topic];
        assert_eq!(entry.joined, HashSet::from([1]));
        assert!(entry.left.is_empty());
        state.remove(&topic, 1);
        let entry = &state.topics[&topic];
        assert!(entry.joined.is_empty());
        assert_eq!(entry.left, HashSet::from([1]));
        state.add(Arc::clone(&topic), 1, "\"a\"".into(), false);
        let entry = &state.topics[&topic];
        assert_eq!(entry.joined, HashSet::from([1]));
        assert!(entry.left.is_empty());
    }
}
