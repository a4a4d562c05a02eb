//! Request coalescing: concurrent callers that ask for the same key share one
//! run of the operation instead of each starting their own.
//!
//! A realtime app meets this when many clients ask for the same thing at once:
//! a room's history right after a deploy reconnects everyone, a price every
//! dashboard requests on the same tick. [`Coalescer`] runs the first request's
//! operation and hands its result to every caller that arrived while it ran.
//! Once it finishes, the next call for the key starts afresh: this shares
//! work in flight, it is not a cache.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// One operation in flight, awaited by every caller of its key.
type InFlight<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

/// The run in flight per key, with its number.
type Runs<K, T, E> = HashMap<K, (u64, InFlight<T, E>)>;

/// Shares one run of an operation among the concurrent callers of a key.
///
/// The result is cloned to every caller, so `T` and `E` are `Clone`; wrap a
/// large value in an [`Arc`]. Cloning the coalescer is cheap and the clones
/// share their runs.
///
/// Each run is a Tokio task, so [`run`](Self::run) needs a Tokio runtime. The
/// task runs to its end even when every caller has given up (a dropped
/// future, a timeout around `run`): whatever it holds is released when it
/// finishes, and the next call starts afresh. If the operation panics, its
/// callers panic with it and the key is free again.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use realtime::coalesce::Coalescer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let history: Coalescer<String, Arc<Vec<String>>, String> = Coalescer::new();
/// let load = |room: String| async move {
///     // One query, however many clients asked for the room at once.
///     tokio::task::yield_now().await; // the query, still running when the second call comes
///     Ok::<_, String>(Arc::new(vec![format!("welcome to {room}")]))
/// };
/// let (a, b) = tokio::join!(
///     history.run("lobby".to_owned(), || load("lobby".to_owned())),
///     history.run("lobby".to_owned(), || load("lobby".to_owned())),
/// );
/// assert_eq!(a, b);
/// assert_eq!(history.stats().started, 1);
/// assert_eq!(history.stats().joined, 1);
/// # }
/// ```
pub struct Coalescer<K, T, E> {
    inner: Arc<Inner<K, T, E>>,
}

struct Inner<K, T, E> {
    /// The run in flight per key, with its number. Held only to look up,
    /// insert or remove a run: never across an await, never while user code
    /// runs.
    in_flight: Mutex<Runs<K, T, E>>,
    /// Numbers the runs, so that a finished run removes itself and never a
    /// later run of the same key.
    next_run: AtomicU64,
    started: AtomicU64,
    joined: AtomicU64,
}

impl<K, T, E> Inner<K, T, E> {
    /// The map; a panic elsewhere while it was held cannot leave it
    /// half-changed (each change is one insert or one remove), so a poisoned
    /// lock is still good.
    fn runs(&self) -> MutexGuard<'_, Runs<K, T, E>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes run `number` of `key` from the map when dropped: when the run
/// finishes, and also when its operation panics.
struct Finished<K: Eq + Hash, T, E> {
    inner: Arc<Inner<K, T, E>>,
    key: K,
    number: u64,
}

impl<K: Eq + Hash, T, E> Drop for Finished<K, T, E> {
    fn drop(&mut self) {
        let mut runs = self.inner.runs();
        if runs
            .get(&self.key)
            .is_some_and(|(number, _)| *number == self.number)
        {
            runs.remove(&self.key);
        }
    }
}

/// What a [`Coalescer`] has done, read with [`Coalescer::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalescerStats {
    /// Operations started: calls that found no run of their key in flight.
    pub started: u64,
    /// Calls that joined a run already in flight instead of starting one.
    pub joined: u64,
    /// Keys with a run in flight now.
    pub in_flight: usize,
}

impl<K, T, E> Coalescer<K, T, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A coalescer with nothing in flight.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                in_flight: Mutex::new(HashMap::new()),
                next_run: AtomicU64::new(0),
                started: AtomicU64::new(0),
                joined: AtomicU64::new(0),
            }),
        }
    }

    /// The result of `operation` for `key`: the run already in flight for
    /// `key` if there is one (and then its work is not started), otherwise a
    /// new run that later callers of `key` join until it finishes.
    ///
    /// # Errors
    ///
    /// The operation's own error, cloned to every caller that shared the run.
    ///
    /// # Panics
    ///
    /// When the operation panics, or when called outside a Tokio runtime.
    pub async fn run<F, Fut>(&self, key: K, operation: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if let Some(run) = self.join(&key) {
            return run.await;
        }
        // Made outside the lock: user code never runs under it. A future
        // does nothing until polled, so if another caller started a run
        // meanwhile, dropping this one costs nothing.
        let work = operation();
        let run = {
            let mut runs = self.inner.runs();
            if let Some((_, run)) = runs.get(&key) {
                self.inner.joined.fetch_add(1, Ordering::Relaxed);
                run.clone()
            } else {
                self.inner.started.fetch_add(1, Ordering::Relaxed);
                let number = self.inner.next_run.fetch_add(1, Ordering::Relaxed);
                let finished = Finished {
                    inner: Arc::clone(&self.inner),
                    key: key.clone(),
                    number,
                };
                let task = tokio::spawn(async move {
                    let result = work.await;
                    // Forget the run before its callers see the result, so a
                    // call that comes after them starts afresh.
                    drop(finished);
                    result
                });
                let run = async move {
                    match task.await {
                        Ok(result) => result,
                        Err(error) => match error.try_into_panic() {
                            Ok(panic) => std::panic::resume_unwind(panic),
                            Err(error) => panic!("a coalesced operation was cancelled: {error}"),
                        },
                    }
                }
                .boxed()
                .shared();
                runs.insert(key, (number, run.clone()));
                run
            }
        };
        run.await
    }

    /// The run in flight for `key`, counted as joined.
    fn join(&self, key: &K) -> Option<InFlight<T, E>> {
        let runs = self.inner.runs();
        let (_, run) = runs.get(key)?;
        self.inner.joined.fetch_add(1, Ordering::Relaxed);
        Some(run.clone())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CoalescerStats {
        CoalescerStats {
            started: self.inner.started.load(Ordering::Relaxed),
            joined: self.inner.joined.load(Ordering::Relaxed),
            in_flight: self.inner.runs().len(),
        }
    }
}

impl<K, T, E> Default for Coalescer<K, T, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T, E> Clone for Coalescer<K, T, E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, T, E> fmt::Debug for Coalescer<K, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("started", &self.inner.started.load(Ordering::Relaxed))
            .field("joined", &self.inner.joined.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let coalescer: Coalescer<&str, u32, String> = Coalescer::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = oneshot::channel::<()>();
        let gate = gate.shared();
        let op = || {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                let _ = gate.await;
                Ok(7)
            }
        };
        // Released once the second and third calls have joined the first.
        let releaser = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                while coalescer.stats().joined < 2 {
                    tokio::task::yield_now().await;
                }
                release.send(()).unwrap();
            })
        };
        let results = tokio::join!(
            coalescer.run("k", op),
            coalescer.run("k", op),
            coalescer.run("k", op),
        );
        releaser.await.unwrap();
        assert_eq!(results, (Ok(7), Ok(7), Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            coalescer.stats(),
            CoalescerStats {
                started: 1,
                joined: 2,
                in_flight: 0
            }
        );
    }

    #[tokio::test]
    async fn errors_are_shared_and_the_next_call_starts_afresh() {
        let coalescer: Coalescer<u8, u32, String> = Coalescer::new();
        let (a, b) = tokio::join!(
            coalescer.run(1, || async {
                // Still in flight when the second call arrives.
                tokio::task::yield_now().await;
                Err("down".to_owned())
            }),
            coalescer.run(1, || async { Ok(1) }),
        );
        assert_eq!((a, b), (Err("down".to_owned()), Err("down".to_owned())));
        assert_eq!(coalescer.run(1, || async { Ok(2) }).await, Ok(2));
        assert_eq!(coalescer.stats().started, 2);
    }

    #[tokio::test]
    async fn different_keys_run_apart() {
        let coalescer: Coalescer<u8, u8, ()> = Coalescer::new();
        let (a, b) = tokio::join!(
            coalescer.run(1, || async { Ok(1) }),
            coalescer.run(2, || async { Ok(2) }),
        );
        assert_eq!((a, b), (Ok(1), Ok(2)));
        assert_eq!(coalescer.stats().joined, 0);
    }

    #[tokio::test]
    async fn a_panicking_operation_frees_its_key() {
        let coalescer: Coalescer<u8, u8, ()> = Coalescer::new();
        let runner = coalescer.clone();
        let panicked = tokio::spawn(async move {
            runner
                .run(1, || async {
                    tokio::task::yield_now().await;
                    panic!("the query blew up")
                })
                .await
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        assert_eq!(coalescer.stats().in_flight, 0);
        assert_eq!(coalescer.run(1, || async { Ok(1) }).await, Ok(1));
    }

    #[tokio::test]
    async fn a_run_whose_callers_gave_up_still_finishes_and_frees_its_key() {
        let coalescer: Coalescer<u8, u8, ()> = Coalescer::new();
        let (release, gate) = oneshot::channel::<()>();
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            coalescer.run(1, || async move {
                let _ = gate.await;
                Ok(1)
            }),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(coalescer.stats().in_flight, 1);
        release.send(()).unwrap();
        while coalescer.stats().in_flight > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(coalescer.run(1, || async { Ok(2) }).await, Ok(2));
    }
}
