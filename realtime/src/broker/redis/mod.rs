//! [`RedisBroker`]: fan-out across server instances through Redis Pub/Sub.
//!
//! Each instance connects to one Redis with [`RedisBroker::connect`] (the URL
//! usually comes from `REDIS_URL`) and hands the broker to its service with
//! `Service::builder(..).with_broker(broker)`. A topic `room:1` is the Redis
//! channel `<channel_prefix>room:1` (see [`RedisConfig::channel_prefix`]). The
//! message on the channel is the event frame exactly as clients receive it:
//! a receiving instance hands the bytes to its local subscribers without
//! parsing or re-encoding them.
//!
//! # Connections
//!
//! An instance holds two connections to Redis, both speaking RESP3:
//!
//! - the **publisher**, one `MultiplexedConnection` shared by every publish
//!   (each publish clones the handle; no connection is opened per publish);
//! - the **subscriber**, one more `MultiplexedConnection` whose channel set
//!   changes while messages flow: `SUBSCRIBE` and `UNSUBSCRIBE` are ordinary
//!   commands on it, and messages arrive as RESP3 pushes. Subscribing to a new
//!   topic does not disturb the topics already subscribed, and nothing is
//!   torn down per subscribe.
//!
//! The instance subscribes to a topic when its first local subscriber
//! arrives and unsubscribes when the last one leaves (the service decides,
//! the broker follows), so Redis only sends an instance the topics it serves.
//!
//! ## Why RESP3 pushes, and not `PubSub::split` or `ConnectionManager`
//!
//! The redis crate (1.8) offers three ways to receive Pub/Sub messages. This
//! broker uses a `MultiplexedConnection` with a push handler because:
//!
//! - **No copy, no extra hop.** The push handler owns the message, so its
//!   payload becomes the `Bytes` handed to the local subscribers without a
//!   copy, and it runs in the connection's own reader: no channel and no task
//!   of ours between Redis and the subscribers' queues. A `PubSubStream` only
//!   lends the payload (`get_payload_bytes`), so each message would be copied
//!   once more, after crossing an unbounded channel to a reader task.
//! - **Every command is bounded.** `SUBSCRIBE`, `UNSUBSCRIBE` and `PING` on a
//!   multiplexed connection obey its response timeout
//!   ([`RedisConfig::command_timeout`]); a `PubSubSink` has no timeout, and
//!   hangs for good on a frozen Redis.
//! - **Loss is announced.** When the connection closes (Redis restarted, or
//!   `CLIENT KILL TYPE pubsub`, which Redis also does to a subscriber past its
//!   output-buffer limit), the push handler receives a `Disconnection` push
//!   at once (measured: microseconds after the kill).
//! - **One path for Redis Cluster.** The cluster client delivers sharded
//!   messages through the same kind of push handler (see
//!   [Redis Cluster](#redis-cluster)).
//!
//! `ConnectionManager` reconnects and resubscribes by itself, but it blocked
//! publishes for seconds while Redis was down (9 s with default retries), and
//! this broker must answer a failed publish quickly. It also hides the moment
//! of reconnection, which this broker needs to count and log.
//!
//! The cost: RESP3 needs Redis 6 or newer (or a compatible server, such as
//! Valkey). Against an older server, [`RedisBroker::connect`] fails with the
//! server's refusal of `HELLO 3`.
//!
//! # Failures
//!
//! A supervisor task per instance watches the connections. It treats each of
//! these as the loss of Redis:
//!
//! - a `Disconnection` push on either connection (Redis restarted or killed
//!   the client);
//! - a publish that meets a broken connection;
//! - a failed or unanswered `PING`: the subscriber connection is pinged every
//!   [`RedisConfig::ping_interval`], which detects a Redis that stopped
//!   answering without closing anything (a frozen process, a partition);
//! - a subscriber command that times out or fails on the connection.
//!
//! It then drops both connections and, with exponential backoff and jitter
//! ([`RedisConfig::reconnect_backoff_min`] to
//! [`RedisConfig::reconnect_backoff_max`]), opens new ones, subscribes every
//! topic the instance holds, and only then publishes again. With the default
//! settings an instance is back within about a second of Redis coming back.
//! WebSocket clients stay connected throughout.
//!
//! While Redis is away:
//!
//! - a publish fails at once with [`BrokerError::Unavailable`] (or, if it was
//!   already waiting on a frozen Redis, with [`BrokerError::Timeout`] after
//!   the command timeout). The service answers the sender with an error
//!   frame, code 503: a broadcast is never silently dropped and never hangs;
//! - a subscribe (the first client of a topic on this instance) fails at once
//!   with [`BrokerError::Unavailable`], and the upgrade is answered with HTTP
//!   503; the client may retry. Recording the topic and answering success
//!   would hand the client a subscription that receives nothing;
//! - an unsubscribe succeeds: the topic leaves the set, so the next
//!   connection does not subscribe it.
//!
//! Every failure is logged with `tracing` (a lost connection and each failed
//! reconnection attempt at `warn`, the reconnection at `info`) and counted in
//! [`RedisBroker::metrics`].
//!
//! # Startup
//!
//! [`RedisBroker::connect`] makes one attempt, bounded by
//! [`RedisConfig::connect_timeout`], and returns a [`BrokerError`] naming the
//! server and the cause when Redis cannot be reached. It does not retry and
//! never panics: an application that wants to wait for Redis retries
//! `connect` itself. After startup, reconnection is automatic.
//!
//! # Redis Cluster
//!
//! [`RedisBroker::connect_cluster`] uses sharded Pub/Sub instead
//! (`SPUBLISH`, `SSUBSCRIBE`, Redis 7 or newer), through the redis crate's
//! cluster client: a topic's traffic stays on the master that owns its
//! channel's slot, so adding masters spreads the load. The publisher and the
//! subscriber are each one cluster connection (one connection per node).
//!
//! The cluster client reconnects to a node by itself, but its own
//! resubscription after a node restart is not reliable (measured: the
//! restarted master's channels stayed silent). So on a disconnection push
//! from any node, or a failed ping (`PING` reaches every master), the broker
//! sends `SSUBSCRIBE` for every topic again, with the same backoff, until
//! each is confirmed. The connections are kept: while one master is away,
//! topics on the other masters keep working, and publishes to the missing
//! shard fail with an error frame. [`RedisMetrics::connected`] is false
//! until every topic is confirmed again. Resharding (slot migration) is left
//! to the cluster client and is not covered by this crate's tests.
//!
//! # Delivery guarantees
//!
//! Redis Pub/Sub delivers at most once. A frame published while an instance
//! is disconnected, or between the loss of its subscriber connection and its
//! resubscription, never reaches that instance's clients. One publisher's
//! frames on one topic reach each subscriber in the order they were
//! published (one publishing connection per instance, one subscriber
//! connection per instance, and Redis keeps the order between them).

use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ::redis::{Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError, Value};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Broker, BrokerError, Incoming};
use metrics::{Counters, bump};
use supervisor::{Command, Supervisor};

mod cluster;
mod config;
mod link;
mod metrics;
mod supervisor;

pub use config::{RedisConfig, RedisConfigError};
pub use metrics::RedisMetrics;

/// Subscriber commands waiting for the supervisor. The service issues them
/// one at a time (it holds a lock across each), so a few slots are plenty;
/// a full queue makes the caller wait, never grows memory.
const COMMAND_QUEUE: usize = 32;

/// Fan-out through Redis Pub/Sub: every instance of an application connects
/// its own `RedisBroker` to the same Redis.
///
/// See the [module documentation](self) for the connections it holds, how it
/// survives Redis going away, and what it guarantees.
///
/// # Examples
///
/// ```no_run
/// use realtime::{Context, HandlerError, RedisBroker, Service};
/// use realtime::broker::RedisConfig;
/// use realtime::auth::validate_with;
/// # use realtime::MessageHandler;
/// # struct Chat;
/// # impl MessageHandler for Chat {
/// #     type ClientMessage = Msg; type ServerEvent = String; type AppState = (); type UserId = String;
/// #     async fn handle_broadcast_message(&self, _: Msg, _: &Context<(), String>)
/// #         -> Result<Option<String>, HandlerError> { Ok(None) }
/// # }
/// # #[derive(serde::Deserialize)] #[serde(tag = "type", content = "data")] enum Msg { Nop {} }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
/// let broker = RedisBroker::connect(&url, RedisConfig::default()).await?;
/// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
///     .with_broker(broker)
///     .build()?;
/// let app: axum::Router = realtime::route::router(service, "/ws/{topic}");
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct RedisBroker {
    shared: Arc<Shared>,
    /// To the supervisor task; dropping the broker drops it, which stops the
    /// task and closes both connections.
    commands: mpsc::Sender<Command>,
    config: RedisConfig,
    /// `host:port` of the server, for logs and `Debug` (never the password).
    server: String,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("server", &self.server)
            .field("channel_prefix", &self.config.channel_prefix)
            .field("connected", &self.metrics().connected)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`),
    /// opening the publisher and the subscriber connections, and starts the
    /// task that keeps them alive.
    ///
    /// Makes one attempt, bounded by [`RedisConfig::connect_timeout`]; see
    /// [Startup](self#startup). Must be called inside a Tokio runtime. The
    /// URL's `protocol` setting is overridden: the broker always speaks RESP3.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unavailable`], whose source says why: the URL does not
    /// parse, a [`RedisConfig`] value cannot work ([`RedisConfigError`]), or
    /// the server (named by `host:port`) refused, failed the handshake or did
    /// not answer in time.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use realtime::RedisBroker;
    /// use realtime::broker::RedisConfig;
    ///
    /// # async fn demo() {
    /// let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    /// match RedisBroker::connect(&url, RedisConfig::default()).await {
    ///     Ok(broker) => println!("connected: {broker:?}"),
    ///     // e.g. "broker unavailable", caused by "could not connect to Redis at 127.0.0.1:6379"
    ///     Err(error) => eprintln!("{error}: {}", std::error::Error::source(&error).unwrap()),
    /// }
    /// # }
    /// ```
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, BrokerError> {
        config.validate().map_err(Unavailable::Config)?;
        let info = resp3(url)?;
        let server = info.addr().to_string();
        let client = Client::open(info).map_err(Unavailable::InvalidUrl)?;
        let shared = Shared::new(&config);
        let link = link::open(&client, &config, &shared)
            .await
            .map_err(|source| connect_failed(&shared, &server, source))?;
        shared.set_publisher(Some(link.publisher.clone()));
        tracing::debug!(%server, "connected to Redis");

        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let supervisor = Supervisor {
            client,
            config: config.clone(),
            shared: Arc::clone(&shared),
            commands: receiver,
            topics: Default::default(),
        };
        tokio::spawn(supervisor.run(link));
        Ok(Self {
            shared,
            commands,
            config,
            server,
        })
    }

    /// Connects to a Redis Cluster through any of its `nodes` (URLs as for
    /// [`connect`](Self::connect)) and fans out with sharded Pub/Sub:
    /// `SPUBLISH` and `SSUBSCRIBE`, so that each topic's traffic stays on the
    /// master that owns its channel's slot. Needs Redis 7 or newer.
    ///
    /// Every instance of an application must use the same mode: a sharded
    /// channel and a plain one of the same name do not meet. See
    /// [Cluster](self#redis-cluster) for how it recovers from a node restart.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); `nodes` must not be empty.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use realtime::RedisBroker;
    /// use realtime::broker::RedisConfig;
    ///
    /// # async fn demo() -> Result<(), realtime::BrokerError> {
    /// let nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"];
    /// let broker = RedisBroker::connect_cluster(nodes, RedisConfig::default()).await?;
    /// # let _ = broker;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_cluster(
        nodes: impl IntoIterator<Item = impl AsRef<str>>,
        config: RedisConfig,
    ) -> Result<Self, BrokerError> {
        config.validate().map_err(Unavailable::Config)?;
        let nodes = nodes
            .into_iter()
            .map(|url| resp3(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let server = nodes
            .iter()
            .map(|node| node.addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        if nodes.is_empty() {
            return Err(Unavailable::NoNodes.into());
        }
        let shared = Shared::new(&config);
        let link = cluster::open(&nodes, &config, &shared)
            .await
            .map_err(|source| connect_failed(&shared, &server, source))?;
        shared.set_publisher(Some(link.publisher.clone()));
        tracing::debug!(%server, "connected to Redis Cluster");

        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let supervisor = cluster::ClusterSupervisor {
            config: config.clone(),
            shared: Arc::clone(&shared),
            commands: receiver,
            topics: Default::default(),
            link,
        };
        tokio::spawn(supervisor.run());
        Ok(Self {
            shared,
            commands,
            config,
            server,
        })
    }

    /// A snapshot of this broker's counters: reconnects, resubscribes,
    /// publish errors and more.
    ///
    /// # Examples
    ///
    /// See [`RedisMetrics`].
    pub fn metrics(&self) -> RedisMetrics {
        self.shared.counters.snapshot()
    }

    /// The settings this broker runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Sends a subscriber command to the supervisor and waits for its answer.
    async fn request(
        &self,
        command: impl FnOnce(supervisor::Reply) -> Command,
    ) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        // The supervisor runs one command at a time, each bounded by the
        // command timeout: room for the one ahead of ours and ours. If the
        // deadline passes anyway, the supervisor sees the abandoned reply and
        // skips or undoes the command.
        let deadline = self.config.command_timeout * 2;
        let exchange = async {
            self.commands
                .send(command(reply))
                .await
                .map_err(|_| Unavailable::Stopped)?;
            answer.await.map_err(|_| Unavailable::Stopped)?
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| {
                bump(&self.shared.counters.subscribe_errors);
                BrokerError::Timeout(deadline)
            })?
    }
}

impl Broker for RedisBroker {
    fn attach(&self, incoming: Incoming) {
        // A broker serves one service; a second attach is ignored, as with
        // `MemoryBroker`.
        let _ = self.shared.incoming.set(incoming);
    }

    async fn publish(&self, topic: &str, frame: Bytes) -> Result<(), BrokerError> {
        let Some(mut publisher) = self.shared.publisher() else {
            bump(&self.shared.counters.publish_errors);
            // The loss itself was logged once, at warn; one line per refused
            // publish would flood the log during an outage.
            tracing::debug!(topic, "publish refused: not connected to Redis");
            return Err(Unavailable::NotConnected.into());
        };
        let channel = self.shared.channel(topic);
        match publisher.publish(&channel, &frame).await {
            Ok(()) => Ok(()),
            Err(error) => {
                bump(&self.shared.counters.publish_errors);
                tracing::warn!(topic, %error, "publish to Redis failed");
                if error.is_unrecoverable_error() {
                    // Tell the supervisor now rather than at its next ping.
                    publisher.lost.notify_one();
                }
                Err(broker_error(error, self.config.command_timeout))
            }
        }
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.request(|reply| Command::Subscribe(topic.into(), reply))
            .await
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.request(|reply| Command::Unsubscribe(topic.into(), reply))
            .await
    }
}

/// What the broker handle, the supervisor and the subscriber connection's
/// push handler share.
struct Shared {
    /// `RedisConfig::channel_prefix`, as bytes.
    prefix: Box<[u8]>,
    /// The service's fan-out, set by `attach`.
    incoming: OnceLock<Incoming>,
    counters: Counters,
    /// The publishing connection while the broker is connected; `None` while
    /// it reconnects. A std lock, held only to clone or replace the handle,
    /// never across an `.await`.
    publisher: RwLock<Option<link::Publisher>>,
}

impl Shared {
    fn new(config: &RedisConfig) -> Arc<Self> {
        Arc::new(Self {
            prefix: config.channel_prefix.as_bytes().into(),
            incoming: OnceLock::new(),
            counters: Counters::default(),
            publisher: RwLock::new(None),
        })
    }

    /// `prefix + topic`.
    fn channel(&self, topic: &str) -> Vec<u8> {
        let mut channel = Vec::with_capacity(self.prefix.len() + topic.len());
        channel.extend_from_slice(&self.prefix);
        channel.extend_from_slice(topic.as_bytes());
        channel
    }

    /// The topic of `channel`, if it is one of ours.
    fn topic<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(channel.strip_prefix(&*self.prefix)?).ok()
    }

    fn publisher(&self) -> Option<link::Publisher> {
        self.publisher
            .read()
            .expect("redis publisher lock poisoned")
            .clone()
    }

    fn set_publisher(&self, publisher: Option<link::Publisher>) {
        self.counters
            .connected
            .store(publisher.is_some(), std::sync::atomic::Ordering::Relaxed);
        *self
            .publisher
            .write()
            .expect("redis publisher lock poisoned") = publisher;
    }

    /// Hands one message push to the local subscribers. Runs in the
    /// subscriber connection's reader; `Incoming::deliver` never blocks.
    fn deliver(&self, data: Vec<Value>) {
        let Some((channel, payload)) = link::message_parts(data) else {
            tracing::debug!("ignored a malformed message push from Redis");
            return;
        };
        let Some(topic) = self.topic(&channel) else {
            tracing::debug!("ignored a message on a channel without our prefix");
            return;
        };
        bump(&self.counters.received);
        if let Some(incoming) = self.incoming.get() {
            incoming.deliver(topic, Bytes::from(payload));
        }
    }
}

/// Why Redis could not be used; the source of [`BrokerError::Unavailable`].
#[derive(Debug, thiserror::Error)]
enum Unavailable {
    #[error("not connected to Redis; reconnecting")]
    NotConnected,
    #[error("could not connect to Redis at {server}")]
    Connect {
        server: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no Redis Cluster node given")]
    NoNodes,
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] RedisError),
    #[error("invalid Redis broker configuration")]
    Config(#[source] RedisConfigError),
    #[error("Redis command failed")]
    Command(#[source] RedisError),
    #[error("the Redis broker has stopped")]
    Stopped,
}

impl From<Unavailable> for BrokerError {
    fn from(cause: Unavailable) -> Self {
        BrokerError::Unavailable(Box::new(cause))
    }
}

/// Parses `url` and sets RESP3, which the broker needs for push messages.
fn resp3(url: &str) -> Result<ConnectionInfo, Unavailable> {
    let info = url
        .into_connection_info()
        .map_err(Unavailable::InvalidUrl)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

/// Counts and logs a failed startup, and says which server failed.
fn connect_failed(shared: &Shared, server: &str, source: link::OpenError) -> BrokerError {
    bump(&shared.counters.connect_failures);
    tracing::warn!(%server, error = %source, "could not connect to Redis");
    Unavailable::Connect {
        server: server.to_owned(),
        source: Box::new(source),
    }
    .into()
}

/// A failed Redis command as the service sees it.
fn broker_error(error: RedisError, timeout: Duration) -> BrokerError {
    if error.is_timeout() {
        BrokerError::Timeout(timeout)
    } else {
        Unavailable::Command(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(prefix: &str) -> Shared {
        Shared {
            prefix: prefix.as_bytes().into(),
            incoming: OnceLock::new(),
            counters: Counters::default(),
            publisher: RwLock::new(None),
        }
    }

    #[test]
    fn channel_is_prefix_and_topic() {
        let shared = shared("app:");
        assert_eq!(shared.channel("room:1"), b"app:room:1");
        assert_eq!(shared.topic(b"app:room:1"), Some("room:1"));
        assert_eq!(shared.topic(b"other:room:1"), None);
    }

    #[test]
    fn delivers_the_payload_bytes_unchanged() {
        let shared = shared("p:");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let _ = shared.incoming.set(Incoming::new(move |topic, frame| {
            sink.lock().unwrap().push((topic.to_owned(), frame));
        }));
        let frame = br#"{"topic":"t","event":{ "kept" :  "as is" }}"#.to_vec();
        shared.deliver(vec![
            Value::BulkString(b"p:t".to_vec()),
            Value::BulkString(frame.clone()),
        ]);
        shared.deliver(vec![
            Value::BulkString(b"q:t".to_vec()),
            Value::BulkString(frame.clone()),
        ]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "t");
        assert_eq!(&seen[0].1[..], &frame[..]);
        assert_eq!(shared.counters.snapshot().received, 1);
    }
}
