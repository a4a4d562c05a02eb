//! A timeout counted in the time the runtime was awake to keep it.
//!
//! A plain timeout cannot tell a silent peer from a runtime too busy to
//! run the task that reads the answer: when tasks wait seconds for their
//! turn, the reply sits unread in a socket while the timer fires. Worse, a
//! timer's task is often not among the ones that wait: Tokio runs the task
//! a wake-up names next (its "LIFO slot") when it comes alone, as a
//! timer's does, while the tasks a busy worker cannot hold go to the
//! runtime's shared queue, which a worker with work of its own looks at
//! once in dozens of turns. Measured at 100 000 connections on 2 cores:
//! the watchdog's sleeps were on time to 0.2 s while Redis's answer to its
//! `PING` waited more than 2 s to be read.
//!
//! So [`timeout`] waits in steps that go through both queues, the way a
//! starved task waits: each step sleeps, then hops through the blocking
//! pool (a task there that does nothing; its end wakes this one from
//! outside the workers, into the shared queue), then takes a turn at the
//! back of the worker's own queue. Only the time each step asked for
//! counts, so every step that ends late pushes the deadline out by its
//! lateness. On a runtime that keeps up it ends within a few milliseconds
//! of `budget`; on one that runs behind it waits longer, in proportion to
//! how far behind, up to [`CAP`] times `budget` on the clock, so that a
//! silent peer is still found when the runtime stays overloaded (or its
//! blocking pool is full).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Steps per budget: each late step adds its lateness to the wait, so a
/// reply that needs two turns of a starved runtime (one for the request to
/// be written, one for the answer to be read) arrives before the deadline
/// as long as there are more than two steps.
const STEPS: u32 = 8;

/// The longest a [`timeout`] waits on the clock, in budgets: past the
/// lateness seen at 100 000 connections on 2 cores (seconds), short enough
/// that a silent Redis is found within half a minute under any load.
const CAP: u32 = 10;

/// `work` ran past its budget of awake time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {budget:?} of awake time ({waited:?} on the clock)")]
pub(crate) struct Elapsed {
    pub(crate) budget: Duration,
    pub(crate) waited: Duration,
}

/// Runs `work` until it finishes or `budget` of awake time has passed (at
/// most [`CAP`] budgets on the clock).
pub(crate) async fn timeout<F: Future>(budget: Duration, work: F) -> Result<F::Output, Elapsed> {
    let start = Instant::now();
    let capped = tokio::time::timeout(
        budget.saturating_mul(CAP),
        timeout_in_steps(budget, work, step),
    );
    capped.await.unwrap_or_else(|_| {
        Err(Elapsed {
            budget,
            waited: start.elapsed(),
        })
    })
}

/// One step of `nap`, ended as late as a starved task would see it end.
async fn step(nap: Duration) {
    tokio::time::sleep(nap).await;
    // A task of the blocking pool that does nothing: its end wakes this
    // task from outside the workers, into the shared queue. (It fails only
    // while the runtime shuts down; then nothing waits for the answer.)
    let _ = tokio::task::spawn_blocking(|| ()).await;
    requeue().await;
}

/// Goes to the back of the worker's own queue: a task that wakes itself
/// while it runs is queued behind the others, not run next.
async fn requeue() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut queued, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// [`timeout`] with its steps made by `step`.
async fn timeout_in_steps<F, S, SF>(
    budget: Duration,
    work: F,
    mut step: S,
) -> Result<F::Output, Elapsed>
where
    F: Future,
    S: FnMut(Duration) -> SF,
    SF: Future<Output = ()>,
{
    let start = Instant::now();
    let each = (budget / STEPS).max(Duration::from_millis(1));
    let mut left = budget;
    let mut work = std::pin::pin!(work);
    while !left.is_zero() {
        let nap = each.min(left);
        tokio::select! {
            // The work first: when its answer and the step's end are both
            // ready at one turn, the answer counts.
            biased;
            output = &mut work => return Ok(output),
            () = step(nap) => left -= nap,
        }
    }
    // One more look: the last step may have ended with the answer ready.
    tokio::select! {
        biased;
        output = &mut work => Ok(output),
        () = std::future::ready(()) => Err(Elapsed {
            budget,
            waited: start.elapsed(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps on the (paused) clock alone, to test how steps count.
    fn on_the_clock(
        budget: Duration,
        work: impl Future<Output = &'static str>,
    ) -> impl Future<Output = Result<&'static str, Elapsed>> {
        timeout_in_steps(budget, work, tokio::time::sleep)
    }

    #[tokio::test]
    async fn an_answer_in_time_is_returned_and_silence_ends() {
        let answer = timeout(Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        });
        assert_eq!(answer.await, Ok(7));
        let start = Instant::now();
        let budget = Duration::from_millis(40);
        let silent = timeout(budget, std::future::pending::<()>()).await;
        assert_eq!(silent.expect_err("nothing answers").budget, budget);
        assert!(start.elapsed() >= budget);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_on_a_runtime_that_keeps_up_ends_at_the_budget() {
        let start = Instant::now();
        let silent = on_the_clock(Duration::from_secs(2), std::future::pending()).await;
        let elapsed = silent.expect_err("nothing answers");
        assert_eq!(elapsed.budget, Duration::from_secs(2));
        // The paused clock jumps to each step's end exactly.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_runtime_pushes_the_deadline_out_by_its_lateness() {
        let start = Instant::now();
        let budget = Duration::from_secs(2);
        // Moves the (paused) clock on by 1 s at every step: the runtime is
        // late by 1 s at each turn.
        let late = async {
            loop {
                tokio::time::sleep(budget / STEPS).await;
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        };
        let answer = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "pong"
        };
        let outcome = tokio::select! {
            outcome = on_the_clock(budget, answer) => outcome,
            () = late => unreachable!(),
        };
        // A plain 2 s timeout would have given up; this one waited.
        assert_eq!(outcome, Ok("pong"));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
