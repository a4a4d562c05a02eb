#![doc = include_str!("../../../docs/redis.md")]

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::{Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError, Value};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use self::metrics::LinkCounters;
use super::{Broker, BrokerError, Idempotency, Incoming};
use super::{History, HistoryQuery, Retention};
use super::{Presence, PresenceUpdate};
use crate::protocol::{self, Frame, Position};
use crate::util::bump;
use crate::util::{Mutex, RwLock};
use supervisor::{Command, Supervisor};

mod cluster;
mod config;
mod lanes;
mod link;
mod metrics;
mod script;
mod supervisor;

pub use self::metrics::RedisMetrics;
pub use config::{Durability, RedisConfig, RedisConfigError};

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
/// use realtime::{RedisBroker, Service};
/// use realtime::RedisConfig;
/// use realtime::auth::validate_with;
/// # use realtime::__private::doc::Chat;
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
    /// [`BrokerError::Invalid`] when the URL does not parse or a
    /// [`RedisConfig`] value cannot work ([`RedisConfigError`]): fix the
    /// settings. [`BrokerError::Unavailable`] when the server (named by
    /// `host:port`) refused, failed the handshake or did not answer in time:
    /// a later attempt may work. The source says which.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use realtime::RedisBroker;
    /// use realtime::RedisConfig;
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
        let shared = Shared::new(&config, false);
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
    /// use realtime::RedisConfig;
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
        let shared = Shared::new(&config, true);
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

    /// Runs one command of the application's own on the broker's
    /// publishing connection: a connection that survives Redis restarts,
    /// because each call takes the one the broker holds now. While the
    /// broker reconnects it fails at once; a command that Redis does not
    /// answer fails after [`RedisConfig::command_timeout`].
    ///
    /// Commands share the connection with the broker's publishes, in one
    /// pipeline: keep them short (a large `LRANGE` delays the events queued
    /// behind it). For heavy use, open a `redis::aio::ConnectionManager`
    /// of the application's own, with a response timeout.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Unavailable`] while the broker is not connected or
    /// when Redis answers with an error; [`BrokerError::Timeout`] when it
    /// does not answer in time.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use realtime::RedisBroker;
    ///
    /// async fn visits(broker: &RedisBroker) -> Result<u64, realtime::BrokerError> {
    ///     broker.query(redis::cmd("INCR").arg("app:visits")).await
    /// }
    /// ```
    pub async fn query<T: ::redis::FromRedisValue>(
        &self,
        command: &::redis::Cmd,
    ) -> Result<T, BrokerError> {
        let Some(mut publisher) = self.shared.publisher() else {
            return Err(Unavailable::NotConnected.into());
        };
        let answer = match &mut publisher.conn {
            link::PublishConn::Single(conn) => command.query_async(conn).await,
            link::PublishConn::Cluster(conn) => command.query_async(conn).await,
        };
        answer.map_err(|error| {
            if error.is_unrecoverable_error() {
                publisher.lost.notify_one();
            }
            broker_error(error, self.config.command_timeout)
        })
    }

    /// Runs the presence script on `topic` (see `script::presence`).
    async fn run_presence(
        &self,
        topic: &str,
        update: PresenceUpdate<'_>,
        read: script::PresenceRead<'_>,
    ) -> Result<Presence, BrokerError> {
        let Some(mut publisher) = self.shared.publisher() else {
            return Err(Unavailable::NotConnected.into());
        };
        let channel = self.shared.channel(topic);
        let head = update.announce.then(|| protocol::presence_head(topic));
        let call = script::PresenceCall {
            keys: script::PresenceKeys::new(&self.shared.prefix, topic),
            channel: &channel,
            head: head.as_deref(),
            update,
            sharded: self.shared.sharded,
        };
        let done = publisher.presence(call, read).await;
        done.map_err(|error| {
            tracing::debug!(topic, %error, "presence call to Redis failed");
            if error.is_unrecoverable_error() {
                publisher.lost.notify_one();
            }
            broker_error(error, self.config.command_timeout)
        })
    }

    /// The publishing connection, or the error a publish answers while
    /// there is none.
    fn publisher(&self, topic: &str) -> Result<link::Publisher, BrokerError> {
        self.shared.publisher().ok_or_else(|| {
            bump(&self.shared.counters.publish_errors);
            // The loss itself was logged once, at warn; one line per refused
            // publish would flood the log during an outage.
            tracing::debug!(topic, "publish refused: not connected to Redis");
            Unavailable::NotConnected.into()
        })
    }

    /// Counts, logs and converts a failed publish.
    fn publish_failed(
        &self,
        topic: &str,
        publisher: &link::Publisher,
        error: RedisError,
    ) -> BrokerError {
        bump(&self.shared.counters.publish_errors);
        tracing::warn!(topic, %error, "publish to Redis failed");
        if error.is_unrecoverable_error() {
            // Tell the supervisor now rather than at its next ping.
            publisher.lost.notify_one();
        }
        broker_error(error, self.config.command_timeout)
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

    async fn publish(
        &self,
        topic: &str,
        frame: Frame,
        once: Option<Idempotency<'_>>,
    ) -> Result<(), BrokerError> {
        let mut publisher = self.publisher(topic)?;
        let channel = self.shared.channel(topic);
        let once = once.map(|once| (self.shared.once_key(topic, once.key), once.window));
        let published = publisher
            .publish(topic, &channel, frame.as_bytes(), once)
            .await;
        published.map_err(|error| self.publish_failed(topic, &publisher, error))
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
        let mut publisher = self.publisher(topic)?;
        let (head, tail) = protocol::split_event(&frame)
            .ok_or_else(|| BrokerError::Invalid("not an event frame".into()))?;
        let channel = self.shared.channel(topic);
        let append = script::Append {
            topic,
            keys: self.shared.keys(topic),
            once: once.map(|once| (self.shared.once_key(topic, once.key), once.window)),
            channel: &channel,
            head,
            tail,
            retention,
            timeout: self.config.command_timeout,
            sharded: self.shared.sharded,
        };
        let appended = publisher.append(append).await;
        appended.map_err(|error| self.publish_failed(topic, &publisher, error))
    }

    async fn history(
        &self,
        topic: &str,
        query: HistoryQuery<'_>,
        retention: &Retention,
    ) -> Result<History, BrokerError> {
        let mut publisher = self.publisher(topic)?;
        let keys = self.shared.keys(topic);
        let read = publisher.read(keys, query, retention).await;
        read.map_err(|error| {
            tracing::debug!(topic, %error, "reading history from Redis failed");
            if error.is_unrecoverable_error() {
                publisher.lost.notify_one();
            }
            broker_error(error, self.config.command_timeout)
        })
    }

    fn supports_presence(&self) -> bool {
        true
    }

    fn is_connected(&self) -> bool {
        // The link's state, which both the single and the cluster
        // supervisors keep (a cluster keeps its publisher while it heals).
        self.shared
            .counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn update_presence(
        &self,
        topic: &str,
        update: PresenceUpdate<'_>,
    ) -> Result<(), BrokerError> {
        self.run_presence(topic, update, script::PresenceRead::Nothing)
            .await
            .map(drop)
    }

    async fn presence(&self, topic: &str, announce: bool) -> Result<Presence, BrokerError> {
        // An empty batch: the script only sweeps, then reads.
        let update = PresenceUpdate::new(&[], &[], Duration::ZERO, announce);
        self.run_presence(topic, update, script::PresenceRead::Answer)
            .await
    }

    async fn resend_presence(&self, topic: &str, asker: Option<u64>) -> Result<(), BrokerError> {
        // Published on the topic's channel, after whatever joins and leaves
        // came before it: the instance's clients get the list in order with
        // them, where a read and a local delivery could cross one.
        let update = PresenceUpdate::new(&[], &[], Duration::ZERO, true);
        let mut marker = self.shared.resend_marker();
        if let Some(asker) = asker {
            marker = format!("{marker}{asker}:");
        }
        self.run_presence(topic, update, script::PresenceRead::Resend(&marker))
            .await
            .map(drop)
    }

    async fn announce_presence(&self, topic: &str) -> Result<(), BrokerError> {
        let update = PresenceUpdate::new(&[], &[], Duration::ZERO, true);
        self.run_presence(topic, update, script::PresenceRead::Resend(EVERY_INSTANCE))
            .await
            .map(drop)
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
    /// Cluster mode: sharded Pub/Sub, and channels named with the topic as
    /// a hash tag (`<prefix>{<topic>}`), in the slot of the topic's keys.
    sharded: bool,
    /// The service's fan-out, set by `attach`.
    incoming: OnceLock<Incoming>,
    counters: LinkCounters,
    /// The publishing connection while the broker is connected; `None` while
    /// it reconnects. A std lock, held only to clone or replace the handle,
    /// never across an `.await`.
    publisher: RwLock<Option<link::Publisher>>,
    /// Names this broker among the instances, in the presence lists it
    /// asks Redis to publish for itself alone.
    node: Box<str>,
    /// Topics whose sharded subscription Redis ended (`SUNSUBSCRIBE`
    /// pushes), for the cluster supervisor to look at.
    dropped: Mutex<Vec<Box<str>>>,
    dropped_notify: Notify,
}

impl Shared {
    fn new(config: &RedisConfig, sharded: bool) -> Arc<Self> {
        Arc::new(Self {
            prefix: config.channel_prefix.as_bytes().into(),
            sharded,
            incoming: OnceLock::new(),
            counters: LinkCounters::default(),
            publisher: RwLock::new(None),
            node: crate::util::random_id().into(),
            dropped: Mutex::default(),
            dropped_notify: Notify::new(),
        })
    }

    /// `@<node>:`: what a presence list published for this instance alone
    /// starts with (one for every instance starts with [`EVERY_INSTANCE`]).
    fn resend_marker(&self) -> String {
        format!("@{}:", self.node)
    }

    /// Notes a `SUNSUBSCRIBE` push (`[channel, count]`) for the supervisor.
    fn dropped(&self, data: Vec<Value>) {
        let Some(Value::BulkString(channel)) = data.into_iter().next() else {
            return;
        };
        let Some(topic) = self.topic(&channel) else {
            return;
        };
        self.dropped.lock().push(topic.into());
        self.dropped_notify.notify_one();
    }

    /// The topics of the `SUNSUBSCRIBE` pushes since the last call.
    fn take_dropped(&self) -> Vec<Box<str>> {
        std::mem::take(&mut *self.dropped.lock())
    }

    /// `prefix + topic`, or in cluster mode `prefix + {topic}`.
    fn channel(&self, topic: &str) -> Vec<u8> {
        let mut channel = Vec::with_capacity(self.prefix.len() + topic.len() + 2);
        channel.extend_from_slice(&self.prefix);
        if self.sharded {
            channel.push(b'{');
        }
        channel.extend_from_slice(topic.as_bytes());
        if self.sharded {
            channel.push(b'}');
        }
        channel
    }

    /// The topic of `channel`, if it is one of ours.
    fn topic<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let mut topic = channel.strip_prefix(&*self.prefix)?;
        if self.sharded {
            topic = topic.strip_prefix(b"{")?.strip_suffix(b"}")?;
        }
        std::str::from_utf8(topic).ok()
    }

    /// Where an idempotency key of `topic` is remembered.
    fn once_key(&self, topic: &str, key: &str) -> Vec<u8> {
        script::once_key(&self.prefix, topic, key)
    }

    /// The keys of `topic`'s history.
    fn keys(&self, topic: &str) -> script::Keys {
        script::Keys::new(&self.prefix, topic)
    }

    fn publisher(&self) -> Option<link::Publisher> {
        self.publisher.read().clone()
    }

    fn set_publisher(&self, publisher: Option<link::Publisher>) {
        self.counters
            .connected
            .store(publisher.is_some(), std::sync::atomic::Ordering::Relaxed);
        *self.publisher.write() = publisher;
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
        let Some(incoming) = self.incoming.get() else {
            return;
        };
        if payload.first() == Some(&b'@') {
            self.deliver_presence(topic, &payload, incoming);
            return;
        }
        bump(&self.counters.received);
        let mut payload = Bytes::from(payload);
        // An event of a topic with history comes as `<offset>:<epoch>:<frame>`.
        let position =
            script::sequenced(&payload).map(|(offset, epoch, at)| (offset, epoch.len(), at));
        let head = position.map(|(_, _, at)| payload.split_to(at));
        // Checked once per event and instance, where it comes in from the
        // network; then shared by every local subscriber.
        let Ok(frame) = Frame::from_utf8(payload) else {
            tracing::warn!(topic, "dropped a message from Redis that is not UTF-8");
            return;
        };
        match (position, &head) {
            (Some((offset, length, at)), Some(head)) => {
                // Checked as UTF-8 by `sequenced`.
                let epoch = std::str::from_utf8(&head[at - 1 - length..at - 1]).unwrap_or_default();
                incoming.deliver_at(topic, offset, epoch, frame);
            }
            _ => incoming.deliver(topic, frame),
        }
    }
}

/// What a presence list published for every instance starts with.
const EVERY_INSTANCE: &str = "@*:";

impl Shared {
    /// A presence list published for one instance (`@<node>:<users>`, the
    /// users as the JSON array of `HGETALL`): handed to the local
    /// subscribers if it is this one's, dropped otherwise.
    fn deliver_presence(&self, topic: &str, payload: &[u8], incoming: &Incoming) {
        let marker = self.resend_marker();
        let Some(rest) = payload
            .strip_prefix(marker.as_bytes())
            .or_else(|| payload.strip_prefix(EVERY_INSTANCE.as_bytes()))
        else {
            return;
        };
        // `@<instance>:<asker>:<list>` answers one asker; the list is JSON,
        // which never starts with a digit.
        let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
        let (asker, users) = match rest[digits..].split_first() {
            Some((b':', users)) if digits > 0 => {
                let asker = std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|digits| digits.parse().ok());
                (asker, users)
            }
            _ => (None, rest),
        };
        // Lua's cjson writes an empty table as an object.
        let flat: Vec<String> = match serde_json::from_slice::<serde_json::Value>(users) {
            Ok(serde_json::Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(topic, %error, "dropped a presence list from Redis that is not JSON");
                return;
            }
        };
        let mut counts = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(user), Some(count)) = (flat.next(), flat.next()) {
            counts.push((user, count.parse().unwrap_or(0)));
        }
        let presence = Presence::from_counts(counts);
        incoming.presence(topic, asker, &presence);
    }
}

/// Why Redis could not be used; the source of [`BrokerError::Unavailable`]
/// or, for settings that cannot work, of [`BrokerError::Invalid`].
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
        match cause {
            // Settings a retry cannot fix.
            Unavailable::NoNodes | Unavailable::InvalidUrl(_) | Unavailable::Config(_) => {
                BrokerError::Invalid(Box::new(cause))
            }
            _ => BrokerError::Unavailable(Box::new(cause)),
        }
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
            sharded: false,
            incoming: OnceLock::new(),
            counters: LinkCounters::default(),
            publisher: RwLock::new(None),
            node: "n".into(),
            dropped: Mutex::default(),
            dropped_notify: Notify::new(),
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
        let _ = shared
            .incoming
            .set(Incoming::new(move |topic, frame: Frame| {
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
        assert_eq!(seen[0].1.as_bytes(), &frame[..]);
        assert_eq!(shared.counters.snapshot().received, 1);
    }
}
