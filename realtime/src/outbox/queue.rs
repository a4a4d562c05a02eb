//! One connection's own queue: what its write task writes besides topic
//! events, bounded in items and in bytes.
//!
//! Not a `tokio::sync::mpsc` channel: that allocates a block of 32 slots and
//! a cache-padded header (about 1.8 KiB) the moment it is made, and every
//! idle connection would hold them. This queue allocates nothing until the
//! first item, gives its memory back after a burst, and counts bytes, which
//! a channel cannot. Its pushers are few (the connection's read loop, and
//! whoever holds its `Context`), so a short uncontended lock costs less than
//! a lock-free list would save.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::Outbound;

/// Capacity kept once the queue is empty again; a larger buffer, left by a
/// burst, is freed.
const KEEP: usize = 32;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Past the bound in items or in bytes: the client reads too slowly.
    Full,
    /// The write task is gone; nothing more will be written.
    Closed,
}

/// A bounded queue with many pushers and one reader, the write task.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    /// How many items `state` holds, readable without the lock: the write
    /// task looks at the queue before every topic event it writes, and
    /// nearly always finds it empty.
    len: AtomicUsize,
    reader: AtomicWaker,
    max_frames: usize,
    max_bytes: usize,
    /// Bytes queued in every queue of the instance, which this one adds
    /// its own to: what `Config::max_replay_bytes` is checked against.
    total: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    /// Text bytes of the frames in `items`.
    bytes: usize,
    closed: bool,
}

impl Queue {
    /// An empty queue of at most `max_frames` items and `max_bytes` bytes of
    /// frames, whose bytes count in `total` too; it allocates nothing yet.
    pub(crate) fn new(max_frames: usize, max_bytes: usize, total: Arc<AtomicUsize>) -> Self {
        Self {
            state: Mutex::default(),
            len: AtomicUsize::new(0),
            reader: AtomicWaker::new(),
            max_frames,
            max_bytes,
            total,
        }
    }

    /// Queues `item` if it fits within both bounds.
    pub(crate) fn push(&self, item: Outbound) -> Result<(), Refused> {
        self.insert(item, true)
    }

    /// Queues `item` past the bounds: the close frame, which must follow
    /// whatever is queued, and is one item more at most once.
    pub(crate) fn push_last(&self, item: Outbound) -> Result<(), Refused> {
        self.insert(item, false)
    }

    /// Queues every item of `items`, or none of them if together they do
    /// not fit within both bounds.
    pub(crate) fn push_all(&self, items: Vec<Outbound>) -> Result<(), Refused> {
        let count = items.len();
        if count == 0 {
            return Ok(());
        }
        let size: usize = items.iter().map(Outbound::size).sum();
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.items.len() + count > self.max_frames || state.bytes + size > self.max_bytes {
                return Err(Refused::Full);
            }
            state.bytes += size;
            self.total.fetch_add(size, Ordering::Relaxed);
            state.items.extend(items);
            self.len.fetch_add(count, Ordering::Release);
        }
        self.reader.wake();
        Ok(())
    }

    fn insert(&self, item: Outbound, bounded: bool) -> Result<(), Refused> {
        let size = item.size();
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            let over = state.items.len() >= self.max_frames || state.bytes + size > self.max_bytes;
            if bounded && over {
                return Err(Refused::Full);
            }
            state.bytes += size;
            self.total.fetch_add(size, Ordering::Relaxed);
            state.items.push_back(item);
            self.len.fetch_add(1, Ordering::Release);
        }
        self.reader.wake();
        Ok(())
    }

    /// The oldest item, if any.
    pub(crate) fn try_pop(&self) -> Option<Outbound> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock();
        let item = state.items.pop_front()?;
        self.len.fetch_sub(1, Ordering::Release);
        state.bytes -= item.size();
        self.total.fetch_sub(item.size(), Ordering::Relaxed);
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items = VecDeque::new();
        }
        Some(item)
    }

    /// The oldest item, or a wake-up once there is one.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        if let Some(item) = self.try_pop() {
            return Poll::Ready(item);
        }
        self.reader.register(cx.waker());
        // A push between the first look and the registration woke nobody.
        match self.try_pop() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// Refuses every later push and drops what is queued: the write task has
    /// ended.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            self.total.fetch_sub(state.bytes, Ordering::Relaxed);
            state.bytes = 0;
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut state.items)
        };
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock guards plain data and no code that can panic runs under
        // it, so a poisoned lock still holds a consistent queue.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Queue {
    /// What is still queued leaves the instance's total with the queue.
    fn drop(&mut self) {
        let state = self.lock();
        self.total.fetch_sub(state.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    fn frame(text: &str) -> Outbound {
        Outbound::Frame(Frame::from(text.to_owned()))
    }

    fn text(item: Option<Outbound>) -> String {
        match item {
            Some(Outbound::Frame(frame)) => frame.as_str().to_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn bounded_in_items() {
        let queue = Queue::new(2, 1024, Arc::default());
        assert_eq!(queue.push(frame("a")), Ok(()));
        assert_eq!(queue.push(Outbound::Ping), Ok(()));
        assert_eq!(queue.push(frame("c")), Err(Refused::Full));
        assert_eq!(text(queue.try_pop()), "a");
        assert_eq!(queue.push(frame("c")), Ok(()));
    }

    #[test]
    fn bounded_in_bytes() {
        let queue = Queue::new(100, 10, Arc::default());
        assert_eq!(queue.push(frame("12345678")), Ok(()));
        assert_eq!(queue.push(frame("123")), Err(Refused::Full));
        assert_eq!(queue.push(frame("12")), Ok(()));
        assert_eq!(text(queue.try_pop()), "12345678");
        assert_eq!(queue.push(frame("12345678")), Ok(()));
    }

    #[test]
    fn the_close_frame_goes_past_the_bounds_behind_everything() {
        let queue = Queue::new(1, 1024, Arc::default());
        assert_eq!(queue.push(frame("a")), Ok(()));
        assert_eq!(queue.push_last(Outbound::Close(1001)), Ok(()));
        assert_eq!(text(queue.try_pop()), "a");
        assert!(matches!(queue.try_pop(), Some(Outbound::Close(1001))));
    }

    #[test]
    fn a_closed_queue_refuses_and_holds_nothing() {
        let queue = Queue::new(4, 1024, Arc::default());
        assert_eq!(queue.push(frame("a")), Ok(()));
        queue.close();
        assert_eq!(queue.push(frame("b")), Err(Refused::Closed));
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn memory_left_by_a_burst_is_given_back() {
        let queue = Queue::new(10_000, usize::MAX, Arc::default());
        for _ in 0..1000 {
            queue.push(Outbound::Ping).unwrap();
        }
        while queue.try_pop().is_some() {}
        assert_eq!(queue.lock().items.capacity(), 0);
    }
}
