//! Where the chat keeps each room's last lines: in this process, or in Redis
//! so that every instance answers `history` the same.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use realtime::HandlerError;
use serde::{Deserialize, Serialize};

/// Lines kept per room.
pub(crate) const KEPT: usize = 100;

/// One chat line, as stored and as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Line {
    /// Who said it.
    pub(crate) from: String,
    /// What was said.
    pub(crate) text: String,
    /// When, in milliseconds since the Unix epoch.
    pub(crate) at: u64,
}

/// The last lines of every room.
pub(crate) enum History {
    /// This process only (the memory broker's companion).
    Memory(Mutex<HashMap<String, VecDeque<Line>>>),
    /// A Redis list per room, `chat:history:<room>`, newest first.
    Redis(redis::aio::MultiplexedConnection),
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memory(_) => "History::Memory",
            Self::Redis(_) => "History::Redis",
        })
    }
}

fn key(room: &str) -> String {
    format!("chat:history:{room}")
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> HandlerError {
    HandlerError::new(503, "history is unavailable right now").with_source(error)
}

impl History {
    /// Appends `line` to `room`, keeping the last [`KEPT`].
    pub(crate) async fn push(&self, room: &str, line: &Line) -> Result<(), HandlerError> {
        match self {
            Self::Memory(rooms) => {
                let mut rooms = rooms.lock().expect("history lock poisoned");
                let lines = rooms.entry(room.to_owned()).or_default();
                lines.push_back(line.clone());
                if lines.len() > KEPT {
                    lines.pop_front();
                }
                Ok(())
            }
            Self::Redis(connection) => {
                let json = serde_json::to_string(line)?;
                let mut connection = connection.clone();
                redis::pipe()
                    .lpush(key(room), json)
                    .ignore()
                    .ltrim(key(room), 0, KEPT as isize - 1)
                    .ignore()
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// The last `limit` lines of `room`, oldest first.
    pub(crate) async fn last(&self, room: &str, limit: usize) -> Result<Vec<Line>, HandlerError> {
        let limit = limit.min(KEPT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        match self {
            Self::Memory(rooms) => {
                let rooms = rooms.lock().expect("history lock poisoned");
                let Some(lines) = rooms.get(room) else {
                    return Ok(Vec::new());
                };
                Ok(lines
                    .iter()
                    .skip(lines.len().saturating_sub(limit))
                    .cloned()
                    .collect())
            }
            Self::Redis(connection) => {
                let mut connection = connection.clone();
                let newest_first: Vec<String> = redis::cmd("LRANGE")
                    .arg(key(room))
                    .arg(0)
                    .arg(limit as isize - 1)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                // A line that does not parse was not written by this app; skip it.
                Ok(newest_first
                    .iter()
                    .rev()
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect())
            }
        }
    }
}
