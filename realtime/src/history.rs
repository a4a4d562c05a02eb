//! Positions and history: which topics keep their recent events, where a
//! topic stands, and what a subscriber that comes back may ask for.
//!
//! A topic with history gives every event a position: an offset (+1 per
//! event, per topic) and an epoch (a short random string that changes only
//! when the history itself was lost, e.g. Redis restarted empty). A client
//! that resumes with the last position it saw gets exactly the events it
//! missed, or is told that they are gone. The application picks the topics
//! with a [`HistoryPolicy`].

use std::fmt;

use crate::pattern::Rules;

pub use crate::broker::{History, HistoryQuery, Retention, Sequenced};
pub use crate::protocol::{Position, PositionError};

/// Which topics keep history, and how much: rules by topic pattern, then
/// an optional function. The first rule that matches wins. The default
/// keeps none.
///
/// A pattern is a topic name, or a prefix followed by `*`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::history::{HistoryPolicy, Retention};
///
/// let policy = HistoryPolicy::none()
///     .keep("room:*", Retention::new(100, Duration::from_secs(600)))
///     .keep_with(|topic| topic.ends_with(":log").then(|| Retention::new(1000, Duration::from_secs(3600))));
/// assert_eq!(policy.retention("room:1").map(|r| r.size()), Some(100));
/// assert_eq!(policy.retention("job:7:log").map(|r| r.size()), Some(1000));
/// assert!(policy.retention("lobby").is_none());
/// ```
#[derive(Clone, Default)]
pub struct HistoryPolicy {
    rules: Rules<Retention>,
}

impl HistoryPolicy {
    /// No topic keeps history.
    pub fn none() -> Self {
        Self::default()
    }

    /// Topics matching `pattern` (a name, or a prefix and `*`) keep `retention`.
    pub fn keep(mut self, pattern: &str, retention: Retention) -> Self {
        self.rules.push(pattern, retention);
        self
    }

    /// Asks `decide` about topics no pattern matched.
    pub fn keep_with(
        mut self,
        decide: impl Fn(&str) -> Option<Retention> + Send + Sync + 'static,
    ) -> Self {
        self.rules.set_hook(decide);
        self
    }

    /// Whether any topic may keep history under this policy.
    pub fn keeps_any(&self) -> bool {
        self.rules.any()
    }

    /// How much of `topic`'s past to keep; `None`: nothing.
    pub fn retention(&self, topic: &str) -> Option<Retention> {
        self.rules.find(topic)
    }
}

impl fmt::Debug for HistoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryPolicy")
            .field("rules", &self.rules)
            .finish()
    }
}

/// Why a topic's history could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The service's [`HistoryPolicy`] keeps no history for this topic.
    #[error("topic `{0}` keeps no history")]
    NotKept(String),
    /// The broker could not be read.
    #[error("could not read the history")]
    Broker(#[from] crate::broker::BrokerError),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn first_matching_rule_wins() {
        let policy = HistoryPolicy::none()
            .keep("a", Retention::new(1, Duration::ZERO))
            .keep("a*", Retention::new(2, Duration::ZERO));
        assert_eq!(policy.retention("a").unwrap().size(), 1);
        assert_eq!(policy.retention("ab").unwrap().size(), 2);
        assert_eq!(policy.retention("a").unwrap().ttl(), Duration::from_secs(1));
    }
}
