//! [`Service`]: one instance's connections, its topic subscriptions, local
//! fan-out, the server-side publish API and graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock, Weak};
use std::time::Duration;

use axum::extract::ws::WebSocket;
use tokio::sync::{Mutex, broadcast, watch};

use crate::auth::{AuthError, Authenticator, TokenValidator};
use crate::broker::{Broker, BrokerError, Fanout, Idempotency, Incoming, MemoryBroker};
use crate::config::{Config, ConfigError};
use crate::connection::{
    self, ConnectionId, Counters, Event, Feed, Outbox, Ring, Session, Signal, Topics, bump,
};
use crate::handler::{Context, HandlerError, MessageHandler, Publish};
use crate::history::{History, HistoryError, HistoryPolicy, Position};
use crate::presence::keeper::{self, Keeper};
use crate::presence::{Presence, PresenceError, PresencePolicy, Tracking};
use crate::protocol::{self, Frame};
use crate::telemetry;
use crate::track::{ReadFrom, Track};

/// The longest [`Service::shutdown`] waits for the broker to remove the
/// instance's presence entries.
pub const SHUTDOWN_PRESENCE_WAIT: Duration = Duration::from_secs(2);

/// Reads of the history that fill gaps in rings, at most at once per
/// instance.
const MAX_CONCURRENT_READS: usize = 16;

/// How long a subscriber waits for its topic's ring to reach the epoch of
/// the history it read (the ring reads the history itself, and restarts
/// there) before the subscribe gives up with an error: past the broker's
/// usual recovery from a lost link.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting subscriber looks at the ring again.
const RESUME_POLL: Duration = Duration::from_millis(10);

/// The longest pause between two attempts to read a topic's history to
/// fill its ring, while the broker fails.
const FILL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One server instance of a realtime application: its connections, the topics
/// they follow, and the broker that links it to the other instances.
///
/// Cloning is cheap; clones share the instance.
///
/// # Examples
///
/// ```
/// use realtime::{Context, HandlerError, MemoryBroker, Service};
/// use realtime::auth::validate_with;
/// # use realtime::MessageHandler;
/// # struct Chat;
/// # impl MessageHandler for Chat {
/// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
/// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
/// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
/// # }
/// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
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
    registry: Arc<Registry>,
    /// Topics this instance is subscribed to at the broker. The lock is held
    /// across the broker call, so that subscribes and unsubscribes of one
    /// topic cannot overtake each other.
    subscribed: Mutex<HashSet<Arc<str>>>,
    next_id: AtomicU64,
    /// Set by `Service::drain`: readiness says no, connections stay.
    draining: std::sync::atomic::AtomicBool,
    /// Open connections, counted from admission to the end of `serve`.
    open: watch::Sender<usize>,
    shutdown: Signal,
    counters: Arc<Counters>,
}

/// Writes a user id as JSON.
type UserJson<U> = fn(&U) -> Result<String, serde_json::Error>;

/// The topics with local subscribers, each with its ring: what a broker's
/// frames fan out to.
#[derive(Debug)]
struct Registry {
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    /// Frames per ring (`Config::topic_backlog`).
    backlog: usize,
    counters: Arc<Counters>,
    /// The id of the next topic's [`Track`].
    next_track: AtomicU64,
    /// Bounds the reads of the history that fill gaps at once: after a
    /// reconnect every topic with history needs one.
    reads: tokio::sync::Semaphore,
}

/// A subscriber's place in a topic's ring: see [`Registry::add`].
struct Added {
    name: Arc<str>,
    ring: Ring,
    generation: u64,
    new: bool,
}

/// One topic on this instance.
#[derive(Debug)]
struct Topic {
    /// Every event of the topic goes in once; each subscriber's writer reads
    /// it from there.
    ring: broadcast::Sender<Event>,
    /// Local subscriptions. The writers' ring receivers may outlive theirs
    /// for a moment, so the ring's own receiver count is not this.
    subscribers: usize,
    /// For a topic with history: where its ring stands. A std lock, taken
    /// per event of the topic and never across an `.await`.
    track: Option<StdMutex<Track>>,
}

impl Topic {
    /// The ring's generation and epoch (0 and none for a topic without
    /// history).
    fn position(&self) -> (u64, Option<String>) {
        self.track.as_ref().map_or((0, None), |track| {
            let track = track.lock().expect("track lock poisoned");
            (track.generation(), track.epoch().map(str::to_owned))
        })
    }
}

impl Registry {
    fn new(backlog: usize, counters: Arc<Counters>) -> Self {
        Self {
            topics: RwLock::default(),
            backlog,
            counters,
            next_track: AtomicU64::new(1),
            reads: tokio::sync::Semaphore::new(MAX_CONCURRENT_READS),
        }
    }

    /// Puts `frame` in `topic`'s ring: one write, whatever the number of
    /// subscribers, no task, no wait. The ring keeps one order for every
    /// subscriber; a subscriber that falls a whole ring behind is closed
    /// with 1013 by its writer.
    fn deliver(&self, topic: &str, frame: Frame) {
        let topics = self.topics.read().expect("registry lock poisoned");
        if let Some(entry) = topics.get(topic) {
            // No receiver left: every subscriber is leaving; nothing to do.
            let _ = entry.ring.send(Event {
                offset: Event::PLAIN,
                frame,
            });
        }
    }

    /// Puts an event of a topic with history in its ring, in offset order;
    /// returns whether a read of the history must start to fill a gap.
    fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) -> bool {
        let topics = self.topics.read().expect("registry lock poisoned");
        let Some(entry) = topics.get(topic) else {
            return false;
        };
        match &entry.track {
            Some(track) => track.lock().expect("track lock poisoned").live(
                &entry.ring,
                offset,
                epoch,
                frame,
                self.backlog,
            ),
            None => {
                // The policy keeps no history for it here: a plain event.
                let _ = entry.ring.send(Event {
                    offset: Event::PLAIN,
                    frame,
                });
                false
            }
        }
    }

    /// Holds live events of every topic with history, whose rings missed
    /// what was published while the broker's link was down; returns the
    /// topics whose read must start.
    fn hold_all(&self) -> Vec<Arc<str>> {
        let topics = self.topics.read().expect("registry lock poisoned");
        topics
            .iter()
            .filter(|(_, entry)| {
                entry
                    .track
                    .as_ref()
                    .is_some_and(|track| track.lock().expect("track lock poisoned").hold())
            })
            .map(|(name, _)| Arc::clone(name))
            .collect()
    }

    /// Holds `topic`'s live events for a read of its history, as after the
    /// broker's link came back; whether the read must start (none is due).
    fn hold(&self, topic: &str) -> bool {
        let topics = self.topics.read().expect("registry lock poisoned");
        topics
            .get(topic)
            .and_then(|entry| entry.track.as_ref())
            .is_some_and(|track| track.lock().expect("track lock poisoned").hold())
    }

    /// Where a read of `topic`'s history should start; `None` if the topic
    /// has no local subscriber or history any more.
    fn read_from(&self, topic: &str) -> Option<ReadFrom> {
        let topics = self.topics.read().expect("registry lock poisoned");
        let track = topics.get(topic)?.track.as_ref()?;
        Some(track.lock().expect("track lock poisoned").read_from())
    }

    /// The most events a read may put in a ring at once: half of it, so
    /// that subscribers still reading the rest are not overrun.
    fn max_gap(&self) -> usize {
        (self.backlog / 2).max(1)
    }

    /// Events in `topic`'s ring that its slowest subscriber has not read;
    /// `None` if the topic has no local subscriber.
    fn unread(&self, topic: &str) -> Option<usize> {
        let topics = self.topics.read().expect("registry lock poisoned");
        topics.get(topic).map(|entry| entry.ring.len())
    }

    /// Applies a read of the history; whether the ring is live again (or
    /// the topic gone).
    fn apply_read(&self, topic: &str, from: ReadFrom, read: History) -> bool {
        let topics = self.topics.read().expect("registry lock poisoned");
        let Some((entry, track)) = topics
            .get(topic)
            .and_then(|entry| Some((entry, entry.track.as_ref()?)))
        else {
            return true;
        };
        let mut track = track.lock().expect("track lock poisoned");
        let generation = track.generation();
        let live = track.apply(&entry.ring, topic, from, read);
        if track.generation() != generation {
            bump(&self.counters.resets);
            metrics::counter!(telemetry::RESETS).increment(1);
        }
        live
    }

    /// A new receiver of `topic`'s ring, and the ring's generation and
    /// epoch, taken together.
    fn ring(&self, topic: &str) -> Option<(Ring, u64, Option<String>)> {
        let topics = self.topics.read().expect("registry lock poisoned");
        let entry = topics.get(topic)?;
        let (generation, epoch) = entry.position();
        Some((entry.ring.subscribe(), generation, epoch))
    }

    /// Adds a subscriber; returns the shared topic name, a receiver of
    /// every event from now on with the ring's generation at that moment,
    /// and whether the topic is new here (its ring, if it keeps history,
    /// has no position yet).
    fn add(&self, topic: &str, history: bool) -> Added {
        let mut topics = self.topics.write().expect("registry lock poisoned");
        if let Some(name) = topics
            .get_key_value(topic)
            .map(|(name, _)| Arc::clone(name))
        {
            let entry = topics.get_mut(topic).expect("present: just found");
            entry.subscribers += 1;
            let (generation, _) = entry.position();
            return Added {
                name,
                ring: entry.ring.subscribe(),
                generation,
                new: false,
            };
        }
        let name: Arc<str> = topic.into();
        metrics::gauge!(telemetry::SUBSCRIBED_TOPICS).increment(1.0);
        let (ring, receiver) = broadcast::channel(self.backlog);
        let id = self.next_track.fetch_add(1, Ordering::Relaxed);
        let track = history.then(|| StdMutex::new(Track::new(id)));
        topics.insert(
            Arc::clone(&name),
            Topic {
                ring,
                subscribers: 1,
                track,
            },
        );
        Added {
            name,
            ring: receiver,
            generation: 0,
            new: true,
        }
    }

    /// Removes a subscriber; returns whether the topic has none left here.
    fn remove(&self, topic: &str) -> bool {
        let mut topics = self.topics.write().expect("registry lock poisoned");
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
    fn len(&self) -> usize {
        self.topics.read().expect("registry lock poisoned").len()
    }

    /// The names of the topics with local subscribers.
    fn names(&self) -> Vec<Arc<str>> {
        let topics = self.topics.read().expect("registry lock poisoned");
        topics.keys().cloned().collect()
    }

    fn has_subscribers(&self, topic: &str) -> bool {
        self.topics
            .read()
            .expect("registry lock poisoned")
            .contains_key(topic)
    }
}

/// Assembles a [`Service`]: the handler, the app state, the token validator,
/// then optionally a broker and a config.
///
/// # Examples
///
/// See [`Service`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ServiceBuilder<H: MessageHandler, B> {
    handler: H,
    state: Arc<H::AppState>,
    validator: Authenticator<H::UserId>,
    broker: B,
    config: Config,
    history: HistoryPolicy,
    presence: PresencePolicy,
    user_json: Option<UserJson<H::UserId>>,
}

impl<H: MessageHandler, B: fmt::Debug> fmt::Debug for ServiceBuilder<H, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("broker", &self.broker)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<H: MessageHandler> Service<H, MemoryBroker> {
    /// Starts a service with the [`MemoryBroker`] and the default [`Config`].
    ///
    /// `state` may be the state itself or an `Arc` of it.
    pub fn builder<V>(
        handler: H,
        state: impl Into<Arc<H::AppState>>,
        validator: V,
    ) -> ServiceBuilder<H, MemoryBroker>
    where
        V: TokenValidator<UserId = H::UserId>,
    {
        ServiceBuilder {
            handler,
            state: state.into(),
            validator: Authenticator::new(validator),
            broker: MemoryBroker::new(),
            config: Config::default(),
            history: HistoryPolicy::none(),
            presence: PresencePolicy::none(),
            user_json: None,
        }
    }
}

impl<H: MessageHandler, B: Broker> ServiceBuilder<H, B> {
    /// Fans out through `broker` instead of the in-process default.
    pub fn with_broker<B2: Broker>(self, broker: B2) -> ServiceBuilder<H, B2> {
        ServiceBuilder {
            handler: self.handler,
            state: self.state,
            validator: self.validator,
            broker,
            config: self.config,
            history: self.history,
            presence: self.presence,
            user_json: self.user_json,
        }
    }

    /// Sets the limits and timeouts.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Keeps history for the topics `policy` names: their events get
    /// positions, and a client that comes back resumes where it stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
    /// use std::time::Duration;
    /// use realtime::auth::validate_with;
    /// use realtime::history::{HistoryPolicy, Retention};
    ///
    /// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
    ///     .history(HistoryPolicy::none().keep("room:*", Retention::new(100, Duration::from_secs(600))))
    ///     .build()
    ///     .expect("the default config is valid");
    /// # let _ = service;
    /// ```
    pub fn history(mut self, policy: HistoryPolicy) -> Self {
        self.history = policy;
        self
    }

    /// Tracks presence in the topics `policy` names: `$presence` and
    /// [`Service::presence`] say who is subscribed, on every instance, and
    /// topics with [`Tracking::Announced`] send `join` and `leave` events.
    /// Users are told apart by their id, written as JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
    /// use realtime::auth::validate_with;
    /// use realtime::presence::{PresencePolicy, Tracking};
    ///
    /// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
    ///     .presence(PresencePolicy::none().track("room:*", Tracking::Announced))
    ///     .build()
    ///     .expect("the default config is valid");
    /// # let _ = service;
    /// ```
    pub fn presence(mut self, policy: PresencePolicy) -> Self
    where
        H::UserId: serde::Serialize,
    {
        self.presence = policy;
        self.user_json = Some(serde_json::to_string);
        self
    }

    /// Validates the config, attaches the broker and returns the service.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a limit in the config can never work, or when
    /// the history policy names topics and the broker keeps no history.
    pub fn build(self) -> Result<Service<H, B>, ConfigError> {
        self.config.validate()?;
        if self.history.keeps_any() && !self.broker.supports_history() {
            return Err(ConfigError::HistoryUnsupported);
        }
        if self.presence.tracks_any() && !self.broker.supports_presence() {
            return Err(ConfigError::PresenceUnsupported);
        }
        let counters = Arc::new(Counters::new(H::MESSAGE_TYPES));
        let registry = Arc::new(Registry::new(
            self.config.topic_backlog,
            Arc::clone(&counters),
        ));
        let (open, _) = watch::channel(0);
        let inner = Arc::new_cyclic(|inner: &Weak<Inner<H, B>>| {
            self.broker.attach(Incoming::with_fanout(Fan {
                registry: Arc::clone(&registry),
                inner: inner.clone(),
            }));
            Inner {
                handler: self.handler,
                state: self.state,
                broker: Arc::new(self.broker),
                validator: self.validator,
                config: self.config,
                history: self.history,
                presence: self.presence,
                user_json: self.user_json,
                keeper: Keeper::new(),
                registry,
                subscribed: Mutex::default(),
                next_id: AtomicU64::new(1),
                draining: std::sync::atomic::AtomicBool::new(false),
                open,
                shutdown: Signal::default(),
                counters,
            }
        });
        Ok(Service { inner })
    }
}

/// The service's side of its broker: frames go to the registry's rings,
/// and gaps start reads of the history.
struct Fan<H: MessageHandler, B> {
    registry: Arc<Registry>,
    /// Weak: the broker that holds this lives in the service.
    inner: Weak<Inner<H, B>>,
}

impl<H: MessageHandler, B: Broker> Fan<H, B> {
    /// Starts the task that fills `topic`'s ring from its history.
    fn spawn_gap_fill(&self, topic: Arc<str>) {
        if let Some(inner) = self.inner.upgrade() {
            Inner::start_fill(inner, topic);
        }
    }
}

impl<H: MessageHandler, B: Broker> Fanout for Fan<H, B> {
    fn deliver(&self, topic: &str, frame: Frame) {
        self.registry.deliver(topic, frame);
    }

    fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) {
        if self.registry.deliver_at(topic, offset, epoch, frame) {
            tracing::debug!(
                topic,
                offset,
                "gap in a topic's offsets; reading its history"
            );
            self.spawn_gap_fill(topic.into());
        }
    }

    fn reconnected(&self) {
        for topic in self.registry.hold_all() {
            self.spawn_gap_fill(topic);
        }
        // The broker may have lost every entry (a Redis restarted without
        // its data): write this instance's again now, not at the next
        // refresh. Then the clients get the whole list: joins and leaves
        // published while the link was down never came, and a user who
        // left meanwhile is never announced at all.
        if let Some(inner) = self.inner.upgrade()
            && inner.keeper.started()
        {
            let (done, written) = tokio::sync::oneshot::channel();
            inner.tell_keeper(keeper::Message::Refresh(done));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(Inner::resend_presence(inner, written));
            }
        }
    }
}

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
    /// Broadcasts the broker did not take (answered with error code 503).
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

/// Why an upgrade was refused for lack of room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    AtCapacity,
    ShuttingDown,
}

/// A place among the open connections, held from admission to the end of the
/// connection; dropping it frees the place.
pub(crate) struct Admission {
    open: watch::Sender<usize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.send_modify(|open| *open -= 1);
        metrics::gauge!(telemetry::CONNECTIONS).decrement(1.0);
    }
}

/// A connection accepted and subscribed to its topic but not yet upgraded.
/// If the upgrade never happens, dropping it unsubscribes it and frees its
/// place.
pub(crate) struct Accepted<H: MessageHandler, B: Broker> {
    id: ConnectionId,
    topic: Arc<str>,
    subscription: Subscription<H, B>,
    feed: Feed,
    /// The connection's presence in its URL's topic, written at the upgrade.
    joining: Option<Joining>,
    user: H::UserId,
    outbox: Outbox,
    admission: Admission,
}

/// One connection's subscription to one topic; dropping it unsubscribes.
pub(crate) struct Subscription<H: MessageHandler, B: Broker> {
    inner: Arc<Inner<H, B>>,
    topic: Arc<str>,
    /// The connection, if the topic tracks presence; 0 otherwise (ids
    /// start at 1).
    tracked: u64,
}

/// A subscriber's entry in its topic's presence, made when it subscribed
/// and written once it is in: after its `$join` succeeded, or after the
/// upgrade of its URL's topic. A subscribe that fails, or an upgrade that
/// never happens, is never announced.
pub(crate) struct Joining {
    conn: u64,
    user: Arc<str>,
    announce: bool,
}

impl<H: MessageHandler, B: Broker> Subscription<H, B> {
    /// Counts the subscriber in its topic's presence until it is dropped.
    fn track(&mut self, joining: Joining) {
        self.tracked = joining.conn;
        self.inner.tell_keeper(keeper::Message::Add {
            topic: Arc::clone(&self.topic),
            conn: joining.conn,
            user: joining.user,
            announce: joining.announce,
        });
    }
}

impl<H: MessageHandler, B: Broker> Drop for Subscription<H, B> {
    fn drop(&mut self) {
        if self.tracked != 0 {
            self.inner.tell_keeper(keeper::Message::Remove {
                topic: Arc::clone(&self.topic),
                conn: self.tracked,
            });
        }
        if self.inner.registry.remove(&self.topic) {
            Inner::release_topic(&self.inner, Arc::clone(&self.topic));
        }
    }
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
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
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
    /// position.
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
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
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
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
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
    /// # use realtime::{Context, HandlerError, MessageHandler, Service};
    /// # struct Chat;
    /// # impl MessageHandler for Chat {
    /// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
    /// #     async fn handle(&self, _: Msg, _: &Context<(), String>)
    /// #         -> Result<realtime::handler::Outcome<String>, HandlerError> { Ok(realtime::handler::Outcome::Handled) }
    /// # }
    /// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
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
        self.inner.registry.names()
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
            topics: self.inner.registry.len(),
            slow_closes: counters.slow_closes.load(Ordering::Relaxed),
            rate_limited: counters.rate_limited.load(Ordering::Relaxed),
            publish_errors: counters.publish_errors.load(Ordering::Relaxed),
            idle_closes: counters.idle_closes.load(Ordering::Relaxed),
            gap_fills: counters.gap_fills.load(Ordering::Relaxed),
            resets: counters.resets.load(Ordering::Relaxed),
            recovered: counters.recovered.load(Ordering::Relaxed),
            not_recovered: counters.not_recovered.load(Ordering::Relaxed),
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

    /// Whether [`admit`](Self::admit) would take a place now, without
    /// taking it.
    pub(crate) fn would_admit(&self) -> Result<(), Full> {
        if self.is_shutting_down() {
            return Err(Full::ShuttingDown);
        }
        if *self.inner.open.borrow() >= self.inner.config.max_connections {
            return Err(Full::AtCapacity);
        }
        Ok(())
    }

    /// Takes a place among the open connections.
    pub(crate) fn admit(&self) -> Result<Admission, Full> {
        if self.is_shutting_down() {
            return Err(Full::ShuttingDown);
        }
        let max = self.inner.config.max_connections;
        let admitted = self.inner.open.send_if_modified(|open| {
            if *open >= max {
                return false;
            }
            *open += 1;
            true
        });
        if admitted {
            metrics::gauge!(telemetry::CONNECTIONS).increment(1.0);
            Ok(Admission {
                open: self.inner.open.clone(),
            })
        } else {
            Err(Full::AtCapacity)
        }
    }

    /// The token validator, shared.
    pub(crate) fn authenticator(&self) -> &Authenticator<H::UserId> {
        &self.inner.validator
    }

    pub(crate) async fn authenticate(&self, token: &str) -> Result<H::UserId, AuthError> {
        self.inner.validator.authenticate(token).await
    }

    pub(crate) async fn authorize(&self, user: &H::UserId, topic: &str) -> Result<(), AuthError> {
        let allowed = self
            .inner
            .handler
            .authorize_topic(&self.inner.state, user, topic)
            .await;
        if allowed {
            Ok(())
        } else {
            Err(AuthError::ForbiddenTopic(topic.to_owned()))
        }
    }

    /// Subscribes a new connection to `topic` before its upgrade (and the
    /// instance at the broker if it is the topic's first local subscriber).
    /// Events published from now on are kept for it, so a client that saw
    /// the upgrade succeed misses nothing.
    pub(crate) async fn accept(
        &self,
        topic: &str,
        since: Option<&Position>,
        user: H::UserId,
        admission: Admission,
    ) -> Result<Accepted<H, B>, BrokerError> {
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let config = &self.inner.config;
        let outbox = Outbox::new(
            config.outbound_queue,
            config.outbound_queue_bytes,
            Arc::clone(&self.inner.counters),
        );
        let (topic, subscription, feed, joining) =
            Inner::subscribe(&self.inner, topic, since, id, &user).await?;
        Ok(Accepted {
            id,
            topic,
            subscription,
            feed,
            joining,
            user,
            outbox,
            admission,
        })
    }

    /// Serves an upgraded socket to the end. The write task starts now; the
    /// returned future runs the rest (see [`connection::start`] for why the
    /// socket is not moved into it).
    pub(crate) fn serve(
        self,
        socket: WebSocket,
        accepted: Accepted<H, B>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Accepted {
            id,
            topic,
            mut subscription,
            feed,
            joining,
            user,
            outbox,
            admission,
        } = accepted;
        if let Some(joining) = joining {
            subscription.track(joining);
        }
        // The catch-up of a resumed URL topic goes first in the queue,
        // which the write task empties before it reads any ring.
        let mut feed = feed;
        outbox.catch_up(&mut feed);
        let mut started = connection::start(socket, &outbox, feed, &self.inner.config);
        let mut ctx = Context {
            conn_id: id,
            user_id: user,
            topic,
            state: Arc::clone(&self.inner.state),
            outbox,
            publisher: Arc::clone(&self.inner) as Arc<dyn Publish>,
        };
        metrics::counter!(telemetry::ACCEPTED).increment(1);
        // Every event of the connection's life is logged inside this span:
        // which connection, whose, on which topic. Frames are `debug`.
        let span = tracing::info_span!(
            "connection",
            conn = %id,
            user = ?ctx.user_id,
            topic = &*ctx.topic,
        );
        let connection = async move {
            let inner = &self.inner;
            let session = Session {
                handler: &inner.handler,
                topics: inner,
                config: &inner.config,
                shutdown: &inner.shutdown,
            };
            connection::run(&mut started, session, &mut ctx, subscription).await;
            // The socket closes before `on_disconnect` runs.
            drop(started);
            inner.handler.on_disconnect(&ctx).await;
            drop(admission);
        };
        tracing::Instrument::instrument(connection, span)
    }
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
    /// Hands a change of this instance's presence to its keeper.
    fn tell_keeper(&self, message: keeper::Message) {
        self.keeper.send(&self.broker, &self.presence, message);
    }

    /// Once this instance's entries are written again (`written`), or
    /// [`SHUTDOWN_PRESENCE_WAIT`] passed, sends the clients of every local
    /// topic that announces joins and leaves the topic's whole presence.
    async fn resend_presence(inner: Arc<Self>, written: tokio::sync::oneshot::Receiver<()>) {
        let _ = tokio::time::timeout(SHUTDOWN_PRESENCE_WAIT, written).await;
        for topic in inner.registry.names() {
            if inner.presence.tracking(&topic) != Some(Tracking::Announced) {
                continue;
            }
            if let Err(error) = inner.broker.resend_presence(&topic).await {
                tracing::debug!(topic = &*topic, %error, "sending the presence list again failed");
            }
        }
    }

    /// `topic`'s presence on every instance.
    async fn presence(&self, topic: &str) -> Result<Presence, PresenceError> {
        let tracking = self
            .presence
            .tracking(topic)
            .filter(|_| self.user_json.is_some())
            .ok_or_else(|| PresenceError::NotTracked(topic.to_owned()))?;
        let announce = tracking == Tracking::Announced;
        Ok(self.broker.presence(topic, announce).await?)
    }

    /// Publishes an event frame: with its position and into the history if
    /// the policy keeps `topic`'s (the position is returned), as it is
    /// otherwise; once per `key` within `Config::idempotency_window`.
    async fn publish(
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
        let meters = &self.counters.meters;
        meters.publish_duration.record(started.elapsed());
        match &published {
            Ok(_) => meters.published.increment(1),
            Err(_) => meters.publish_errors.increment(1),
        }
        published
    }

    async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, HistoryError> {
        let retention = self
            .history
            .retention(topic)
            .ok_or_else(|| HistoryError::NotKept(topic.to_owned()))?;
        let limit = limit.min(retention.size());
        Ok(self.broker.history(topic, since, limit, &retention).await?)
    }

    /// Subscribes one connection to `topic`: the instance at the broker
    /// first if it is the topic's first local subscriber, then the
    /// connection to the topic's ring. For a topic with history, the feed
    /// starts with what the client missed since `since` and the
    /// `subscribed` frame.
    async fn subscribe(
        inner: &Arc<Self>,
        topic: &str,
        since: Option<&Position>,
        conn: ConnectionId,
        user: &H::UserId,
    ) -> Result<(Arc<str>, Subscription<H, B>, Feed, Option<Joining>), BrokerError> {
        let history = inner.history.retention(topic);
        // Before the broker call: a user id that does not serialize is
        // refused before anything is held for it.
        let joining = match (inner.presence.tracking(topic), inner.user_json) {
            (Some(tracking), Some(user_json)) => Some(Joining {
                conn: conn.0,
                user: user_json(user)
                    .map_err(|error| BrokerError::Invalid(Box::new(error)))?
                    .into(),
                announce: tracking == Tracking::Announced,
            }),
            _ => None,
        };
        let mut subscribed = inner.subscribed.lock().await;
        let first = !subscribed.contains(topic);
        if first {
            inner.broker.subscribe(topic).await?;
        }
        let Added {
            name: topic,
            ring,
            generation,
            new,
        } = inner.registry.add(topic, history.is_some());
        if first {
            // The registry's name, shared: one copy of it per instance.
            subscribed.insert(Arc::clone(&topic));
        }
        let subscription = Subscription {
            inner: Arc::clone(inner),
            topic: Arc::clone(&topic),
            tracked: 0,
        };
        if new && history.is_some() {
            // The ring's position, read after the broker subscribed and
            // before the lock is let go: any later subscriber reads the
            // history after this, so the ring holds what it will miss.
            if !Inner::read_into_ring(inner, &topic).await? {
                // Live events with a gap came meanwhile: read on.
                tokio::spawn(Inner::fill_gap(Arc::clone(inner), Arc::clone(&topic)));
            }
        }
        drop(subscribed);
        let feed = match history {
            None => Feed {
                topic: Arc::clone(&topic),
                ring,
                catch_up: Vec::new(),
                sent_through: 0,
                fallback: None,
                recovered: None,
            },
            Some(_) => Inner::resume(inner, &topic, (ring, generation), since).await?,
        };
        Ok((topic, subscription, feed, joining))
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
    ) -> Result<Feed, BrokerError> {
        let retention = inner
            .history
            .retention(topic)
            .expect("called for topics with history");
        let config = &inner.config;
        // No more than the connection's queue holds, in frames, with the
        // `subscribed` frame that follows them: a longer gap is not
        // recovered, so it is not read either.
        let limit = retention
            .size()
            .min(config.outbound_queue.saturating_sub(1));
        let deadline = tokio::time::Instant::now() + RESUME_WAIT;
        let mut moved_ring = false;
        loop {
            let from = since.map(|since| since.offset);
            let read = inner
                .broker
                .history(
                    topic,
                    from,
                    if from.is_some() { limit } else { 0 },
                    &retention,
                )
                .await?;
            match inner.registry.ring(topic) {
                Some((_, now, Some(epoch)))
                    if now == generation && epoch == read.position.epoch =>
                {
                    return Ok(catch_up(
                        topic,
                        ring,
                        since,
                        read,
                        config.outbound_queue_bytes,
                    ));
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
                        if inner.registry.hold(topic) {
                            Inner::start_fill(Arc::clone(inner), Arc::clone(topic));
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

    /// Starts the task that fills `topic`'s ring from its history.
    fn start_fill(inner: Arc<Self>, topic: Arc<str>) {
        bump(&inner.counters.gap_fills);
        metrics::counter!(telemetry::GAP_FILLS).increment(1);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Inner::fill_gap(inner, topic));
        }
    }

    /// Fills the ring of a topic with history from its history until it is
    /// live again, retrying while the broker fails; ends early if the topic
    /// loses its last local subscriber.
    async fn fill_gap(inner: Arc<Self>, topic: Arc<str>) {
        let mut attempt = 0u32;
        loop {
            let read = {
                // At most a few reads at once per instance; after a
                // reconnect every topic with history wants one.
                let _permit = inner.registry.reads.acquire().await;
                Inner::read_into_ring(&inner, &topic).await
            };
            let wait = match read {
                Ok(true) => return,
                // More to read (a long gap comes in parts), or live events
                // came past the read: read on once the subscribers have room
                // for another part.
                Ok(false) => {
                    attempt = 0;
                    if !Inner::room_for_a_part(&inner, &topic).await {
                        return;
                    }
                    Duration::from_millis(1)
                }
                Err(error) => {
                    tracing::debug!(topic = &*topic, %error, "reading history to fill a gap failed; retrying");
                    attempt = attempt.saturating_add(1);
                    Duration::from_millis(50)
                        .saturating_mul(1 << attempt.min(6))
                        .min(FILL_BACKOFF_MAX)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until `topic`'s ring has room for another part of a gap (its
    /// subscribers read what came), at most a second: a subscriber that
    /// does not read must not hold the others back (it falls behind and is
    /// closed with 1013). False if the topic has no local subscriber left.
    async fn room_for_a_part(inner: &Arc<Self>, topic: &str) -> bool {
        let registry = &inner.registry;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match registry.unread(topic) {
                None => return false,
                Some(unread) if unread <= registry.max_gap() => return true,
                Some(_) if tokio::time::Instant::now() >= deadline => return true,
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// One read of the history into the ring; whether the ring is live
    /// again (or the topic gone).
    async fn read_into_ring(inner: &Arc<Self>, topic: &str) -> Result<bool, BrokerError> {
        let Some(retention) = inner.history.retention(topic) else {
            return Ok(true);
        };
        let Some(from) = inner.registry.read_from(topic) else {
            return Ok(true);
        };
        // At most what the ring may take at once; a longer gap comes in
        // parts.
        let limit = match from.since {
            Some(_) => retention.size().min(inner.registry.max_gap()),
            None => 0,
        };
        let read = inner
            .broker
            .history(topic, from.since, limit, &retention)
            .await?;
        Ok(inner.registry.apply_read(topic, from, read))
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
            if inner.registry.has_subscribers(&topic) || !subscribed.remove(&topic) {
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
    ) -> Result<(Arc<str>, Subscription<H, B>, Feed), BrokerError> {
        let (topic, mut subscription, feed, joining) =
            Inner::subscribe(self, topic, since, conn, user).await?;
        if let Some(joining) = joining {
            subscription.track(joining);
        }
        Ok((topic, subscription, feed))
    }

    fn presence(
        &self,
        topic: &str,
    ) -> impl std::future::Future<Output = Result<Presence, PresenceError>> + Send {
        Inner::presence(self, topic)
    }
}

impl<H: MessageHandler, B: Broker> Publish for Inner<H, B> {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        frame: Frame,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>
    {
        Box::pin(async move {
            Inner::publish(self, topic, frame, None)
                .await
                .map(drop)
                .map_err(|error| {
                    bump(&self.counters.publish_errors);
                    HandlerError::new(
                        protocol::error_code::UNAVAILABLE,
                        format!("could not publish on `{topic}`: {error}"),
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
    }
}
