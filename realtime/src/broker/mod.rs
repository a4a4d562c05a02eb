//! The seam between a service and its fan-out engine.
//!
//! A [`Broker`] carries serialized event frames between server instances.
//! The service subscribes its instance to a topic when the topic's first
//! local subscriber arrives and unsubscribes when the last one leaves; the
//! broker hands every frame published on a subscribed topic, by any instance,
//! to the [`Incoming`] it was attached to.
//!
//! - [`MemoryBroker`]: in process, the default; no server needed.
//! - [`RedisBroker`](redis::RedisBroker): Redis Pub/Sub, for several instances.

use std::future::Future;

use crate::protocol::{Frame, Position};

mod history;
mod incoming;
mod memory;
mod presence;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use history::{History, HistoryQuery, Retention, Sequenced};
pub use incoming::{Fanout, Incoming};
pub use memory::MemoryBroker;
pub use presence::{Presence, PresenceUpdate};

/// Moves serialized event frames between the instances of one application.
///
/// Frames are the exact text that clients receive; a broker never looks
/// inside them. Implementations deliver one topic's frames to every
/// instance in one and the same order, which keeps each publisher's order.
///
/// # Examples
///
/// The service drives a broker; an application only picks one:
///
/// ```
/// use realtime::{Broker, MemoryBroker};
///
/// fn takes_any_broker<B: Broker>(_broker: B) {}
/// takes_any_broker(MemoryBroker::new());
/// ```
#[diagnostic::on_unimplemented(
    note = "implement `Broker`, or use `MemoryBroker` (one process) or `RedisBroker` (several)"
)]
pub trait Broker: Send + Sync + 'static {
    /// Connects the broker to its service: frames for subscribed topics go to
    /// `incoming`. The service builder calls this once, before any other method.
    fn attach(&self, incoming: Incoming);

    /// Sends one serialized event frame to every instance subscribed to `topic`.
    ///
    /// Resolves once the broker has taken the frame; the sender's
    /// acknowledgement waits for it. With `once`, a frame whose key was
    /// already published to `topic` within the key's window is not sent
    /// again, and the call succeeds (see [`Idempotency`]).
    fn publish(
        &self,
        topic: &str,
        frame: Frame,
        once: Option<Idempotency<'_>>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Starts delivering `topic`'s frames to this instance.
    fn subscribe(&self, topic: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Stops delivering `topic`'s frames to this instance.
    fn unsubscribe(&self, topic: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Whether the broker's link works now: `/ready` answers 503 while it
    /// does not (see [`health`](crate::health)). The default: always.
    fn is_connected(&self) -> bool {
        true
    }

    /// Whether [`append`](Self::append) and [`history`](Self::history) work;
    /// a service with a history policy refuses to build on a broker without
    /// them. The default: false.
    fn supports_history(&self) -> bool {
        false
    }

    /// Publishes an event of a topic with history, in one atomic step:
    /// gives it the topic's next offset, appends it to the history (kept as
    /// `retention` says) and delivers it with its position
    /// ([`Incoming::deliver_at`]). `frame` is an event frame without an
    /// offset; the broker puts the offset in (see [`History`] for the shape).
    ///
    /// An `Ok` means the event was kept and delivered, and gives its
    /// position; an error means it was not, unless the broker's link broke
    /// after the broker took it (then it cannot know). With `once`, an
    /// event whose key was already appended to `topic` within the key's
    /// window is not appended again: the call answers the position it was
    /// given then (see [`Idempotency`]).
    ///
    /// The default refuses: a broker without history support.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use realtime::{Broker, MemoryBroker};
    /// use realtime::broker::{Idempotency, Incoming};
    /// use realtime::history::{HistoryQuery, Retention};
    /// use realtime::protocol::Frame;
    ///
    /// # block_on(async {
    /// let broker = MemoryBroker::new();
    /// broker.attach(Incoming::new(|_: &str, _: Frame| {}));
    /// let keep = Retention::new(10, Duration::from_secs(60));
    /// let frame = Frame::from(r#"{"topic":"t","event":"hi"}"#.to_owned());
    /// let position = broker.append("t", frame.clone(), &keep, None).await?;
    /// assert_eq!(position.offset, 1);
    /// // Sent again under one key: appended once.
    /// let once = Idempotency::new("k1", Duration::from_secs(120));
    /// let first = broker.append("t", frame.clone(), &keep, Some(once)).await?;
    /// let again = broker.append("t", frame, &keep, Some(once)).await?;
    /// assert_eq!((first.offset, again.offset), (2, 2));
    /// let history = broker.history("t", HistoryQuery::after(0, 10), &keep).await?;
    /// assert_eq!(history.events[0].frame.as_str(), r#"{"topic":"t","offset":1,"event":"hi"}"#);
    /// # Ok::<(), realtime::BrokerError>(())
    /// # }).unwrap();
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    fn append(
        &self,
        topic: &str,
        frame: Frame,
        retention: &Retention,
        once: Option<Idempotency<'_>>,
    ) -> impl Future<Output = Result<Position, BrokerError>> + Send {
        let _ = (topic, frame, retention, once);
        std::future::ready(Err(BrokerError::Unsupported("history")))
    }

    /// Reads `topic`'s history as `query` says (the events after an
    /// offset, or the last ones, within a count and a byte budget), oldest
    /// first, and the current position. A topic without history yet gets
    /// one now (offset 0 and a new epoch), kept as `retention` says, so that
    /// a client can resume from it. A broker stops reading as soon as it
    /// knows the answer: events of another epoch than `query.epoch`, or a
    /// `whole` read that cannot be whole, are never read.
    ///
    /// The default refuses: a broker without history support. See
    /// [`append`](Self::append) for an example.
    fn history(
        &self,
        topic: &str,
        query: HistoryQuery<'_>,
        retention: &Retention,
    ) -> impl Future<Output = Result<History, BrokerError>> + Send {
        let _ = (topic, query, retention);
        std::future::ready(Err(BrokerError::Unsupported("history")))
    }

    /// Whether [`update_presence`](Self::update_presence) and
    /// [`presence`](Self::presence) work; a service with a presence policy
    /// refuses to build on a broker without them. The default: false.
    fn supports_presence(&self) -> bool {
        false
    }

    /// Applies one instance's batch of changes to `topic`'s presence in one
    /// step, after dropping the entries whose time to live passed; with
    /// `update.announce`, sends the joins and leaves it causes to the
    /// topic's subscribers (see [`PresenceUpdate`]).
    ///
    /// The default refuses: a broker without presence support.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use realtime::{Broker, MemoryBroker};
    /// use realtime::broker::Incoming;
    /// use realtime::presence::PresenceUpdate;
    /// use realtime::protocol::Frame;
    ///
    /// # block_on(async {
    /// let broker = MemoryBroker::new();
    /// broker.attach(Incoming::new(|_: &str, _: Frame| {}));
    /// let joined = [("node1:7".to_owned(), "\"alice\"".into())];
    /// let update = PresenceUpdate::new(&joined, &[], Duration::from_secs(30), false);
    /// broker.update_presence("lobby", update).await?;
    /// let presence = broker.presence("lobby", false).await?;
    /// assert_eq!(presence.users["alice"], 1);
    /// # Ok::<(), realtime::BrokerError>(())
    /// # }).unwrap();
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    /// # }
    /// ```
    fn update_presence(
        &self,
        topic: &str,
        update: PresenceUpdate<'_>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (topic, update);
        std::future::ready(Err(BrokerError::Unsupported("presence")))
    }

    /// Reads `topic`'s presence across every instance, after dropping the
    /// entries whose time to live passed (announcing the leaves that causes
    /// when `announce` is set).
    ///
    /// The default refuses: a broker without presence support. See
    /// [`update_presence`](Self::update_presence) for an example.
    fn presence(
        &self,
        topic: &str,
        announce: bool,
    ) -> impl Future<Output = Result<Presence, BrokerError>> + Send {
        let _ = (topic, announce);
        std::future::ready(Err(BrokerError::Unsupported("presence")))
    }

    /// Reads `topic`'s whole presence and hands it to this instance through
    /// [`Incoming::presence`] with `asker`, at its place among the topic's
    /// joins and leaves: after every one published before the read, before
    /// every one published after it.
    ///
    /// The service asks for it with no asker after the broker's link came
    /// back ([`Incoming::reconnected`]): the joins and leaves published
    /// meanwhile never came, and a user who left while the broker lost its
    /// entries is never announced at all. It asks with an asker to answer
    /// a client's `$presence` of a topic it follows: an answer read apart
    /// from the stream could reach the client after a join it does not
    /// count, and the client would drop that user from its list.
    ///
    /// The default refuses: a broker without presence support (the service
    /// then answers `$presence` with [`presence`](Self::presence)). See
    /// [`update_presence`](Self::update_presence) for an example.
    fn resend_presence(
        &self,
        topic: &str,
        asker: Option<u64>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = (topic, asker);
        std::future::ready(Err(BrokerError::Unsupported("presence")))
    }

    /// Reads `topic`'s whole presence and hands it to every instance
    /// subscribed to it, through [`Incoming::presence`] with no asker, at
    /// its place among the topic's joins and leaves.
    ///
    /// An instance asks for it after a stretch of changes it wrote without
    /// announcing them, past
    /// [`PresencePolicy::max_announcements`](crate::presence::PresencePolicy::max_announcements):
    /// the list replaces what every subscriber missed.
    ///
    /// The default refuses: a broker without presence support.
    fn announce_presence(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let _ = topic;
        std::future::ready(Err(BrokerError::Unsupported("presence")))
    }
}

/// A publish that must happen at most once: a client's key for it (at most
/// [`MAX_IDEMPOTENCY_KEY_BYTES`](crate::protocol::MAX_IDEMPOTENCY_KEY_BYTES)),
/// and how long the broker remembers the key after the first publish.
///
/// A client that lost its connection before the acknowledgement cannot
/// know whether its broadcast went out; it sends it again with the same
/// key, and the broker publishes it once. Keys are per topic: two topics
/// may use one key. The broker checks and records the key in the same
/// step as the publish, so two copies racing on two instances publish once.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::broker::Idempotency;
///
/// let once = Idempotency::new("4f0c2d9e-b1a7", Duration::from_secs(120));
/// assert_eq!(once.key, "4f0c2d9e-b1a7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Idempotency<'a> {
    /// The client's key.
    pub key: &'a str,
    /// How long the key is remembered.
    pub window: std::time::Duration,
}

impl<'a> Idempotency<'a> {
    /// `key`, remembered for `window`.
    pub fn new(key: &'a str, window: std::time::Duration) -> Self {
        Self { key, window }
    }
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached; a publish reached nobody. The service
    /// answers the sender with an error frame (code 503); retrying later may work.
    #[error("broker unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker did not answer in time; a publish may or may not have
    /// reached the other instances.
    #[error("broker timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The broker's settings cannot work: a bad URL, an empty node list or
    /// an invalid configuration. Retrying does not help; the source says what
    /// to change.
    #[error("invalid broker settings")]
    Invalid(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The topic cannot be used as a channel name.
    #[error("invalid topic `{0}`")]
    InvalidTopic(String),
    /// The broker does not offer this feature (named).
    #[error("the broker does not support {0}")]
    Unsupported(&'static str),
    /// Not the broker's: a resume would have queued its missed events past
    /// the instance's `Config::max_replay_bytes`. The client is refused
    /// (HTTP 503, or error 503 for a `$join`) and resumes later, when the
    /// clients replaying now have read theirs.
    #[error("too many missed events being replayed on this instance; try again later")]
    ReplayBudget,
    /// Not the broker's: the user's budget of new topics
    /// (`Config::max_new_topics_per_user_per_min`) is spent, and the topic
    /// is new to this instance. The client is refused (HTTP 429, or error
    /// 429 for a `$join`) and may subscribe when the budget refills.
    #[error("too many new topics for this user; try again later")]
    TopicBudget,
    /// The broker's bound on the bytes of all histories is reached
    /// (`MemoryBroker::with_history_budget`; Redis answers `OOM` past
    /// `maxmemory` instead, which is [`Unavailable`](Self::Unavailable)):
    /// the event was not published. Its sender gets error 503.
    #[error("the broker's history budget is spent")]
    HistoryFull,
}
