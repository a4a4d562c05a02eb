//! Users on this instance: how many connections each holds, and what each
//! may still publish (`Config::max_connections_per_user`,
//! `Config::max_publish_bytes_per_user_per_sec`,
//! `Config::max_new_topics_per_user_per_min`).
//!
//! The publish budget is the user's, not a connection's: a client that
//! opens more sockets, or closes one and opens another, gets no more. So a
//! user's entry stays after its last connection until its budget has
//! refilled, and is swept later.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::outbox::{Order, Status};
use crate::util::{Mutex, millis};

/// The users of one instance, by [`user_key`].
#[derive(Debug)]
pub(crate) struct Users {
    table: Mutex<HashMap<u64, User>>,
    max_connections: usize,
    rates: Arc<Rates>,
    /// The table's size past which entries without connections are swept:
    /// twice what the last sweep left, so that sweeps that free little do
    /// not run at every admission.
    sweep_at: std::sync::atomic::AtomicUsize,
    /// Orders for the read loops of connections here, by connection id,
    /// until each takes its own (`Service::subscribe_user`). Rare: one
    /// list for the instance rather than room in every user's entry.
    orders: Mutex<Vec<(u64, Order)>>,
}

#[derive(Debug)]
struct User {
    connections: usize,
    budget: Arc<PublishBudget>,
    /// The user's open connections here, by id, to end them
    /// (`Service::disconnect_user`).
    sessions: Vec<(u64, Weak<Status>)>,
}

/// The refill rates and sizes of every user's budget.
#[derive(Debug, Clone, Copy)]
struct Rates {
    bytes_per_sec: f64,
    bytes_burst: f64,
    topics_per_sec: f64,
    topics_burst: f64,
}

/// How long a whole bytes budget lasts at once: a user may publish four
/// seconds' worth in a burst, and at least one frame of the largest size.
const BYTES_BURST: Duration = Duration::from_secs(4);

impl Rates {
    fn of(config: &Config) -> Self {
        let bytes_per_sec = config.max_publish_bytes_per_user_per_sec as f64;
        let topics_per_min = f64::from(config.max_new_topics_per_user_per_min);
        Self {
            bytes_per_sec,
            bytes_burst: (bytes_per_sec * BYTES_BURST.as_secs_f64())
                .max(config.max_frame_bytes as f64),
            topics_per_sec: topics_per_min / 60.0,
            topics_burst: topics_per_min,
        }
    }
}

/// A user's publish budget: two token buckets, of bytes and of new
/// topics, shared by the user's connections on this instance. Small, as
/// there is one per user: the rates are shared, and the time is `u32`
/// milliseconds (compared by wrapping differences).
#[derive(Debug)]
pub(crate) struct PublishBudget {
    buckets: Mutex<Buckets>,
    rates: Arc<Rates>,
}

#[derive(Debug)]
struct Buckets {
    bytes: f64,
    topics: f32,
    /// When they were last refilled, in `util::millis`.
    at: u32,
}

/// A publish the user's budget does not cover; nothing was taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OverBudget {
    #[error(
        "publish budget exceeded: at most {0} bytes per second per user; this event was not published"
    )]
    Bytes(usize),
    #[error(
        "publish budget exceeded: at most {0} new topics per minute per user; this event was not published"
    )]
    Topics(u32),
}

impl OverBudget {
    /// The `budget` label of the refusal's series.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Bytes(_) => "bytes",
            Self::Topics(_) => "topics",
        }
    }
}

impl PublishBudget {
    fn new(rates: &Arc<Rates>, now: Instant) -> Self {
        Self {
            buckets: Mutex::new(Buckets {
                bytes: rates.bytes_burst,
                topics: rates.topics_burst as f32,
                at: millis(now),
            }),
            rates: Arc::clone(rates),
        }
    }

    /// Takes `bytes`, and one new topic if `new_topic`, from the budget;
    /// both or neither. A refusal is counted in
    /// `realtime_publishes_refused_total`.
    pub(crate) fn charge(&self, bytes: usize, new_topic: bool) -> Result<(), OverBudget> {
        self.take(bytes, new_topic).inspect_err(|over| {
            metrics::counter!(crate::telemetry::PUBLISHES_REFUSED, "budget" => over.label())
                .increment(1);
        })
    }

    fn take(&self, bytes: usize, new_topic: bool) -> Result<(), OverBudget> {
        let mut buckets = self.buckets.lock();
        self.refill(&mut buckets, Instant::now());
        let bytes = bytes as f64;
        if bytes > buckets.bytes {
            return Err(OverBudget::Bytes(self.rates.bytes_per_sec as usize));
        }
        if new_topic && buckets.topics < 1.0 {
            return Err(OverBudget::Topics(self.rates.topics_burst as u32));
        }
        buckets.bytes -= bytes;
        if new_topic {
            buckets.topics -= 1.0;
        }
        Ok(())
    }

    /// Gives back what [`charge`](Self::charge) took for something that
    /// then failed (the broker was away): a user is not shut out for the
    /// broker's troubles.
    pub(crate) fn refund(&self, bytes: usize, new_topic: bool) {
        let mut buckets = self.buckets.lock();
        buckets.bytes = (buckets.bytes + bytes as f64).min(self.rates.bytes_burst);
        if new_topic {
            let topics = f64::from(buckets.topics) + 1.0;
            buckets.topics = topics.min(self.rates.topics_burst) as f32;
        }
    }

    fn refill(&self, buckets: &mut Buckets, now: Instant) {
        let now = millis(now);
        let elapsed = f64::from(now.wrapping_sub(buckets.at)) / 1000.0;
        buckets.at = now;
        let rates = &*self.rates;
        buckets.bytes = (buckets.bytes + elapsed * rates.bytes_per_sec).min(rates.bytes_burst);
        let topics = f64::from(buckets.topics) + elapsed * rates.topics_per_sec;
        buckets.topics = topics.min(rates.topics_burst) as f32;
    }

    /// Whether the budget is whole again, so that forgetting it gives the
    /// user nothing it would not have had.
    fn is_full(&self, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        self.refill(&mut buckets, now);
        buckets.bytes >= self.rates.bytes_burst
            && f64::from(buckets.topics) >= self.rates.topics_burst
    }
}

/// A charge given back when dropped, unless [`kept`](Self::kept): for a
/// step that may fail after its charge.
pub(crate) struct Charged<'a> {
    budget: Option<&'a PublishBudget>,
    bytes: usize,
    new_topic: bool,
}

impl<'a> Charged<'a> {
    /// Takes the charge from `budget` (none: nothing to take).
    pub(crate) fn take(
        budget: Option<&'a PublishBudget>,
        bytes: usize,
        new_topic: bool,
    ) -> Result<Self, OverBudget> {
        if let Some(budget) = budget {
            budget.charge(bytes, new_topic)?;
        }
        Ok(Self {
            budget,
            bytes,
            new_topic,
        })
    }

    /// The step succeeded: the charge stays.
    pub(crate) fn kept(mut self) {
        self.budget = None;
    }
}

impl Drop for Charged<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.refund(self.bytes, self.new_topic);
        }
    }
}

/// A user's place among its open connections on this instance; dropping
/// it frees the place.
pub(crate) struct UserPlace {
    users: Arc<Users>,
    key: u64,
    budget: Arc<PublishBudget>,
    /// The connection's id once it is open (see [`attach`](Self::attach)).
    session: Option<u64>,
}

impl UserPlace {
    /// The user's publish budget, shared by its connections here.
    pub(crate) fn budget(&self) -> &Arc<PublishBudget> {
        &self.budget
    }

    /// Lists the open connection `id`, whose `status` ends it, among the
    /// user's sessions.
    pub(crate) fn attach(&mut self, id: u64, status: &Arc<Status>) {
        let mut table = self.users.table.lock();
        if let Some(user) = table.get_mut(&self.key) {
            // Most users hold one connection: room for exactly that.
            user.sessions.reserve_exact(1);
            user.sessions.push((id, Arc::downgrade(status)));
            self.session = Some(id);
        }
    }
}

impl Drop for UserPlace {
    fn drop(&mut self) {
        let mut table = self.users.table.lock();
        if let Some(user) = table.get_mut(&self.key) {
            if let Some(id) = self.session {
                user.sessions.retain(|(session, _)| *session != id);
            }
            user.connections -= 1;
            if user.connections == 0 && user.budget.is_full(Instant::now()) {
                table.remove(&self.key);
            }
        }
        drop(table);
        if let Some(id) = self.session {
            let mut orders = self.users.orders.lock();
            if !orders.is_empty() {
                orders.retain(|(session, _)| *session != id);
            }
        }
    }
}

/// The user already holds `Config::max_connections_per_user` here.
#[derive(Debug)]
pub(crate) struct AtCapacity;

impl Users {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            table: Mutex::default(),
            max_connections: config.max_connections_per_user,
            rates: Arc::new(Rates::of(config)),
            sweep_at: std::sync::atomic::AtomicUsize::new(0),
            orders: Mutex::default(),
        }
    }

    /// Whether [`admit`](Self::admit) would take a place now.
    pub(crate) fn would_admit(&self, user: &impl std::fmt::Debug) -> Result<(), AtCapacity> {
        let table = self.table.lock();
        match table.get(&user_key(user)) {
            Some(user) if user.connections >= self.max_connections => Err(AtCapacity),
            _ => Ok(()),
        }
    }

    /// Takes a place among `user`'s connections. `open` is the instance's
    /// connection count, which bounds the entries of users without one.
    pub(crate) fn admit(
        self: &Arc<Self>,
        user: &impl std::fmt::Debug,
        open: usize,
    ) -> Result<UserPlace, AtCapacity> {
        let key = user_key(user);
        let now = Instant::now();
        let mut table = self.table.lock();
        // Entries kept for their spent budgets: swept once they outnumber
        // the connections, and then only when the table doubled again, so
        // that a sweep's cost is paid by as many admissions.
        let sweep_at = self.sweep_at.load(std::sync::atomic::Ordering::Relaxed);
        if table.len() > sweep_at.max(2 * open + 1024) {
            table.retain(|_, user| user.connections > 0 || !user.budget.is_full(now));
            self.sweep_at
                .store(2 * table.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let user = table.entry(key).or_insert_with(|| User {
            connections: 0,
            budget: Arc::new(PublishBudget::new(&self.rates, now)),
            sessions: Vec::new(),
        });
        if user.connections >= self.max_connections {
            if user.connections == 0 {
                table.remove(&key);
            }
            return Err(AtCapacity);
        }
        user.connections += 1;
        let budget = Arc::clone(&user.budget);
        drop(table);
        Ok(UserPlace {
            users: Arc::clone(self),
            key,
            budget,
            session: None,
        })
    }

    /// The open connections here of the user whose id's `Debug` form is
    /// `debug`.
    pub(crate) fn sessions_of(&self, debug: &str) -> Vec<Arc<Status>> {
        let table = self.table.lock();
        table
            .get(&key_of_debug(debug))
            .map(|user| {
                user.sessions
                    .iter()
                    .filter_map(|(_, status)| status.upgrade())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hands `order` to each open connection here of the user whose id's
    /// `Debug` form is `debug`, and wakes their read loops; how many.
    pub(crate) fn order(&self, debug: &str, order: &Order) -> usize {
        let table = self.table.lock();
        let Some(user) = table.get(&key_of_debug(debug)) else {
            return 0;
        };
        let sessions: Vec<(u64, Arc<Status>)> = user
            .sessions
            .iter()
            .filter_map(|(id, status)| Some((*id, status.upgrade()?)))
            .collect();
        drop(table);
        let mut orders = self.orders.lock();
        orders.extend(sessions.iter().map(|(id, _)| (*id, order.clone())));
        drop(orders);
        for (_, status) in &sessions {
            status.poke();
        }
        sessions.len()
    }

    /// Takes the orders waiting for connection `id`, oldest first.
    pub(crate) fn take_orders(&self, id: u64) -> Vec<Order> {
        let mut orders = self.orders.lock();
        let mut taken = Vec::new();
        orders.retain(|(session, order)| {
            if *session == id {
                taken.push(order.clone());
            }
            *session != id
        });
        taken
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

/// The key of the user whose `Debug` form is `debug`: the same as
/// [`user_key`] of that user.
fn key_of_debug(debug: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(debug.as_bytes());
    hasher.finish()
}

/// A user's key among the counts: its `Debug` form, hashed as it is
/// written, so that nothing is allocated and any user id type works.
fn user_key(user: &impl std::fmt::Debug) -> u64 {
    use std::fmt::Write;
    use std::hash::Hasher;
    struct Hashing(std::collections::hash_map::DefaultHasher);
    impl Write for Hashing {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            self.0.write(text.as_bytes());
            Ok(())
        }
    }
    let mut hashing = Hashing(std::collections::hash_map::DefaultHasher::new());
    let _ = write!(hashing, "{user:?}");
    hashing.0.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bytes: usize, topics: u32) -> Config {
        Config {
            max_publish_bytes_per_user_per_sec: bytes,
            max_new_topics_per_user_per_min: topics,
            max_frame_bytes: 1,
            max_connections_per_user: 2,
            ..Config::default()
        }
    }

    #[test]
    fn a_budget_refuses_past_its_burst_and_takes_nothing_then() {
        let users = Arc::new(Users::new(&config(100, 2)));
        let place = users.admit(&"ann", 1).unwrap();
        let budget = place.budget();
        // Four seconds' worth of bytes at once, then no more.
        assert!(budget.charge(400, false).is_ok());
        assert_eq!(budget.charge(50, false), Err(OverBudget::Bytes(100)));
        let users = Arc::new(Users::new(&config(100, 2)));
        let place = users.admit(&"bob", 1).unwrap();
        let budget = place.budget();
        assert!(budget.charge(1, true).is_ok());
        assert!(budget.charge(1, true).is_ok());
        assert_eq!(budget.charge(1, true), Err(OverBudget::Topics(2)));
        // A refused new topic took no bytes either; an old topic still goes.
        assert!(budget.charge(398, false).is_ok());
    }

    #[test]
    fn a_users_connections_share_one_budget_that_outlives_them() {
        let users = Arc::new(Users::new(&config(100, 60)));
        let first = users.admit(&"ann", 1).unwrap();
        let second = users.admit(&"ann", 2).unwrap();
        assert!(users.admit(&"ann", 2).is_err(), "two connections at most");
        assert!(first.budget().charge(400, false).is_ok());
        assert!(second.budget().charge(1, false).is_err());
        drop((first, second));
        // Spent, so kept: a new connection gets the same empty budget.
        assert_eq!(users.len(), 1);
        let again = users.admit(&"ann", 0).unwrap();
        assert!(again.budget().charge(50, false).is_err());
    }

    #[test]
    fn a_users_key_is_found_from_its_debug_form() {
        let user = ("ann", 7);
        assert_eq!(user_key(&user), key_of_debug(&format!("{user:?}")));
        assert_ne!(
            user_key(&"ann"),
            key_of_debug("ann"),
            "the Debug form quotes"
        );
    }

    #[test]
    fn a_failed_step_gives_its_charge_back() {
        let users = Arc::new(Users::new(&config(100, 1)));
        let place = users.admit(&"ann", 1).unwrap();
        let budget = place.budget();
        drop(Charged::take(Some(budget), 400, true).unwrap());
        Charged::take(Some(budget), 400, true).unwrap().kept();
        assert_eq!(budget.charge(0, true), Err(OverBudget::Topics(1)));
    }

    #[test]
    fn a_whole_budget_is_forgotten_with_its_last_connection() {
        let users = Arc::new(Users::new(&config(100, 60)));
        drop(users.admit(&"ann", 0).unwrap());
        assert_eq!(users.len(), 0);
    }
}
