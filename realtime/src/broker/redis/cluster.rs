//! Redis Cluster mode: sharded Pub/Sub (`SPUBLISH`, `SSUBSCRIBE`) through
//! the cluster client, and the supervisor that resubscribes after a node
//! comes back.
//!
//! A sharded channel lives on the master that owns its slot, so the load
//! spreads over the masters. The cluster client keeps one connection per
//! node and reconnects to a node by itself, but its own resubscription after
//! a node restart is not reliable: measured with redis 1.8 against a local
//! 3-master cluster, after one master restarted, the channels it owned
//! stayed silent (`SPUBLISH` answered 0 receivers) for as long as we
//! watched. So the supervisor does not trust it: on any disconnection push
//! (or a failed ping) it subscribes every topic again, with backoff, until
//! Redis confirms each one. `SSUBSCRIBE` of a channel the connection already
//! has is a no-op for Redis, so repeating it on the healthy shards is
//! harmless.
//!
//! Unlike the single-Redis mode, the connections are not rebuilt: while one
//! master is away, the topics on the other masters keep working, and only
//! publishes to the missing shard fail (with an error frame to the sender).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{ConnectionInfo, ProtocolVersion, RedisError};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::{Durability, RedisConfig};
use super::link::{self, OpenError, PublishConn, Publisher};
use super::supervisor::{Command, is_link_failure};
use super::{Shared, broker_error};
use crate::util::bump;

/// The subscriber and publisher cluster connections, and the signal their
/// push handlers raise on a disconnection.
pub(super) struct ClusterLink {
    pub(super) subscriber: ClusterConnection,
    pub(super) publisher: Publisher,
    pub(super) damaged: Arc<Notify>,
}

/// Connects to the cluster twice (subscriber, publisher).
pub(super) async fn open(
    nodes: &[ConnectionInfo],
    config: &RedisConfig,
    shared: &Arc<Shared>,
) -> Result<ClusterLink, OpenError> {
    let damaged = Arc::new(Notify::new());
    let builder = || {
        ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            // One retry follows a MOVED redirection after a failover; the
            // overall timeout keeps the whole command, retries included,
            // within the command timeout, so a publish never hangs.
            .retries(1)
            .overall_response_timeout(Some(config.command_timeout))
    };
    let subscriber = builder()
        .push_sender(link::subscriber_pushes(
            Arc::clone(shared),
            Arc::clone(&damaged),
        ))
        .build()
        .map_err(OpenError::Failed)?;
    let publisher = builder()
        .push_sender(link::publisher_pushes(Arc::clone(&damaged)))
        .build()
        .map_err(OpenError::Failed)?;
    let connect = |client: ::redis::cluster::ClusterClient| async move {
        match tokio::time::timeout(config.connect_timeout, client.get_async_connection()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) if error.is_timeout() => Err(OpenError::Timeout(config.connect_timeout)),
            Ok(Err(error)) => Err(OpenError::Failed(error)),
            Err(_) => Err(OpenError::Timeout(config.connect_timeout)),
        }
    };
    let subscriber = connect(subscriber).await?;
    let mut publisher = connect(publisher).await?;
    // On every master (`SCRIPT LOAD` goes to all of them), so that no
    // publish meets a missing script at first.
    super::script::load(&mut publisher)
        .await
        .map_err(OpenError::Failed)?;
    // A cluster connection reaches several Redis processes: the scripts
    // look up the `run_id` of the one they run on.
    let run = match config.durability {
        Durability::Durable => "*",
        Durability::Volatile => "",
    };
    Ok(ClusterLink {
        subscriber,
        publisher: Publisher::new(
            PublishConn::Cluster(publisher),
            Arc::clone(&damaged),
            run.into(),
        ),
        damaged,
    })
}

/// Runs the subscriber side of a cluster-mode broker.
pub(super) struct ClusterSupervisor {
    pub(super) config: RedisConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) topics: HashSet<Box<str>>,
    pub(super) link: ClusterLink,
}

/// A resubscription that is due.
#[derive(Debug, Clone, Copy)]
struct Repair {
    at: Instant,
    attempt: u32,
}

impl ClusterSupervisor {
    pub(super) async fn run(mut self) {
        let period = self.config.ping_interval;
        let mut watchdog = tokio::time::interval_at(Instant::now() + period, period);
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut repair: Option<Repair> = None;
        let damaged = Arc::clone(&self.link.damaged);
        loop {
            // A far deadline stands in when no repair is due; the branch is
            // disabled then anyway.
            let due = repair.map_or_else(|| Instant::now() + Duration::from_secs(3600), |r| r.at);
            tokio::select! {
                biased;
                () = damaged.notified() => {
                    self.damage("a cluster node closed its connection", &mut repair);
                }
                () = self.shared.dropped_notify.notified() => {
                    // Redis drops the sharded subscriptions of a slot that
                    // moves to another master (a reshard, a failover). The
                    // broker's own unsubscribes are confirmed the same way,
                    // but their topics have left the set by then.
                    let dropped = self.shared.take_dropped();
                    if dropped.iter().any(|topic| self.topics.contains(topic)) {
                        self.damage("Redis dropped a sharded subscription (its slot moved)", &mut repair);
                    }
                }
                _ = watchdog.tick() => {
                    // PING goes to every master: a frozen one fails it.
                    let mut subscriber = self.link.subscriber.clone();
                    if let Err(error) = ::redis::cmd("PING").exec_async(&mut subscriber).await {
                        tracing::debug!(%error, "cluster ping failed");
                        self.damage("the watchdog's ping failed", &mut repair);
                    }
                }
                () = tokio::time::sleep_until(due), if repair.is_some() => {
                    let attempt = repair.map_or(0, |r| r.attempt);
                    repair = self.resubscribe(attempt).await;
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { break };
                    self.apply(command, &mut repair).await;
                }
            }
        }
        self.shared.set_publisher(None);
    }

    /// Notes that some subscriptions may be gone, and schedules a
    /// resubscription unless one is pending.
    fn damage(&self, cause: &str, repair: &mut Option<Repair>) {
        if repair.is_some() {
            return;
        }
        bump(&self.shared.counters.disconnects);
        self.shared
            .counters
            .connected
            .store(false, Ordering::Relaxed);
        tracing::warn!(
            cause,
            topics = self.topics.len(),
            "lost a Redis Cluster connection; resubscribing"
        );
        *repair = Some(Repair {
            at: Instant::now() + self.config.backoff(0),
            attempt: 0,
        });
    }

    /// Subscribes every topic again; the next repair if some failed.
    async fn resubscribe(&self, attempt: u32) -> Option<Repair> {
        let channels: Vec<Vec<u8>> = self.topics.iter().map(|t| self.shared.channel(t)).collect();
        // One at a time, on purpose. While a master is being reconnected,
        // a command for its slots goes to another node, is redirected, and
        // the cluster client opens a new connection for the redirect;
        // concurrent redirects each open one, only the last is kept, and the
        // subscriptions made on the others vanish with them (measured: with
        // 64 in flight, the restarted master's channels stayed
        // unsubscribed). Sequential commands find the first new connection
        // in place and all land on it.
        let mut failed: Option<RedisError> = None;
        let mut subscriber = self.link.subscriber.clone();
        for channel in &channels {
            if let Err(error) = subscriber.ssubscribe(channel).await {
                failed = Some(error);
                break;
            }
        }
        if failed.is_none() {
            // A master that came back empty has no scripts.
            let mut publisher = self.link.publisher.clone();
            if let Err(error) = publisher.load_scripts().await {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            bump(&self.shared.counters.connect_failures);
            tracing::warn!(attempt, %error, topics = channels.len(), "resubscribing to Redis Cluster failed; retrying");
            let attempt = attempt.saturating_add(1);
            return Some(Repair {
                at: Instant::now() + self.config.backoff(attempt),
                attempt,
            });
        }
        self.shared
            .counters
            .resubscribes
            .fetch_add(channels.len() as u64, Ordering::Relaxed);
        bump(&self.shared.counters.reconnects);
        crate::telemetry::broker_reconnected();
        self.shared
            .counters
            .connected
            .store(true, Ordering::Relaxed);
        tracing::info!(
            topics = channels.len(),
            "resubscribed every topic to Redis Cluster"
        );
        if let Some(incoming) = self.shared.incoming.get() {
            incoming.reconnected();
        }
        None
    }

    async fn apply(&mut self, command: Command, repair: &mut Option<Repair>) {
        let mut subscriber = self.link.subscriber.clone();
        match command {
            Command::Subscribe(topic, reply) => {
                if reply.is_closed() || self.topics.contains(&topic) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let channel = self.shared.channel(&topic);
                match subscriber.ssubscribe(&channel).await {
                    Ok(()) => {
                        if reply.send(Ok(())).is_err() {
                            // The caller gave up: undo, best effort.
                            let _ = subscriber.sunsubscribe(&channel).await;
                            return;
                        }
                        self.topics.insert(topic);
                    }
                    Err(error) => {
                        bump(&self.shared.counters.subscribe_errors);
                        tracing::warn!(topic = &*topic, %error, "sharded subscribe failed");
                        let doubtful = is_link_failure(&error);
                        let _ = reply.send(Err(broker_error(error, self.config.command_timeout)));
                        if doubtful {
                            // It may have reached Redis; take it back, best
                            // effort (its node may be the one that is away).
                            let _ = subscriber.sunsubscribe(&channel).await;
                            self.damage("a subscriber command failed", repair);
                        }
                    }
                }
            }
            Command::Unsubscribe(topic, reply) => {
                let _ = reply.send(Ok(()));
                if !self.topics.remove(&topic) {
                    return;
                }
                let channel = self.shared.channel(&topic);
                if let Err(error) = subscriber.sunsubscribe(&channel).await {
                    // A node that is away has dropped the subscription
                    // with its connection; one that is slow keeps it until
                    // the cluster client reconnects to it.
                    bump(&self.shared.counters.subscribe_errors);
                    tracing::warn!(topic = &*topic, %error, "sharded unsubscribe failed");
                }
            }
        }
        self.shared
            .counters
            .subscribed_topics
            .store(self.topics.len(), Ordering::Relaxed);
    }
}
