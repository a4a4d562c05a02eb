//! [`Service`]: one instance of a realtime application. This file is the
//! public handle; the rest is split by seam: `builder` assembles it,
//! `admission` lets connections in and serves them, `subscribe` joins them
//! to topics, and the topics themselves live in the private `hub`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{Mutex, watch};

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerError, HistoryQuery, Idempotency, MemoryBroker};
use crate::config::Config;
use crate::handler::MessageHandler;
use crate::history::{History, HistoryError, HistoryPolicy, Position};
use crate::hub::{Filler, Hub, Owner};
use crate::outbox::Outbox;
use crate::presence::asks::Asks;
use crate::presence::keeper::{self, Keeper};
use crate::presence::{Presence, PresenceError, PresencePolicy, Tracking};
use crate::protocol::{self, Frame};
use crate::telemetry::Counters;
use crate::util::Signal;

mod admission;
mod builder;
mod heartbeat;
mod sessions;
mod shared_reads;
mod subscribe;
mod users;

pub(crate) use admission::Refusal;
pub use builder::{BuildError, ServiceBuilder};
pub(crate) use users::{OverBudget, PublishBudget};

/// The longest [`Service::shutdown`] waits for the broker to remove the
/// instance's presence entries.
pub const SHUTDOWN_PRESENCE_WAIT: Duration = Duration::from_secs(2);

/// The longest a client's `$presence` of a topic it follows waits for this
/// instance's entries to be written, then for the answer's place among the
/// topic's joins and leaves; past it the client is answered 503.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// One server instance of a realtime application: its connections, the topics
/// they follow, and the broker that links it to the other instances.
///
/// Cloning is cheap; clones share the instance.
///
/// # Examples
///
/// ```
/// use realtime::{MemoryBroker, Service};
/// use realtime::auth::validate_with;
/// # use realtime::__private::doc::Chat;
///
/// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
///     .with_broker(MemoryBroker::new())
///     .build()
///     .expect("the default config is valid");
/// let app: axum::Router = realtime::route::router(service, "/ws/{topic}");
/// ```
pub struct Service<H: MessageHandler, B: Broker = MemoryBroker> {
    inner: Arc<Inner<H, B>>,
}

impl<H: MessageHandler, B: Broker> Clone for Service<H, B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: MessageHandler, B: Broker + fmt::Debug> fmt::Debug for Service<H, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("broker", &self.inner.broker)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

struct Inner<H: MessageHandler, B> {
    handler: H,
    state: Arc<H::AppState>,
    /// Shared with the presence keeper's task.
    broker: Arc<B>,
    validator: Authenticator<H::UserId>,
    config: Config,
    history: HistoryPolicy,
    presence: PresencePolicy,
    /// A user id as JSON, for presence; set with the policy, where the
    /// user id type is known to serialize.
    user_json: Option<UserJson<H::UserId>>,
    keeper: Keeper,
    /// `$presence` answers waiting for their place in a topic's stream.
    asks: Asks,
    /// This instance's topics and their rings.
    hub: Arc<Hub>,
    /// Reads topics' histories into their rings (shares the broker).
    filler: Arc<Filler<B>>,
    /// Topics this instance is subscribed to at the broker. The lock is held
    /// across the broker call, so that subscribes and unsubscribes of one
    /// topic cannot overtake each other.
    subscribed: Mutex<HashSet<Arc<str>>>,
    /// Reads of topics' histories that subscriptions arriving together
    /// share.
    reads: shared_reads::SharedReads,
    next_id: AtomicU64,
    /// Set by `Service::drain`: readiness says no, connections stay.
    draining: AtomicBool,
    /// Open connections, counted from admission to the end of `serve`.
    open: watch::Sender<usize>,
    /// Each user's connections and publish budget here.
    users: Arc<users::Users>,
    /// Pings every connection and closes the silent ones.
    heartbeat: Arc<heartbeat::Heartbeat>,
    shutdown: Signal,
    counters: Arc<Counters>,
}

/// Writes a user id as JSON.
pub(super) type UserJson<U> = fn(&U) -> Result<String, serde_json::Error>;

/// Counters of one service instance, read with [`Service::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections open now (admitted and not yet finished).
    pub connections: usize,
    /// Topics with at least one local subscriber now.
    pub topics: usize,
    /// Clients closed with 1013 because their outbound queue was full.
    pub slow_closes: u64,
    /// Client messages refused by the rate limit.
    pub rate_limited: u64,
    /// Publishes the broker did not take: clients' broadcasts (answered
    /// with error code 503), `Context::publish` and `Service::publish`.
    pub publish_errors: u64,
    /// Clients closed with 1008 for staying silent past the idle timeout.
    pub idle_closes: u64,
    /// Reads of a topic's history that this instance started to fill a gap
    /// in its own delivery (an offset jump, a new epoch, a reconnect).
    pub gap_fills: u64,
    /// Times a topic's delivery restarted with a `reset` because the
    /// history could not fill a gap.
    pub resets: u64,
    /// Subscriptions that resumed (`since`) and got every missed event.
    pub recovered: u64,
    /// Subscriptions that resumed but could not get every missed event
    /// (`recovered: false`).
    pub not_recovered: u64,
    /// Reads of a topic's history for subscriptions to it (a resume's
    /// missed events, or the position a new subscriber starts from).
    /// Subscriptions of one topic that arrive while a read is under way
    /// share the next one, so a reconnect storm on one topic costs a few
    /// reads per instance, not one per client.
    pub resume_reads: u64,
    /// Resumes answered from the last events this instance delivered on
    /// the topic (it keeps 64 per topic with history), with no read of the
    /// history: a client back from another instance a few events behind.
    pub resumes_here: u64,
    /// Subscriptions waiting now for their topic's history to be read.
    pub resumes_waiting: usize,
    /// Bytes queued now for this instance's clients in their own queues
    /// (answers, catch-ups; topic events are read from the topics' rings).
    pub queued_bytes: usize,
}

/// Why [`Service::publish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event's `Serialize` impl failed.
    #[error("could not serialize the event")]
    Encode(#[from] serde_json::Error),
    /// The broker did not take the frame.
    #[error("could not publish the event")]
    Broker(#[from] BrokerError),
}

impl<H: MessageHandler, B: Broker> Service<H, B> {
    /// Serializes `event` once and publishes it to every subscriber of
    /// `topic`, on every instance. For server-side code: an HTTP handler, a
    /// background job.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the event does not serialize or the broker does
    /// not take it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn announce(service: &Service<Chat>) -> Result<(), realtime::service::PublishError> {
    ///     service.publish("lobby", &"maintenance at noon".to_owned()).await
    /// }
    /// ```
    pub async fn publish(&self, topic: &str, event: &H::ServerEvent) -> Result<(), PublishError> {
        let frame = protocol::event_frame(topic, event)?;
        self.inner.publish(topic, frame, None).await?;
        Ok(())
    }

    /// Reads `topic`'s history: the events after offset `since`, or with
    /// `since` `None` the last `limit` ones; at most `limit` (and at most
    /// the topic's history size), oldest first; with the topic's current
    /// position. At most seven eighths of `Config::max_reply_bytes` of
    /// events are read (the newest that fit, for the last ones), so that a
    /// reply can carry them: fewer than `limit` may come back, so page on
    /// the offsets, not on the count.
    ///
    /// # Errors
    ///
    /// [`HistoryError::NotKept`] when the service's [`HistoryPolicy`] keeps
    /// no history for `topic`; [`HistoryError::Broker`] when the broker
    /// could not be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn last_lines(service: &Service<Chat>) -> Vec<String> {
    ///     match service.history("room:1", None, 50).await {
    ///         Ok(history) => history.events.iter().filter_map(|line| line.event().ok()).collect(),
    ///         Err(_) => Vec::new(),
    ///     }
    /// }
    /// ```
    pub async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, HistoryError> {
        self.inner.history(topic, since, limit).await
    }

    /// Where `topic` stands: its last event's offset and its epoch.
    ///
    /// # Errors
    ///
    /// As [`history`](Self::history).
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// /// A link that resumes `room:1` from now: `/ws/room:1?since=<offset>.<epoch>`.
    /// async fn resume_link(service: &Service<Chat>) -> Option<String> {
    ///     let position = service.position("room:1").await.ok()?;
    ///     Some(format!("/ws/room:1?since={position}"))
    /// }
    /// ```
    pub async fn position(&self, topic: &str) -> Result<Position, HistoryError> {
        Ok(self.inner.history(topic, None, 0).await?.position)
    }

    /// Who is subscribed to `topic`, on every instance.
    ///
    /// # Errors
    ///
    /// [`PresenceError::NotTracked`] when the service's
    /// [`PresencePolicy`] does not track `topic`;
    /// [`PresenceError::Broker`] when the broker could not be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn is_online(service: &Service<Chat>, user: &str) -> bool {
    ///     match service.presence("lobby").await {
    ///         Ok(presence) => presence.users.contains_key(user),
    ///         Err(_) => false,
    ///     }
    /// }
    /// ```
    pub async fn presence(&self, topic: &str) -> Result<Presence, PresenceError> {
        self.inner.presence(topic).await
    }

    /// Closes every connection with 1001 once the answers already in flight
    /// are written, refuses new ones with 503, and resolves when the last
    /// connection has ended. Then the instance's presence entries are
    /// removed (their linger cut short), waiting at most the broker's
    /// answer or [`SHUTDOWN_PRESENCE_WAIT`]; entries it could not remove
    /// expire with their time to live.
    ///
    /// Wrap it in [`tokio::time::timeout`] to bound the wait.
    pub async fn shutdown(&self) {
        self.inner.shutdown.fire();
        let mut open = self.inner.open.subscribe();
        // The sender lives in `inner`, so the channel cannot close here.
        let _ = open.wait_for(|open| *open == 0).await;
        if self.inner.keeper.started() {
            let (done, flushed) = tokio::sync::oneshot::channel();
            self.inner.tell_keeper(keeper::Message::Flush(done));
            let _ = tokio::time::timeout(SHUTDOWN_PRESENCE_WAIT, flushed).await;
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_fired()
    }

    /// Says that the instance is about to shut down: `/ready` answers 503
    /// `draining` from now on, so that a load balancer stops sending new
    /// clients, while the connections open stay. [`realtime::serve`](crate::serve())
    /// calls it at the signal, [`drain_delay`](crate::serve::Serve::drain_delay)
    /// before it shuts the service down.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The topics that have at least one subscriber on this instance (the
    /// URL's topic or a `$join`ed one), in no particular order: for
    /// server-side code that publishes to the topics someone listens to,
    /// such as a ticker. Other instances have their own.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Board;
    /// # impl MessageHandler for Board {
    /// #     type ClientMessage = Msg; type ServerEvent = u64; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<u64>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
    /// async fn tick(service: &Service<Board>, now: u64) {
    ///     for topic in service.topics() {
    ///         // One failed publish (the broker is down) does not stop the others.
    ///         let _ = service.publish(&topic, &now).await;
    ///     }
    /// }
    /// ```
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.inner.hub.names()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        *self.inner.open.borrow()
    }

    /// A snapshot of this instance's counters.
    pub fn metrics(&self) -> Metrics {
        let counters = &self.inner.counters;
        Metrics {
            connections: self.connections(),
            topics: self.inner.hub.len(),
            slow_closes: counters.slow_closes.load(Ordering::Relaxed),
            rate_limited: counters.rate_limited.load(Ordering::Relaxed),
            publish_errors: counters.publish_errors.load(Ordering::Relaxed),
            idle_closes: counters.idle_closes.load(Ordering::Relaxed),
            gap_fills: counters.gap_fills.load(Ordering::Relaxed),
            resets: counters.resets.load(Ordering::Relaxed),
            recovered: counters.recovered.load(Ordering::Relaxed),
            not_recovered: counters.not_recovered.load(Ordering::Relaxed),
            resume_reads: counters.resume_reads.load(Ordering::Relaxed),
            resumes_here: counters.resumes_here.load(Ordering::Relaxed),
            resumes_waiting: counters.resumes_waiting.load(Ordering::Relaxed),
            queued_bytes: counters.queued_bytes.load(Ordering::Relaxed),
        }
    }

    /// The limits this service enforces.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The broker this service fans out through.
    pub fn broker(&self) -> &B {
        &self.inner.broker
    }

    /// The application state.
    pub fn state(&self) -> &Arc<H::AppState> {
        &self.inner.state
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
    /// Hands a change of this instance's presence to its keeper.
    pub(super) fn tell_keeper(&self, message: keeper::Message) {
        self.keeper.send(&self.broker, &self.presence, message);
    }

    /// Once this instance's entries are written again (`written`), or
    /// [`SHUTDOWN_PRESENCE_WAIT`] passed, sends the clients of every local
    /// topic that announces joins and leaves the topic's whole presence.
    async fn resend_presence(inner: Arc<Self>, written: tokio::sync::oneshot::Receiver<()>) {
        let _ = tokio::time::timeout(SHUTDOWN_PRESENCE_WAIT, written).await;
        for topic in inner.hub.names() {
            if inner.presence.tracking(&topic) != Some(Tracking::Announced) {
                continue;
            }
            if let Err(error) = inner.broker.resend_presence(&topic, None).await {
                tracing::debug!(topic = &*topic, %error, "sending the presence list again failed");
            }
        }
    }

    /// `topic`'s presence on every instance.
    pub(super) async fn presence(&self, topic: &str) -> Result<Presence, PresenceError> {
        let tracking = self
            .presence
            .tracking(topic)
            .filter(|_| self.user_json.is_some())
            .ok_or_else(|| PresenceError::NotTracked(topic.to_owned()))?;
        let announce = tracking == Tracking::Announced;
        Ok(self.broker.presence(topic, announce).await?)
    }

    /// Answers a `$presence` of `topic` from the connection behind
    /// `outbox`, which follows it: once this instance's own entries, the
    /// asker's among them, are written; and on a topic that announces joins
    /// and leaves, at its place among them, queued on `outbox` here
    /// (`Ok(None)`: see [`Asks`]). `Ok(Some(..))` is for the caller to send.
    pub(super) async fn presence_for(
        &self,
        topic: &str,
        outbox: &Outbox,
        id: Option<&RawValue>,
    ) -> Result<Option<Presence>, PresenceError> {
        let tracking = self
            .presence
            .tracking(topic)
            .filter(|_| self.user_json.is_some())
            .ok_or_else(|| PresenceError::NotTracked(topic.to_owned()))?;
        let timed_out = || PresenceError::Broker(BrokerError::Timeout(ANSWER_WAIT));
        let (done, written) = tokio::sync::oneshot::channel();
        self.tell_keeper(keeper::Message::Written(done));
        // A keeper that is gone (the service shutting down) answers nothing:
        // the read goes on.
        if tokio::time::timeout(ANSWER_WAIT, written).await.is_err() {
            return Err(timed_out());
        }
        if tracking != Tracking::Announced {
            return Ok(Some(self.broker.presence(topic, false).await?));
        }
        let (asker, queued) = self.asks.add(topic, outbox, id);
        // One read at a time per topic, for every ask that came while the
        // one before was out: the first of them to get the turn reads.
        let Ok((turn, read)) =
            tokio::time::timeout(ANSWER_WAIT, asker.gate().turn(asker.group())).await
        else {
            asker.cancel();
            return Err(timed_out());
        };
        if read {
            match self
                .broker
                .resend_presence(topic, Some(asker.group()))
                .await
            {
                Ok(()) => asker.gate().done(asker.group()),
                Err(BrokerError::Unsupported(_)) => {
                    // A broker that cannot place a read in the stream.
                    drop(turn);
                    asker.cancel();
                    return Ok(Some(self.broker.presence(topic, true).await?));
                }
                // The next ask of the group to get the turn reads again.
                Err(error) if asker.cancel() => return Err(error.into()),
                // Answered, though the call failed after its script ran.
                Err(_) => return Ok(None),
            }
        }
        drop(turn);
        match tokio::time::timeout(ANSWER_WAIT, queued).await {
            Ok(Ok(())) => Ok(None),
            // The marker never came (the link dropped meanwhile).
            _ if asker.cancel() => Err(timed_out()),
            _ => Ok(None),
        }
    }

    /// Takes a client's publish of `bytes` on `topic` from its user's
    /// budget; a topic with history that this instance does not follow
    /// counts as new (a subscription to it paid for its keys already).
    /// Whether it was charged as new, for a refund if the publish fails.
    pub(super) fn charge(
        &self,
        budget: Option<&PublishBudget>,
        topic: &str,
        bytes: usize,
    ) -> Result<bool, OverBudget> {
        let Some(budget) = budget else {
            return Ok(false);
        };
        let new_topic = self.history.retention(topic).is_some() && !self.hub.has_subscribers(topic);
        budget.charge(bytes, new_topic).map(|()| new_topic)
    }

    /// Publishes an event frame: with its position and into the history if
    /// the policy keeps `topic`'s (the position is returned), as it is
    /// otherwise; once per `key` within `Config::idempotency_window`.
    pub(super) async fn publish(
        &self,
        topic: &str,
        frame: Frame,
        key: Option<&str>,
    ) -> Result<Option<Position>, BrokerError> {
        let started = std::time::Instant::now();
        let once = key.map(|key| Idempotency::new(key, self.config.idempotency_window));
        let published = match self.history.retention(topic) {
            Some(retention) => self
                .broker
                .append(topic, frame, &retention, once)
                .await
                .map(Some),
            None => self.broker.publish(topic, frame, once).await.map(|()| None),
        };
        self.counters
            .published(started.elapsed(), published.is_ok());
        published
    }

    pub(super) async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, HistoryError> {
        let retention = self
            .history
            .retention(topic)
            .ok_or_else(|| HistoryError::NotKept(topic.to_owned()))?;
        // Within what a reply may hold, less an eighth for the reply's own
        // envelope: a handler that sends the events back would otherwise
        // read a history only to fail with a 500.
        let budget = self.config.max_reply_bytes - self.config.max_reply_bytes / 8;
        let query = HistoryQuery::from(since, limit.min(retention.size())).max_bytes(budget);
        Ok(self.broker.history(topic, query, &retention).await?)
    }
}

impl<H: MessageHandler, B: Broker> Owner for Inner<H, B> {
    /// The broker may have lost every presence entry (a Redis restarted
    /// without its data): this instance writes its own again now, not at
    /// the next refresh. Then its clients get the whole list: joins and
    /// leaves published while the link was down never came, and a user who
    /// left meanwhile is never announced at all.
    fn relinked(self: Arc<Self>) {
        if !self.keeper.started() {
            return;
        }
        let (done, written) = tokio::sync::oneshot::channel();
        self.tell_keeper(keeper::Message::Refresh(done));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Inner::resend_presence(self, written));
        }
    }

    fn control(&self, frame: &Frame) {
        Inner::control(self, frame);
    }

    fn answer_presence(&self, topic: &str, group: u64, presence: &Presence) {
        crate::presence::asks::answer(self.asks.take(group), presence, || {
            self.hub.mark_answer(topic, group);
        });
    }
}
