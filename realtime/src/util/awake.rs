//! A timeout counted in the time the runtime was awake to keep it.
//!
//! A plain timeout cannot tell a silent peer from a runtime too busy to
//! run the task that reads the answer: when every task waits seconds for
//! its turn, the reply sits unread in a socket while the timer, which
//! waits its turn just as long, fires first. [`timeout`] sleeps in short
//! steps and counts only the time each step asked for, so every step that
//! wakes late (the runtime was busy) pushes the deadline out by its
//! lateness. On a runtime that keeps up, it ends within a few
//! milliseconds of `budget`; on one that runs behind, it waits longer, in
//! proportion to how far behind, and still ends.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Steps per budget: each late step adds its lateness to the wait, so a
/// reply that needs two turns of a starved runtime (one for the request to
/// be written, one for the answer to be read) arrives before the deadline
/// as long as there are more than two steps.
const STEPS: u32 = 8;

/// `work` ran past its budget of awake time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer within {budget:?} of awake time ({waited:?} on the clock)")]
pub(crate) struct Elapsed {
    pub(crate) budget: Duration,
    pub(crate) waited: Duration,
}

/// Runs `work` until it finishes or `budget` of awake time has passed.
pub(crate) async fn timeout<F: Future>(budget: Duration, work: F) -> Result<F::Output, Elapsed> {
    let start = Instant::now();
    let step = (budget / STEPS).max(Duration::from_millis(1));
    let mut left = budget;
    let mut work = std::pin::pin!(work);
    while !left.is_zero() {
        let nap = step.min(left);
        tokio::select! {
            // The work first: when its answer and the step's end are both
            // ready at one turn, the answer counts.
            biased;
            output = &mut work => return Ok(output),
            () = tokio::time::sleep(nap) => left -= nap,
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

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_is_returned() {
        let answer = timeout(Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            7
        });
        assert_eq!(answer.await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_on_a_runtime_that_keeps_up_ends_at_the_budget() {
        let start = Instant::now();
        let silent = timeout(Duration::from_secs(2), std::future::pending::<()>()).await;
        let elapsed = silent.expect_err("nothing answers");
        assert_eq!(elapsed.budget, Duration::from_secs(2));
        // The paused clock jumps to each step's end exactly.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_runtime_pushes_the_deadline_out_by_its_lateness() {
        let start = Instant::now();
        let budget = Duration::from_secs(2);
        // Holds the (paused) clock back by 1 s at every step: the runtime
        // is late by 1 s at each turn.
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
            outcome = timeout(budget, answer) => outcome,
            () = late => unreachable!(),
        };
        // A plain 2 s timeout would have given up; this one waited.
        assert_eq!(outcome, Ok("pong"));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
