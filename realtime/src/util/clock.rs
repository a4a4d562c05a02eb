//! A small clock for state kept per socket, per connection or per user:
//! milliseconds as `u32` rather than 16-byte `Instant`s.

use std::time::Instant;

/// `now` in milliseconds since the first time anyone asked in this
/// process. Truncated to 32 bits on purpose: differences of these, taken
/// with `wrapping_sub`, stay right across the wrap after 49 days, and only
/// differences well under that are read.
pub(crate) fn millis(now: impl Into<Instant>) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.into().saturating_duration_since(epoch).as_millis() as u32
}
