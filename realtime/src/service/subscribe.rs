//! Subscribing: a connection's place in a topic (and the instance's at the
//! broker), its start on a topic with history (what it missed, then the
//! ring), and the adapters through which connections subscribe and publish.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::Inner;
use super::users::{Charged, PublishBudget};
use crate::auth::{AuthError, Identity};
use crate::broker::{Broker, BrokerError, HistoryQuery};
use crate::connection::Topics;
use crate::handler::ConnectionId;
use crate::handler::{HandlerError, MessageHandler, Publish};
use crate::history::{History, HistoryError, Position, Retention};
use crate::hub::CONTROL_TOPIC;
use crate::hub::{Added, Feed, Reservation, Resume, Ring};
use crate::outbox::{Order, Outbox};
use crate::presence::keeper;
use crate::presence::{Presence, PresenceError, Tracking};
use crate::protocol::{self, Frame};
use crate::telemetry::Counters;

/// How long a subscriber waits for its topic's ring to reach the epoch of
/// the history it read (the ring reads the history itself, and restarts
/// there) before the subscribe gives up with an error: past the broker's
/// usual recovery from a lost link.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting subscriber looks at the ring again.
const RESUME_POLL: Duration = Duration::from_millis(10);

/// One connection's subscription to one topic; dropping it unsubscribes.
pub(crate) struct Subscription<H: MessageHandler, B: Broker> {
    inner: Arc<Inner<H, B>>,
    topic: Arc<str>,
    /// The connection, if it counts in the topic's presence; 0 otherwise
    /// (ids start at 1).
    present: u64,
}

/// A subscriber's entry in its topic's presence, made when it subscribed
/// and written once it is in: after its `$join` succeeded, or after the
/// upgrade of its URL's topic. A subscribe that fails, or an upgrade that
/// never happens, is never announced.
pub(crate) struct Entry {
    conn: u64,
    user: Arc<str>,
    announce: bool,
}

impl<H: MessageHandler, B: Broker> Subscription<H, B> {
    /// Counts the subscriber in its topic's presence until it is dropped.
    pub(super) fn enter(&mut self, entry: Entry) {
        self.present = entry.conn;
        self.inner.tell_keeper(keeper::Message::Add {
            topic: Arc::clone(&self.topic),
            conn: entry.conn,
            user: entry.user,
            announce: entry.announce,
        });
    }
}

impl<H: MessageHandler, B: Broker> Drop for Subscription<H, B> {
    fn drop(&mut self) {
        if self.present != 0 {
            self.inner.tell_keeper(keeper::Message::Remove {
                topic: Arc::clone(&self.topic),
                conn: self.present,
            });
        }
        if self.inner.hub.remove(&self.topic) {
            Inner::release_topic(&self.inner, Arc::clone(&self.topic));
        }
    }
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
    /// Subscribes one connection to `topic`: the instance at the broker
    /// first if it is the topic's first local subscriber, then the
    /// connection to the topic's ring. For a topic with history, the feed
    /// starts with what the client missed since `since` and the
    /// `subscribed` frame.
    ///
    /// A topic with history that the instance does not follow yet costs
    /// the user's `budget` a new topic: reading its position writes its
    /// meta in the broker, for the history's time to live.
    pub(super) async fn subscribe(
        inner: &Arc<Self>,
        topic: &str,
        since: Option<&Position>,
        conn: ConnectionId,
        user: &H::UserId,
        budget: Option<&PublishBudget>,
    ) -> Result<(Arc<str>, Subscription<H, B>, Feed, Option<Entry>), BrokerError> {
        let history = inner.history.retention(topic);
        // Before the broker call: a user id that does not serialize is
        // refused before anything is held for it.
        let entry = match (inner.presence.tracking(topic), inner.user_json) {
            (Some(tracking), Some(user_json)) => Some(Entry {
                conn: conn.0,
                user: user_json(user)
                    .map_err(|error| BrokerError::Invalid(Box::new(error)))?
                    .into(),
                announce: tracking == Tracking::Announced,
            }),
            _ => None,
        };
        if topic == CONTROL_TOPIC {
            return Err(BrokerError::InvalidTopic(topic.to_owned()));
        }
        let mut subscribed = inner.subscribed.lock().await;
        inner.follow_control(&mut subscribed).await?;
        let first = !subscribed.contains(topic);
        // Given back if the subscription fails: the broker's troubles do
        // not spend the user's budget.
        let charged = Charged::take(budget.filter(|_| first && history.is_some()), 0, true)
            .map_err(|_| BrokerError::TopicBudget)?;
        if first {
            inner.broker.subscribe(topic).await?;
        }
        let bounds = history
            .as_ref()
            .map(|retention| Inner::resume_bounds(inner, topic, retention));
        let resume = since.zip(bounds).map(|(since, (limit, max_bytes))| Resume {
            since,
            limit,
            max_bytes,
        });
        let Added {
            name: topic,
            ring,
            generation,
            new,
            recent,
        } = inner.hub.add(topic, history.is_some(), resume);
        if first {
            // The hub's name, shared: one copy of it per instance.
            subscribed.insert(Arc::clone(&topic));
        }
        let subscription = Subscription {
            inner: Arc::clone(inner),
            topic: Arc::clone(&topic),
            present: 0,
        };
        if new && history.is_some() {
            // The ring's position, read after the broker subscribed and
            // before the lock is let go: any later subscriber reads the
            // history after this, so the ring holds what it will miss.
            if !inner.filler.read_into_ring(&topic).await? {
                // Live events with a gap came meanwhile: read on.
                inner.filler.start(Arc::clone(&topic));
            }
        }
        drop(subscribed);
        let feed = match history.zip(bounds) {
            None => Feed {
                topic: Arc::clone(&topic),
                ring,
                catch_up: Vec::new(),
                sent_through: 0,
                fallback: None,
                recovered: None,
                reserved: None,
            },
            Some((retention, bounds)) => match recent {
                // The ring's recent events hold what it missed: no read.
                Some(read) => {
                    let feed = Inner::feed(inner, &topic, ring, since, read)?;
                    inner.counters.resumed_here();
                    feed
                }
                None => {
                    let ring = (ring, generation);
                    Inner::resume(inner, &topic, ring, since, &retention, bounds).await?
                }
            },
        };
        charged.kept();
        Ok((topic, subscription, feed, entry))
    }

    /// A subscriber's start on a topic with history: reads what it missed
    /// (or only the position), and checks that the ring stands in the same
    /// place, so that history then ring give every offset once.
    ///
    /// A ring restarted meanwhile (a `reset`) is taken again. A ring of
    /// another epoch than the history's, which has not moved, fell behind
    /// a loss it could not see: its topic went quiet for longer than the
    /// history's time to live, and the keys expired while a member stayed.
    /// Nothing would ever move it, so it is made to read the history
    /// itself, which restarts it in the new epoch (its subscribers get a
    /// `reset`); then this subscriber reads again.
    async fn resume(
        inner: &Arc<Self>,
        topic: &Arc<str>,
        (mut ring, mut generation): (Ring, u64),
        since: Option<&Position>,
        retention: &Retention,
        (limit, max_bytes): (usize, usize),
    ) -> Result<Feed, BrokerError> {
        // A resume reads only what it can use: of its epoch, from where it
        // left off, and all of it within the queue's bytes; else the broker
        // answers the position alone. Resumes of the topic that come
        // together share a read, from the furthest back of them.
        let read_from = |from: Option<Position>| async move {
            inner.counters.resume_read();
            let query = match &from {
                Some(from) => HistoryQuery::after(from.offset, limit)
                    .epoch(&from.epoch)
                    .max_bytes(max_bytes)
                    .whole(),
                None => HistoryQuery::position(),
            };
            inner.broker.history(topic, query, retention).await
        };
        let deadline = tokio::time::Instant::now() + RESUME_WAIT;
        let mut moved_ring = false;
        loop {
            let read = inner
                .reads
                .read(topic, since, &inner.counters.resumes_waiting, read_from)
                .await?;
            match inner.hub.ring(topic) {
                Some((_, now, Some(epoch)))
                    if now == generation && epoch == read.position.epoch =>
                {
                    return Inner::feed(inner, topic, ring, since, read);
                }
                Some((fresh, now, _)) if now != generation => {
                    tracing::debug!(
                        topic = &**topic,
                        "the topic's ring restarted while its history was read; again"
                    );
                    (ring, generation) = (fresh, now);
                    continue;
                }
                Some(_) => {
                    if !moved_ring {
                        moved_ring = true;
                        tracing::debug!(
                            topic = &**topic,
                            epoch = read.position.epoch,
                            "the topic's history is of another epoch than its ring; the ring reads it"
                        );
                        if inner.hub.hold(topic) {
                            inner.filler.start(Arc::clone(topic));
                        }
                    }
                }
                None => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(RESUME_POLL).await;
        }
        Err(BrokerError::Unavailable(
            format!("the history of `{topic}` is being read again; try later").into(),
        ))
    }

    /// How much of a topic's history a resume may be given: at most so many
    /// events (no more than the connection's queue holds, in frames, with
    /// the `subscribed` frame that follows them) and so many bytes of
    /// frames (the queue's bytes, less room for the `subscribed` frame: its
    /// topic, position and flags; 128 bytes besides the topic is ample). A
    /// longer gap is not recovered, so it is not read either.
    fn resume_bounds(inner: &Arc<Self>, topic: &str, retention: &Retention) -> (usize, usize) {
        let config = &inner.config;
        let limit = retention
            .size()
            .min(config.outbound_queue.saturating_sub(1));
        let max_bytes = config
            .outbound_queue_bytes
            .saturating_sub(topic.len() + 128);
        (limit, max_bytes)
    }

    /// The feed of a subscriber from `since` that got `read` of a ring of
    /// the same epoch and generation: the events it missed, queued ahead in
    /// the instance's replay budget, then the ring.
    fn feed(
        inner: &Arc<Self>,
        topic: &Arc<str>,
        ring: Ring,
        since: Option<&Position>,
        read: History,
    ) -> Result<Feed, BrokerError> {
        let config = &inner.config;
        // Events read are events to queue: only a resume that can be whole
        // reads any. Counted ahead in the queued total, so that resumes
        // checked together see each other.
        let missed: usize = read
            .events
            .iter()
            .map(|event| event.frame.as_str().len())
            .sum();
        let reserved = match missed {
            0 => None,
            _ => match Reservation::take(
                &inner.counters.queued_bytes,
                missed,
                config.max_replay_bytes,
            ) {
                Some(reserved) => Some(reserved),
                None => {
                    tracing::debug!(
                        topic = &**topic,
                        missed,
                        "a resume would pass the replay budget; refused"
                    );
                    return Err(BrokerError::ReplayBudget);
                }
            },
        };
        let mut feed = catch_up(topic, ring, since, read, config.outbound_queue_bytes);
        feed.reserved = reserved;
        Ok(feed)
    }

    /// Unsubscribes the instance from `topic` at the broker, unless a new
    /// local subscriber arrived meanwhile. Runs on its own task because it
    /// starts from `Drop`; once per topic that empties, not per message.
    fn release_topic(inner: &Arc<Self>, topic: Arc<str>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(inner);
        runtime.spawn(async move {
            let mut subscribed = inner.subscribed.lock().await;
            if inner.hub.has_subscribers(&topic) || !subscribed.remove(&topic) {
                return;
            }
            if let Err(error) = inner.broker.unsubscribe(&topic).await {
                tracing::warn!(topic = &*topic, %error, "unsubscribe failed");
            }
        });
    }
}
impl<H: MessageHandler, B: Broker> Topics for Arc<Inner<H, B>> {
    type Subscription = Subscription<H, B>;
    type User = H::UserId;

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn publish(
        &self,
        topic: &str,
        frame: Frame,
        key: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Option<Position>, BrokerError>> + Send {
        Inner::publish(self, topic, frame, key)
    }

    async fn subscribe(
        &self,
        topic: &str,
        since: Option<&Position>,
        conn: ConnectionId,
        user: &H::UserId,
        budget: Option<&PublishBudget>,
    ) -> Result<(Arc<str>, Subscription<H, B>, Feed), BrokerError> {
        let (topic, mut subscription, feed, entry) =
            Inner::subscribe(self, topic, since, conn, user, budget).await?;
        if let Some(entry) = entry {
            subscription.enter(entry);
        }
        Ok((topic, subscription, feed))
    }

    fn identify(
        &self,
        token: &str,
    ) -> impl std::future::Future<Output = Result<Identity<H::UserId>, AuthError>> + Send {
        self.validator.identify(token)
    }

    fn orders(&self, conn: ConnectionId) -> Vec<Order> {
        self.users.take_orders(conn.0)
    }

    fn presence(
        &self,
        topic: &str,
    ) -> impl std::future::Future<Output = Result<Presence, PresenceError>> + Send {
        Inner::presence(self, topic)
    }

    fn presence_for(
        &self,
        topic: &str,
        outbox: &Outbox,
        id: Option<&RawValue>,
    ) -> impl std::future::Future<Output = Result<Option<Presence>, PresenceError>> + Send {
        Inner::presence_for(self, topic, outbox, id)
    }
}

impl<H: MessageHandler, B: Broker> Publish for Inner<H, B> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        frame: Frame,
        budget: Option<&'a PublishBudget>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>
    {
        Box::pin(async move {
            let bytes = frame.as_str().len();
            let new_topic = match Inner::charge(self, budget, topic, bytes) {
                Ok(new_topic) => new_topic,
                Err(over) => {
                    return Err(HandlerError::new(
                        protocol::error_code::TOO_MANY_REQUESTS,
                        over.to_string(),
                    ));
                }
            };
            let published = Inner::publish(self, topic, frame, None).await;
            if let (Err(_), Some(budget)) = (&published, budget) {
                budget.refund(bytes, new_topic);
            }
            published.map(drop).map_err(|error| {
                HandlerError::new(
                    protocol::error_code::UNAVAILABLE,
                    format!("could not publish on `{topic}`: {error}"),
                )
                .with_source(error)
            })
        })
    }

    fn disconnect_user<'a>(
        &'a self,
        user: String,
        reason: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>
    {
        Box::pin(async move {
            Inner::disconnect_user(self, &user, reason)
                .await
                .map_err(|error| {
                    HandlerError::new(
                        protocol::error_code::UNAVAILABLE,
                        format!("could not end the user's sessions: {error}"),
                    )
                    .with_source(error)
                })
        })
    }

    fn move_user<'a>(
        &'a self,
        user: String,
        order: Order,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>
    {
        Box::pin(async move {
            Inner::move_user(self, &user, &order)
                .await
                .map_err(|error| {
                    HandlerError::new(
                        protocol::error_code::UNAVAILABLE,
                        format!("could not move the user's sessions: {error}"),
                    )
                    .with_source(error)
                })
        })
    }

    fn history<'a>(
        &'a self,
        topic: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<History, HistoryError>> + Send + 'a>,
    > {
        Box::pin(Inner::history(self, topic, since, limit))
    }

    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Presence, PresenceError>> + Send + 'a>,
    > {
        Box::pin(Inner::presence(self, topic))
    }
}

/// The feed of a subscriber that read `read` (from `since`), given at most
/// `max_bytes` (`Config::outbound_queue_bytes`) for the events it missed and
/// the `subscribed` frame: the events it missed if they are all there, then
/// the `subscribed` frame, then the ring past them.
fn catch_up(
    topic: &Arc<str>,
    ring: Ring,
    since: Option<&Position>,
    read: History,
    max_bytes: usize,
) -> Feed {
    let bytes: usize = read
        .events
        .iter()
        .map(|event| event.frame.as_str().len())
        .sum();
    let told = protocol::subscribed_frame(topic, &read.position, Some(false));
    let recovered = since.map(|since| {
        since.epoch == read.position.epoch
            && read.continues(since.offset)
            // A read cut short by its limit (the retention or the queue) is not all.
            && read.events.last().is_none_or(|last| last.offset == read.position.offset)
            // No more than a connection may have queued: a client cannot make
            // the server hold more for it by resuming.
            && bytes + told.as_str().len() <= max_bytes
    });
    let mut frames = Vec::new();
    let mut fallback = None;
    if recovered == Some(true) {
        frames.extend(read.events.into_iter().map(|event| event.frame));
        frames.push(protocol::subscribed_frame(topic, &read.position, recovered));
        fallback = Some(told);
    } else if recovered == Some(false) {
        frames.push(told);
    } else {
        frames.push(protocol::subscribed_frame(topic, &read.position, None));
    }
    Feed {
        topic: Arc::clone(topic),
        ring,
        catch_up: frames,
        sent_through: read.position.offset,
        fallback,
        recovered,
        reserved: None,
    }
}
