//! The instance's heartbeat: one task pings every connection once per
//! `Config::ping_interval` and closes those silent past
//! `Config::idle_timeout`, in one sweep per tick rather than a timer per
//! connection.
//!
//! A timer per connection wakes a worker thread for each ping, spread
//! evenly over the interval: at 20,000 connections and a 20 s interval, a
//! thread parks and wakes a thousand times a second, and that switching,
//! not the ping, was most of the idle CPU. Here the connections are dealt
//! into [`SLOTS`] groups; each tick sweeps one group, so the pings of a
//! tick go out in one burst that the threads serve without parking in
//! between. A connection also keeps no timer in its read loop, which is
//! memory every idle connection held.
//!
//! The sweep writes each ping into its socket itself when the socket is
//! free (see [`Pinger`]): a ping sent by the write task woke that task,
//! which then looked at its queue and every ring it reads before it waited
//! again, for a two-byte frame; that was about a fifth of an idle
//! instance's CPU. A socket in use, with frames waiting, or full gets its
//! ping from the write task as before.
//!
//! A connection that asked for its heartbeat as text (`?heartbeat=text`)
//! gets `{"heartbeat":{}}` in place of the ping, by the same two ways, and
//! answers it with a `$ping` without an id, which the read loop notes as it
//! notes a pong.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::outbox::Status;
use crate::protocol::close_code;
use crate::util::{Mutex, millis};
use crate::websocket::Pinger;

/// How many groups the connections are dealt into: one is swept per
/// `ping_interval / SLOTS` (1.25 s by default).
const SLOTS: usize = 20;

/// Pings written in a row before the sweep lets the thread's other tasks
/// run: a ping written here is a system call (on loopback, also the
/// client's receipt of it), and a tick's thousand of them would otherwise
/// hold the thread for milliseconds. Below Tokio's budget of 128 socket
/// operations per poll of a task, past which every write would be refused
/// and every ping left to its write task.
const PINGS_PER_TURN: usize = 64;

/// The connections and when each is looked at.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// Slot `k` is swept at the `k`th tick of each interval. A connection's
    /// entry stays until the sweep finds it ended (the heartbeat holds the
    /// last reference to its status).
    slots: Box<[Mutex<Vec<Watched>>]>,
    /// The slot swept last: a new connection joins it, so that its first
    /// ping comes one interval after it opened.
    current: AtomicUsize,
    started: AtomicBool,
    tick: Duration,
    idle_timeout: Duration,
}

/// One connection as the heartbeat keeps it: how it stands, and its socket
/// to ping (held weakly: the socket closes with the connection).
#[derive(Debug)]
struct Watched {
    status: Arc<Status>,
    pinger: Pinger,
}

impl Watched {
    /// Whether the connection has ended: the heartbeat holds the last
    /// reference to its status.
    fn ended(&self) -> bool {
        Arc::strong_count(&self.status) == 1
    }

    /// Pings it: written into its socket here when the socket is free, so
    /// that an idle connection's write task is not woken for it; queued for
    /// the write task otherwise (and not sent if its queue is full: see
    /// [`Status::ping`]).
    fn ping(&self) {
        if !self.pinger.ping(self.status.heartbeat_frame()) {
            self.status.ping();
        }
    }
}

impl Heartbeat {
    /// A heartbeat that pings every `ping_interval` and closes a
    /// connection silent for `idle_timeout`.
    pub(crate) fn new(ping_interval: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..SLOTS).map(|_| Mutex::default()).collect(),
            current: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            tick: (ping_interval / SLOTS as u32).max(Duration::from_millis(1)),
            idle_timeout,
        })
    }

    /// Looks after one more connection until it ends, pinging it through
    /// `pinger`. The task starts with the first connection, inside the
    /// runtime that serves it.
    pub(crate) fn watch(self: &Arc<Self>, status: &Arc<Status>, pinger: Pinger) {
        status.seen(tokio::time::Instant::now());
        let slot = self.current.load(Ordering::Relaxed);
        let mut watched = self.slots[slot].lock();
        // Before the list grows, the ended connections leave it: a client
        // that opens and closes connections fast cannot make the instance
        // keep their statuses until the sweep comes round (it costs one
        // pass when the list is full, which doubling makes rare).
        if watched.len() == watched.capacity() {
            watched.retain(|watched| !watched.ended());
        }
        watched.push(Watched {
            status: Arc::clone(status),
            pinger,
        });
        drop(watched);
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Running(Arc::downgrade(self))));
        }
    }

    /// Sweeps the next slot: drops the ended connections, closes the silent
    /// ones with 1008, and pings the rest.
    async fn sweep(&self) {
        let slot = (self.current.load(Ordering::Relaxed) + 1) % SLOTS;
        self.current.store(slot, Ordering::Relaxed);
        // Swept out of the lock: connections opening meanwhile need not
        // wait for a whole slot's worth of pings.
        let mut swept = Sweeping {
            slot: &self.slots[slot],
            taken: std::mem::take(&mut *self.slots[slot].lock()),
        };
        let now = millis(tokio::time::Instant::now());
        let idle_ms = u32::try_from(self.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        swept.taken.retain(|watched| {
            let status = &watched.status;
            if watched.ended() || status.is_aborted() {
                return false;
            }
            if silent_for(now, status.last_seen()) >= idle_ms {
                tracing::debug!("peer silent past the idle timeout; closing it with 1008");
                status.counters().idle_close();
                status.abort(close_code::POLICY);
                return false;
            }
            true
        });
        for (count, watched) in swept.taken.iter().enumerate() {
            watched.ping();
            if (count + 1) % PINGS_PER_TURN == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A slot's connections taken out of it for a sweep, put back when the
/// sweep ends, also when its task is dropped at a yield (its runtime shut
/// down): the heartbeat that starts again must find them.
struct Sweeping<'a> {
    slot: &'a Mutex<Vec<Watched>>,
    taken: Vec<Watched>,
}

impl Drop for Sweeping<'_> {
    fn drop(&mut self) {
        let mut slot = self.slot.lock();
        let mut taken = std::mem::take(&mut self.taken);
        // Those that joined meanwhile go after the swept ones.
        taken.append(&mut slot);
        *slot = taken;
    }
}

/// How long a client has been silent at `now`, both in [`millis`]. A read
/// loop notes its frames while the sweep runs, so `last_seen` may be a
/// little after the sweep's `now`: that is no silence (the wrapping
/// difference would read as 49 days).
fn silent_for(now: u32, last_seen: u32) -> u32 {
    match now.wrapping_sub(last_seen) {
        ahead if ahead > u32::MAX / 2 => 0,
        silent => silent,
    }
}

/// Lets the next connection start the sweep again if its task ends while
/// the service lives on: the runtime that ran it was shut down, and the
/// service is now served from another.
struct Running(Weak<Heartbeat>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.0.upgrade() {
            heartbeat.started.store(false, Ordering::Release);
        }
    }
}

/// Sweeps a slot every tick, for as long as the service lives. The guard
/// is an argument, so that it is dropped with the task even if the task
/// never ran.
async fn run(running: Running) {
    let heartbeat = &running.0;
    let Some(tick) = heartbeat.upgrade().map(|heartbeat| heartbeat.tick) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(heartbeat) = heartbeat.upgrade() else {
            return;
        };
        heartbeat.sweep().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::telemetry::Counters;

    fn outbox() -> Outbox {
        Outbox::new(8, 1024, Arc::new(Counters::default()))
    }

    /// How many pings wait in the connection's queue; takes them.
    fn pings(outbox: &Outbox) -> usize {
        std::iter::from_fn(|| outbox.status().queue().try_pop()).count()
    }

    #[tokio::test]
    async fn each_connection_is_pinged_once_per_interval() {
        let heartbeat = Heartbeat::new(Duration::from_secs(20), Duration::from_secs(60));
        let outbox = outbox();
        heartbeat.watch(outbox.status(), Pinger::default());
        for _ in 0..SLOTS - 1 {
            heartbeat.sweep().await;
            assert_eq!(pings(&outbox), 0, "pinged early");
        }
        heartbeat.sweep().await;
        assert_eq!(pings(&outbox), 1, "one ping per interval");
        for _ in 0..SLOTS {
            heartbeat.sweep().await;
        }
        assert_eq!(pings(&outbox), 1);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_with_1008() {
        let heartbeat = Heartbeat::new(Duration::from_millis(20), Duration::from_millis(0));
        let outbox = outbox();
        heartbeat.watch(outbox.status(), Pinger::default());
        for _ in 0..SLOTS {
            heartbeat.sweep().await;
        }
        assert!(outbox.status().is_aborted());
        assert_eq!(outbox.status().abort_code(), close_code::POLICY);
        assert_eq!(
            outbox
                .status()
                .counters()
                .idle_closes
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_frame_noted_during_the_sweep_is_no_silence() {
        let heartbeat = Heartbeat::new(Duration::from_millis(20), Duration::from_secs(60));
        let outbox = outbox();
        heartbeat.watch(outbox.status(), Pinger::default());
        // A read loop noted a frame a moment after the sweep read the clock.
        outbox
            .status()
            .seen(tokio::time::Instant::now() + Duration::from_millis(5));
        for _ in 0..SLOTS {
            heartbeat.sweep().await;
        }
        assert!(!outbox.status().is_aborted(), "a live client was closed");
        assert_eq!(silent_for(100, 105), 0);
        assert_eq!(silent_for(105, 100), 5);
        assert_eq!(silent_for(3, u32::MAX - 1), 5, "across the wrap");
    }

    #[test]
    fn the_sweep_starts_again_under_another_runtime() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime")
        };
        let heartbeat = Heartbeat::new(Duration::from_millis(20), Duration::from_secs(60));
        let first = outbox();
        runtime().block_on(async { heartbeat.watch(first.status(), Pinger::default()) });
        // That runtime is gone, and its task with it.
        let second = outbox();
        runtime().block_on(async {
            heartbeat.watch(second.status(), Pinger::default());
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert!(
            pings(&second) >= 1,
            "nobody pinged under the second runtime"
        );
    }

    #[tokio::test]
    async fn a_sweep_dropped_at_a_yield_puts_its_connections_back() {
        let heartbeat = Heartbeat::new(Duration::from_secs(20), Duration::from_secs(60));
        let outboxes: Vec<Outbox> = (0..PINGS_PER_TURN * 2).map(|_| outbox()).collect();
        for outbox in &outboxes {
            heartbeat.watch(outbox.status(), Pinger::default());
        }
        // The sweep of their slot, dropped after its first turn of pings
        // (as when its runtime shuts down).
        heartbeat.current.store(SLOTS - 1, Ordering::Relaxed);
        let mut sweep = Box::pin(heartbeat.sweep());
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(sweep.as_mut().poll(&mut cx).is_pending(), "it yields");
        drop(sweep);
        assert_eq!(heartbeat.slots[0].lock().len(), outboxes.len());
        assert_eq!(pings(&outboxes[0]), 1);
        assert_eq!(pings(&outboxes[outboxes.len() - 1]), 0);
    }

    #[tokio::test]
    async fn an_ended_connection_leaves_at_its_next_sweep() {
        let heartbeat = Heartbeat::new(Duration::from_secs(20), Duration::from_secs(60));
        let outbox = outbox();
        heartbeat.watch(outbox.status(), Pinger::default());
        drop(outbox);
        for _ in 0..SLOTS {
            heartbeat.sweep().await;
        }
        let held: usize = heartbeat.slots.iter().map(|slot| slot.lock().len()).sum();
        assert_eq!(held, 0);
    }

    #[tokio::test]
    async fn connections_that_come_and_go_between_sweeps_are_not_kept() {
        let heartbeat = Heartbeat::new(Duration::from_secs(20), Duration::from_secs(60));
        let open = outbox();
        heartbeat.watch(open.status(), Pinger::default());
        for _ in 0..10_000 {
            heartbeat.watch(outbox().status(), Pinger::default());
        }
        let room = heartbeat.slots[0].lock().capacity();
        assert!(
            room <= 8,
            "room for {room} statuses kept for 1 open connection"
        );
    }
}
