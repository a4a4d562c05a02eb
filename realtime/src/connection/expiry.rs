//! When a connection's token runs out: the notice before it, the close at
//! it, and the pings in between, all on the read loop's one heartbeat timer
//! (a connection whose token does not expire keeps nothing of this).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// A connection's token expiry. Boxed in the reader, and only for
/// connections whose token expires.
#[derive(Debug)]
pub(crate) struct Expiry {
    /// When the token runs out.
    at: Instant,
    /// Whether the client was told it is running out.
    told: bool,
    /// When the next heartbeat ping is due: the timer serves both.
    next_ping: Instant,
    /// The expiry moved (`$refresh`): the timer must be set again.
    moved: bool,
}

/// What the heartbeat timer found due.
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
    /// An expiry at `at` (wall clock), for a connection whose first ping is
    /// `ping_interval` from now.
    pub(crate) fn new(at: SystemTime, ping_interval: Duration) -> Box<Self> {
        let now = Instant::now();
        Box::new(Self {
            at: instant_of(at, now),
            told: false,
            next_ping: now + ping_interval,
            moved: false,
        })
    }

    /// A fresh token's expiry: the notice is due again before it, unless
    /// the fresh token is already within `notice` of its end (the client
    /// has just refreshed; telling it again would loop).
    pub(crate) fn renew(&mut self, at: SystemTime, notice: Duration) {
        let now = Instant::now();
        self.at = instant_of(at, now);
        self.told = self.at <= now + notice;
        self.moved = true;
    }

    /// Whether the expiry moved since the timer was last set.
    pub(crate) fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// What is due at `now` about the token, `notice` before its end.
    pub(crate) fn check(&mut self, now: Instant, notice: Duration) -> Due {
        if now >= self.at {
            return Due::Expired;
        }
        if !self.told && now + notice >= self.at {
            self.told = true;
            return Due::Notice((self.at - now).as_secs());
        }
        Due::Nothing
    }

    /// Whether a ping is due at `now`; if so the next one is
    /// `ping_interval` later.
    pub(crate) fn ping_due(&mut self, now: Instant, ping_interval: Duration) -> bool {
        if now < self.next_ping {
            return false;
        }
        self.next_ping = now + ping_interval;
        true
    }

    /// When the timer must fire next: the next ping, the notice or the end,
    /// whichever comes first.
    pub(crate) fn next_due(&self, notice: Duration) -> Instant {
        let token = match self.told {
            false => self.at.checked_sub(notice).unwrap_or(self.at),
            true => self.at,
        };
        self.next_ping.min(token)
    }
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

    const PING: Duration = Duration::from_secs(20);
    const NOTICE: Duration = Duration::from_secs(30);

    #[test]
    fn the_notice_comes_once_before_the_end() {
        let before = Instant::now();
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(100), PING);
        let start = Instant::now();
        let due = expiry.next_due(NOTICE);
        assert!(
            due >= before + PING && due <= start + PING,
            "the next ping first"
        );
        assert_eq!(
            expiry.check(start + Duration::from_secs(60), NOTICE),
            Due::Nothing
        );
        assert!(matches!(
            expiry.check(start + Duration::from_secs(71), NOTICE),
            Due::Notice(28 | 29)
        ));
        assert_eq!(
            expiry.check(start + Duration::from_secs(72), NOTICE),
            Due::Nothing
        );
        assert_eq!(
            expiry.check(start + Duration::from_secs(101), NOTICE),
            Due::Expired
        );
    }

    #[test]
    fn a_short_token_is_noticed_at_once_and_the_timer_fires_at_its_end() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(5), PING);
        let now = Instant::now();
        assert!(expiry.next_due(NOTICE) <= now, "the notice is due now");
        assert!(matches!(expiry.check(now, NOTICE), Due::Notice(4 | 5)));
        let end = expiry.next_due(NOTICE);
        assert!(end > now + Duration::from_secs(4) && end < now + PING);
    }

    #[test]
    fn a_renewed_token_is_noticed_again_and_moves_the_timer() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(5), PING);
        let now = Instant::now();
        assert!(matches!(expiry.check(now, NOTICE), Due::Notice(_)));
        expiry.renew(SystemTime::now() + Duration::from_secs(3600), NOTICE);
        assert!(expiry.take_moved());
        assert!(!expiry.take_moved());
        assert_eq!(
            expiry.check(now + Duration::from_secs(10), NOTICE),
            Due::Nothing
        );
        assert!(expiry.ping_due(now + PING, PING));
        assert!(!expiry.ping_due(now + PING, PING));
    }

    #[test]
    fn a_fresh_token_as_short_as_the_notice_is_not_noticed_again() {
        let mut expiry = Expiry::new(SystemTime::now() + Duration::from_secs(20), PING);
        let now = Instant::now();
        assert!(matches!(expiry.check(now, NOTICE), Due::Notice(_)));
        expiry.renew(SystemTime::now() + Duration::from_secs(25), NOTICE);
        assert_eq!(expiry.check(Instant::now(), NOTICE), Due::Nothing);
        assert_eq!(
            expiry.check(now + Duration::from_secs(26), NOTICE),
            Due::Expired
        );
    }
}
