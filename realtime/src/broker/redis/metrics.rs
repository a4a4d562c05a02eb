//! The counters of a [`RedisBroker`](super::RedisBroker) and their snapshot,
//! [`RedisMetrics`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A snapshot of a [`RedisBroker`](super::RedisBroker)'s counters, from
/// [`RedisBroker::metrics`](super::RedisBroker::metrics).
///
/// Counters only grow; `connected` and `subscribed_topics` are the state at
/// the time of the snapshot.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), realtime::BrokerError> {
/// use realtime::RedisBroker;
/// use realtime::RedisConfig;
///
/// let broker = RedisBroker::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let metrics = broker.metrics();
/// if !metrics.connected {
///     eprintln!("Redis is away; {} reconnects so far", metrics.reconnects);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisMetrics {
    /// Whether the broker holds working connections to Redis now.
    pub connected: bool,
    /// Topics this instance is subscribed to.
    pub subscribed_topics: usize,
    /// Times the connections to Redis were lost: closed by Redis, killed,
    /// a failed or unanswered ping, a failed subscriber command.
    pub disconnects: u64,
    /// Times the broker connected again and resubscribed after a loss.
    pub reconnects: u64,
    /// Connection attempts that failed (at startup or while reconnecting).
    pub connect_failures: u64,
    /// Topics subscribed again on a new connection after a reconnect, summed
    /// over all reconnects.
    pub resubscribes: u64,
    /// Publishes that failed: Redis unreachable, a timeout, an error reply.
    pub publish_errors: u64,
    /// Subscribes and unsubscribes that failed.
    pub subscribe_errors: u64,
    /// Frames received from Redis and handed to the local subscribers.
    pub received: u64,
}

/// The live counters behind [`RedisMetrics`], shared by the broker handle,
/// its supervisor task and its subscriber connection.
#[derive(Debug, Default)]
pub(super) struct LinkCounters {
    pub(super) connected: AtomicBool,
    pub(super) subscribed_topics: AtomicUsize,
    pub(super) disconnects: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) resubscribes: AtomicU64,
    pub(super) publish_errors: AtomicU64,
    pub(super) subscribe_errors: AtomicU64,
    pub(super) received: AtomicU64,
}

impl LinkCounters {
    pub(super) fn snapshot(&self) -> RedisMetrics {
        RedisMetrics {
            connected: self.connected.load(Ordering::Relaxed),
            subscribed_topics: self.subscribed_topics.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            resubscribes: self.resubscribes.load(Ordering::Relaxed),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            subscribe_errors: self.subscribe_errors.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}
