//! The Lua scripts behind history and presence: one publishes and appends
//! in one atomic step, one reads the history, one applies and reads
//! presence. All are loaded when a connection opens (on every master of a
//! cluster) and run by their SHA (`EVALSHA`).
//!
//! A script Redis no longer has (a `SCRIPT FLUSH`, a master that restarted
//! under a cluster connection) answers `NOSCRIPT`. Reads and presence calls
//! load it and run again, as the redis crate does; a publish does not: a
//! later publish of the same connection, sent while this one reloads, would
//! run first and reverse the two events. It fails instead (it did not run:
//! the sender is told it was not published), and the scripts are loaded
//! again for the publishes that follow.
//!
//! A topic's keys are `<prefix>{<topic>}:history` (a stream whose entry ids
//! are the offsets, `<offset>-0`) and `<prefix>{<topic>}:meta` (a hash of
//! `epoch`, `offset` and `run`). The braces are a hash tag: in a cluster
//! both keys, and the topic's channel, live in one slot, so each script
//! touches one master.
//!
//! `run` is the Redis process's `run_id` when the epoch began. A Redis that
//! restarted (without persistence, from an RDB snapshot, with `appendfsync
//! everysec`) or a replica promoted in its place may have lost acknowledged
//! writes, and would give their offsets out again under the same epoch; so
//! a meta written by another run starts a new epoch, unless the broker runs
//! with [`Durability::Durable`](super::Durability::Durable).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Script, Value};
use bytes::Bytes;

use crate::broker::{History, HistoryQuery, Retention, Sequenced};
use crate::broker::{Presence, PresenceUpdate};
use crate::protocol::Frame;
use crate::protocol::Position;

/// The start of the append and read scripts: `epoch_of(run, fresh)` gives
/// the topic's epoch, and starts a new one (`fresh`, with an empty history
/// from offset 0) when the topic has none, or when its epoch was begun by
/// another run of Redis than this one. `run` is this Redis's `run_id` as
/// the caller's connection saw it, `''` to look it up here (a cluster
/// connection spans several processes), or `'*'` to keep positions across
/// restarts.
const EPOCH_OF: &str = r#"
local function epoch_of(run, fresh)
  local meta = redis.call('HMGET', KEYS[2], 'epoch', 'run')
  if run == '' then
    run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  end
  if meta[1] and (run == '*' or meta[2] == run) then
    return meta[1], false
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', fresh, 'offset', 0, 'run', run)
  return fresh, true
end
"#;

/// Gives the event the topic's next offset, appends it to the stream
/// (trimmed to the history size), moves both keys' expiry, then publishes
/// `<offset>:<epoch>:<frame>` on the channel. A topic whose meta is gone
/// (expired, or Redis lost it), or was written by another run of Redis,
/// starts a new epoch with an empty stream (see [`EPOCH_OF`]).
///
/// It first compares Redis's own clock with the deadline the node gave: a
/// call that waited past it (Redis frozen, then thawed) does nothing, so a
/// publish the node already answered with an error never happens later.
/// Then, given an idempotency key (a third key), it answers the position
/// that key's event got, if it was appended within the key's window, and
/// appends nothing; otherwise it records the new position under the key.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{EPOCH_OF}{}",
        r#"
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[7]) then
  return redis.error_reply('EXPIRED the deadline passed before Redis ran the publish')
end
if KEYS[3] then
  local done = redis.call('GET', KEYS[3])
  if done then
    local at = string.find(done, ':', 1, true)
    return {tonumber(string.sub(done, 1, at - 1)), string.sub(done, at + 1)}
  end
end
local epoch = epoch_of(ARGV[9], ARGV[6])
local offset = string.format('%d', redis.call('HINCRBY', KEYS[2], 'offset', 1))
local frame = ARGV[2] .. '"offset":' .. offset .. ',' .. ARGV[3]
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], offset .. '-0', 'f', frame)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call(ARGV[8], ARGV[1], offset .. ':' .. epoch .. ':' .. frame)
if KEYS[3] then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', ARGV[10])
end
return {tonumber(offset), epoch}
"#
    ))
});

/// Publishes a frame of a topic without history once per idempotency key:
/// the key is set (for its window) and the frame published in one step,
/// or neither if the key is there already.
static PUBLISH_ONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  redis.call(ARGV[4], ARGV[1], ARGV[2])
end
return 0
"#,
    )
});

/// Reads the position and events as a [`HistoryQuery`] says: after an
/// offset (`XRANGE`) or the last ones (`XREVRANGE`, reversed by the
/// caller), in parts of 100, stopping at the count or the byte budget. A
/// read of another epoch than the one asked for, or a whole read that
/// cannot be whole (a gap at its start, more than fits), answers the
/// position alone, having read at most one part. A topic without meta gets
/// one (offset 0, a new epoch), so that a client has a position to resume
/// from; so does one whose epoch another run of Redis began (see
/// [`EPOCH_OF`]).
///
/// ARGV: since (empty: the last ones), limit, TTL in ms, a new epoch, the
/// run, the epoch asked for (empty: any), the byte budget, whole (`1`).
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{EPOCH_OF}{}",
        r#"
local epoch, fresh = epoch_of(ARGV[5], ARGV[4])
if fresh then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {0, epoch, {}}
end
local offset = tonumber(redis.call('HGET', KEYS[2], 'offset'))
local limit = tonumber(ARGV[2])
if limit <= 0 or (ARGV[6] ~= '' and ARGV[6] ~= epoch) then
  return {offset, epoch, {}}
end
local budget = tonumber(ARGV[7])
local whole = ARGV[8] == '1'
local backwards = ARGV[1] == ''
local since = tonumber(ARGV[1])
local entries = {}
local from = backwards and '+' or ('(' .. ARGV[1])
while #entries < limit do
  local count = math.min(100, limit - #entries)
  local part
  if backwards then
    part = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', count)
  else
    part = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
    if whole and #entries == 0 and #part > 0
        and tonumber(string.match(part[1][1], '^%d+')) ~= since + 1 then
      return {offset, epoch, {}}
    end
  end
  for _, entry in ipairs(part) do
    budget = budget - string.len(entry[2][2])
    if budget < 0 then
      if whole then return {offset, epoch, {}} end
      return {offset, epoch, entries}
    end
    entries[#entries + 1] = entry
  end
  if #part < count then break end
  from = '(' .. part[#part][1]
end
if whole and not backwards and #entries > 0
    and tonumber(string.match(entries[#entries][1], '^%d+')) < offset then
  return {offset, epoch, {}}
end
return {offset, epoch, entries}
"#
    ))
});

/// Applies one instance's batch of presence changes to a topic, and with
/// a flag reads the result. Keys: the clients (a hash of client → user as
/// JSON), their expiry times (a sorted set, by Redis's clock in
/// milliseconds) and the connections per user (a hash of user → count).
///
/// First it drops every client whose time passed, a thousand at a time, so
/// that all the leaves a dead instance owes come together, within the
/// bound, however many they are. Then it adds or refreshes the joined
/// clients, then removes the left ones. A user whose
/// count goes from 0 to 1 joins, and back to 0 leaves; with a head given,
/// each is published on the topic's channel as
/// `{"topic":..,"join":{"user":..}}`, in the same step, so every instance
/// announces each once. All three keys expire two times to live after the
/// last write, so a topic nobody refreshes leaves nothing behind.
///
/// ARGV: time to live (ms), head (`{"topic":..,` or empty: no events),
/// channel, publish command, what to read (`0`: nothing; `1`: answer the
/// users; `@<instance>:`: publish them on the channel after that marker, for
/// that instance alone, in order with the joins and leaves), number of
/// joined clients, the joined clients and users in pairs, the left clients.
static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local head = ARGV[2]
local function announce(kind, user)
  if head ~= '' then
    redis.call(ARGV[4], ARGV[3], head .. '"' .. kind .. '":{"user":' .. user .. '}}')
  end
end
local function remove(client)
  local user = redis.call('HGET', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
  if not user then return end
  redis.call('HDEL', KEYS[1], client)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
    announce('leave', user)
  end
end
repeat
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, client in ipairs(expired) do
    remove(client)
  end
until #expired < 1000
local joined = tonumber(ARGV[6])
for i = 0, joined - 1 do
  local client, user = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  if redis.call('HSETNX', KEYS[1], client, user) == 1 then
    if redis.call('HINCRBY', KEYS[3], user, 1) == 1 then
      announce('join', user)
    end
  end
  redis.call('ZADD', KEYS[2], now + ttl, client)
end
for i = 7 + 2 * joined, #ARGV do
  remove(ARGV[i])
end
if joined > 0 then
  for k = 1, 3 do
    redis.call('PEXPIRE', KEYS[k], ttl * 2)
  end
end
if ARGV[5] == '1' then
  return redis.call('HGETALL', KEYS[3])
end
if ARGV[5] ~= '0' then
  redis.call(ARGV[4], ARGV[3], ARGV[5] .. cjson.encode(redis.call('HGETALL', KEYS[3])))
end
return 0
"#,
    )
});

/// Loads the scripts on a new connection, so that the first publish does
/// not pay for a `NOSCRIPT` round trip.
pub(super) async fn load(conn: &mut impl ::redis::aio::ConnectionLike) -> ::redis::RedisResult<()> {
    APPEND.prepare_invoke().load_async(conn).await?;
    PUBLISH_ONCE.prepare_invoke().load_async(conn).await?;
    READ.prepare_invoke().load_async(conn).await?;
    PRESENCE.prepare_invoke().load_async(conn).await?;
    Ok(())
}

/// A topic's three presence keys, with the topic's hash tag.
pub(super) struct PresenceKeys([Vec<u8>; 3]);

impl PresenceKeys {
    pub(super) fn new(prefix: &[u8], topic: &str) -> Self {
        Self([
            tagged(prefix, topic, b"presence"),
            tagged(prefix, topic, b"presence:expiry"),
            tagged(prefix, topic, b"presence:users"),
        ])
    }
}

/// One call of the presence script.
pub(super) struct PresenceCall<'a> {
    pub(super) keys: PresenceKeys,
    pub(super) channel: &'a [u8],
    /// `{"topic":..,` if joins and leaves are announced.
    pub(super) head: Option<&'a str>,
    pub(super) update: PresenceUpdate<'a>,
    pub(super) sharded: bool,
}

/// What a call of the presence script reads once it has applied its batch.
#[derive(Debug, Clone, Copy)]
pub(super) enum PresenceRead<'a> {
    /// Nothing: a write.
    Nothing,
    /// The presence, answered to the caller.
    Answer,
    /// The presence, published on the topic's channel after this marker
    /// (`@<instance>:`), for that instance's subscribers alone.
    Resend(&'a str),
}

/// Runs the presence script; the presence it leaves, if `read` answers it
/// (the default otherwise).
pub(super) async fn presence(
    conn: &mut impl ::redis::aio::ConnectionLike,
    call: PresenceCall<'_>,
    read: PresenceRead<'_>,
) -> ::redis::RedisResult<Presence> {
    let [clients, expiry, users] = call.keys.0;
    let mut invocation = PRESENCE.key(clients);
    invocation
        .key(expiry)
        .key(users)
        .arg(call.update.ttl.as_millis() as u64)
        .arg(call.head.unwrap_or_default())
        .arg(call.channel)
        .arg(if call.sharded { "SPUBLISH" } else { "PUBLISH" })
        .arg(match read {
            PresenceRead::Nothing => "0",
            PresenceRead::Answer => "1",
            PresenceRead::Resend(marker) => marker,
        })
        .arg(call.update.joined.len());
    for (client, user) in call.update.joined {
        invocation.arg(client).arg(&**user);
    }
    for client in call.update.left {
        invocation.arg(client);
    }
    if !matches!(read, PresenceRead::Answer) {
        invocation.invoke_async::<()>(conn).await?;
        return Ok(Presence::default());
    }
    let flat: Vec<String> = invocation.invoke_async(conn).await?;
    let mut counts = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(user), Some(count)) = (flat.next(), flat.next()) {
        counts.push((user, count.parse().unwrap_or(0)));
    }
    Ok(Presence::from_counts(counts))
}

/// `<prefix>{<topic>}:<suffix>`: the braces are a hash tag, so every key of
/// a topic and its channel share a cluster slot.
fn tagged(prefix: &[u8], topic: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + topic.len() + 3 + suffix.len());
    key.extend_from_slice(prefix);
    key.push(b'{');
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(b"}:");
    key.extend_from_slice(suffix);
    key
}

/// A topic's two keys.
pub(super) struct Keys {
    pub(super) stream: Vec<u8>,
    pub(super) meta: Vec<u8>,
}

impl Keys {
    pub(super) fn new(prefix: &[u8], topic: &str) -> Self {
        Self {
            stream: tagged(prefix, topic, b"history"),
            meta: tagged(prefix, topic, b"meta"),
        }
    }
}

/// One append: where, what, how long to keep it, and by when.
pub(super) struct Append<'a> {
    pub(super) topic: &'a str,
    pub(super) keys: Keys,
    /// The idempotency key's Redis key and window, if the event has one.
    pub(super) once: Option<(Vec<u8>, Duration)>,
    pub(super) channel: &'a [u8],
    /// `{"topic":...,` and `"event":...}`.
    pub(super) head: &'a str,
    pub(super) tail: &'a str,
    pub(super) retention: &'a Retention,
    pub(super) timeout: Duration,
    pub(super) sharded: bool,
}

/// One call of the append script, by its SHA alone: on `NOSCRIPT` it fails
/// rather than load the script and run again (see the module's
/// documentation); the caller loads the scripts for the next publishes.
/// `run` is as in [`EPOCH_OF`]. Its answer reads with [`position`].
pub(super) fn append(append: Append<'_>, run: &str) -> ::redis::Cmd {
    // A quarter of the timeout before the node gives up: a script that ran
    // just in time still has that long for its answer to arrive, so an
    // event the node answers with an error was not published.
    let deadline = unix_millis() + (append.timeout - append.timeout / 4).as_millis() as u64;
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(APPEND.get_hash())
        .arg(if append.once.is_some() { 3 } else { 2 })
        .arg(append.keys.stream)
        .arg(append.keys.meta);
    let window = append.once.map(|(key, window)| {
        cmd.arg(key);
        (window.as_millis() as u64).max(1)
    });
    cmd.arg(append.channel)
        .arg(append.head)
        .arg(append.tail)
        .arg(append.retention.size())
        .arg(append.retention.ttl().as_millis() as u64)
        .arg(crate::util::random_id())
        .arg(deadline)
        .arg(if append.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        })
        .arg(run)
        .arg(window.unwrap_or(0));
    cmd
}

/// A publish of a topic without history under an idempotency key: one call
/// of the publish-once script, by its SHA alone (see [`append`]).
pub(super) fn publish_once(
    key: Vec<u8>,
    channel: &[u8],
    frame: &[u8],
    window: Duration,
    sharded: bool,
) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(PUBLISH_ONCE.get_hash())
        .arg(1)
        .arg(key)
        .arg(channel)
        .arg(frame)
        .arg((window.as_millis() as u64).max(1))
        .arg(if sharded { "SPUBLISH" } else { "PUBLISH" });
    cmd
}

/// `<prefix>{<topic>}:once:<key>`: where an idempotency key of `topic` is
/// remembered, in the topic's slot.
pub(super) fn once_key(prefix: &[u8], topic: &str, key: &str) -> Vec<u8> {
    let mut suffix = Vec::with_capacity(5 + key.len());
    suffix.extend_from_slice(b"once:");
    suffix.extend_from_slice(key.as_bytes());
    tagged(prefix, topic, &suffix)
}

/// The position the append script answers.
pub(super) fn position(answer: Value) -> ::redis::RedisResult<Position> {
    let (offset, epoch): (u64, String) = ::redis::from_redis_value(answer)?;
    Ok(Position { offset, epoch })
}

/// Whether `error` is Redis saying it has no such script.
pub(super) fn is_noscript(error: &::redis::RedisError) -> bool {
    error.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript)
}

/// Reads a topic's history; `run` is as in [`EPOCH_OF`].
pub(super) async fn read(
    conn: &mut impl ::redis::aio::ConnectionLike,
    keys: Keys,
    query: HistoryQuery<'_>,
    retention: &Retention,
    run: &str,
) -> ::redis::RedisResult<History> {
    let (offset, epoch, entries): (u64, String, Vec<Value>) = READ
        .key(keys.stream)
        .key(keys.meta)
        .arg(
            query
                .since
                .map(|since| since.to_string())
                .unwrap_or_default(),
        )
        .arg(query.limit)
        .arg(retention.ttl().as_millis() as u64)
        .arg(crate::util::random_id())
        .arg(run)
        .arg(query.epoch.unwrap_or_default())
        // Lua reads numbers as doubles: past 2^53 the budget is no bound anyway.
        .arg(query.max_bytes.min(1 << 53))
        .arg(if query.whole { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    let mut events = entries
        .into_iter()
        .filter_map(entry)
        .collect::<Vec<Sequenced>>();
    if query.since.is_none() {
        events.reverse();
    }
    Ok(History {
        position: Position { offset, epoch },
        events,
    })
}

/// One stream entry, `[id, [field, frame]]`, as an event; `None` (skipped)
/// if it is not one of ours.
fn entry(value: Value) -> Option<Sequenced> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (parts.next(), parts.next())
    else {
        return None;
    };
    let offset = std::str::from_utf8(&id)
        .ok()?
        .strip_suffix("-0")?
        .parse()
        .ok()?;
    let Some(Value::BulkString(frame)) = fields.into_iter().nth(1) else {
        return None;
    };
    let frame = Frame::from_utf8(Bytes::from(frame)).ok()?;
    Some(Sequenced { offset, frame })
}

/// Splits a published message of a topic with history,
/// `<offset>:<epoch>:<frame>`; `None` for a plain frame (which starts with
/// `{`).
pub(super) fn sequenced(payload: &[u8]) -> Option<(u64, &str, usize)> {
    // Most messages are plain frames: one look tells them apart.
    if !payload.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let digits = payload.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&payload[..digits]).ok()?.parse().ok()?;
    let rest = &payload[digits + 1..];
    let length = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..length]).ok()?;
    Some((offset, epoch, digits + 1 + length + 1))
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let keys = Keys::new(b"app:", "room:1");
        assert_eq!(keys.stream, b"app:{room:1}:history");
        assert_eq!(keys.meta, b"app:{room:1}:meta");
    }

    #[test]
    fn reads_a_sequenced_message() {
        let payload = br#"42:x7Fq:{"topic":"t","offset":42,"event":1}"#;
        let (offset, epoch, at) = sequenced(payload).unwrap();
        assert_eq!((offset, epoch), (42, "x7Fq"));
        assert_eq!(&payload[at..at + 1], b"{");
        assert!(sequenced(br#"{"topic":"t","event":1}"#).is_none());
    }
}
