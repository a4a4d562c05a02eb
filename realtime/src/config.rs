//! Limits and timeouts of a [`Service`](crate::Service), in one place.

use std::time::Duration;

/// Limits and timeouts that apply to every connection of one service.
///
/// Start from [`Config::default()`] and change the fields you need; the
/// service builder validates the result once, in
/// [`ServiceBuilder::build`](crate::service::ServiceBuilder::build).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::Config;
///
/// let mut config = Config::default();
/// config.max_frame_bytes = 16 * 1024;
/// config.idle_timeout = Duration::from_secs(30);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest text frame a client may send, in bytes. Default: 64 KiB.
    ///
    /// A larger frame closes the connection with 1009 (message too big).
    pub max_frame_bytes: usize,
    /// Frames that may wait in one connection's own queue: answers, errors
    /// and `Context::send` events. Default: 1024.
    ///
    /// When a client reads too slowly and its queue is full, the connection is
    /// closed with 1013 (try again later); nobody else waits for it.
    pub outbound_queue: usize,
    /// Bytes of text that may wait in one connection's own queue. Default:
    /// 1 MiB.
    ///
    /// The bound that holds when frames are large: 1024 frames of a 1 MiB
    /// reply would otherwise be a gigabyte held for one client that does not
    /// read. Past it the connection is closed with 1013, as past
    /// `outbound_queue`. The queue's own buffer is freed once it is empty
    /// again, so a burst leaves no memory behind.
    pub outbound_queue_bytes: usize,
    /// Largest answer or event a message method may produce, in bytes of
    /// frame text. Default: 256 KiB; at most `outbound_queue_bytes`.
    ///
    /// A larger reply is not sent and a larger broadcast event is not
    /// published: the sender gets an error frame with code 500 instead, and
    /// the connection stays open. (What server code sends itself, with
    /// `Context::send` or `publish`, is not checked: only the queue's byte
    /// bound applies to it.) A frame that size is a handler's mistake (a
    /// history without a limit, say), and many clients refuse frames past
    /// 1 MiB anyway.
    pub max_reply_bytes: usize,
    /// Longest topic name, in bytes. Default: 256.
    ///
    /// A longer topic in the URL is refused with HTTP 400 before the
    /// upgrade, and a longer one in `$join` or in a frame's `topic` key gets
    /// an error frame with code 400. Every subscribed topic's name is kept
    /// by the instance (and by Redis as a channel), so without a bound a
    /// client could make the server hold megabytes of names.
    pub max_topic_bytes: usize,
    /// Events of one topic kept for its slowest local subscriber. Default: 1024.
    ///
    /// Each topic with local subscribers has one ring of this many frames,
    /// which every subscriber's writer reads: an event is stored once per
    /// instance, whatever the number of subscribers. A subscriber that falls
    /// further behind than this is closed with 1013 (try again later);
    /// nobody else waits for it. The ring is allocated whole when the topic
    /// gets its first local subscriber: 64 bytes per frame, so 64 KiB per
    /// topic at the default (plus the frames it holds). An application with
    /// many topics of one subscriber each (a topic per user) can lower it.
    pub topic_backlog: usize,
    /// Broadcasts of one connection whose publish may be in flight at once.
    /// Default: 64.
    ///
    /// The read loop goes on reading a client's frames while its publishes
    /// wait for the broker (one Redis round trip each), and sends the answers
    /// in frame order as they come. Past this bound it reads nothing more
    /// from that client until the oldest publish is answered.
    pub max_publishes_in_flight: usize,
    /// Frames the write task hands to the socket before one flush. Default: 64.
    pub write_batch: usize,
    /// Messages one connection may send per second, on average. Default: 100.
    ///
    /// Up to `rate_burst` messages may arrive at once; pings and pongs count
    /// too. A message past the limit is not handled: it gets an error frame
    /// with code 429 (a ping gets nothing). A client that keeps sending while
    /// limited is closed with 1008 (policy violation): once one streak of
    /// refusals holds more than `rate_burst`, or has lasted two bursts'
    /// refill time. A pause as long as one burst's refill time ends a
    /// streak.
    pub max_messages_per_sec: u32,
    /// Messages that may arrive at once before the rate limit applies. Default: 200.
    pub rate_burst: u32,
    /// WebSocket frames one connection may send per second, whatever they
    /// hold. Default: 1000, with a burst of one second's worth. Never less
    /// than `max_messages_per_sec` or `rate_burst`: an application that
    /// raises the message limit raises this one with it.
    ///
    /// Frames are counted as they come off the socket, before they make a
    /// message: a client that sends empty continuation frames, which never
    /// finish a message, pays for each. Past the limit the server stops
    /// reading that socket until the budget refills; nothing is refused and
    /// no other client waits.
    pub max_frames_per_sec: u32,
    /// Frames one message may be split into. Default: 64. A message in more
    /// is closed with 1008 (a browser sends each message as one frame).
    pub max_fragments: u32,
    /// How long a message split into frames may take from its first frame
    /// to its last. Default: 10 s. A slower one is closed with 1008.
    pub fragment_timeout: Duration,
    /// How often the server pings each client: a WebSocket ping, or the
    /// text frame `{"heartbeat":{}}` for a client that connected with
    /// `?heartbeat=text` (a page sees no ping; see the protocol's
    /// heartbeat section). Default: 25 s, as Socket.IO and Centrifugo do:
    /// often enough for the NATs and proxies that drop a silent connection
    /// after 30 s or more, and each ping costs the instance a write and a
    /// read per connection (docs/SCALING.md). The TypeScript client asks
    /// with a `$ping` of its own after 30 s without a frame (its
    /// `heartbeatMs`): raise that with this, or its clients ask on every
    /// silence.
    /// They go out in one sweep per twentieth of the interval (a group of
    /// the connections each time), not on a timer per connection; a silent
    /// client is found at its group's sweep.
    pub ping_interval: Duration,
    /// How long a client may stay silent (no frame, not even a pong) before it
    /// is closed with 1008. Default: 60 s. Must exceed `ping_interval`.
    pub idle_timeout: Duration,
    /// How long the server waits for the client's answer to its close frame
    /// before it drops the TCP connection. Default: 2 s.
    pub close_timeout: Duration,
    /// How long before a connection's token runs out the client is told
    /// so, with `{"expiring": {"expires_in": <seconds>}}`, so that it can
    /// send `$refresh` in time. Default: 30 seconds; a token that lives
    /// less than twice this is told at half its life.
    ///
    /// Only for tokens that expire (see `TokenValidator::identify`). At
    /// the expiry the connection is closed with 3000 (its token timer
    /// fires then). Each fresh token from `$refresh` is told of by the
    /// same rule.
    pub token_notice: Duration,
    /// Open connections this instance accepts. Default: 10 000.
    ///
    /// An upgrade request past the limit gets HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// Connections one user may hold on this instance at once. Default:
    /// 256. Past it the upgrade answers HTTP 429. Users are told apart by
    /// their id's `Debug` form.
    pub max_connections_per_user: usize,
    /// Bytes of events one user's clients may publish per second on this
    /// instance, all its connections together. Default: 256 KiB. Four
    /// seconds' worth (and at least one frame of `max_frame_bytes`) may go
    /// at once.
    ///
    /// Every published event stays in the broker's history for its time to
    /// live; without this budget a user with many sockets could fill
    /// Redis's memory. A broadcast past it is answered with an error frame
    /// (code 429) and not published; `Context::publish` returns that error.
    pub max_publish_bytes_per_user_per_sec: usize,
    /// New topics with history one user's clients may subscribe to or
    /// publish on, per minute, on this instance. Default: 60, all at once
    /// if need be.
    ///
    /// A topic with history costs the broker its keys for the history's
    /// time to live (its position from the first read, its events from the
    /// first publish). A topic is new when this instance follows it for
    /// nobody yet; so a handler that publishes with `Context::publish` to
    /// topics nobody follows here pays one each time. A subscription or
    /// publish that then fails in the broker gives its charge back. Past the budget an upgrade is answered HTTP 429, a
    /// `$join` error 429 and a broadcast error 429 (not published), until
    /// the budget refills. Topics without history cost the broker nothing
    /// to keep and are not counted.
    pub max_new_topics_per_user_per_min: u32,
    /// The `Origin`s a browser's upgrade may come from: exact origins
    /// (`https://chat.example.com`) or patterns with one `*` standing for
    /// one or more host labels (`https://*.example.com`). Default: empty,
    /// which lets every origin in.
    ///
    /// An upgrade from another origin gets HTTP 403. A request without
    /// `Origin` is let in: browsers always send one, so it is not a
    /// browser, and a client that is not a browser can send any origin it
    /// likes. The check keeps other sites' pages from using a visitor's
    /// cookies or tokens against this server.
    pub allowed_origins: Vec<String>,
    /// Topics one connection may follow at once, counting the topic of its
    /// URL. Default: 16.
    ///
    /// A `$join` past the limit is answered with an error frame (code 400);
    /// the client leaves a topic with `$leave` first.
    pub max_topics_per_connection: usize,
    /// Bytes queued for all of this instance's clients past which a resume
    /// (`since`) is refused. Default: 256 MiB.
    ///
    /// A resume queues the events the client missed, up to
    /// `outbound_queue_bytes`, until its socket takes them; clients that
    /// resume and never read would otherwise hold that much each. Checked
    /// when the missed events have been read, against what is queued and
    /// what resumes checked before hold but have not queued yet: the
    /// upgrade is answered 503, a `$join` error 503, and the client resumes
    /// later with its position intact.
    pub max_replay_bytes: usize,
    /// Size of each connection's read buffer, in bytes. Default: 2 KiB.
    ///
    /// Every connection keeps it for its whole life, idle or not. axum's
    /// default is 128 KiB, which makes an idle connection cost about
    /// 137 KiB; with 2 KiB a whole idle connection costs about 6 KiB (see
    /// docs/PERFORMANCE.md in the repository). A frame larger than the
    /// buffer is read in several calls, the buffer growing for it up to
    /// `max_frame_bytes`; client frames are small (requests, not events),
    /// and 4 KiB measured no faster for a publisher's burst or round trips.
    pub read_buffer_bytes: usize,
    /// Bytes tungstenite collects before it writes the frames it sends by
    /// itself (pongs, the close handshake), which it flushes at once anyway.
    /// Default: 8 KiB.
    ///
    /// Events and replies do not pass through it: the write task queues
    /// them as whole frames, an event's the same bytes for every
    /// subscriber, and writes up to `write_batch` of them per flush, in as
    /// few calls as the socket takes.
    pub write_buffer_bytes: usize,
    /// How long a broadcast's `idempotency_key` is remembered. Default:
    /// 2 minutes.
    ///
    /// A broadcast sent again with a key already published to its topic
    /// within this window is acknowledged again (with the first one's
    /// position) and not published twice: a client that lost its
    /// connection before the acknowledgement sends it again safely. Each
    /// key costs the broker a small entry for this long (in Redis, a key of
    /// the topic's slot with this expiry).
    pub idempotency_window: Duration,
    /// Whether permessage-deflate (RFC 7692) is negotiated with clients
    /// that offer it. Default: on.
    ///
    /// Each message is compressed on its own (the server answers with
    /// `server_no_context_takeover` and `client_no_context_takeover`), so
    /// an event is compressed once per instance and the same bytes serve
    /// every subscriber that negotiated it, and a connection keeps no
    /// compression state: idle memory is the same with it on or off.
    /// Compressed messages from clients are read too, and inflate to at most
    /// `max_frame_bytes`.
    pub compression: bool,
    /// Frames smaller than this are sent uncompressed even on a socket that
    /// negotiated compression. Default: 128 bytes.
    ///
    /// Without a shared context, DEFLATE saves little on a short frame and
    /// costs CPU all the same (see docs/PERFORMANCE.md in the repository).
    pub compression_min_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            max_topic_bytes: 256,
            max_reply_bytes: 256 * 1024,
            topic_backlog: 1024,
            max_publishes_in_flight: 64,
            write_batch: 64,
            max_messages_per_sec: 100,
            rate_burst: 200,
            max_frames_per_sec: 1000,
            max_fragments: 64,
            fragment_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(2),
            token_notice: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_user: 256,
            max_publish_bytes_per_user_per_sec: 256 * 1024,
            max_new_topics_per_user_per_min: 60,
            allowed_origins: Vec::new(),
            max_topics_per_connection: 16,
            max_replay_bytes: 256 * 1024 * 1024,
            read_buffer_bytes: 2 * 1024,
            write_buffer_bytes: 8 * 1024,
            idempotency_window: Duration::from_secs(120),
            compression: true,
            compression_min_bytes: 128,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// `idle_timeout` is not longer than `ping_interval`, so a healthy client
    /// could be closed before it had a chance to answer a ping.
    #[error("`idle_timeout` must be longer than `ping_interval`")]
    IdleNotAfterPing,
    /// `max_reply_bytes` is larger than `outbound_queue_bytes`, so a reply
    /// within the cap could never be queued and would close its client with
    /// 1013.
    #[error("`max_reply_bytes` must not exceed `outbound_queue_bytes`")]
    ReplyOverQueue,
    /// `rate_burst` is above 16 777 216 (2^24), past which the limiter's
    /// token count loses whole tokens.
    #[error("`rate_burst` must be at most 16777216")]
    BurstTooLarge,
}

impl Config {
    /// The frames per second (and burst) a connection may send: the larger
    /// of `max_frames_per_sec`, `max_messages_per_sec` and `rate_burst`.
    pub(crate) fn frame_budget(&self) -> u32 {
        self.max_frames_per_sec
            .max(self.max_messages_per_sec)
            .max(self.rate_burst)
    }

    /// Checks the limits for values that could never work.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] names the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("max_topic_bytes", self.max_topic_bytes),
            ("max_reply_bytes", self.max_reply_bytes),
            ("topic_backlog", self.topic_backlog),
            ("max_publishes_in_flight", self.max_publishes_in_flight),
            ("write_batch", self.write_batch),
            ("max_messages_per_sec", self.max_messages_per_sec as usize),
            ("rate_burst", self.rate_burst as usize),
            ("max_frames_per_sec", self.max_frames_per_sec as usize),
            ("max_fragments", self.max_fragments as usize),
            ("max_connections", self.max_connections),
            ("max_topics_per_connection", self.max_topics_per_connection),
            ("max_connections_per_user", self.max_connections_per_user),
            (
                "max_publish_bytes_per_user_per_sec",
                self.max_publish_bytes_per_user_per_sec,
            ),
            (
                "max_new_topics_per_user_per_min",
                self.max_new_topics_per_user_per_min as usize,
            ),
            ("max_replay_bytes", self.max_replay_bytes),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("write_buffer_bytes", self.write_buffer_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero(name));
        }
        for (name, value) in [
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
            ("fragment_timeout", self.fragment_timeout),
            ("idempotency_window", self.idempotency_window),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleNotAfterPing);
        }
        if self.max_reply_bytes > self.outbound_queue_bytes {
            return Err(ConfigError::ReplyOverQueue);
        }
        if self.rate_burst > 1 << 24 {
            return Err(ConfigError::BurstTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn zero_limit_is_refused_by_name() {
        let config = Config {
            outbound_queue: 0,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Zero("outbound_queue")));
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let defaults = Config::default();
        let config = Config {
            idle_timeout: defaults.ping_interval,
            ..defaults
        };
        assert_eq!(config.validate(), Err(ConfigError::IdleNotAfterPing));
    }

    #[test]
    fn a_reply_must_fit_the_queue_and_a_burst_the_token_count() {
        let config = Config {
            max_reply_bytes: 2 << 20,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ReplyOverQueue));
        let config = Config {
            rate_burst: (1 << 24) + 1,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::BurstTooLarge));
    }
}
