//! What an idle connection holds, checked.
//!
//! The rule: an instance is meant to hold 100,000 idle connections, so every
//! byte of what a connection keeps for its whole life is paid 100,000 times.
//! That is why the read loop and the write task are blocks rather than
//! `async fn`s (which keep their arguments twice), why their rare timers are
//! boxed, why the rate limiter keeps `u32` milliseconds and an `f32`, why the
//! outbound queue allocates nothing until its first frame, and why the
//! answers of a connection that never publishes take one pointer. The
//! comments at those places say which choice they make; the sizes below are
//! the rule's check, so that a change that grows one of them fails here and
//! is made on purpose (raise the bound and say why in the commit).

use std::mem::size_of;

use super::answers::Answers;
use super::reader::RateLimiter;
use super::subscriptions::Subscriptions;
use super::writer::{Source, Sources};
use crate::hub::Event;
use crate::outbox::{Outbound, Outbox};
use crate::util::Signal;

/// Each type a connection keeps for its life, its size now, and the most
/// it may take (bytes, on a 64-bit target).
#[test]
fn what_every_connection_keeps_stays_small() {
    let sizes = [
        // The write task's state: its topics, one `Source` per
        // subscription, and the (empty while idle) buffer its own frames
        // are put together in, which took the place of tungstenite's write
        // buffer.
        ("Sources", size_of::<Sources>(), 80),
        ("Source", size_of::<Source>(), 40),
        // The read loop's state.
        ("Subscriptions", size_of::<Subscriptions<()>>(), 48),
        ("RateLimiter", size_of::<RateLimiter>(), 20),
        ("Answers", size_of::<Answers<'_>>(), 8),
        // Its flags, the count of pokes that lets a waiter skip the lock,
        // and Tokio's `Notify`.
        ("Signal", size_of::<Signal>(), 48),
        // The frame guard around the socket, less the socket.
        ("Guarded", size_of::<crate::websocket::Guarded<()>>(), 72),
        // The queue of whole frames around it (empty while idle), and where
        // the close handshake stands.
        ("Queued", size_of::<crate::websocket::Queued<()>>(), 40),
        // Shared with the service: one pointer.
        ("Outbox", size_of::<Outbox>(), 8),
        // One slot of a topic's ring, and of a connection's queue.
        ("Event", size_of::<Event>(), 40),
        ("Outbound", size_of::<Outbound>(), 40),
    ];
    let over: Vec<String> = sizes
        .iter()
        .filter(|(_, size, most)| size > most)
        .map(|(name, size, most)| format!("{name}: {size} bytes, at most {most}"))
        .collect();
    assert!(over.is_empty(), "grown: {over:?}");
}
