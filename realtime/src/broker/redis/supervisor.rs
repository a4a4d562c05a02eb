//! The one task per [`RedisBroker`](super::RedisBroker) on a single Redis
//! that owns the subscriber side: the set of topics this instance holds, the
//! commands that change it, the ping watchdog, and reconnection. (Cluster
//! mode has its own, in `cluster.rs`.)
//!
//! Everything that touches the subscription state goes through this task,
//! one command at a time, so the set of topics and the channels Redis has
//! for this connection cannot drift apart: whenever the outcome of a
//! subscriber command is uncertain (a timeout, a broken connection, an
//! unsubscribe Redis refused), the link is thrown away and a new one is
//! subscribed to exactly the set.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Client, RedisError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::config::RedisConfig;
use super::link::{self, Link};
use super::{Shared, Unavailable};
use crate::broker::BrokerError;
use crate::util::{awake, bump};

/// The answer to one subscriber command.
pub(super) type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// What the broker handle asks of the supervisor.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe(Box<str>, Reply),
    Unsubscribe(Box<str>, Reply),
}

/// Why the connected state ended.
enum Interrupted {
    /// The broker handle was dropped: stop.
    Stopped,
    /// The link is gone or cannot be trusted: reconnect.
    Lost(LossCause),
}

/// What made the supervisor give up a link; logged.
#[derive(Debug, thiserror::Error)]
enum LossCause {
    #[error("the connection was closed (Redis restarted, or killed the client)")]
    Closed,
    #[error("the watchdog's ping of the {0} connection failed: {1}")]
    Ping(Side, RedisError),
    #[error("the watchdog's ping of the {0} connection had {1}")]
    Unanswered(Side, awake::Elapsed),
    #[error("a subscriber command failed: {0}")]
    Command(RedisError),
}

/// Which of the link's two connections the watchdog found wanting.
#[derive(Debug, Clone, Copy)]
enum Side {
    Subscriber,
    Publisher,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Subscriber => "subscribing",
            Self::Publisher => "publishing",
        })
    }
}

/// The response timeout of the watchdog's own handles on the link's
/// connections: out of the way, since the watchdog bounds its wait itself.
const FAR: Duration = Duration::from_secs(3600);

pub(super) struct Supervisor {
    pub(super) client: Client,
    pub(super) config: RedisConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: mpsc::Receiver<Command>,
    /// The topics this instance holds: what a new link subscribes to.
    pub(super) topics: HashSet<Box<str>>,
}

impl Supervisor {
    /// Serves `link`, and each link after it, until the broker is dropped.
    pub(super) async fn run(mut self, mut link: Link) {
        loop {
            let cause = match self.serve(&link).await {
                Interrupted::Stopped => break,
                Interrupted::Lost(cause) => cause,
            };
            // Publishes fail fast from here on, instead of meeting a dead
            // connection or waiting for the command timeout.
            self.shared.set_publisher(None);
            bump(&self.shared.counters.disconnects);
            drop(link);
            tracing::warn!(%cause, topics = self.topics.len(), "lost the connection to Redis; reconnecting");
            let lost_at = Instant::now();
            link = match self.reconnect().await {
                Some(link) => link,
                None => break,
            };
            bump(&self.shared.counters.reconnects);
            crate::telemetry::broker_reconnected();
            tracing::info!(
                after = ?lost_at.elapsed(),
                topics = self.topics.len(),
                "reconnected to Redis and resubscribed"
            );
        }
        self.shared.set_publisher(None);
    }

    /// The connected state: applies commands, pings, and watches for the
    /// link's loss.
    async fn serve(&mut self, link: &Link) -> Interrupted {
        let mut subscriber = link.subscriber.clone();
        // The watchdog's own handles, whose waits it bounds by the time the
        // runtime was awake (`util::awake`), not by the clock: an overloaded
        // instance whose tasks wait seconds for their turn reads Redis's
        // answer late, and taking that for a silent Redis would throw away
        // a working link and, with it, what topics without history were
        // sent meanwhile. A frozen Redis is still found within
        // `ping_interval + command_timeout` when the runtime keeps up.
        let mut pinger = link.subscriber.clone();
        pinger.set_response_timeout(FAR);
        let mut publisher_pinger = link.publisher.watchdog_handle(FAR);
        let period = self.config.ping_interval;
        let mut watchdog = tokio::time::interval_at(Instant::now() + period, period);
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = link.lost.notified() => return Interrupted::Lost(LossCause::Closed),
                // Before commands, so that a stream of them cannot starve it.
                _ = watchdog.tick() => {
                    let budget = self.config.command_timeout;
                    if let Err(cause) = ping(&mut pinger, Side::Subscriber, budget).await {
                        return Interrupted::Lost(cause);
                    }
                    // The publisher too: its path can be cut while the
                    // subscriber's works, and then every publish would
                    // time out for good on a connection nobody replaces.
                    if let Err(cause) = ping(&mut publisher_pinger, Side::Publisher, budget).await {
                        return Interrupted::Lost(cause);
                    }
                    // A period from now: a turn that took longer than one
                    // (pings waiting through an overload) must not leave a
                    // tick due at once, which would win over the commands
                    // again and again.
                    watchdog.reset();
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        return Interrupted::Stopped;
                    };
                    if let Err(cause) = self.apply(&mut subscriber, command).await {
                        return Interrupted::Lost(cause);
                    }
                }
            }
        }
    }

    /// Runs one command on a working link. An error means the link must go.
    async fn apply(
        &mut self,
        subscriber: &mut MultiplexedConnection,
        command: Command,
    ) -> Result<(), LossCause> {
        match command {
            Command::Subscribe(topic, reply) => {
                // The caller gave up waiting: subscribing now would leave a
                // channel nobody asked for.
                if reply.is_closed() || self.topics.contains(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let channel = self.shared.channel(&topic);
                if let Err(error) = subscriber.subscribe(&channel).await {
                    bump(&self.shared.counters.subscribe_errors);
                    tracing::warn!(topic = &*topic, %error, "subscribe at Redis failed");
                    let _ = reply.send(Err(self.broker_error(error.clone())));
                    // After a timeout or a broken connection, whether Redis
                    // subscribed the channel is unknown: rebuild from the
                    // set, which does not hold the topic. A plain error reply
                    // (an ACL refusal, say) leaves the link as it was.
                    return match is_link_failure(&error) {
                        true => Err(LossCause::Command(error)),
                        false => Ok(()),
                    };
                }
                if reply.send(Ok(())).is_err() {
                    // The caller timed out while Redis answered: it believes
                    // the subscribe failed, so undo it.
                    return self.unsubscribe(subscriber, &topic, &channel).await;
                }
                self.topics.insert(topic);
                self.publish_topic_count();
                Ok(())
            }
            Command::Unsubscribe(topic, reply) => {
                if !self.topics.remove(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                self.publish_topic_count();
                let channel = self.shared.channel(&topic);
                // Answered Ok either way: the topic has left the set, and if
                // Redis did not confirm, the link is rebuilt without it.
                let _ = reply.send(Ok(()));
                self.unsubscribe(subscriber, &topic, &channel).await
            }
        }
    }

    async fn unsubscribe(
        &self,
        subscriber: &mut MultiplexedConnection,
        topic: &str,
        channel: &[u8],
    ) -> Result<(), LossCause> {
        match subscriber.unsubscribe(channel).await {
            Ok(()) => Ok(()),
            Err(error) => {
                bump(&self.shared.counters.subscribe_errors);
                tracing::warn!(topic, %error, "unsubscribe at Redis failed; rebuilding the connection without the topic");
                Err(LossCause::Command(error))
            }
        }
    }

    /// The disconnected state: waits out the backoff and opens a new link,
    /// answering commands meanwhile, until a link is open and resubscribed.
    /// `None` when the broker was dropped.
    async fn reconnect(&mut self) -> Option<Link> {
        let mut attempt = 0u32;
        loop {
            let wait = self.config.backoff(attempt);
            attempt = attempt.saturating_add(1);
            self.refusing(tokio::time::sleep(wait)).await?;

            let shared = Arc::clone(&self.shared);
            let client = self.client.clone();
            let config = self.config.clone();
            let opened = self
                .refusing(async move { link::open(&client, &config, &shared).await })
                .await?;
            let link = match opened {
                Ok(link) => link,
                Err(error) => {
                    bump(&self.shared.counters.connect_failures);
                    tracing::warn!(attempt, %error, source = ?std::error::Error::source(&error), "reconnecting to Redis failed");
                    continue;
                }
            };
            let channels: Vec<Vec<u8>> =
                self.topics.iter().map(|t| self.shared.channel(t)).collect();
            let mut subscriber = link.subscriber.clone();
            if let Err(error) = link::resubscribe(&mut subscriber, &channels).await {
                bump(&self.shared.counters.connect_failures);
                tracing::warn!(attempt, %error, topics = channels.len(), "resubscribing after a reconnect failed");
                continue;
            }
            self.shared
                .counters
                .resubscribes
                .fetch_add(channels.len() as u64, Ordering::Relaxed);
            self.shared.set_publisher(Some(link.publisher.clone()));
            // Events published while the link was down never came: topics
            // with history are read from where they stopped.
            if let Some(incoming) = self.shared.incoming.get() {
                incoming.reconnected();
            }
            return Some(link);
        }
    }

    /// Drives `work` to completion while answering commands as a
    /// disconnected broker must: subscribes fail at once (the route then
    /// answers 503), unsubscribes just leave the set. `None` when the broker
    /// was dropped.
    async fn refusing<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                command = self.commands.recv() => match command? {
                    Command::Subscribe(topic, reply) => {
                        bump(&self.shared.counters.subscribe_errors);
                        tracing::debug!(topic = &*topic, "subscribe refused: not connected to Redis");
                        let _ = reply.send(Err(BrokerError::Unavailable(Box::new(Unavailable::NotConnected))));
                    }
                    Command::Unsubscribe(topic, reply) => {
                        self.topics.remove(&topic);
                        self.publish_topic_count();
                        let _ = reply.send(Ok(()));
                    }
                },
            }
        }
    }

    fn publish_topic_count(&self) {
        self.shared
            .counters
            .subscribed_topics
            .store(self.topics.len(), Ordering::Relaxed);
    }

    fn broker_error(&self, error: RedisError) -> BrokerError {
        super::broker_error(error, self.config.command_timeout)
    }
}

/// The watchdog's `PING` of one connection, bounded by `budget` of the
/// runtime's awake time: a frozen Redis or a cut path fails here.
async fn ping(
    conn: &mut MultiplexedConnection,
    side: Side,
    budget: Duration,
) -> Result<(), LossCause> {
    match awake::timeout(budget, ::redis::cmd("PING").exec_async(conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(LossCause::Ping(side, error)),
        Err(elapsed) => Err(LossCause::Unanswered(side, elapsed)),
    }
}

/// Whether a failed command leaves the connection in doubt (rather than
/// being a plain error reply from a working Redis, such as a missing ACL
/// permission).
pub(super) fn is_link_failure(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
}
