//! Small tools every part of the crate may use, and that depend on nothing
//! in it: a timeout counted in the runtime's awake time, a backoff, locks that a panic does not poison, random ids, a
//! one-way switch, a `u32` millisecond clock, and the bump of a statistics
//! counter.

#[cfg(feature = "redis")]
pub(crate) mod awake;
mod backoff;
mod clock;
mod id;
mod lock;
mod signal;

pub(crate) use backoff::{Backoff, Jitter};
pub(crate) use clock::millis;
pub(crate) use id::random_id;
pub(crate) use lock::{Mutex, RwLock};
pub(crate) use signal::{Fired, Signal};

use std::sync::atomic::{AtomicU64, Ordering};

/// Adds one to a statistics counter. Relaxed: each counter is read on its
/// own, never to order other memory accesses.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
