//! [`Signal`]: a one-way switch that is cheap to look at.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

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
        self.notify.notify_waiters();
    }

    /// Whether [`poke`](Self::poke) was called since the last look;
    /// clears it.
    pub(crate) fn take_poke(&self) -> bool {
        self.poked.swap(false, Ordering::AcqRel)
    }

    /// Whether [`fire`](Self::fire) was called.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once the switch is flipped. Create it once per loop and poll
    /// it only when there is nothing else to do: each poll takes the
    /// `Notify`'s lock.
    pub(crate) fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            notified: self.notify.notified(),
            on_poke: false,
        }
    }

    /// Resolves once the switch is flipped or [`poke`](Self::poke)d (the
    /// poke is left for [`take_poke`](Self::take_poke)); as
    /// [`fired`](Self::fired) otherwise. Made anew after each poke.
    pub(crate) fn fired_or_poked(&self) -> Fired<'_> {
        Fired {
            signal: self,
            notified: self.notify.notified(),
            on_poke: true,
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves once a [`Signal`] is fired, and again if polled after.
    ///
    /// A struct, not an `async fn`: every idle connection's read loop and
    /// write task hold one, and the `async fn` was a third larger.
    pub(crate) struct Fired<'a> {
        signal: &'a Signal,
        #[pin]
        notified: Notified<'a>,
        on_poke: bool,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            // Waiting from here on: a `fire` after the look below wakes this
            // future, one before is seen by the look.
            this.notified.as_mut().enable();
            let poked = *this.on_poke && this.signal.poked.load(Ordering::Acquire);
            if this.signal.is_fired() || poked {
                return Poll::Ready(());
            }
            match this.notified.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if this.signal.is_fired() || *this.on_poke => {
                    return Poll::Ready(());
                }
                // A poke, which this waiter does not wait for: wait again.
                Poll::Ready(()) => this.notified.set(this.signal.notify.notified()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Signal;

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
