//! The series this crate records through the [`metrics`] facade: the
//! application installs a recorder (a Prometheus exporter, say) before it
//! builds its service, and every series below appears there. Without one,
//! recording costs next to nothing.
//!
//! | series | kind | labels |
//! | --- | --- | --- |
//! | `realtime_connections` | gauge (admitted, from the upgrade request to the connection's end) | |
//! | `realtime_connections_accepted_total` | counter | |
//! | `realtime_connections_compressed_total` | counter: upgraded connections that negotiated permessage-deflate | |
//! | `realtime_upgrade_refused_total` | counter | `status` (400, 401, 403, 426, 429, 500, 503 or `other`) |
//! | `realtime_connection_ends_total` | counter: every upgraded connection's end, registered at 0 when the service is built | `by` (`client`: its close frame; `server`: the server's close; `none`: the socket ended with no close frame), `code` (the close code: 1005 for a client close frame without one, 1006 for `none`) |
//! | `realtime_reads_throttled_total` | counter: times a client's socket was left unread for sending frames faster than `Config::max_frames_per_sec` | |
//! | `realtime_frames_received_total` | counter | `type`: a wire name of the handler's, a `$` control message, or `invalid` |
//! | `realtime_handler_duration_seconds` | histogram | `type`: the handler's wire names (control messages and invalid frames run no handler) |
//! | `realtime_events_published_total` | counter | |
//! | `realtime_events_delivered_total` | counter | |
//! | `realtime_slow_closes_total` | counter: clients closed with 1013 for reading too slowly (their queue full, a topic's backlog passed, or a socket stuck) | |
//! | `realtime_broker_publish_errors_total` | counter | |
//! | `realtime_broker_reconnects_total` | counter | |
//! | `realtime_broker_publish_duration_seconds` | histogram | |
//! | `realtime_subscribed_topics` | gauge | |
//! | `realtime_history_recovered_total` | counter | `result` (`recovered`, `not_recovered`) |
//! | `realtime_history_gap_fills_total` | counter | |
//! | `realtime_history_resumes_here_total` | counter: resumes answered from the last events the instance's ring of the topic delivered (64 per topic), with no read of the history | |
//! | `realtime_history_resume_reads_total` | counter: reads of a topic's history for subscriptions to it (a resume's missed events, or the position); concurrent ones of one topic share a read | |
//! | `realtime_topic_resets_total` | counter | |
//!
//! No label holds a topic name or a user id: ten thousand topics add no
//! series. `type` takes the handler's wire names
//! ([`MessageHandler::MESSAGE_TYPES`](crate::MessageHandler::MESSAGE_TYPES),
//! which the macro fills; a hand-written handler that leaves it empty
//! counts its messages as `message`), the four control messages and
//! `invalid` for anything else, so a client cannot add series either.
//! Events delivered count every frame a topic's ring handed to a client:
//! events, and `join`/`leave` frames.
//!
//! The series recorded per message (frames, handler time, events published
//! and delivered, publish time) use handles registered when the service is
//! built: install the recorder before that.
//!
//! The constants below are the series' names, for dashboards and tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::protocol::Control;
use crate::util::bump;

/// Connections admitted and not yet ended (gauge).
pub const CONNECTIONS: &str = "realtime_connections";
/// Connections upgraded.
pub const ACCEPTED: &str = "realtime_connections_accepted_total";
/// Connections upgraded with permessage-deflate negotiated.
///
/// ```
/// assert_eq!(realtime::telemetry::COMPRESSED, "realtime_connections_compressed_total");
/// ```
pub const COMPRESSED: &str = "realtime_connections_compressed_total";
/// Upgrades refused, by `status`.
pub const UPGRADE_REFUSED: &str = "realtime_upgrade_refused_total";
/// Connections ended, by `by` (`client`, `server`, `none`) and `code`.
///
/// ```
/// assert_eq!(realtime::telemetry::CONNECTION_ENDS, "realtime_connection_ends_total");
/// ```
pub const CONNECTION_ENDS: &str = "realtime_connection_ends_total";
/// Times a client's socket was left unread for sending frames faster than
/// `Config::max_frames_per_sec`.
pub const READS_THROTTLED: &str = "realtime_reads_throttled_total";
/// Client publishes refused by their user's budget, by `budget` (`bytes`,
/// `topics`).
pub const PUBLISHES_REFUSED: &str = "realtime_publishes_refused_total";
/// Client frames, by `type`.
pub const FRAMES_RECEIVED: &str = "realtime_frames_received_total";
/// Handler time in seconds, by `type` (histogram).
pub const HANDLER_DURATION: &str = "realtime_handler_duration_seconds";
/// Events this instance published.
pub const EVENTS_PUBLISHED: &str = "realtime_events_published_total";
/// Frames a topic's ring handed to a client.
pub const EVENTS_DELIVERED: &str = "realtime_events_delivered_total";
/// Clients closed with 1013 for reading too slowly.
///
/// ```
/// assert_eq!(realtime::telemetry::SLOW_CLOSES, "realtime_slow_closes_total");
/// ```
pub const SLOW_CLOSES: &str = "realtime_slow_closes_total";
/// Publishes the broker did not take.
pub const PUBLISH_ERRORS: &str = "realtime_broker_publish_errors_total";
#[cfg(feature = "redis")]
/// Times the Redis broker linked again after a loss.
pub const BROKER_RECONNECTS: &str = "realtime_broker_reconnects_total";
/// Time of a publish at the broker in seconds (histogram).
pub const PUBLISH_DURATION: &str = "realtime_broker_publish_duration_seconds";
/// Topics this instance is subscribed to at the broker (gauge).
pub const SUBSCRIBED_TOPICS: &str = "realtime_subscribed_topics";
/// Resumes, by `result` (`recovered`, `not_recovered`).
pub const RECOVERED: &str = "realtime_history_recovered_total";
/// Reads of a topic's history that filled a gap in its ring.
pub const GAP_FILLS: &str = "realtime_history_gap_fills_total";
/// Reads of a topic's history for subscriptions to it; concurrent
/// subscriptions of one topic share one.
pub const RESUME_READS: &str = "realtime_history_resume_reads_total";
/// Resumes answered from the events the instance's ring of the topic had
/// just delivered, with no read of the history.
pub const RESUMES_HERE: &str = "realtime_history_resumes_here_total";
/// `reset` frames: a topic's history started again.
pub const RESETS: &str = "realtime_topic_resets_total";

/// The label of a frame type no handler or control message knows.
const INVALID: &str = "invalid";
/// The label of a hand-written handler's messages, whose wire names it did
/// not list.
const UNNAMED: &str = "message";

/// One frame type's handles.
#[derive(Debug)]
pub(crate) struct TypeMeters {
    name: &'static str,
    frames: Counter,
    /// For the handler's messages; control messages and invalid frames
    /// run no handler.
    duration: Option<Histogram>,
}

impl TypeMeters {
    fn handled(name: &'static str) -> Self {
        Self {
            duration: Some(metrics::histogram!(HANDLER_DURATION, "type" => name)),
            ..Self::counted(name)
        }
    }

    fn counted(name: &'static str) -> Self {
        Self {
            name,
            frames: metrics::counter!(FRAMES_RECEIVED, "type" => name),
            duration: None,
        }
    }

    /// Counts one frame of this type.
    pub(crate) fn received(&self) {
        self.frames.increment(1);
    }

    /// Records how long the handler took on one.
    pub(crate) fn handled_in(&self, took: Duration) {
        if let Some(duration) = &self.duration {
            duration.record(took);
        }
    }
}

/// The handles of the per-message series, registered with the recorder
/// once, when the service is built.
#[derive(Debug)]
pub(crate) struct Meters {
    /// The handler's wire names, then the control messages: few, so a
    /// list beats a map.
    types: Box<[TypeMeters]>,
    unnamed: TypeMeters,
    invalid: TypeMeters,
    pub(crate) published: Counter,
    pub(crate) delivered: Counter,
    pub(crate) publish_errors: Counter,
    pub(crate) publish_duration: Histogram,
}

impl Default for Meters {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Meters {
    /// Registers the handles, with a `type` series per wire name in
    /// `message_types`.
    pub(crate) fn new(message_types: &'static [&'static str]) -> Self {
        register_ends();
        let controls = [
            Control::JOIN,
            Control::LEAVE,
            Control::PRESENCE,
            Control::PING,
            Control::REFRESH,
        ];
        Self {
            types: message_types
                .iter()
                .map(|name| TypeMeters::handled(name))
                .chain(controls.iter().map(|name| TypeMeters::counted(name)))
                .collect(),
            unnamed: TypeMeters::handled(UNNAMED),
            invalid: TypeMeters::counted(INVALID),
            published: metrics::counter!(EVENTS_PUBLISHED),
            delivered: metrics::counter!(EVENTS_DELIVERED),
            publish_errors: metrics::counter!(PUBLISH_ERRORS),
            publish_duration: metrics::histogram!(PUBLISH_DURATION),
        }
    }

    /// The handles of frames of type `kind`, once the frame was read as
    /// that type; a decoded message whose name the handler did not list
    /// counts as `message`.
    pub(crate) fn of(&self, kind: &str) -> &TypeMeters {
        self.types
            .iter()
            .find(|meters| meters.name == kind)
            .unwrap_or(&self.unnamed)
    }

    /// The handles of frames that could not be read.
    pub(crate) fn invalid(&self) -> &TypeMeters {
        &self.invalid
    }
}

/// What one service instance counts: the atomics behind
/// [`Metrics`](crate::Metrics), each moved together with its series. It is
/// the one place where an event is counted, so the snapshot and the series
/// cannot disagree.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The handles of the series recorded per message.
    pub(crate) meters: Meters,
    pub(crate) slow_closes: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) idle_closes: AtomicU64,
    pub(crate) gap_fills: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) not_recovered: AtomicU64,
    pub(crate) resume_reads: AtomicU64,
    pub(crate) resumes_here: AtomicU64,
    /// Subscriptions waiting now for their topic's history to be read.
    pub(crate) resumes_waiting: AtomicUsize,
    /// Bytes queued for clients in every connection's own queue (answers,
    /// catch-ups), shared with each queue.
    pub(crate) queued_bytes: Arc<AtomicUsize>,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Counters {
    /// Counters whose per-message series have a `type` per wire name in
    /// `message_types`.
    pub(crate) fn new(message_types: &'static [&'static str]) -> Self {
        Self {
            meters: Meters::new(message_types),
            slow_closes: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            idle_closes: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            resume_reads: AtomicU64::new(0),
            resumes_here: AtomicU64::new(0),
            resumes_waiting: AtomicUsize::new(0),
            queued_bytes: Arc::default(),
        }
    }

    /// A client closed with 1013 for reading too slowly.
    pub(crate) fn slow_close(&self) {
        bump(&self.slow_closes);
        metrics::counter!(SLOW_CLOSES).increment(1);
    }

    /// A client frame refused by the rate limit.
    pub(crate) fn rate_limited(&self) {
        bump(&self.rate_limited);
    }

    /// A client closed with 1008 for staying silent.
    pub(crate) fn idle_close(&self) {
        bump(&self.idle_closes);
    }

    /// A publish through the broker that took `took`, and whether the
    /// broker took it: every publish (a client's broadcast,
    /// `Context::publish`, `Service::publish`) is counted here, once.
    pub(crate) fn published(&self, took: Duration, ok: bool) {
        self.meters.publish_duration.record(took);
        if ok {
            self.meters.published.increment(1);
        } else {
            bump(&self.publish_errors);
            self.meters.publish_errors.increment(1);
        }
    }

    /// A read of a topic's history started to fill its ring.
    pub(crate) fn gap_fill(&self) {
        bump(&self.gap_fills);
        metrics::counter!(GAP_FILLS).increment(1);
    }

    /// A topic's ring restarted with a `reset`.
    pub(crate) fn reset(&self) {
        bump(&self.resets);
        metrics::counter!(RESETS).increment(1);
    }

    /// A read of a topic's history for subscriptions to it.
    pub(crate) fn resume_read(&self) {
        bump(&self.resume_reads);
        metrics::counter!(RESUME_READS).increment(1);
    }

    /// A resume answered from its topic's recent events, with no read.
    pub(crate) fn resumed_here(&self) {
        bump(&self.resumes_here);
        metrics::counter!(RESUMES_HERE).increment(1);
    }

    /// A subscription that asked to resume was told whether it got every
    /// missed event.
    pub(crate) fn resumed(&self, recovered: bool) {
        let (counter, result) = match recovered {
            true => (&self.recovered, "recovered"),
            false => (&self.not_recovered, "not_recovered"),
        };
        bump(counter);
        metrics::counter!(RECOVERED, "result" => result).increment(1);
    }
}

/// The label of a close code: the codes of RFC 6455 and those the server
/// sends, by number; a client's own codes (4000 and up) are `other`, so
/// that a client cannot add series.
pub(crate) fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        1013 => "1013",
        _ => "other",
    }
}

/// Who ended a connection, for [`CONNECTION_ENDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// The client sent a close frame.
    Client,
    /// The server closed it (or meant to: a close frame a stuck socket
    /// did not take still counts under its code).
    Server,
    /// The socket ended with no close frame either way: a dropped TCP
    /// connection, a reset, a failed write.
    Nobody,
}

impl EndedBy {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
            Self::Nobody => "none",
        }
    }
}

/// The code of an end with no close frame (RFC 6455's "abnormal closure",
/// never sent on the wire).
pub(crate) const ABNORMAL_CLOSURE: u16 = 1006;
/// The code of a client close frame that carried none (RFC 6455's "no
/// status received", never sent on the wire).
pub(crate) const NO_STATUS: u16 = 1005;

/// Counts one connection's end.
pub(crate) fn connection_ended(by: EndedBy, code: u16) {
    metrics::counter!(CONNECTION_ENDS, "by" => by.label(), "code" => close_label(code))
        .increment(1);
}

/// Registers the ends that any server sees, at 0, so that the series are
/// there before the first end: a dashboard's rate of a series that does
/// not exist yet reads as no data, not as zero.
fn register_ends() {
    use crate::protocol::close_code;
    let server = [
        close_code::GOING_AWAY,
        close_code::PROTOCOL_ERROR,
        close_code::UNSUPPORTED,
        close_code::INVALID_DATA,
        close_code::POLICY,
        close_code::TOO_BIG,
        close_code::TRY_AGAIN_LATER,
    ];
    let client = [
        close_code::NORMAL,
        close_code::GOING_AWAY,
        NO_STATUS,
        u16::MAX,
    ];
    let ends = server
        .iter()
        .map(|code| (EndedBy::Server, *code))
        .chain(client.iter().map(|code| (EndedBy::Client, *code)))
        .chain([(EndedBy::Nobody, ABNORMAL_CLOSURE)]);
    for (by, code) in ends {
        metrics::counter!(CONNECTION_ENDS, "by" => by.label(), "code" => close_label(code))
            .increment(0);
    }
}

/// The label of a refused upgrade's HTTP status.
pub(crate) fn status_label(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        426 => "426",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// Counts one reconnect of a broker's link.
#[cfg(feature = "redis")]
pub(crate) fn broker_reconnected() {
    metrics::counter!(BROKER_RECONNECTS).increment(1);
}

/// Counts one refused upgrade.
pub(crate) fn upgrade_refused(status: u16) {
    metrics::counter!(UPGRADE_REFUSED, "status" => status_label(status)).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(close_label(4000), "other");
        assert_eq!(status_label(418), "other");
        let meters = Meters::new(&["say"]);
        assert_eq!(meters.of("say").name, "say");
        assert_eq!(meters.of("$join").name, "$join");
        assert_eq!(meters.of("anything").name, "message");
        assert_eq!(meters.invalid().name, "invalid");
    }
}
