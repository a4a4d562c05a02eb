//! [`Service`]: one instance's connections, its topic subscriptions, local
//! fan-out, the server-side publish API and graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::WebSocket;
use tokio::sync::{Mutex, broadcast, watch};

use crate::auth::{AuthError, Authenticator, TokenValidator};
use crate::broker::{Broker, BrokerError, Incoming, MemoryBroker};
use crate::config::{Config, ConfigError};
use crate::connection::{
    self, ConnectionId, Counters, Outbox, Ring, Session, Signal, Topics, bump,
};
use crate::handler::{Context, HandlerError, MessageHandler, Publish};
use crate::protocol::{self, Frame};

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
    broker: B,
    validator: Authenticator<H::UserId>,
    config: Config,
    registry: Arc<Registry>,
    /// Topics this instance is subscribed to at the broker. The lock is held
    /// across the broker call, so that subscribes and unsubscribes of one
    /// topic cannot overtake each other.
    subscribed: Mutex<HashSet<Arc<str>>>,
    next_id: AtomicU64,
    /// Open connections, counted from admission to the end of `serve`.
    open: watch::Sender<usize>,
    shutdown: Signal,
    counters: Arc<Counters>,
}

/// The topics with local subscribers, each with its ring: what a broker's
/// frames fan out to.
#[derive(Debug)]
struct Registry {
    topics: RwLock<HashMap<Arc<str>, Topic>>,
    /// Frames per ring (`Config::topic_backlog`).
    backlog: usize,
}

/// One topic on this instance.
#[derive(Debug)]
struct Topic {
    /// Every event of the topic goes in once; each subscriber's writer reads
    /// it from there.
    ring: broadcast::Sender<Frame>,
    /// Local subscriptions. The writers' ring receivers may outlive theirs
    /// for a moment, so the ring's own receiver count is not this.
    subscribers: usize,
}

impl Registry {
    fn new(backlog: usize) -> Self {
        Self {
            topics: RwLock::default(),
            backlog,
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
            let _ = entry.ring.send(frame);
        }
    }

    /// Adds a subscriber; returns the shared topic name and a receiver of
    /// every event from now on.
    fn add(&self, topic: &str) -> (Arc<str>, Ring) {
        let mut topics = self.topics.write().expect("registry lock poisoned");
        if let Some(name) = topics
            .get_key_value(topic)
            .map(|(name, _)| Arc::clone(name))
        {
            let entry = topics.get_mut(topic).expect("present: just found");
            entry.subscribers += 1;
            return (name, entry.ring.subscribe());
        }
        let name: Arc<str> = topic.into();
        let (ring, receiver) = broadcast::channel(self.backlog);
        topics.insert(
            Arc::clone(&name),
            Topic {
                ring,
                subscribers: 1,
            },
        );
        (name, receiver)
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
        }
    }

    /// Sets the limits and timeouts.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Validates the config, attaches the broker and returns the service.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a limit in the config can never work.
    pub fn build(self) -> Result<Service<H, B>, ConfigError> {
        self.config.validate()?;
        let registry = Arc::new(Registry::new(self.config.topic_backlog));
        let fanout = Arc::clone(&registry);
        self.broker.attach(Incoming::new(move |topic, frame| {
            fanout.deliver(topic, frame)
        }));
        let (open, _) = watch::channel(0);
        Ok(Service {
            inner: Arc::new(Inner {
                handler: self.handler,
                state: self.state,
                broker: self.broker,
                validator: self.validator,
                config: self.config,
                registry,
                subscribed: Mutex::default(),
                next_id: AtomicU64::new(1),
                open,
                shutdown: Signal::default(),
                counters: Arc::default(),
            }),
        })
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
    }
}

/// A connection accepted and subscribed to its topic but not yet upgraded.
/// If the upgrade never happens, dropping it unsubscribes it and frees its
/// place.
pub(crate) struct Accepted<H: MessageHandler, B: Broker> {
    id: ConnectionId,
    topic: Arc<str>,
    subscription: Subscription<H, B>,
    ring: Ring,
    user: H::UserId,
    outbox: Outbox,
    admission: Admission,
}

/// One connection's subscription to one topic; dropping it unsubscribes.
pub(crate) struct Subscription<H: MessageHandler, B: Broker> {
    inner: Arc<Inner<H, B>>,
    topic: Arc<str>,
}

impl<H: MessageHandler, B: Broker> Drop for Subscription<H, B> {
    fn drop(&mut self) {
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
        self.inner.broker.publish(topic, frame).await?;
        Ok(())
    }

    /// Closes every connection with 1001 once the answers already in flight
    /// are written, refuses new ones with 503, and resolves when the last
    /// connection has ended.
    ///
    /// Wrap it in [`tokio::time::timeout`] to bound the wait.
    pub async fn shutdown(&self) {
        self.inner.shutdown.fire();
        let mut open = self.inner.open.subscribe();
        // The sender lives in `inner`, so the channel cannot close here.
        let _ = open.wait_for(|open| *open == 0).await;
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_fired()
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
        let (topic, subscription, ring) = Inner::subscribe(&self.inner, topic).await?;
        Ok(Accepted {
            id,
            topic,
            subscription,
            ring,
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
            subscription,
            ring,
            user,
            outbox,
            admission,
        } = accepted;
        let mut started = connection::start(
            socket,
            &outbox,
            (Arc::clone(&topic), ring),
            &self.inner.config,
        );
        let mut ctx = Context {
            conn_id: id,
            user_id: user,
            topic,
            state: Arc::clone(&self.inner.state),
            outbox,
            publisher: Arc::clone(&self.inner) as Arc<dyn Publish>,
        };
        async move {
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
        }
    }
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
    /// Subscribes one connection to `topic`, and the instance at the broker
    /// first if it is the topic's first local subscriber. From the return
    /// on, the topic's events are kept in the returned ring.
    async fn subscribe(
        inner: &Arc<Self>,
        topic: &str,
    ) -> Result<(Arc<str>, Subscription<H, B>, Ring), BrokerError> {
        let mut subscribed = inner.subscribed.lock().await;
        let first = !subscribed.contains(topic);
        if first {
            inner.broker.subscribe(topic).await?;
        }
        let (topic, ring) = inner.registry.add(topic);
        if first {
            // The registry's name, shared: one copy of it per instance.
            subscribed.insert(Arc::clone(&topic));
        }
        drop(subscribed);
        let subscription = Subscription {
            inner: Arc::clone(inner),
            topic: Arc::clone(&topic),
        };
        Ok((topic, subscription, ring))
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

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn publish(
        &self,
        topic: &str,
        frame: Frame,
    ) -> impl std::future::Future<Output = Result<(), BrokerError>> + Send {
        self.broker.publish(topic, frame)
    }

    fn subscribe(
        &self,
        topic: &str,
    ) -> impl std::future::Future<Output = Result<(Arc<str>, Subscription<H, B>, Ring), BrokerError>>
    + Send {
        Inner::subscribe(self, topic)
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
            self.broker.publish(topic, frame).await.map_err(|error| {
                bump(&self.counters.publish_errors);
                HandlerError::new(
                    protocol::error_code::UNAVAILABLE,
                    format!("could not publish on `{topic}`: {error}"),
                )
                .with_source(error)
            })
        })
    }
}
