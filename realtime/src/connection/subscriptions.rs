//! The topics one connection is subscribed to, held in one place.

use std::sync::Arc;

/// A connection's subscriptions: the topic of its URL, then those added
/// with `$join`, each with the guard whose drop unsubscribes it.
///
/// Few (at most `Config::max_topics_per_connection`), so a list beats a map.
/// The URL's topic is kept apart: most connections join nothing more, and
/// an empty list allocates nothing.
#[derive(Debug)]
pub(crate) struct Subscriptions<S> {
    home: (Arc<str>, S),
    joined: Vec<(Arc<str>, S)>,
    max: usize,
}

impl<S> Subscriptions<S> {
    /// Starts with the URL's topic, which stays to the end.
    pub(crate) fn new(home: Arc<str>, subscription: S, max: usize) -> Self {
        Self {
            home: (home, subscription),
            joined: Vec::new(),
            max,
        }
    }

    /// The topic of the connection's URL.
    pub(crate) fn home(&self) -> &Arc<str> {
        &self.home.0
    }

    /// The shared name of `topic`, if the connection is subscribed to it.
    pub(crate) fn find(&self, topic: &str) -> Option<&Arc<str>> {
        std::iter::once(&self.home)
            .chain(&self.joined)
            .map(|(name, _)| name)
            .find(|name| &***name == topic)
    }

    /// Whether another subscription would pass the limit.
    pub(crate) fn is_full(&self) -> bool {
        1 + self.joined.len() >= self.max
    }

    /// The limit, for the error that refuses one more.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn add(&mut self, topic: Arc<str>, subscription: S) {
        self.joined.push((topic, subscription));
    }

    /// Ends every subscription; returns the names of the `$join`ed ones.
    pub(crate) fn into_joined(self) -> Vec<Arc<str>> {
        self.joined.into_iter().map(|(name, _)| name).collect()
    }

    /// Takes a `$join`ed topic out; `None` if the connection is not
    /// subscribed to it or it is the URL's topic, which cannot be left.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<(Arc<str>, S)> {
        let at = self.joined.iter().position(|(name, _)| &**name == topic)?;
        Some(self.joined.swap_remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_topic_cannot_be_removed() {
        let mut subscriptions = Subscriptions::new("home".into(), (), 3);
        subscriptions.add("a".into(), ());
        assert!(subscriptions.remove("home").is_none());
        assert!(subscriptions.remove("a").is_some());
        assert!(subscriptions.remove("a").is_none());
        assert_eq!(&**subscriptions.home(), "home");
    }

    #[test]
    fn counts_the_url_topic_against_the_limit() {
        let mut subscriptions = Subscriptions::new("home".into(), (), 2);
        assert!(!subscriptions.is_full());
        subscriptions.add("a".into(), ());
        assert!(subscriptions.is_full());
        assert_eq!(subscriptions.find("a").map(|name| &**name), Some("a"));
    }
}
