//! Small tools every part of the crate may use, and that depend on nothing
//! in it: a backoff, locks that a panic does not poison, random ids, and a
//! one-way switch.

mod backoff;
mod id;
mod lock;
mod signal;

pub(crate) use backoff::{Backoff, Jitter};
pub(crate) use id::random_id;
pub(crate) use lock::{Mutex, RwLock};
pub(crate) use signal::{Fired, Signal};
