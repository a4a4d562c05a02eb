//! The seam between a service and its fan-out engine.
//!
//! A [`Broker`] carries serialized event frames between server instances.
//! The service subscribes its instance to a topic when the topic's first
//! local subscriber arrives and unsubscribes when the last one leaves; the
//! broker hands every frame published on a subscribed topic, by any instance,
//! to the [`Incoming`] it was attached to.
//!
//! - [`MemoryBroker`]: in process, the default; no server needed.
//! - [`RedisBroker`]: Redis Pub/Sub, for several instances.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::protocol::Frame;

mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use memory::MemoryBroker;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisBroker, RedisConfig, RedisConfigError};

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
    /// acknowledgement waits for it.
    fn publish(
        &self,
        topic: &str,
        frame: Frame,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Starts delivering `topic`'s frames to this instance.
    fn subscribe(&self, topic: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Stops delivering `topic`'s frames to this instance.
    fn unsubscribe(&self, topic: &str) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// Where a broker hands the frames it receives: the service's local fan-out.
///
/// Cloning is cheap. [`deliver`](Self::deliver) never blocks: it puts the
/// frame in the topic's ring, which every local subscriber reads.
///
/// # Examples
///
/// ```
/// use realtime::broker::Incoming;
/// use realtime::protocol::Frame;
///
/// let incoming = Incoming::new(|topic, frame| println!("{topic}: {}", frame.as_str()));
/// incoming.deliver("room:1", Frame::from("{}".to_owned()));
/// ```
#[derive(Clone)]
pub struct Incoming(Arc<Deliver>);

type Deliver = dyn Fn(&str, Frame) + Send + Sync;

impl Incoming {
    /// Wraps the function that receives `(topic, frame)`.
    pub fn new(deliver: impl Fn(&str, Frame) + Send + Sync + 'static) -> Self {
        Self(Arc::new(deliver))
    }

    /// Hands one frame of `topic` to the local subscribers.
    pub fn deliver(&self, topic: &str, frame: Frame) {
        (self.0)(topic, frame);
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Incoming")
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
}
