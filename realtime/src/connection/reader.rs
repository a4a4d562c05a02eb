//! The read loop: one client's frames, handled in the order they arrived.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Outbound, Outbox, Publisher, Signal, writer};
use crate::broker::BrokerError;
use crate::config::Config;
use crate::handler::{Context, HandlerError, MessageHandler, Outcome};
use crate::protocol::{self, Control, RESERVED_PREFIX, close_code, error_code};

/// Everything one connection needs besides its socket.
pub(crate) struct Session<'a, H: MessageHandler, P> {
    pub(crate) handler: &'a H,
    pub(crate) publisher: &'a P,
    pub(crate) config: &'a Config,
    pub(crate) ctx: Context<H::AppState, H::UserId>,
    pub(crate) queue: mpsc::Receiver<Outbound>,
    /// Fired when the service shuts down.
    pub(crate) shutdown: &'a Signal,
}

/// How the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer closed, or the TCP connection dropped: nothing to send.
    PeerGone,
    /// The write task ended or the connection was aborted; it sends its own
    /// close frame.
    Aborted,
    /// The server closes with this code, after everything already queued.
    Close(u16),
}

/// Serves one upgraded socket until it closes: runs `on_connect`, the read
/// loop and `on_disconnect` (exactly once each), and calls `leave` as soon
/// as the loop ends so that no more events are queued for this client.
pub(crate) async fn run<H, P>(socket: WebSocket, session: Session<'_, H, P>, leave: impl FnOnce())
where
    H: MessageHandler,
    P: Publisher,
{
    let Session {
        handler,
        publisher,
        config,
        mut ctx,
        queue,
        shutdown,
    } = session;
    let outbox = ctx.outbox.clone();
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(writer::write(
        sink,
        queue,
        Arc::clone(&outbox.shared),
        config.write_batch,
        config.close_timeout,
    ));

    handler.on_connect(&ctx).await;
    let home = Arc::clone(&ctx.topic);
    let mut reader = Reader {
        handler,
        publisher,
        ctx: &mut ctx,
        outbox: &outbox,
        limiter: RateLimiter::new(config.max_messages_per_sec, config.rate_burst),
        home,
        joined: Vec::new(),
        max_topics: config.max_topics_per_connection,
    };
    let end = reader.read_loop(&mut stream, config, shutdown).await;
    // No more events are queued for this client from here on: dropping the
    // reader drops the memberships of the joined topics.
    leave();
    drop(reader);

    let mut writer = writer;
    match end {
        End::PeerGone => outbox.shared.abort(0),
        End::Aborted => {}
        End::Close(code) => {
            let queued =
                tokio::time::timeout(config.close_timeout, outbox.tx.send(Outbound::Close(code)));
            if !matches!(queued.await, Ok(Ok(()))) {
                outbox.shared.abort(code);
            }
        }
    }
    if end != End::PeerGone {
        // Read until the peer answers our close frame (or the deadline), so
        // the socket is not dropped with unread input, which would reset the
        // connection before the client could read the close frame.
        let _ = tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    // The write task ends by itself after a close frame; bound the wait for
    // a client that stopped reading.
    if tokio::time::timeout(config.close_timeout, &mut writer)
        .await
        .is_err()
    {
        outbox.shared.abort(0);
        let _ = writer.await;
    }
    drop(stream);
    handler.on_disconnect(&ctx).await;
}

struct Reader<'a, H: MessageHandler, P: Publisher> {
    handler: &'a H,
    publisher: &'a P,
    /// `ctx.topic` is the topic of the message being handled: `home`, or the
    /// joined topic the frame named.
    ctx: &'a mut Context<H::AppState, H::UserId>,
    outbox: &'a Outbox,
    limiter: RateLimiter,
    /// The topic of the URL, which the connection follows to its end.
    home: Arc<str>,
    /// Topics followed through `$join`; few, so a list beats a map.
    joined: Vec<(Arc<str>, P::Membership)>,
    max_topics: usize,
}

impl<H: MessageHandler, P: Publisher> Reader<'_, H, P> {
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        config: &Config,
        shutdown: &Signal,
    ) -> End {
        let outbox = self.outbox;
        let abort = &outbox.shared.abort;
        // Made once: each poll of one of these takes a lock, so they are only
        // polled when no frame is waiting, and the flags are checked instead.
        let aborted = abort.fired();
        let stopping = shutdown.fired();
        tokio::pin!(aborted, stopping);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        loop {
            // Between frames only: a frame being handled finishes, and its
            // answer is queued, before shutdown or a heartbeat is looked at.
            if abort.is_fired() {
                return End::Aborted;
            }
            if shutdown.is_fired() {
                return End::Close(close_code::GOING_AWAY);
            }
            let next = tokio::select! {
                biased;
                next = stream.next() => next,
                () = &mut aborted => return End::Aborted,
                () = &mut stopping => return End::Close(close_code::GOING_AWAY),
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= config.idle_timeout {
                        tracing::debug!(conn = %self.ctx.conn_id, "peer silent past the idle timeout");
                        self.outbox.shared.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                        return End::Close(close_code::POLICY);
                    }
                    let _ = self.outbox.tx.try_send(Outbound::Ping);
                    continue;
                }
            };
            let message = match next {
                None => return End::PeerGone,
                Some(Err(error)) => return read_error(error),
                Some(Ok(message)) => message,
            };
            last_seen = Instant::now();
            match message {
                Message::Text(text) => {
                    if self.limiter.admit(last_seen) {
                        self.handle(&text).await;
                    } else if let Some(end) = self.reject(&text) {
                        return end;
                    }
                }
                Message::Binary(_) => return End::Close(close_code::UNSUPPORTED),
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => return End::PeerGone,
            }
        }
    }

    /// Answers a frame past the rate limit with a 429 error frame, and ends
    /// the connection with 1008 once the client keeps flooding.
    fn reject(&mut self, text: &str) -> Option<End> {
        self.outbox
            .shared
            .counters
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
        if self.limiter.strikes > self.limiter.burst {
            tracing::debug!(conn = %self.ctx.conn_id, "client kept flooding past the rate limit");
            return Some(End::Close(close_code::POLICY));
        }
        let id = match protocol::read_envelope(text) {
            Ok(request) => request.id,
            Err(error) => error.id,
        };
        let message = format!(
            "rate limit exceeded: at most {} messages per second; this message was not handled",
            self.limiter.per_sec
        );
        self.outbox.push(protocol::error_frame(
            id,
            error_code::TOO_MANY_REQUESTS,
            &message,
        ));
        None
    }

    /// Handles one text frame and queues its answer, if any.
    async fn handle(&mut self, text: &str) {
        let request = match protocol::read_envelope(text) {
            Ok(request) => request,
            Err(error) => {
                self.fail(error.id, error_code::BAD_REQUEST, &error.message);
                return;
            }
        };
        let id = request.id;
        if request.kind.starts_with(RESERVED_PREFIX) {
            return self.control(&request).await;
        }
        let message = match request.decode::<H::ClientMessage>() {
            Ok(message) => message,
            Err(error) => {
                self.fail(id, error_code::BAD_REQUEST, &error.message);
                return;
            }
        };
        match request.topic.as_deref() {
            None => self.dispatch(id, message).await,
            Some(topic) if topic == &*self.home => self.dispatch(id, message).await,
            Some(topic) => {
                let Some(at) = self.joined_at(topic) else {
                    let message = format!(
                        "not following topic `{topic}`; send {{\"type\": \"$join\", \"data\": {{\"topic\": \"{topic}\"}}}} first"
                    );
                    return self.fail(id, error_code::BAD_REQUEST, &message);
                };
                // The handler sees the topic the frame is about, then the
                // connection's own again.
                self.ctx.topic = Arc::clone(&self.joined[at].0);
                self.dispatch(id, message).await;
                self.ctx.topic = Arc::clone(&self.home);
            }
        }
    }

    /// Runs the handler on a decoded message and queues what it produced.
    async fn dispatch(&self, id: Option<&RawValue>, message: H::ClientMessage) {
        match self.handler.dispatch(message, &*self.ctx).await {
            Ok(Outcome::Reply(reply)) => {
                self.outbox.push(protocol::reply_frame(id, reply.raw()));
            }
            Ok(Outcome::Broadcast(event)) => self.broadcast(id, &event).await,
            Ok(_) => self.acknowledge(id),
            Err(error) => self.handler_failed(id, &error),
        }
    }

    /// Where `topic` is among the joined topics.
    fn joined_at(&self, topic: &str) -> Option<usize> {
        self.joined.iter().position(|(name, _)| &**name == topic)
    }

    /// A built-in control message: `$join` or `$leave`.
    async fn control(&mut self, request: &protocol::Request<'_>) {
        let id = request.id;
        if !matches!(&*request.kind, "$join" | "$leave") {
            let message = format!(
                "unknown control message `{}`; known: {}; type names starting with `$` are reserved",
                request.kind,
                Control::NAMES
            );
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        match request.decode::<Control>() {
            Ok(Control::Join { topic }) => self.join(id, &topic).await,
            Ok(Control::Leave { topic }) => self.leave(id, &topic),
            Err(error) => self.fail(id, error_code::BAD_REQUEST, &error.message),
        }
    }

    /// Follows one more topic, once the handler authorizes it. Events of the
    /// topic are queued from just before the acknowledgement on.
    async fn join(&mut self, id: Option<&RawValue>, topic: &str) {
        if topic.is_empty() {
            return self.fail(
                id,
                error_code::BAD_REQUEST,
                "`data.topic` must not be empty",
            );
        }
        if topic == &*self.home || self.joined_at(topic).is_some() {
            return self.acknowledge(id);
        }
        if self.joined.len() + 1 >= self.max_topics {
            let message = format!(
                "at most {} topics per connection; `$leave` one first",
                self.max_topics
            );
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        let allowed = self
            .handler
            .authorize_topic(self.ctx.state(), self.ctx.user_id(), topic)
            .await;
        if !allowed {
            let message = format!("forbidden topic `{topic}`");
            return self.fail(id, error_code::FORBIDDEN, &message);
        }
        match self
            .publisher
            .follow(topic, self.ctx.conn_id, self.outbox)
            .await
        {
            Ok(joined) => {
                self.joined.push(joined);
                self.acknowledge(id);
            }
            Err(BrokerError::InvalidTopic(_)) => {
                let message = format!("invalid topic `{topic}`");
                self.fail(id, error_code::BAD_REQUEST, &message);
            }
            Err(error) => {
                tracing::warn!(conn = %self.ctx.conn_id, topic, error = %error, "join failed");
                let message = format!("cannot join `{topic}` now: {error}");
                self.fail(id, error_code::UNAVAILABLE, &message);
            }
        }
    }

    /// Stops following a joined topic; no event of it is queued after the
    /// acknowledgement.
    fn leave(&mut self, id: Option<&RawValue>, topic: &str) {
        if topic == &*self.home {
            let message = format!(
                "cannot leave `{topic}`, the topic of this connection's URL; close the socket instead"
            );
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        match self.joined_at(topic) {
            Some(at) => {
                // Dropping the membership removes the connection from the
                // topic's subscribers.
                self.joined.swap_remove(at);
                self.acknowledge(id);
            }
            None => {
                let message = format!("not following topic `{topic}`");
                self.fail(id, error_code::BAD_REQUEST, &message);
            }
        }
    }

    async fn broadcast(&self, id: Option<&RawValue>, event: &H::ServerEvent) {
        let frame = match protocol::event_frame(self.ctx.topic(), event) {
            Ok(frame) => frame,
            Err(error) => return self.handler_failed(id, &HandlerError::from(error)),
        };
        match self.publisher.publish(self.ctx.topic(), frame.into()).await {
            Ok(()) => self.acknowledge(id),
            Err(error) => {
                self.outbox
                    .shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn = %self.ctx.conn_id, topic = self.ctx.topic(), error = %error, "publish failed");
                // A timed-out PUBLISH may still reach Redis; only say what is known.
                let message = match error {
                    BrokerError::Timeout(_) => {
                        format!("{error}; the event may not have been delivered")
                    }
                    _ => format!("{error}; the event was not delivered"),
                };
                self.fail(id, error_code::UNAVAILABLE, &message);
            }
        }
    }

    fn acknowledge(&self, id: Option<&RawValue>) {
        if let Some(id) = id {
            self.outbox.push(protocol::ack_frame(id));
        }
    }

    fn handler_failed(&self, id: Option<&RawValue>, error: &HandlerError) {
        if error.code() >= 500 {
            tracing::error!(conn = %self.ctx.conn_id, error = %error, source = ?std::error::Error::source(error), "handler failed");
        }
        self.fail(id, error.code(), error.message());
    }

    fn fail(&self, id: Option<&RawValue>, code: u16, message: &str) {
        self.outbox.push(protocol::error_frame(id, code, message));
    }
}

/// A failed read: a frame over the size limit gets 1009; anything else means
/// the peer is gone.
fn read_error(error: axum::Error) -> End {
    let error = error.into_inner();
    let too_big = error
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)));
    if too_big {
        End::Close(close_code::TOO_BIG)
    } else {
        tracing::debug!(error = %error, "read failed; dropping the connection");
        End::PeerGone
    }
}

/// A token bucket: `burst` messages at once, refilled at `per_sec`.
#[derive(Debug)]
struct RateLimiter {
    per_sec: u32,
    burst: u32,
    tokens: f64,
    last: Instant,
    /// Messages rejected since the last one admitted.
    strikes: u32,
}

impl RateLimiter {
    fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec,
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
            strikes: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() * f64::from(self.per_sec);
        self.last = now;
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limiter_admits_a_burst_then_refills() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 3);
        limiter.last = start;
        assert!((0..3).all(|_| limiter.admit(start)));
        assert!(!limiter.admit(start));
        assert_eq!(limiter.strikes, 1);
        assert!(limiter.admit(start + Duration::from_millis(100)));
        assert_eq!(limiter.strikes, 0);
    }
}
