//! Topic patterns, as the policies for history and presence name topics:
//! a topic name, or a prefix followed by `*`; and the rules of a policy.

use std::fmt;
use std::sync::Arc;

/// One pattern of a policy.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Pattern {
    pub(crate) fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.into()),
            None => Self::Exact(pattern.into()),
        }
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(name) => **name == *topic,
            Self::Prefix(prefix) => topic.starts_with(&**prefix),
        }
    }
}

/// A policy's rules: what each pattern gives, then a function for the
/// topics no pattern matched. The first matching rule wins.
pub(crate) struct Rules<T> {
    rules: Vec<(Pattern, T)>,
    hook: Option<Arc<Hook<T>>>,
}

/// A policy's function for the topics no pattern matched.
type Hook<T> = dyn Fn(&str) -> Option<T> + Send + Sync;

impl<T> Default for Rules<T> {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            hook: None,
        }
    }
}

impl<T: Clone> Clone for Rules<T> {
    fn clone(&self) -> Self {
        Self {
            rules: self.rules.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<T: Copy> Rules<T> {
    pub(crate) fn push(&mut self, pattern: &str, value: T) {
        self.rules.push((Pattern::new(pattern), value));
    }

    pub(crate) fn set_hook(&mut self, decide: impl Fn(&str) -> Option<T> + Send + Sync + 'static) {
        self.hook = Some(Arc::new(decide));
    }

    /// Whether any topic may match.
    pub(crate) fn any(&self) -> bool {
        !self.rules.is_empty() || self.hook.is_some()
    }

    /// What `topic` gets: the first matching pattern's, else the hook's.
    pub(crate) fn find(&self, topic: &str) -> Option<T> {
        match self
            .rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
        {
            Some((_, value)) => Some(*value),
            None => self.hook.as_ref().and_then(|decide| decide(topic)),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Rules<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules")
            .field("rules", &self.rules)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_matches_a_prefix_and_nothing_else_does() {
        assert!(Pattern::new("room:*").matches("room:1"));
        assert!(Pattern::new("room:*").matches("room:"));
        assert!(!Pattern::new("room:*").matches("lobby"));
        assert!(Pattern::new("lobby").matches("lobby"));
        assert!(!Pattern::new("lobby").matches("lobby:2"));
    }
}
