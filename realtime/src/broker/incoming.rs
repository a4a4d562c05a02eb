//! [`Incoming`]: where a broker hands the frames it receives.

use std::fmt;
use std::sync::Arc;

use super::Presence;
use crate::protocol::{self, Frame};

/// Where a broker hands the frames it receives: the service's local fan-out.
///
/// Cloning is cheap. Its methods never block: a frame goes in the topic's
/// ring, which every local subscriber reads.
///
/// # Examples
///
/// A function of `(topic, frame)` is enough for a test of a broker:
///
/// ```
/// use realtime::broker::Incoming;
/// use realtime::protocol::Frame;
///
/// let incoming = Incoming::new(|topic: &str, frame: Frame| println!("{topic}: {}", frame.as_str()));
/// incoming.deliver("room:1", Frame::from("{}".to_owned()));
/// ```
#[derive(Clone)]
pub struct Incoming(Arc<dyn Fanout>);

/// What an [`Incoming`] hands frames to: the service's fan-out, or a
/// recorder in a broker's tests.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use realtime::broker::{Fanout, Incoming};
/// use realtime::protocol::Frame;
///
/// /// Keeps the offsets it is given.
/// #[derive(Default)]
/// struct Offsets(Mutex<Vec<u64>>);
///
/// impl Fanout for Offsets {
///     fn deliver(&self, _topic: &str, _frame: Frame) {}
///     fn deliver_at(&self, _topic: &str, offset: u64, _epoch: &str, _frame: Frame) {
///         self.0.lock().unwrap().push(offset);
///     }
/// }
///
/// let incoming = Incoming::with_fanout(Offsets::default());
/// incoming.deliver_at("t", 7, "x7Fq", Frame::from("{}".to_owned()));
/// incoming.reconnected(); // Offsets ignores it
/// ```
pub trait Fanout: Send + Sync + 'static {
    /// One frame of a topic without positions.
    fn deliver(&self, topic: &str, frame: Frame);

    /// One event of a topic with history, at `offset` in `epoch`. The
    /// receiver fills gaps in the offsets itself.
    fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) {
        let _ = (offset, epoch);
        self.deliver(topic, frame);
    }

    /// The broker's link came back after a loss: frames published meanwhile
    /// never came, and topics with history should be read from where they
    /// stopped.
    fn reconnected(&self) {}

    /// `topic`'s whole presence, read in order with its joins and leaves
    /// ([`Broker::resend_presence`](super::Broker::resend_presence)): for
    /// every local subscriber when `asker` is `None`, else the answer to the
    /// `$presence` that asker number stands for. The default hands the list
    /// to every subscriber as a `{"topic":..,"presence":{..}}` frame and
    /// drops an answer, which only the service can route.
    fn presence(&self, topic: &str, asker: Option<u64>, presence: &Presence) {
        if asker.is_none() {
            self.deliver(topic, protocol::presence_list_frame(topic, presence));
        }
    }
}

/// A function of `(topic, frame)` as a [`Fanout`].
struct DeliverFn<F>(F);

impl<F: Fn(&str, Frame) + Send + Sync + 'static> Fanout for DeliverFn<F> {
    fn deliver(&self, topic: &str, frame: Frame) {
        (self.0)(topic, frame);
    }
}

impl Incoming {
    /// Hands every frame to `deliver(topic, frame)`, positions or not.
    pub fn new(deliver: impl Fn(&str, Frame) + Send + Sync + 'static) -> Self {
        Self(Arc::new(DeliverFn(deliver)))
    }

    /// Hands frames to `fanout`; see [`Fanout`] for an example.
    pub fn with_fanout(fanout: impl Fanout) -> Self {
        Self(Arc::new(fanout))
    }

    /// Hands one frame of `topic` to the local subscribers.
    pub fn deliver(&self, topic: &str, frame: Frame) {
        self.0.deliver(topic, frame);
    }

    /// Hands one event of a topic with history, at `offset` in `epoch`; see
    /// [`Fanout`] for an example.
    pub fn deliver_at(&self, topic: &str, offset: u64, epoch: &str, frame: Frame) {
        self.0.deliver_at(topic, offset, epoch, frame);
    }

    /// Says that the broker's link came back after a loss; see [`Fanout`]
    /// for an example.
    pub fn reconnected(&self) {
        self.0.reconnected();
    }

    /// Hands `topic`'s whole presence, read in order with its joins and
    /// leaves, to every local subscriber or to one asker; see
    /// [`Fanout::presence`].
    pub fn presence(&self, topic: &str, asker: Option<u64>, presence: &Presence) {
        self.0.presence(topic, asker, presence);
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Incoming")
    }
}
