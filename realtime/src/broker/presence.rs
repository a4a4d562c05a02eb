//! What a broker keeps of a tracked topic's presence: the answer
//! ([`Presence`]) and one instance's batch of changes ([`PresenceUpdate`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Who is in a topic, on every instance: `{"clients": 3, "users":
/// {"alice": 2, "bob": 1}}` on the wire.
///
/// A user counts once in `users` and once per connection in `clients`.
/// Users are keyed by their id as JSON, with a string id as the string
/// itself (`"alice"` is `alice`, `42` is `42`); a user id type that writes
/// some ids as strings and others as numbers can make two users share a
/// key.
///
/// # Examples
///
/// ```
/// use realtime::presence::Presence;
///
/// let presence = Presence::from_counts([("\"alice\"".to_owned(), 2), ("7".to_owned(), 1)]);
/// assert_eq!(presence.clients, 3);
/// assert_eq!(presence.users["alice"], 2);
/// assert_eq!(presence.users["7"], 1);
/// assert_eq!(
///     serde_json::to_string(&presence).unwrap(),
///     r#"{"clients":3,"users":{"7":1,"alice":2}}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Presence {
    /// Connections subscribed.
    pub clients: usize,
    /// Connections per user.
    pub users: BTreeMap<String, usize>,
}

impl Presence {
    /// Presence from each user's id as JSON and its number of connections.
    pub fn from_counts(counts: impl IntoIterator<Item = (String, usize)>) -> Self {
        let mut presence = Self::default();
        for (user, count) in counts {
            presence.clients += count;
            *presence.users.entry(user_key(user)).or_default() += count;
        }
        presence
    }
}

/// A user's key in [`Presence::users`]: a JSON string as its text, any
/// other JSON as it is.
fn user_key(json: String) -> String {
    if json.starts_with('"')
        && let Ok(text) = serde_json::from_str::<String>(&json)
    {
        return text;
    }
    json
}

/// A batch of changes to one topic's presence, from one instance: what a
/// broker applies in one step.
///
/// Each client is `<instance>:<connection>`; each user is its id as JSON.
/// `joined` also refreshes clients already there (their time to live starts
/// over). Before it applies the batch, the broker drops the entries whose
/// time to live passed. With `announce`, the broker sends
/// `{"topic": .., "join": {"user": ..}}` to the topic's subscribers when a
/// user's count goes from 0 to 1, and `leave` when it goes back to 0.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PresenceUpdate<'a> {
    /// Clients that joined, or that are refreshed, with their users.
    pub joined: &'a [(String, Arc<str>)],
    /// Clients that left.
    pub left: &'a [String],
    /// How long the joined clients' entries live without another refresh.
    pub ttl: Duration,
    /// Whether joins and leaves are announced to the topic's subscribers.
    pub announce: bool,
}

impl<'a> PresenceUpdate<'a> {
    /// A batch; see the type's documentation.
    pub fn new(
        joined: &'a [(String, Arc<str>)],
        left: &'a [String],
        ttl: Duration,
        announce: bool,
    ) -> Self {
        Self {
            joined,
            left,
            ttl,
            announce,
        }
    }
}
