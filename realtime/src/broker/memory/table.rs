//! One topic's presence in process: the memory broker's copy of what the
//! Redis broker keeps in a hash, a sorted set and a count per user.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Presence, PresenceUpdate};

/// A user's first connection arrived, or its last one went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Join(Arc<str>),
    Leave(Arc<str>),
}

/// Clients with their users and expiry times, and connections per user.
#[derive(Debug, Default)]
pub(crate) struct Table {
    clients: HashMap<String, (Arc<str>, Instant)>,
    users: HashMap<Arc<str>, usize>,
    /// No client expires before this: a sweep before it looks at nothing.
    earliest: Option<Instant>,
}

impl Table {
    /// Drops expired clients, then applies `update`; the joins and leaves
    /// it caused, in order.
    pub(crate) fn apply(&mut self, now: Instant, update: &PresenceUpdate<'_>) -> Vec<Change> {
        let mut changes = Vec::new();
        self.sweep(now, &mut changes);
        let expires = now + update.ttl;
        for (client, user) in update.joined {
            self.earliest = Some(self.earliest.map_or(expires, |at| at.min(expires)));
            match self.clients.get_mut(client) {
                Some((_, at)) => *at = expires,
                None => {
                    self.clients
                        .insert(client.clone(), (Arc::clone(user), expires));
                    let count = self.users.entry(Arc::clone(user)).or_default();
                    *count += 1;
                    if *count == 1 {
                        changes.push(Change::Join(Arc::clone(user)));
                    }
                }
            }
        }
        for client in update.left {
            self.remove(client, &mut changes);
        }
        changes
    }

    /// Drops expired clients; the leaves that caused.
    pub(crate) fn sweep(&mut self, now: Instant, changes: &mut Vec<Change>) {
        if self.earliest.is_none_or(|earliest| earliest > now) {
            return;
        }
        self.earliest = self
            .clients
            .values()
            .map(|(_, at)| *at)
            .filter(|at| *at > now)
            .min();
        let expired: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(client, _)| client.clone())
            .collect();
        for client in expired {
            self.remove(&client, changes);
        }
    }

    fn remove(&mut self, client: &str, changes: &mut Vec<Change>) {
        let Some((user, _)) = self.clients.remove(client) else {
            return;
        };
        if let Some(count) = self.users.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                self.users.remove(&user);
                changes.push(Change::Leave(user));
            }
        }
    }

    pub(crate) fn presence(&self) -> Presence {
        Presence::from_counts(
            self.users
                .iter()
                .map(|(user, count)| (user.to_string(), *count)),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn joined(pairs: &[(&str, &str)]) -> Vec<(String, Arc<str>)> {
        pairs
            .iter()
            .map(|(client, user)| ((*client).to_owned(), Arc::from(*user)))
            .collect()
    }

    #[test]
    fn a_second_tab_neither_joins_nor_leaves() {
        let ttl = Duration::from_secs(10);
        let now = Instant::now();
        let mut table = Table::default();
        let first = joined(&[("n:1", "\"a\"")]);
        let second = joined(&[("n:2", "\"a\"")]);
        let update = PresenceUpdate::new(&first, &[], ttl, true);
        assert_eq!(table.apply(now, &update), [Change::Join("\"a\"".into())]);
        let update = PresenceUpdate::new(&second, &[], ttl, true);
        assert!(table.apply(now, &update).is_empty());
        assert_eq!(table.presence().clients, 2);
        assert_eq!(table.presence().users["a"], 2);
        let left = ["n:1".to_owned()];
        assert!(
            table
                .apply(now, &PresenceUpdate::new(&[], &left, ttl, true))
                .is_empty()
        );
        let left = ["n:2".to_owned()];
        assert_eq!(
            table.apply(now, &PresenceUpdate::new(&[], &left, ttl, true)),
            [Change::Leave("\"a\"".into())]
        );
        assert!(table.is_empty());
    }

    #[test]
    fn expired_clients_leave_and_refreshed_ones_stay() {
        let ttl = Duration::from_secs(10);
        let now = Instant::now();
        let mut table = Table::default();
        let both = joined(&[("n:1", "\"a\""), ("m:1", "\"b\"")]);
        table.apply(now, &PresenceUpdate::new(&both, &[], ttl, true));
        let refresh = joined(&[("n:1", "\"a\"")]);
        let later = now + Duration::from_secs(6);
        assert!(
            table
                .apply(later, &PresenceUpdate::new(&refresh, &[], ttl, true))
                .is_empty()
        );
        let mut changes = Vec::new();
        table.sweep(now + ttl, &mut changes);
        assert_eq!(changes, [Change::Leave("\"b\"".into())]);
        assert_eq!(table.presence().clients, 1);
    }
}
