//! Presence: who is subscribed to a topic, on every instance.
//!
//! A [`PresencePolicy`] on the service names the topics whose subscribers
//! are tracked, and whether their subscribers hear `join` and `leave`
//! events. Each instance reports its own subscribers to the broker in
//! batches and refreshes them while they stay; the broker keeps one table
//! per topic for every instance. Entries of an instance that died without
//! cleaning up expire: they drop out within [`PresencePolicy::bound`].
//!
//! What a client sees (`$presence`, and the events) is in the protocol's
//! documentation; [`Service::presence`](crate::Service::presence) and
//! [`Context::presence`](crate::Context::presence) give the same to
//! server code.

use std::fmt;
use std::time::Duration;

use crate::broker::BrokerError;
use crate::pattern::Rules;

pub(crate) mod asks;
pub(crate) mod keeper;

pub use crate::broker::{Presence, PresenceUpdate};

/// The shortest time to live an entry may have: refreshes come every third
/// of it, and shorter would mostly measure the broker's round trips.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Which topics track presence, and which of them announce joins and
/// leaves: rules by topic pattern (a name, or a prefix and `*`), then an
/// optional function; the first rule that matches wins. The default tracks
/// none: tracking costs a broker write per subscribe and per leave, so a
/// topic pays for it only when the application asks.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::presence::{PresencePolicy, Tracking};
///
/// let policy = PresencePolicy::none()
///     .track("room:*", Tracking::Announced)
///     .track("lobby", Tracking::Quiet)
///     .ttl(Duration::from_secs(30));
/// assert_eq!(policy.tracking("room:1"), Some(Tracking::Announced));
/// assert_eq!(policy.tracking("lobby"), Some(Tracking::Quiet));
/// assert_eq!(policy.tracking("ticker"), None);
/// assert_eq!(policy.bound(), Duration::from_secs(40));
/// ```
#[derive(Clone)]
pub struct PresencePolicy {
    rules: Rules<Tracking>,
    ttl: Duration,
    linger: Duration,
    announcements: u32,
}

/// How a topic's presence is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tracking {
    /// Presence can be read (`$presence`); no events.
    Quiet,
    /// Presence can be read, and subscribers get
    /// `{"topic": .., "join": {"user": ..}}` when a user's first connection
    /// subscribes and `{"topic": .., "leave": {"user": ..}}` when its last
    /// one goes. Every join and leave is a frame to every subscriber: keep
    /// it off for topics that may have more than about a thousand members
    /// (the cost is measured in the project's performance notes).
    Announced,
}

impl Default for PresencePolicy {
    fn default() -> Self {
        Self {
            rules: Rules::default(),
            ttl: Self::DEFAULT_TTL,
            linger: Self::DEFAULT_LINGER,
            announcements: Self::DEFAULT_ANNOUNCEMENTS,
        }
    }
}

impl PresencePolicy {
    /// How long an entry lives without a refresh: 30 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
    /// How long a connection that left still counts: 2 s.
    pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);
    /// Joins and leaves one instance announces per announced topic and
    /// second: 50.
    pub const DEFAULT_ANNOUNCEMENTS: u32 = 50;

    /// No topic tracks presence.
    pub fn none() -> Self {
        Self::default()
    }

    /// Topics matching `pattern` (a name, or a prefix and `*`) track
    /// presence as `tracking` says.
    pub fn track(mut self, pattern: &str, tracking: Tracking) -> Self {
        self.rules.push(pattern, tracking);
        self
    }

    /// Asks `decide` about topics no pattern matched.
    pub fn track_with(
        mut self,
        decide: impl Fn(&str) -> Option<Tracking> + Send + Sync + 'static,
    ) -> Self {
        self.rules.set_hook(decide);
        self
    }

    /// How long the broker keeps an instance's entry without a refresh
    /// (at least [`MIN_TTL`]). Each instance refreshes its entries every
    /// third of it; an instance that dies without cleaning up drops out
    /// within [`bound`](Self::bound). Default [`DEFAULT_TTL`](Self::DEFAULT_TTL).
    /// Every instance of an application must use the same: the broker's
    /// keys expire two times the time to live of the last write.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(MIN_TTL);
        self
    }

    /// How long a connection still counts after it leaves (default
    /// [`DEFAULT_LINGER`](Self::DEFAULT_LINGER)): a page that reloads, or a
    /// client that reconnects to another instance, comes back within it and
    /// causes no `leave` and `join`. [`Duration::ZERO`] removes at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Joins and leaves this instance announces per announced topic and
    /// second, with a burst of as many (default
    /// [`DEFAULT_ANNOUNCEMENTS`](Self::DEFAULT_ANNOUNCEMENTS); at least 1).
    ///
    /// Past it, the topic's changes are still written, not announced, and
    /// a second later every subscriber gets the whole list instead
    /// (`{"topic": .., "presence": {..}}`), at its place among the joins
    /// and leaves: clients that open and close under new names in a loop
    /// cost each member one list a second, not two frames per visit.
    pub fn max_announcements(mut self, per_second: u32) -> Self {
        self.announcements = per_second.max(1);
        self
    }

    /// See [`max_announcements`](Self::max_announcements).
    pub fn announcements_per_second(&self) -> u32 {
        self.announcements
    }

    /// How `topic`'s presence is kept; `None`: it is not tracked.
    pub fn tracking(&self, topic: &str) -> Option<Tracking> {
        self.rules.find(topic)
    }

    /// Whether any topic may track presence under this policy.
    pub fn tracks_any(&self) -> bool {
        self.rules.any()
    }

    /// The time to live of an entry.
    pub fn entry_ttl(&self) -> Duration {
        self.ttl
    }

    /// How often an instance refreshes its entries: a third of the time to
    /// live, so that two refreshes can fail before an entry expires.
    pub fn refresh_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long a connection still counts after it leaves.
    pub fn linger_time(&self) -> Duration {
        self.linger
    }

    /// The longest a dead instance's connections still count: their last
    /// refresh lives the time to live, and the other instances sweep the
    /// expired entries at their next refresh. A `$presence` read sweeps
    /// too, so it never counts them past the time to live.
    pub fn bound(&self) -> Duration {
        self.ttl + self.refresh_every()
    }
}

impl fmt::Debug for PresencePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresencePolicy")
            .field("rules", &self.rules)
            .field("ttl", &self.ttl)
            .field("linger", &self.linger)
            .field("announcements", &self.announcements)
            .finish()
    }
}

/// Why presence could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The service's [`PresencePolicy`] does not track this topic.
    #[error("presence is not tracked for topic `{0}`")]
    NotTracked(String),
    /// The broker could not be read.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl PresenceError {
    /// The error code a client is answered with: 400 for a topic not
    /// tracked, 503 when the broker failed.
    pub(crate) fn code(&self) -> u16 {
        match self {
            Self::NotTracked(_) => crate::protocol::error_code::BAD_REQUEST,
            Self::Broker(_) => crate::protocol::error_code::UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_then_the_hook() {
        let policy = PresencePolicy::none()
            .track("a", Tracking::Quiet)
            .track("a*", Tracking::Announced)
            .track_with(|topic| (topic == "b").then_some(Tracking::Quiet));
        assert_eq!(policy.tracking("a"), Some(Tracking::Quiet));
        assert_eq!(policy.tracking("ab"), Some(Tracking::Announced));
        assert_eq!(policy.tracking("b"), Some(Tracking::Quiet));
        assert_eq!(policy.tracking("c"), None);
    }

    #[test]
    fn the_ttl_has_a_floor() {
        let policy = PresencePolicy::none().ttl(Duration::from_millis(10));
        assert_eq!(policy.entry_ttl(), MIN_TTL);
    }

    #[test]
    fn string_ids_are_keyed_by_their_text() {
        let presence =
            Presence::from_counts([(r#""a\"b""#.to_owned(), 1), (r#"{"id":1}"#.to_owned(), 2)]);
        assert_eq!(presence.users["a\"b"], 1);
        assert_eq!(presence.users[r#"{"id":1}"#], 2);
        assert_eq!(presence.clients, 3);
    }
}
