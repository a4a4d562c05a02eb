//! [`RedisConfig`]: channel prefix, timeouts, reconnection backoff, watchdog.

use std::time::Duration;

use crate::util::{Backoff, Jitter};

/// Settings of a [`RedisBroker`](super::RedisBroker), with documented defaults.
///
/// Start from [`RedisConfig::default()`] and change the fields you need. The
/// values are checked by [`RedisBroker::connect`](super::RedisBroker::connect).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::RedisConfig;
///
/// let mut config = RedisConfig::default();
/// config.channel_prefix = "chat:".to_owned();
/// config.command_timeout = Duration::from_secs(1);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Put in front of every topic to make its Redis channel name, so that
    /// application topics cannot collide with other users of the same Redis.
    /// Every instance of one application must use the same prefix.
    ///
    /// Default: `"realtime:"`.
    pub channel_prefix: String,
    /// How long one Redis command (`PUBLISH`, `SUBSCRIBE`, `UNSUBSCRIBE`,
    /// `PING`) may take before it fails.
    ///
    /// A publish that times out is answered to its sender with an error frame
    /// (code 503); a subscriber command that times out makes the broker
    /// rebuild its connections. Default: 2 s. A healthy Redis answers in well
    /// under a millisecond; the redis crate's own default, 500 ms, turns the
    /// stalls a busy Redis has (a fork for a snapshot, a slow command of
    /// another client) into failed publishes. Two seconds rides those out
    /// while still bounding how long a sender waits for its error frame.
    pub command_timeout: Duration,
    /// How long opening one connection (TCP, `HELLO`, authentication) may take.
    ///
    /// Default: 2 s.
    pub connect_timeout: Duration,
    /// The first wait before reconnecting after the connection to Redis was
    /// lost. Each failed attempt doubles the wait, up to
    /// [`reconnect_backoff_max`](Self::reconnect_backoff_max); each wait is
    /// drawn at random from its upper half (jitter), so that the instances of
    /// an application do not reconnect in lockstep.
    ///
    /// Default: 50 ms.
    pub reconnect_backoff_min: Duration,
    /// The longest wait between two reconnection attempts.
    ///
    /// Default: 1 s, so that an instance is back within about a second of
    /// Redis coming back, while a Redis that is down sees at most about one
    /// attempt per second from each instance.
    pub reconnect_backoff_max: Duration,
    /// How often the subscriber connection is pinged. A Redis that stops
    /// answering without closing its connections (a frozen process, a network
    /// partition) is detected by a ping that fails or times out, within
    /// `ping_interval + command_timeout`.
    ///
    /// On a single Redis the ping's `command_timeout` counts only the time
    /// the instance's runtime was awake to keep it: when an overloaded
    /// instance runs its tasks seconds late, the ping waits longer in
    /// proportion (up to ten command timeouts on the clock) rather than
    /// taking the late reading of Redis's answer for silence and giving a
    /// working connection up.
    ///
    /// Default: 1 s.
    pub ping_interval: Duration,
    /// Whether positions of topics with history survive a Redis restart.
    ///
    /// Default: [`Durability::Volatile`]: every restart starts a new epoch.
    pub durability: Durability,
}

/// What a restart of Redis may have lost, and so what the positions of
/// topics with history promise across one (see
/// [Positions across restarts](super#positions-across-restarts)).
///
/// # Examples
///
/// ```
/// use realtime::RedisConfig;
/// use realtime::broker::redis::Durability;
///
/// // Redis runs with `appendonly yes` and `appendfsync always`, no replica
/// // is ever promoted: it keeps every write it acknowledged.
/// let mut config = RedisConfig::default();
/// config.durability = Durability::Durable;
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Redis may lose acknowledged writes when it restarts: without
    /// persistence, from an RDB snapshot, with `appendfsync everysec` (up
    /// to a second), or when a replica that lacks the last writes is
    /// promoted. After it, the same offsets could be given to other
    /// events under the same epoch, so every topic starts a new epoch at
    /// its first use after a restart (told apart by the Redis process's
    /// `run_id`). Clients that resume across it get `recovered: false`,
    /// and reload.
    #[default]
    Volatile,
    /// Redis keeps every write it acknowledged: AOF with `appendfsync
    /// always`, and no failover to a replica (replication is
    /// asynchronous). Positions stay valid across restarts, and clients
    /// resume across them with `recovered: true`. Choose it only for such
    /// a Redis: with another, a client could resume into offsets given to
    /// other events and miss them without being told.
    Durable,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            channel_prefix: "realtime:".to_owned(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            durability: Durability::Volatile,
        }
    }
}

/// Why a [`RedisConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// A duration that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// `reconnect_backoff_min` is longer than `reconnect_backoff_max`.
    #[error("`reconnect_backoff_min` ({min:?}) is longer than `reconnect_backoff_max` ({max:?})")]
    Backoff {
        /// The configured minimum.
        min: Duration,
        /// The configured maximum.
        max: Duration,
    },
}

impl RedisConfig {
    /// Checks that every value can work.
    pub(super) fn validate(&self) -> Result<(), RedisConfigError> {
        for (name, value) in [
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                return Err(RedisConfigError::Zero(name));
            }
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            return Err(RedisConfigError::Backoff {
                min: self.reconnect_backoff_min,
                max: self.reconnect_backoff_max,
            });
        }
        Ok(())
    }

    /// The wait before reconnection attempt `attempt` (0 for the first):
    /// `min * 2^attempt`, capped at `max`, then drawn from the upper half of
    /// that range ("equal jitter": never shorter than half the nominal wait,
    /// never longer than `max`).
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(
            self.reconnect_backoff_min,
            self.reconnect_backoff_max,
            Jitter::Equal,
        )
        .wait(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(RedisConfig::default().validate(), Ok(()));
    }

    #[test]
    fn zero_timeout_is_refused_by_name() {
        let config = RedisConfig {
            command_timeout: Duration::ZERO,
            ..RedisConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(RedisConfigError::Zero("command_timeout"))
        );
    }

    #[test]
    fn inverted_backoff_is_refused() {
        let config = RedisConfig {
            reconnect_backoff_min: Duration::from_secs(5),
            ..RedisConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(RedisConfigError::Backoff { .. })
        ));
    }

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let config = RedisConfig::default();
        for _ in 0..100 {
            let first = config.backoff(0);
            assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
            let fourth = config.backoff(3);
            assert!(fourth >= Duration::from_millis(200) && fourth <= Duration::from_millis(400));
            for attempt in [10, 31, u32::MAX] {
                let late = config.backoff(attempt);
                assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
            }
        }
    }
}
