//! [`Backoff`]: how long to wait before the next attempt of something that
//! failed, one rule for every retry of the crate.

use std::time::Duration;

/// How much of each wait is drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// The nominal wait: one retrier alone (a fill of one topic, an accept
    /// loop) has nobody to fall in step with.
    None,
    /// A random wait in the upper half of the nominal one: never shorter
    /// than half, so retries still slow down, while several instances that
    /// failed together spread out (a Redis reconnect).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Equal,
}

/// Exponential backoff: the nominal wait of attempt `n` (0 for the first)
/// is `min * 2^n`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: Jitter,
}

impl Backoff {
    pub(crate) const fn new(min: Duration, max: Duration, jitter: Jitter) -> Self {
        Self { min, max, jitter }
    }

    /// The wait before attempt `attempt`.
    pub(crate) fn wait(&self, attempt: u32) -> Duration {
        let nominal = self.min.saturating_mul(1 << attempt.min(20)).min(self.max);
        match self.jitter {
            Jitter::None => nominal,
            Jitter::Equal => {
                let half = nominal / 2;
                half + half.mul_f64(rand::random::<f64>())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let backoff = Backoff::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
            Jitter::None,
        );
        assert_eq!(backoff.wait(0), Duration::from_millis(10));
        assert_eq!(backoff.wait(3), Duration::from_millis(80));
        assert_eq!(backoff.wait(7), Duration::from_secs(1));
        assert_eq!(backoff.wait(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
            Jitter::Equal,
        );
        for _ in 0..100 {
            let first = backoff.wait(0);
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
            let late = backoff.wait(31);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
