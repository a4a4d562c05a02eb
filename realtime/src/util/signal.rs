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
    notify: Notify,
}

impl Signal {
    /// Flips the switch and wakes the waiters; later calls do nothing more.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
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
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Waiting from here on: a `fire` after the look below wakes this
        // future, one before is seen by the look.
        this.notified.as_mut().enable();
        if this.signal.is_fired() {
            return Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}
