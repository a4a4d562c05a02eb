//! When a connection's token runs out: the notice before it and the close
//! at it, on a timer of the read loop's that only a connection whose token
//! expires has.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A connection's token expiry. Boxed in the reader, and only for
/// connections whose token expires.
#[derive(Debug)]
pub(crate) struct Expiry {
    /// When the token runs out.
    at: Instant,
    /// How long before `at` the client is told: `Config::token_notice`,
    /// or half the token's life if that is shorter, so that a client of
    /// short tokens is told of each one with time to refresh it.
    lead: Duration,
    /// Whether the client was told it is running out.
    told: bool,
    /// The expiry moved (`$refresh`): the timer must be set again.
    moved: bool,
}

/// What the token's timer found due.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The token ran out: close with 3000.
    Expired,
    /// Tell the client how long it has, in whole seconds.
    Notice(u64),
    /// Nothing about the token.
    Nothing,
}

impl Expiry {
    /// An expiry at `at` (wall clock), told `notice` before (at most half
    /// the token's life).
    pub(crate) fn new(at: SystemTime, notice: Duration) -> Box<Self> {
        let now = Instant::now();
        let at = instant_of(at, now);
        Box::new(Self {
            at,
            lead: lead(at - now, notice),
            told: false,
            moved: false,
        })
    }

    /// A fresh token's expiry: the notice is due again before it, at most
    /// half its life before (a client that has just refreshed is not told
    /// again at once, which would loop).
    pub(crate) fn renew(&mut self, at: SystemTime, notice: Duration) {
        let now = Instant::now();
        self.at = instant_of(at, now);
        self.lead = lead(self.at - now, notice);
        self.told = false;
        self.moved = true;
    }

    /// Whether the expiry moved since the timer was last set.
    pub(crate) fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// What is due at `now` about the token: the notice, or its end.
    pub(crate) fn check(&mut self, now: Instant) -> Due {
        if now >= self.at {
            return Due::Expired;
        }
        if !self.told && now + self.lead >= self.at {
            self.told = true;
            return Due::Notice((self.at - now).as_secs());
        }
        Due::Nothing
    }

    /// When the timer must fire next: the notice, or once told, the end.
    pub(crate) fn next_due(&self) -> Instant {
        match self.told {
            false => self.at.checked_sub(self.lead).unwrap_or(self.at),
            true => self.at,
        }
    }
}

/// How long before its end a token of `life` is told of: `notice`, or
/// half its life if shorter.
fn lead(life: Duration, notice: Duration) -> Duration {
    notice.min(life / 2)
}

/// The instant of wall-clock time `at`, seen from `now`.
fn instant_of(at: SystemTime, now: Instant) -> Instant {
    match at.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTICE: Duration = Duration::from_secs(30);

    #[test]
    fn the_notice_comes_once_before_the_end() {
        let before = Instant::now();
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(100), NOTICE);
        let start = Instant::now();
        let due = expiry.next_due();
        assert!(
            due >= before + Duration::from_secs(69) && due <= start + Duration::from_secs(70),
            "the notice, 30 s before the end"
        );
        assert_eq!(expiry.check(start + Duration::from_secs(60)), Due::Nothing);
        assert!(matches!(
            expiry.check(start + Duration::from_secs(71)),
            Due::Notice(28 | 29)
        ));
        assert_eq!(expiry.check(start + Duration::from_secs(72)), Due::Nothing);
        assert_eq!(expiry.check(start + Duration::from_secs(101)), Due::Expired);
    }

    #[test]
    fn a_short_token_is_noticed_at_half_its_life_and_the_timer_fires_at_its_end() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(6), NOTICE);
        let now = Instant::now();
        let due = expiry.next_due();
        assert!(
            due > now + Duration::from_millis(2900) && due <= now + Duration::from_secs(3),
            "the notice at half its life"
        );
        assert_eq!(expiry.check(now + Duration::from_secs(2)), Due::Nothing);
        assert!(matches!(
            expiry.check(now + Duration::from_millis(3100)),
            Due::Notice(2)
        ));
        let end = expiry.next_due();
        assert!(end > now + Duration::from_secs(5) && end <= now + Duration::from_secs(6));
    }

    #[test]
    fn a_renewed_token_is_noticed_again_and_moves_the_timer() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(5), NOTICE);
        let now = Instant::now();
        assert!(matches!(
            expiry.check(now + Duration::from_secs(3)),
            Due::Notice(_)
        ));
        expiry.renew(SystemTime::now() + Duration::from_secs(3600), NOTICE);
        assert!(expiry.take_moved());
        assert!(!expiry.take_moved());
        assert_eq!(expiry.check(now + Duration::from_secs(10)), Due::Nothing);
        assert!(matches!(
            expiry.check(now + Duration::from_secs(3571)),
            Due::Notice(28 | 29)
        ));
    }

    #[test]
    fn each_fresh_short_token_is_noticed_at_half_its_life_not_at_once() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(4), NOTICE);
        let now = Instant::now();
        assert!(matches!(
            expiry.check(now + Duration::from_millis(2100)),
            Due::Notice(1)
        ));
        expiry.renew(SystemTime::now() + Duration::from_secs(4), NOTICE);
        let renewed = Instant::now();
        assert_eq!(expiry.check(renewed), Due::Nothing, "not at once");
        assert!(matches!(
            expiry.check(renewed + Duration::from_millis(2100)),
            Due::Notice(1)
        ));
        assert_eq!(expiry.check(renewed + Duration::from_secs(5)), Due::Expired);
    }
}
