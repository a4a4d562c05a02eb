//! The write task: writes the connection's own queue and its topics' rings
//! into the socket in batches.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tungstenite::protocol::CloseFrame;

use crate::hub::{Event, Feed, Ring};
use crate::outbox::{Outbound, Status};
use crate::protocol::{Frame, close_reason};
use crate::websocket::{Outgoing, deflate, framing};

/// How often a writer that waits for a full socket looks whether its client
/// fell a whole ring behind. A ring never waits for its slowest reader, so
/// the writer finds out itself; the check costs a lock per ring and runs
/// only while the socket makes it wait.
const LAG_CHECK: Duration = Duration::from_millis(100);

/// The rings the write task reads from, one per topic the connection is
/// subscribed to. (The connection's own queue is in its [`Status`].)
pub(super) struct Sources {
    /// Few (at most `Config::max_topics_per_connection`): a list beats a map.
    pub(super) rings: Vec<Source>,
    /// The ring to look at first in the next batch, so that a busy topic
    /// cannot starve the others.
    next_ring: usize,
    /// Frames a ring may hold unread before this client counts as lagging
    /// (`Config::topic_backlog`).
    backlog: usize,
    /// Frames of at least this many bytes are sent compressed; `usize::MAX`
    /// on a socket without permessage-deflate.
    deflate_min: usize,
    /// Where the connection's own frames are put together; given back
    /// whenever the task waits for more, so an idle connection holds none.
    scratch: BytesMut,
}

impl Sources {
    pub(super) fn new(home: Feed, backlog: usize, deflate_min: usize) -> Self {
        Self {
            rings: vec![Source::from(home)],
            next_ring: 0,
            backlog,
            deflate_min,
            scratch: BytesMut::new(),
        }
    }

    /// The wire frame of a frame of the connection's own (a reply, an
    /// error, a resume's catch-up): compressed here, fast, if it is large
    /// enough, since nobody else sends it.
    fn own(&mut self, frame: &Frame) -> Bytes {
        if frame.as_bytes().len() >= self.deflate_min {
            return deflate::deflated_text(frame.as_bytes(), deflate::Effort::Own);
        }
        framing::text_in(&mut self.scratch, frame.as_bytes())
    }

    /// The wire frame of a topic's event, the same bytes for every
    /// subscriber: compressed (made once for all of them) if the socket
    /// negotiated compression. (The ring gives an event a compressed form
    /// only at the service's threshold, which is this socket's.)
    fn event(&self, event: Event) -> Bytes {
        event.into_wire(self.deflate_min != usize::MAX)
    }

    /// Whether some ring holds more unread events than the backlog: the
    /// client is being, or has been, overtaken.
    fn lagging(&self) -> bool {
        self.rings.iter().any(|feed| feed.ring.len() > self.backlog)
    }
}

/// One topic as the write task reads it: a [`Feed`] without its catch-up,
/// which went to the connection's queue before the feed came here. Kept
/// small: every connection holds one per topic for its whole life.
pub(super) struct Source {
    topic: Arc<str>,
    ring: Ring,
    /// See [`Feed::sent_through`].
    sent_through: u64,
}

impl From<Feed> for Source {
    fn from(feed: Feed) -> Self {
        debug_assert!(feed.catch_up.is_empty(), "the catch-up is queued first");
        Self {
            topic: feed.topic,
            ring: feed.ring,
            sent_through: feed.sent_through,
        }
    }
}

/// One thing to write, or a reason to stop.
enum Item {
    Queued(Outbound),
    Event(Event),
    /// The place of this connection's `$presence` answer in a ring.
    Marked,
    /// A ring overwrote events this client had not read yet.
    Lagged,
}

/// A `$presence` answer that came before its mark, or the mark that came
/// before its answer. Boxed where it is held: it is rare, and the write
/// task's state is kept by every idle connection.
enum Pending {
    Answer(Frame),
    Marked,
}

/// Runs until a close frame is sent, a write fails or the connection is
/// aborted. On its way out it aborts the connection, so the read loop stops
/// too.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice; see the body"
)]
pub(super) fn write(
    wire: Outgoing,
    mut sources: Sources,
    status: Arc<Status>,
    batch: usize,
    close_timeout: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    // A block, not an `async fn`: an `async fn` keeps its arguments twice
    // (as given and as bound), and every idle connection's task would hold
    // the copy.
    async move {
        let closed = drain(&wire, &mut sources, &status, batch).await;
        // Boxed: the task spends its life in `drain`, and the timers of its
        // end would otherwise take room in every idle connection's task.
        Box::pin(async {
            if !closed {
                let code = status.abort_code();
                if code != 0 {
                    // Best effort: a client that stopped reading may never take it.
                    let reason = status.abort_reason();
                    let _ =
                        tokio::time::timeout(close_timeout, send_close(&wire, code, reason)).await;
                }
            }
            let _ = tokio::time::timeout(close_timeout, wire.finish()).await;
        })
        .await;
        status.queue().close();
        status.abort(0);
    }
}

/// Writes until the end; returns whether a close frame was sent. Events
/// written are counted per batch, and at the end those of the last one.
async fn drain(wire: &Outgoing, sources: &mut Sources, status: &Status, batch: usize) -> bool {
    let mut events = 0;
    let closed = write_batches(wire, sources, status, batch, &mut events).await;
    if events > 0 {
        status.counters().meters.delivered.increment(events);
    }
    closed
}

/// [`drain`]'s loop; `events` counts the events written and not yet
/// counted in the service's series.
async fn write_batches(
    wire: &Outgoing,
    sources: &mut Sources,
    status: &Status,
    batch: usize,
    events: &mut u64,
) -> bool {
    // Made once and polled only when the sources or the socket make us wait:
    // each poll takes a lock. Between frames the flag is checked instead.
    let aborted = status.aborted();
    tokio::pin!(aborted);
    // A `$presence` answer waits for its mark in the topic's ring, or the
    // mark (read first) for the answer; one at a time, since the read loop
    // waits for each to be queued.
    let mut pending: Option<Box<Pending>> = None;
    loop {
        if status.is_aborted() {
            return false;
        }
        // Waits for the next item; once it does wait, the buffer the
        // connection's own frames were put together in is given back. (Not
        // looked at before: a look at an empty ring takes the lock its
        // publisher holds while it wakes every subscriber.)
        let scratch = &mut sources.scratch;
        let waiting = async {
            tokio::select! {
                biased;
                item = poll_fn(|cx| status.queue().poll_pop(cx)) => Some(Item::Queued(item)),
                item = next_event(&mut sources.rings, status) => Some(item),
                () = &mut aborted => None,
            }
        };
        let Some(first) = on_first_wait(waiting, || {
            if scratch.capacity() > 0 {
                *scratch = BytesMut::new();
            }
        })
        .await
        else {
            return false;
        };
        // Fed frame by frame (the socket's lock is taken for each, so that
        // a frame compressed here never holds it), then flushed once.
        let fed = feed(first, wire, sources, status, &mut pending, batch, events);
        match fed {
            Fed::Flush => {}
            Fed::Close(code) => {
                return tokio::select! {
                    biased;
                    () = &mut aborted => false,
                    sent = send_close(wire, code, None) => sent,
                };
            }
            Fed::Stop => return false,
        }
        // Counted once per batch, not per frame.
        if *events > 0 {
            status
                .counters()
                .meters
                .delivered
                .increment(std::mem::take(events));
        }
        // The socket takes the batch at once unless its buffer is full; an
        // abort (the client's queue filled up meanwhile) or a lag must still
        // end a wait for a client that does not read.
        let flushed = unless_stuck(aborted.as_mut(), sources, status, |cx| wire.poll_flush(cx));
        if !flushed.await {
            return false;
        }
    }
}

/// How the feeding of a batch ended.
enum Fed {
    /// The frames were queued: flush them.
    Flush,
    /// The connection's close frame comes next, after what was queued.
    Close(u16),
    /// The client fell a whole ring behind (it is being closed with
    /// 1013), or tungstenite answered its close (nothing more is sent).
    Stop,
}

/// Queues `first` and up to `batch` frames in all that are already
/// waiting. `events` counts the events among them.
fn feed(
    first: Item,
    wire: &Outgoing,
    sources: &mut Sources,
    status: &Status,
    pending: &mut Option<Box<Pending>>,
    batch: usize,
    events: &mut u64,
) -> Fed {
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(item) = next.take() {
        let is_event = matches!(item, Item::Event(_));
        let frame = match item {
            Item::Queued(Outbound::Frame(frame)) => sources.own(&frame),
            Item::Event(event) => sources.event(event),
            Item::Queued(Outbound::Answer(frame)) => match pending.take().map(|p| *p) {
                Some(Pending::Marked) => sources.own(&frame),
                _ => {
                    *pending = Some(Box::new(Pending::Answer(frame)));
                    next = try_next(sources, status);
                    continue;
                }
            },
            Item::Marked => match pending.take().map(|p| *p) {
                Some(Pending::Answer(frame)) => sources.own(&frame),
                _ => {
                    *pending = Some(Box::new(Pending::Marked));
                    next = try_next(sources, status);
                    continue;
                }
            },
            Item::Queued(Outbound::Ping) => status.heartbeat_frame(),
            Item::Queued(Outbound::Subscribe(feed)) => {
                sources.rings.push(Source::from(*feed));
                next = try_next(sources, status);
                continue;
            }
            Item::Queued(Outbound::Unsubscribe(topic)) => {
                sources.rings.retain(|feed| feed.topic != topic);
                // Its mark may be in the ring just dropped: the client left
                // that topic, so no event of it follows anyway.
                match pending.take().map(|p| *p) {
                    Some(Pending::Answer(frame)) => sources.own(&frame),
                    _ => {
                        next = try_next(sources, status);
                        continue;
                    }
                }
            }
            Item::Queued(Outbound::Close(code)) => return Fed::Close(code),
            Item::Lagged => {
                status.close_slow();
                return Fed::Stop;
            }
        };
        // Queued, written at the flush: at most `batch` frames wait.
        if wire.push(frame).is_err() {
            return Fed::Stop;
        }
        *events += u64::from(is_event);
        fed += 1;
        if fed < batch {
            next = try_next(sources, status);
        }
    }
    Fed::Flush
}

/// Runs `work`, and `on_wait` the first time `work` has to wait.
async fn on_first_wait<T>(work: impl Future<Output = T>, on_wait: impl FnOnce()) -> T {
    let mut work = std::pin::pin!(work);
    let mut on_wait = Some(on_wait);
    poll_fn(|cx| {
        let poll = work.as_mut().poll(cx);
        if poll.is_pending()
            && let Some(on_wait) = on_wait.take()
        {
            on_wait();
        }
        poll
    })
    .await
}

/// Whatever is waiting now: the connection's own queue first (answers are
/// few and the client waits for them), then the rings in turn.
fn try_next(sources: &mut Sources, status: &Status) -> Option<Item> {
    if let Some(item) = status.queue().try_pop() {
        return Some(Item::Queued(item));
    }
    let count = sources.rings.len();
    if count == 1 {
        // The usual case: the URL's topic alone, no turn to take.
        return try_feed(&mut sources.rings[0], status);
    }
    for step in 0..count {
        let at = (sources.next_ring + step) % count;
        if let Some(item) = try_feed(&mut sources.rings[at], status) {
            sources.next_ring = (at + 1) % count;
            return Some(item);
        }
    }
    None
}

/// The next item of one topic, if one is waiting.
fn try_feed(feed: &mut Source, status: &Status) -> Option<Item> {
    loop {
        match feed.ring.try_recv() {
            Ok(event) => {
                if let Some(item) = pass(feed, event, status) {
                    return Some(item);
                }
            }
            Err(TryRecvError::Lagged(_)) => return Some(Item::Lagged),
            // Closed: the topic has no local subscriber left, so this
            // connection has left it already; the unsubscription that comes
            // through the queue removes the ring.
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        }
    }
}

/// What of a ring event to write: nothing if a resumed subscription's
/// catch-up held it already. The ring's offsets rise one by one, so the
/// first event past the catch-up ends the skipping, as does a `reset`
/// (offsets count from a new epoch after it). A frame without an offset
/// (published with no history) passes and changes nothing. A mark passes
/// for the connections that await its read alone.
fn pass(feed: &mut Source, event: Event, status: &Status) -> Option<Item> {
    // Read at the mark, not before: the reader names the read it awaits
    // while this task may already wait for the ring.
    if let Some(group) = event.asker() {
        return status.awaits(group).then_some(Item::Marked);
    }
    if feed.sent_through != 0 {
        match event.offset {
            Event::PLAIN => {}
            Event::RESET => feed.sent_through = 0,
            offset if offset <= feed.sent_through => return None,
            _ => feed.sent_through = 0,
        }
    }
    Some(Item::Event(event))
}

/// Waits for the next event of any ring. With one ring (the usual case) it
/// waits on it directly; with several it waits on all at once.
async fn next_event(rings: &mut Vec<Source>, status: &Status) -> Item {
    loop {
        let (received, at) = match rings.as_mut_slice() {
            [] => return std::future::pending().await,
            [feed] => (feed.ring.recv().await, 0),
            _ => {
                let waits = rings.iter_mut().map(|feed| Box::pin(feed.ring.recv()));
                let (received, at, _) = futures_util::future::select_all(waits).await;
                (received, at)
            }
        };
        match received {
            Ok(event) => {
                if let Some(item) = pass(&mut rings[at], event, status) {
                    return item;
                }
            }
            Err(RecvError::Lagged(_)) => return Item::Lagged,
            // The topic has no local subscriber left, so this connection has
            // left it already: nothing more comes from that ring.
            Err(RecvError::Closed) => {
                rings.swap_remove(at);
            }
        }
    }
}

/// Drives a sink operation to its end; false if it failed, the connection
/// was aborted first, or the client fell a whole ring behind while it
/// waited (then it is closed with 1013). The abort and the lag are looked
/// at only while the sink is not ready.
async fn unless_stuck<E>(
    mut aborted: Pin<&mut impl Future<Output = ()>>,
    sources: &Sources,
    status: &Status,
    mut operation: impl FnMut(&mut Context<'_>) -> Poll<Result<(), E>>,
) -> bool {
    // Made only when the socket makes us wait, which a client that reads
    // never does.
    let mut check: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if let Poll::Ready(result) = operation(cx) {
            return Poll::Ready(result.is_ok());
        }
        if aborted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        let timer = check.get_or_insert_with(|| Box::pin(tokio::time::sleep(LAG_CHECK)));
        while timer.as_mut().poll(cx).is_ready() {
            if sources.lagging() {
                status.close_slow();
                return Poll::Ready(false);
            }
            let next = tokio::time::Instant::now() + LAG_CHECK;
            timer.as_mut().reset(next);
        }
        Poll::Pending
    })
    .await
}

/// Sends a close frame with `code`, and `reason` or the code's own.
async fn send_close(wire: &Outgoing, code: u16, reason: Option<&str>) -> bool {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.unwrap_or(close_reason(code)).into(),
    };
    wire.close_with(frame).await.is_ok()
}
