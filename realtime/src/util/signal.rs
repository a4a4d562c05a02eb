//! [`Signal`]: a one-way switch that is cheap to look at.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// One poke done, in [`Signal::pokes`]'s high half.
const POKE_DONE: u64 = 1 << 32;

/// A one-way switch that is cheap to look at: an atomic flag for the loops
/// to check per frame, and a `Notify` to wake a task that waits for it.
/// (Not a `CancellationToken`: its `is_cancelled` takes a lock, and it
/// allocates its own node, which every connection would hold.)
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    /// Set by [`poke`](Self::poke) until taken: something for the waiter
    /// of [`fired_or_poked`](Self::fired_or_poked) to look at, short of
    /// firing. (In the flag's padding: it costs no byte.)
    poked: AtomicBool,
    /// The pokes waking the waiters now (the low half) and those done (the
    /// high half): a waiter that saw none under way before it waited, and
    /// sees the same count since, knows that no poke took it off the
    /// `Notify`'s list (see [`Fired`]). Two halves, not one count with an
    /// odd value for a poke under way: two pokes at once (two instances'
    /// orders) would look like none.
    pokes: AtomicU64,
    notify: Notify,
}

impl Signal {
    /// Flips the switch and wakes the waiters; later calls do nothing more.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Wakes the waiter of [`fired_or_poked`](Self::fired_or_poked)
    /// without firing: the waiters of [`fired`](Self::fired) go on waiting.
    pub(crate) fn poke(&self) {
        self.poked.store(true, Ordering::Release);
        self.poke_begins();
        self.notify.notify_waiters();
        self.poke_ends();
    }

    /// Counts a poke that is about to wake the waiters.
    fn poke_begins(&self) {
        self.pokes.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a poke that has woken the waiters as done.
    fn poke_ends(&self) {
        self.pokes.fetch_add(POKE_DONE - 1, Ordering::AcqRel);
    }

    /// Whether [`poke`](Self::poke) was called since the last look;
    /// clears it.
    pub(crate) fn take_poke(&self) -> bool {
        // Looked at first: a swap would write the line on every frame.
        self.poked.load(Ordering::Acquire) && self.poked.swap(false, Ordering::AcqRel)
    }

    /// Whether [`fire`](Self::fire) was called.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once the switch is flipped. Create it once per loop: while
    /// it waits, a poll by the same task only looks at the flags.
    pub(crate) fn fired(&self) -> Fired<'_> {
        Fired::new(self, false)
    }

    /// Resolves once the switch is flipped or [`poke`](Self::poke)d (the
    /// poke is left for [`take_poke`](Self::take_poke)); as
    /// [`fired`](Self::fired) otherwise. Made anew after each poke.
    pub(crate) fn fired_or_poked(&self) -> Fired<'_> {
        Fired::new(self, true)
    }
}

pin_project_lite::pin_project! {
    /// Resolves once a [`Signal`] is fired, and again if polled after.
    ///
    /// A struct, not an `async fn`: every idle connection's read loop and
    /// write task hold one, and the `async fn` was a third larger.
    ///
    /// A select loop polls it each time its task wakes, for whatever
    /// reason (a read loop, on every frame), and a poll of the `Notified`
    /// takes the `Notify`'s lock, twice; for the service's shutdown signal
    /// that lock is one for every connection of the instance, taken on
    /// every worker thread. So once it waits, the waker it waits with is
    /// kept, and a poll with the same waker only looks at the flags: a
    /// fire sets its flag before it wakes anyone, and a poke, which can
    /// take the `Notified` off the list without setting the flag this
    /// waiter looks for, moves the count it is checked against.
    pub(crate) struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        notified: Notified<'a>,
        on_poke: bool,
        // The count of pokes seen before the `Notified` was enabled; only
        // meaningful with `waiting`.
        pokes: u64,
        // The waker the `Notified` waits with, once it does.
        waiting: Option<Waker>,
    }
}

impl<'a> Fired<'a> {
    fn new(signal: &'a Signal, on_poke: bool) -> Self {
        Self {
            signal,
            notified: signal.notify.notified(),
            on_poke,
            pokes: 0,
            waiting: None,
        }
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let signal = *this.signal;
        let woken =
            |on_poke: bool| signal.is_fired() || (on_poke && signal.poked.load(Ordering::Acquire));
        if let Some(waker) = this.waiting.as_ref()
            && waker.will_wake(cx.waker())
            && signal.pokes.load(Ordering::Acquire) == *this.pokes
        {
            // Still on the list with this waker: nothing to do but look.
            return match woken(*this.on_poke) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            };
        }
        *this.waiting = None;
        loop {
            // Read before the `Notified` is enabled: a poke that takes it
            // off the list from here on moves the count past this one.
            let pokes = signal.pokes.load(Ordering::Acquire);
            // Waiting from here on: a `fire` after the look below wakes this
            // future, one before is seen by the look.
            this.notified.as_mut().enable();
            if woken(*this.on_poke) {
                return Poll::Ready(());
            }
            match this.notified.as_mut().poll(cx) {
                Poll::Pending => {
                    // A poke under way may yet take this waiter off the
                    // list: the next poll takes the long way.
                    if pokes % POKE_DONE == 0 {
                        *this.pokes = pokes;
                        *this.waiting = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                // By the flags, not by the `Notified`: a poke sets its flag
                // before it wakes anyone, so a wake with no flag set is one
                // this waiter does not wait for (a poke, for `fired`; for
                // `fired_or_poked`, a poke whose flag was taken before this
                // waiter was made, which would otherwise resolve it again
                // and again): it waits again.
                Poll::Ready(()) if woken(*this.on_poke) => return Poll::Ready(()),
                Poll::Ready(()) => this.notified.set(signal.notify.notified()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::Signal;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Counted>, Waker) {
        let count = Arc::new(Counted::default());
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    fn wakes(count: &Counted) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_waiter_taken_off_the_list_by_a_poke_is_still_woken_by_the_fire() {
        let signal = Signal::default();
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut fired = pin!(signal.fired());
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        // Polls by the same task that only look at the flags.
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        signal.poke();
        assert_eq!(wakes(&count), 1, "the poke wakes every waiter");
        // Not a poke this waiter waits for: it waits again, on the list.
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        signal.fire();
        assert_eq!(wakes(&count), 2, "the fire wakes the waiter");
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_waiter_that_waits_while_a_poke_wakes_the_others_looks_again() {
        let signal = Signal::default();
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut fired = pin!(signal.fired());
        // A poke has begun but not woken the waiters yet when this one
        // starts to wait, so it may be taken off the list.
        signal.poked.store(true, Ordering::Release);
        signal.poke_begins();
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        signal.notify.notify_waiters();
        assert_eq!(wakes(&count), 1);
        // Woken, and polled before the poke is counted as done: the count
        // is the one it read, but the waiter did not take it as proof that
        // it is still on the list.
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        // Not polled again until woken.
        signal.poke_ends();
        signal.fire();
        assert_eq!(wakes(&count), 2, "the fire wakes the waiter");
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_waiter_that_waits_while_two_pokes_wake_the_others_looks_again() {
        let signal = Signal::default();
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut fired = pin!(signal.fired());
        // Two pokes at once (orders from two places): both begun when the
        // waiter starts to wait.
        signal.poked.store(true, Ordering::Release);
        signal.poke_begins();
        signal.poke_begins();
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        // The first takes it off the list; it is polled before either ends.
        signal.notify.notify_waiters();
        assert_eq!(wakes(&count), 1);
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        // Back on the list: the second wakes it too.
        signal.notify.notify_waiters();
        assert_eq!(wakes(&count), 2, "the second poke wakes the waiter");
        signal.poke_ends();
        signal.poke_ends();
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        signal.fire();
        assert_eq!(wakes(&count), 3, "the fire wakes the waiter");
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_wake_by_a_poke_already_taken_does_not_resolve_the_next_waiter() {
        let signal = Signal::default();
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        // The read loop takes the poke and makes its next waiter before
        // the poke has woken anyone.
        signal.poked.store(true, Ordering::Release);
        signal.poke_begins();
        assert!(signal.take_poke());
        let mut woken = pin!(signal.fired_or_poked());
        signal.notify.notify_waiters();
        signal.poke_ends();
        // Nothing new to look at: it waits, rather than resolving on every
        // poll (the read loop would spin).
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Pending);
        signal.poke();
        assert_eq!(wakes(&count), 1, "the next poke wakes it");
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_poll_by_another_task_waits_with_that_tasks_waker() {
        let signal = Signal::default();
        let (first, first_waker) = counted();
        let (second, second_waker) = counted();
        let mut fired = pin!(signal.fired());
        let mut cx = Context::from_waker(&first_waker);
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        let mut cx = Context::from_waker(&second_waker);
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Pending);
        signal.fire();
        assert_eq!((wakes(&first), wakes(&second)), (0, 1));
        assert_eq!(fired.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_poke_wakes_its_waiter_after_polls_that_only_looked() {
        let signal = Signal::default();
        let (count, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut woken = pin!(signal.fired_or_poked());
        for _ in 0..3 {
            assert_eq!(woken.as_mut().poll(&mut cx), Poll::Pending);
        }
        signal.poke();
        assert_eq!(wakes(&count), 1);
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
        assert!(signal.take_poke());
    }

    #[tokio::test]
    async fn a_poke_wakes_only_the_waiter_that_waits_for_it() {
        let signal = Signal::default();
        let fired = signal.fired();
        let woken = signal.fired_or_poked();
        tokio::pin!(fired, woken);
        // Both enabled before the poke, as a read loop's and a write task's are.
        let wait = Duration::from_millis(20);
        assert!(tokio::time::timeout(wait, &mut fired).await.is_err());
        assert!(tokio::time::timeout(wait, &mut woken).await.is_err());
        signal.poke();
        woken.await;
        assert!(signal.take_poke());
        assert!(!signal.take_poke());
        assert!(tokio::time::timeout(wait, &mut fired).await.is_err());
        signal.fire();
        fired.await;
    }

    #[tokio::test]
    async fn a_poke_before_the_wait_is_not_lost() {
        let signal = Signal::default();
        signal.poke();
        signal.fired_or_poked().await;
        assert!(signal.take_poke());
    }
}
