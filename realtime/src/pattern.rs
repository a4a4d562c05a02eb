//! Topic patterns, as the policies for history and presence name topics:
//! a topic name, or a prefix followed by `*`.

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
