//! One instance's pair of connections to Redis, opened together and given
//! up together: the shared publisher and the subscriber.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, RedisError, Value};
use tokio::sync::Notify;

use super::Shared;
use super::config::{Durability, RedisConfig};
use super::lanes::Lanes;

/// Channels per `SUBSCRIBE` when a new connection resubscribes every topic:
/// large enough that thousands of topics take a few round trips, small
/// enough that one command's confirmations stay well inside the command
/// timeout.
const RESUBSCRIBE_BATCH: usize = 512;

/// The working connections of one instance. Both are dropped when either
/// fails, and a new pair is opened.
pub(super) struct Link {
    /// Carries `SUBSCRIBE`, `UNSUBSCRIBE` and the watchdog's `PING`; its push
    /// handler delivers the messages.
    pub(super) subscriber: MultiplexedConnection,
    /// What `publish` clones; installed in [`Shared`] once the link is ready.
    pub(super) publisher: Publisher,
    /// Notified when either connection closes (a RESP3 disconnection push)
    /// or a publish meets a broken connection. One per link, so a late
    /// signal from an old link cannot end a new one.
    pub(super) lost: Arc<Notify>,
}

/// The shared publishing connection, cloned per publish (a clone is a
/// handle on the same connection, not a new connection).
#[derive(Clone)]
pub(super) struct Publisher {
    pub(super) conn: PublishConn,
    /// Told when a publish meets a broken connection.
    pub(super) lost: Arc<Notify>,
    /// What the history scripts compare a topic's epoch with (see
    /// `script::EPOCH_OF`): the `run_id` of the Redis this connection
    /// reaches, which a connection cannot outlive; `""` for a cluster,
    /// whose connection spans several processes (the script looks it up);
    /// `"*"` when positions are kept across restarts.
    pub(super) run: Arc<str>,
    /// Set while the scripts are being loaded again after a `NOSCRIPT`, so
    /// that a burst of refused publishes loads them once.
    reloading: Arc<AtomicBool>,
    /// A cluster's publishes, one lane per topic, so that each topic's keep
    /// their order (see [`Lanes`]).
    lanes: Arc<Lanes>,
}

/// A single Redis or a cluster.
#[derive(Clone)]
pub(super) enum PublishConn {
    /// `PUBLISH` on one multiplexed connection.
    Single(MultiplexedConnection),
    /// `SPUBLISH` through the cluster client, which routes each channel to
    /// the master that owns its slot.
    Cluster(ClusterConnection),
}

impl Publisher {
    /// Publishes `frame` of `topic` on `channel`. The number of receivers
    /// Redis returns is not needed: zero is a valid outcome (no instance
    /// follows the topic).
    ///
    /// With `once` (the key's Redis key and window), the publish-once
    /// script publishes it, unless the key was published already; a
    /// `NOSCRIPT` fails it, as for [`append`](Self::append).
    pub(super) async fn publish(
        &mut self,
        topic: &str,
        channel: &[u8],
        frame: &[u8],
        once: Option<(Vec<u8>, std::time::Duration)>,
    ) -> Result<(), RedisError> {
        if let Some((key, window)) = once {
            let sharded = matches!(self.conn, PublishConn::Cluster(_));
            let cmd = super::script::publish_once(key, channel, frame, window, sharded);
            let answer = match &mut self.conn {
                PublishConn::Single(conn) => cmd.query_async::<Value>(conn).await,
                PublishConn::Cluster(conn) => self.lanes.send(conn, topic, cmd).await,
            };
            if let Err(error) = &answer
                && super::script::is_noscript(error)
            {
                self.reload_scripts();
            }
            return answer.map(drop);
        }
        match &mut self.conn {
            PublishConn::Single(conn) => {
                ::redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(frame)
                    .exec_async(conn)
                    .await
            }
            PublishConn::Cluster(conn) => {
                let mut cmd = ::redis::cmd("SPUBLISH");
                cmd.arg(channel).arg(frame);
                self.lanes.send(conn, topic, cmd).await.map(drop)
            }
        }
    }
}

impl Publisher {
    /// A publisher on `conn`, for a Redis whose runs `run` tells apart.
    pub(super) fn new(conn: PublishConn, lost: Arc<Notify>, run: Arc<str>) -> Self {
        Self {
            conn,
            lost,
            run,
            reloading: Arc::new(AtomicBool::new(false)),
            lanes: Arc::default(),
        }
    }

    /// Publishes and appends one event of a topic with history (see
    /// [`script`](super::script)). A `NOSCRIPT` fails it, and loads the
    /// scripts again for the next ones.
    pub(super) async fn append(
        &mut self,
        append: super::script::Append<'_>,
    ) -> Result<crate::protocol::Position, RedisError> {
        let topic = append.topic;
        let cmd = super::script::append(append, &self.run);
        let answer = match &mut self.conn {
            PublishConn::Single(conn) => cmd.query_async(conn).await,
            PublishConn::Cluster(conn) => self.lanes.send(conn, topic, cmd).await,
        };
        let appended = answer.and_then(super::script::position);
        if let Err(error) = &appended
            && super::script::is_noscript(error)
        {
            self.reload_scripts();
        }
        appended
    }

    /// Loads the scripts again on a task of their own, unless that runs
    /// already.
    fn reload_scripts(&self) {
        if self.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!(
            "Redis has lost the broker's scripts (a SCRIPT FLUSH, or a restart); loading them again"
        );
        let mut conn = self.conn.clone();
        let reloading = Arc::clone(&self.reloading);
        tokio::spawn(async move {
            let loaded = match &mut conn {
                PublishConn::Single(conn) => super::script::load(conn).await,
                PublishConn::Cluster(conn) => super::script::load(conn).await,
            };
            if let Err(error) = loaded {
                tracing::warn!(%error, "loading the scripts again failed; the next refused publish retries");
            }
            reloading.store(false, Ordering::Release);
        });
    }

    /// Loads the scripts now (a cluster master came back, perhaps empty).
    pub(super) async fn load_scripts(&mut self) -> Result<(), RedisError> {
        match &mut self.conn {
            PublishConn::Single(conn) => super::script::load(conn).await,
            PublishConn::Cluster(conn) => super::script::load(conn).await,
        }
    }

    /// A handle on the publishing connection of a single Redis for the
    /// watchdog, whose response timeout is `timeout` rather than the
    /// command timeout (the watchdog bounds its wait itself). A handle is
    /// the same connection, so a cut path that leaves publishes timing out
    /// leaves this handle's `PING` unanswered too.
    ///
    /// # Panics
    ///
    /// On a cluster's publisher: cluster mode has its own watchdog.
    pub(super) fn watchdog_handle(&self, timeout: std::time::Duration) -> MultiplexedConnection {
        let PublishConn::Single(conn) = &self.conn else {
            unreachable!("a single Redis's supervisor holds a single Redis's link");
        };
        let mut conn = conn.clone();
        conn.set_response_timeout(timeout);
        conn
    }

    /// Runs the presence script (see `script::presence`).
    pub(super) async fn presence(
        &mut self,
        call: super::script::PresenceCall<'_>,
        read: super::script::PresenceRead<'_>,
    ) -> Result<crate::broker::Presence, RedisError> {
        match &mut self.conn {
            PublishConn::Single(conn) => super::script::presence(conn, call, read).await,
            PublishConn::Cluster(conn) => super::script::presence(conn, call, read).await,
        }
    }

    /// Reads a topic's history.
    pub(super) async fn read(
        &mut self,
        keys: super::script::Keys,
        query: crate::broker::HistoryQuery<'_>,
        retention: &crate::broker::Retention,
    ) -> Result<crate::broker::History, RedisError> {
        let run = Arc::clone(&self.run);
        match &mut self.conn {
            PublishConn::Single(conn) => {
                super::script::read(conn, keys, query, retention, &run).await
            }
            PublishConn::Cluster(conn) => {
                super::script::read(conn, keys, query, retention, &run).await
            }
        }
    }
}

/// Commands that may wait for the publisher connection (the redis crate's
/// pipeline buffer). Events stay in each connection's order as long as
/// fewer publishes than this are in flight on one instance at once.
const PUBLISH_QUEUE: usize = 1 << 16;

/// Opens both connections. Each attempt is bounded by the connect timeout;
/// every command on them by the command timeout.
pub(super) async fn open(
    client: &Client,
    config: &RedisConfig,
    shared: &Arc<Shared>,
) -> Result<Link, OpenError> {
    let lost = Arc::new(Notify::new());

    let base = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout));
    let subscriber = connect(
        client,
        base.clone()
            .set_push_sender(subscriber_pushes(Arc::clone(shared), Arc::clone(&lost))),
        config,
    )
    .await?;
    // The queue in front of the connection must not fill up: a PUBLISH that
    // waits for room there is not yet in order, and a later one that finds
    // room (freed meanwhile) would reach Redis first, which reorders one
    // connection's events. The queue allocates as it fills, so a deep bound
    // costs nothing until used; the default (50) is below one connection's
    // `Config::max_publishes_in_flight`.
    let mut publisher = connect(
        client,
        base.set_push_sender(publisher_pushes(Arc::clone(&lost)))
            .set_pipeline_buffer_size(PUBLISH_QUEUE),
        config,
    )
    .await?;
    // Loaded with every new connection: a Redis that restarted has none.
    super::script::load(&mut publisher)
        .await
        .map_err(OpenError::Failed)?;
    let run: Arc<str> = match config.durability {
        Durability::Durable => "*".into(),
        Durability::Volatile => run_id(&mut publisher).await?.into(),
    };
    Ok(Link {
        subscriber,
        publisher: Publisher::new(PublishConn::Single(publisher), Arc::clone(&lost), run),
        lost,
    })
}

/// The `run_id` of the Redis process `conn` reaches: random at each start,
/// so it tells a restarted Redis (or a replica promoted in its place) from
/// the one that wrote a topic's epoch.
async fn run_id(conn: &mut MultiplexedConnection) -> Result<String, OpenError> {
    let info: String = ::redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(OpenError::Failed)?;
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .ok_or(OpenError::NoRunId)
}

/// The subscriber connection's push handler: messages go to the local
/// subscribers, a disconnection to the supervisor. It runs in the
/// connection's reader and never blocks.
pub(super) fn subscriber_pushes(
    shared: Arc<Shared>,
    lost: Arc<Notify>,
) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
    move |push: PushInfo| {
        match push.kind {
            PushKind::Message | PushKind::SMessage => shared.deliver(push.data),
            PushKind::Disconnection => lost.notify_one(),
            // Also the confirmation of the broker's own `SUNSUBSCRIBE`; the
            // cluster supervisor tells the two apart.
            PushKind::SUnsubscribe => shared.dropped(push.data),
            // Subscribe and unsubscribe confirmations also come as pushes;
            // the command that caused them reports them already.
            _ => {}
        }
        Ok(())
    }
}

/// The publisher connection's push handler: it only watches for the
/// connection closing.
pub(super) fn publisher_pushes(
    lost: Arc<Notify>,
) -> impl Fn(PushInfo) -> Result<(), Infallible> + Send + Sync + 'static {
    move |push: PushInfo| {
        if push.kind == PushKind::Disconnection {
            lost.notify_one();
        }
        Ok(())
    }
}

async fn connect(
    client: &Client,
    settings: AsyncConnectionConfig,
    config: &RedisConfig,
) -> Result<MultiplexedConnection, OpenError> {
    // The redis crate bounds the TCP connect with `connection_timeout`; this
    // outer bound also covers the handshake (`HELLO 3`, `AUTH`, `SELECT`),
    // which a frozen Redis would otherwise leave hanging.
    let opening = client.get_multiplexed_async_connection_with_config(&settings);
    match tokio::time::timeout(config.connect_timeout, opening).await {
        Ok(Ok(conn)) => Ok(conn),
        // The crate's own connection timeout: the same condition.
        Ok(Err(error)) if error.is_timeout() => Err(OpenError::Timeout(config.connect_timeout)),
        Ok(Err(error)) => Err(OpenError::Failed(error)),
        Err(_) => Err(OpenError::Timeout(config.connect_timeout)),
    }
}

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("could not connect")]
    Failed(#[source] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("`INFO server` names no `run_id`")]
    NoRunId,
}

/// Subscribes a new subscriber connection to every channel in `channels`.
pub(super) async fn resubscribe(
    subscriber: &mut MultiplexedConnection,
    channels: &[Vec<u8>],
) -> Result<(), RedisError> {
    for batch in channels.chunks(RESUBSCRIBE_BATCH) {
        subscriber.subscribe(batch).await?;
    }
    Ok(())
}

/// Splits a message push (`[channel, payload]`) into its two byte strings,
/// taking ownership so that the payload becomes a `Bytes` without a copy.
pub(super) fn message_parts(data: Vec<Value>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts = data.into_iter();
    match (parts.next(), parts.next()) {
        (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
            Some((channel, payload))
        }
        _ => None,
    }
}
