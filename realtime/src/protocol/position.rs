//! [`Position`]: where a topic with history stands, and what a client
//! resumes from.

use std::fmt;

use serde::Deserialize;

/// Where a topic stands: the offset of its last event and the epoch of its
/// history. Also what a client resumes from.
///
/// # Examples
///
/// ```
/// use realtime::history::Position;
///
/// let since: Position = "42.x7Fq".parse().unwrap();
/// assert_eq!(since.offset, 42);
/// assert_eq!(since.epoch, "x7Fq");
/// assert_eq!(since.to_string(), "42.x7Fq");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub struct Position {
    /// The last event's offset; 0 before the first.
    pub offset: u64,
    /// Changes only when the history was lost.
    pub epoch: String,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.offset, self.epoch)
    }
}

/// A position that does not read as `<offset>.<epoch>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a position reads `<offset>.<epoch>`, as in `42.x7Fq`")]
pub struct PositionError;

impl std::str::FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let (offset, epoch) = text.split_once('.').ok_or(PositionError)?;
        let offset = offset.parse().map_err(|_| PositionError)?;
        if !is_epoch(epoch) {
            return Err(PositionError);
        }
        Ok(Self {
            offset,
            epoch: epoch.to_owned(),
        })
    }
}

/// Whether `text` can be an epoch: 1 to 32 ASCII letters and digits, so it
/// never needs escaping in a frame, a key or a URL.
pub(crate) fn is_epoch(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        assert!("42".parse::<Position>().is_err());
        assert!("x.abc".parse::<Position>().is_err());
        assert!("4.a-b".parse::<Position>().is_err());
        assert!("4.".parse::<Position>().is_err());
        assert_eq!("0.Ab9".parse::<Position>().unwrap().offset, 0);
    }

    #[test]
    fn epochs_are_valid() {
        assert!(is_epoch(&crate::util::random_id()));
    }
}
