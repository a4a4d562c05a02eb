//! The read loop: one client's frames, handled in the order they arrived,
//! and their answers, sent in that order.

use std::sync::Arc;

use tungstenite::Message;

use crate::websocket::{Incoming, Violation};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::answers::Answers;
use super::expiry::{Due, Expiry};
use super::{Subscriptions, Topics};
use crate::broker::BrokerError;
use crate::config::Config;
use crate::handler::{Context, HandlerError, MessageHandler, Outcome};
use crate::history::Position;
use crate::outbox::Order;
use crate::presence::PresenceError;
use crate::protocol::{self, Control, Frame, RESERVED_PREFIX, close_code, error_code};
use crate::telemetry::{self, Meters, TypeMeters};
use crate::util::{Signal, millis};

/// How the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The peer sent a close frame with this code (1005 for none); the
    /// WebSocket answers it.
    PeerClosed(u16),
    /// The TCP connection dropped, with no close frame: nothing to send.
    PeerGone,
    /// The write task ended or the connection was aborted; it sends its own
    /// close frame.
    Aborted,
    /// The server closes with this code, after every answer and everything
    /// already queued.
    Close(u16),
}

/// One connection's read side: the handler, where events go, the
/// subscriptions, the rate limit and the answers still waiting.
pub(super) struct Reader<'a, H: MessageHandler, T: Topics<User = H::UserId>> {
    handler: &'a H,
    topics: &'a T,
    /// `ctx.topic` is the topic of the message being handled: the URL's, or
    /// the `$join`ed topic the frame named.
    ctx: &'a mut Context<H::AppState, H::UserId>,
    subscriptions: Subscriptions<T::Subscription>,
    limiter: RateLimiter,
    answers: Answers<'a>,
    /// When the token runs out; `None` (nothing kept) if it does not.
    expiry: Option<Box<Expiry>>,
    config: &'a Config,
}

impl<'a, H: MessageHandler, T: Topics<User = H::UserId>> Reader<'a, H, T> {
    pub(super) fn new(
        handler: &'a H,
        topics: &'a T,
        ctx: &'a mut Context<H::AppState, H::UserId>,
        subscriptions: Subscriptions<T::Subscription>,
        expiry: Option<Box<Expiry>>,
        config: &'a Config,
    ) -> Self {
        Self {
            handler,
            topics,
            ctx,
            subscriptions,
            limiter: RateLimiter::new(config.rate_burst, Instant::now()),
            answers: Answers::default(),
            expiry,
            config,
        }
    }

    /// Ends the subscriptions; returns the `$join`ed topics among them, for
    /// their `on_leave` hooks.
    pub(super) fn into_joined(self) -> Vec<Arc<str>> {
        self.subscriptions.into_joined()
    }
}

/// Reads and handles frames until the connection ends. On a close by the
/// server, the answers still waiting are sent first (within the close
/// timeout). Dropping the reader afterwards ends its subscriptions.
pub(super) async fn read<H: MessageHandler, T: Topics<User = H::UserId>>(
    reader: &mut Reader<'_, H, T>,
    stream: &mut Incoming,
    shutdown: &Signal,
) -> End {
    let end = reader.read_loop(stream, shutdown).await;
    if let End::Close(_) = end {
        let finish = async {
            while let Some(answer) = reader.answers.next().await {
                if let Some(frame) = answer {
                    reader.ctx.outbox.push(frame);
                }
            }
        };
        // Boxed: a connection spends its life in the read loop, and this
        // timer would otherwise take room in every idle connection's future.
        let _ = Box::pin(tokio::time::timeout(reader.config.close_timeout, finish)).await;
    }
    end
}

impl<'a, H: MessageHandler, T: Topics<User = H::UserId>> Reader<'a, H, T> {
    async fn read_loop(&mut self, stream: &mut Incoming, shutdown: &Signal) -> End {
        let config = self.config;
        let status = Arc::clone(self.ctx.outbox.status());
        // Made once: each poll of one of these takes a lock, so they are only
        // polled when no frame is waiting, and the flags are checked instead.
        let aborted = status.aborted_or_poked();
        let stopping = shutdown.fired();
        tokio::pin!(aborted, stopping);
        // The pings and the idle timeout are the instance's heartbeat's
        // (one sweep for every connection); a timer here is only for a
        // token that runs out, and only when it does.
        let mut token_timer = self
            .expiry
            .as_deref()
            .map(|expiry| Box::pin(tokio::time::sleep_until(expiry.next_due())));
        loop {
            // Between frames only: a frame being handled finishes, and its
            // answer is queued, before shutdown or the token is looked at.
            if status.is_aborted() {
                return End::Aborted;
            }
            if shutdown.is_fired() {
                return End::Close(close_code::GOING_AWAY);
            }
            if status.take_poke() {
                // Waiting for the next poke from here on, then the orders:
                // one given meanwhile is seen by one or the other.
                aborted.set(status.aborted_or_poked());
                // Boxed: rare, and a subscribe's future is large (see
                // `handle`).
                Box::pin(self.obey()).await;
            }
            let waiting = self.answers.len();
            let next = tokio::select! {
                biased;
                Some(answer) = self.answers.next(), if waiting > 0 => {
                    if let Some(frame) = answer {
                        self.ctx.outbox.push(frame);
                    }
                    continue;
                }
                // Past the bound of publishes in flight, the client's next
                // frame waits in the socket until the oldest is answered.
                next = stream.next(), if waiting < config.max_publishes_in_flight => next,
                // An abort, or orders (looked at above).
                () = &mut aborted => continue,
                () = &mut stopping => return End::Close(close_code::GOING_AWAY),
                () = token_due(&mut token_timer) => {
                    if let (Some(expiry), Some(timer)) =
                        (self.expiry.as_deref_mut(), token_timer.as_mut())
                    {
                        match expiry.check(Instant::now()) {
                            Due::Expired => {
                                tracing::debug!(conn = %self.ctx.conn_id, "token expired");
                                return End::Close(close_code::UNAUTHORIZED);
                            }
                            Due::Notice(left) => {
                                self.ctx.outbox.push(protocol::expiring_frame(left));
                            }
                            Due::Nothing => {}
                        }
                        timer.as_mut().reset(expiry.next_due());
                    } else {
                        // A `$refresh` took a token that never runs out.
                        token_timer = None;
                    }
                    continue;
                }
            };
            let message = match next {
                None => return End::PeerGone,
                Some(Err(error)) => return read_error(&error),
                Some(Ok(message)) => message,
            };
            let now = Instant::now();
            status.seen(now);
            match message {
                Message::Text(text) => {
                    if self.limiter.admit(now, config) {
                        self.handle(&text).await;
                        // A `$refresh` moved the token's end, or gave the
                        // connection its first expiring token.
                        if let Some(expiry) = self.expiry.as_deref_mut()
                            && expiry.take_moved()
                        {
                            match token_timer.as_mut() {
                                Some(timer) => timer.as_mut().reset(expiry.next_due()),
                                None => {
                                    token_timer =
                                        Some(Box::pin(tokio::time::sleep_until(expiry.next_due())));
                                }
                            }
                        }
                    } else if let Some(end) = self.reject(&text, now) {
                        return end;
                    }
                }
                // A raw frame is what a writer sends, never what a read
                // returns.
                Message::Binary(_) | Message::Frame(_) => {
                    return End::Close(close_code::UNSUPPORTED);
                }
                // Control frames count against the limit too: each ping
                // costs a pong. Past it they get no error frame (they have no
                // id, and an answer would double the flood).
                Message::Ping(_) | Message::Pong(_) => {
                    if !self.limiter.admit(now, config)
                        && let Some(end) = self.flooding(now)
                    {
                        return end;
                    }
                }
                Message::Close(frame) => {
                    let code = frame.map_or(telemetry::NO_STATUS, |frame| frame.code.into());
                    return End::PeerClosed(code);
                }
            }
        }
    }

    /// Answers a frame past the rate limit with a 429 error frame, and ends
    /// the connection with 1008 once the client keeps flooding.
    fn reject(&mut self, text: &str, now: Instant) -> Option<End> {
        if let Some(end) = self.flooding(now) {
            return Some(end);
        }
        let id = match protocol::read_envelope(text) {
            // A `$ping` without an id is a heartbeat's answer, as a pong
            // is: refused without an error frame, which the application
            // never asked for and the client would report to it.
            Ok(request) if request.kind == Control::PING && request.id.is_none() => return None,
            Ok(request) => request.id,
            Err(error) => error.id,
        };
        let message = format!(
            "rate limit exceeded: at most {} messages per second; this message was not handled",
            self.config.max_messages_per_sec
        );
        self.fail(id, error_code::TOO_MANY_REQUESTS, &message);
        None
    }

    /// Counts a frame refused by the rate limit; the 1008 close once the
    /// client has kept flooding (see [`RateLimiter::flooding`]).
    fn flooding(&mut self, now: Instant) -> Option<End> {
        self.ctx.outbox.counters().rate_limited();
        if self.limiter.flooding(now, self.config) {
            tracing::debug!(conn = %self.ctx.conn_id, "client kept flooding past the rate limit");
            return Some(End::Close(close_code::POLICY));
        }
        None
    }

    /// Refuses a reply or event larger than `Config::max_reply_bytes`: the
    /// handler's mistake, logged, and answered with a 500.
    fn check_size(&self, what: &str, size: usize) -> Result<(), String> {
        let max = self.config.max_reply_bytes;
        if size > max {
            tracing::warn!(conn = %self.ctx.conn_id, size, max, "{what} too large; not sent");
            return Err(format!("{what} too large: {size} bytes, at most {max}"));
        }
        Ok(())
    }

    /// Refuses the topic a control message names: empty, or too long.
    fn check_named_topic(&self, topic: &str) -> Result<(), String> {
        if topic.is_empty() {
            return Err("`data.topic` must not be empty".to_owned());
        }
        self.check_topic_length(topic)
    }

    /// Whether the handler lets this connection's user subscribe to `topic`.
    /// (`&mut`: a shared borrow held across the await would ask the reader
    /// to be `Sync`, and its waiting answers are not.)
    async fn may_subscribe(&mut self, topic: &str) -> bool {
        self.handler
            .authorize_topic(self.ctx.state(), self.ctx.user_id(), topic)
            .await
    }

    fn forbidden(&mut self, id: Option<&RawValue>, topic: &str) {
        let message = format!("forbidden topic `{topic}`");
        self.fail(id, error_code::FORBIDDEN, &message);
    }

    /// Refuses a topic longer than `Config::max_topic_bytes`; the message
    /// does not repeat the topic, which may be as long as a frame.
    fn check_topic_length(&self, topic: &str) -> Result<(), String> {
        let max = self.config.max_topic_bytes;
        if topic.len() > max {
            return Err(format!(
                "topic longer than {max} bytes ({} bytes)",
                topic.len()
            ));
        }
        Ok(())
    }

    /// Handles one text frame and queues its answer, if any.
    async fn handle(&mut self, text: &str) {
        let meters: &'a Meters = &self.topics.counters().meters;
        let request = match protocol::read_envelope(text) {
            Ok(request) => request,
            Err(error) => {
                meters.invalid().received();
                return self.fail(error.id, error_code::BAD_REQUEST, &error.message);
            }
        };
        tracing::debug!(kind = &*request.kind, bytes = text.len(), "frame");
        let id = request.id;
        let key = request.idempotency_key.as_deref();
        if request.kind == Control::PING {
            // Not boxed as the other control messages are: a client that
            // answers the text heartbeat sends one per interval, so this is
            // an idle connection's one frame, and needs no allocation.
            meters.of(&request.kind).received();
            return self.pong(id);
        }
        if request.kind.starts_with(RESERVED_PREFIX) {
            // Boxed: subscribing (a broker round trip) is the largest thing
            // the read loop awaits, and rare; inline, its room would be taken
            // in every idle connection's future.
            return Box::pin(self.control(&request)).await;
        }
        let message = match request.decode::<H::ClientMessage>() {
            Ok(message) => message,
            Err(error) => {
                meters.invalid().received();
                return self.fail(id, error_code::BAD_REQUEST, &error.message);
            }
        };
        let meters = meters.of(&request.kind);
        meters.received();
        // The handler's call is boxed: its future is the application's, of
        // any size (a database query's can take kilobytes), and inline it
        // would be room taken in every idle connection's read loop for as
        // long as the connection lives (536 bytes for the bench's two
        // methods). One allocation per handled message buys that back; an
        // event's delivery to subscribers allocates nothing of this.
        let Some(topic) = request.topic.as_deref() else {
            return Box::pin(self.dispatch(id, key, message, meters)).await;
        };
        if let Err(message) = self.check_topic_length(topic) {
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        let Some(topic) = self.subscriptions.find(topic).cloned() else {
            let message = format!(
                "not subscribed to topic `{topic}`; send {{\"type\": \"{}\", \"data\": {{\"topic\": \"{topic}\"}}}} first",
                Control::JOIN
            );
            return self.fail(id, error_code::BAD_REQUEST, &message);
        };
        // The handler sees the topic the frame is about, then the URL's again.
        self.ctx.topic = topic;
        Box::pin(self.dispatch(id, key, message, meters)).await;
        self.ctx.topic = Arc::clone(self.subscriptions.home());
    }

    /// Runs the handler on a decoded message and answers what it produced.
    async fn dispatch(
        &mut self,
        id: Option<&RawValue>,
        key: Option<&str>,
        message: H::ClientMessage,
        meters: &TypeMeters,
    ) {
        let started = Instant::now();
        let outcome = self.handler.handle(message, &*self.ctx).await;
        meters.handled_in(started.elapsed());
        match outcome {
            Ok(Outcome::Reply(reply)) => {
                let frame = protocol::reply_frame(id, reply.raw());
                match self.check_size("reply", frame.as_str().len()) {
                    Ok(()) => self.answer(frame),
                    Err(message) => self.fail(id, error_code::INTERNAL, &message),
                }
            }
            Ok(Outcome::Broadcast(event)) => self.broadcast(id, key, &event).await,
            Ok(_) => self.acknowledge(id),
            Err(error) => self.handler_failed(id, &error),
        }
    }

    /// A built-in control message: `$join`, `$leave`, `$presence` or
    /// `$refresh` (`$ping` is answered before: see `handle`).
    async fn control(&mut self, request: &protocol::Request<'_>) {
        let id = request.id;
        let control = Control::decode(request);
        let meters = &self.topics.counters().meters;
        match control {
            Ok(_) => meters.of(&request.kind).received(),
            Err(_) => meters.invalid().received(),
        }
        match control {
            Ok(Control::Join { topic, since }) => self.join(id, &topic, since.as_ref()).await,
            Ok(Control::Leave { topic }) => self.leave(id, &topic).await,
            Ok(Control::Presence { topic }) => self.presence(id, &topic).await,
            Ok(Control::Ping) => self.pong(id),
            Ok(Control::Refresh { token }) => self.refresh(id, &token.0).await,
            Err(error) => self.fail(id, error_code::BAD_REQUEST, &error.message),
        }
    }

    /// Answers a `$ping` with an id; one without is only the sign of life
    /// that its frame already was.
    fn pong(&mut self, id: Option<&RawValue>) {
        if let Some(id) = id {
            let pong = RawValue::from_string("\"pong\"".to_owned()).expect("a JSON string");
            self.answer(protocol::reply_frame(Some(id), &pong));
        }
    }

    /// Subscribes to one more topic, once the handler authorizes it. The
    /// topic's events are written from just before the acknowledgement on.
    async fn join(&mut self, id: Option<&RawValue>, topic: &str, since: Option<&Position>) {
        match self.subscribe_to(topic, since, false).await {
            Ok(()) => self.acknowledge(id),
            Err((code, message)) => self.fail(id, code, &message),
        }
    }

    /// Subscribes to `topic` (`since`: where the client resumes), unless
    /// it is subscribed already; the error code and message otherwise. A
    /// subscription the server made (`told`) on a topic without history
    /// is announced with a position-less `subscribed` frame, as one with
    /// history is by its own.
    async fn subscribe_to(
        &mut self,
        topic: &str,
        since: Option<&Position>,
        told: bool,
    ) -> Result<(), (u16, String)> {
        self.check_named_topic(topic)
            .map_err(|message| (error_code::BAD_REQUEST, message))?;
        if self.subscriptions.find(topic).is_some() {
            return Ok(());
        }
        if self.subscriptions.is_full() {
            let message = format!(
                "at most {} topics per connection; `{}` one first",
                self.subscriptions.max(),
                Control::LEAVE
            );
            return Err((error_code::BAD_REQUEST, message));
        }
        if !self.may_subscribe(topic).await {
            return Err((error_code::FORBIDDEN, format!("forbidden topic `{topic}`")));
        }
        let subscribed = self
            .topics
            .subscribe(
                topic,
                since,
                self.ctx.conn_id,
                self.ctx.user_id(),
                self.ctx.budget.as_deref(),
            )
            .await;
        match subscribed {
            Ok((name, subscription, feed)) => {
                if told && feed.catch_up.is_empty() {
                    self.ctx.outbox.push(protocol::joined_frame(&name));
                }
                self.ctx.outbox.subscribe(feed);
                self.subscriptions.add(Arc::clone(&name), subscription);
                self.handler.on_join(self.ctx, &name).await;
                Ok(())
            }
            Err(BrokerError::InvalidTopic(_)) => {
                Err((error_code::BAD_REQUEST, format!("invalid topic `{topic}`")))
            }
            Err(error @ BrokerError::TopicBudget) => Err((
                error_code::TOO_MANY_REQUESTS,
                format!("cannot subscribe to `{topic}`: {error}"),
            )),
            Err(error) => {
                if matches!(error, BrokerError::ReplayBudget) {
                    tracing::debug!(conn = %self.ctx.conn_id, topic, "a resume past the replay budget; refused");
                } else {
                    tracing::warn!(conn = %self.ctx.conn_id, topic, error = %error, "subscribe failed");
                }
                Err((
                    error_code::UNAVAILABLE,
                    format!("cannot subscribe to `{topic}` now: {error}"),
                ))
            }
        }
    }

    /// Carries out the orders the instance left for this connection
    /// (`Service::subscribe_user`, `Service::unsubscribe_user`), in the
    /// order they were given. What cannot be done is logged: no client
    /// asked, so no client is answered.
    async fn obey(&mut self) {
        for order in self.topics.orders(self.ctx.conn_id) {
            match order {
                Order::Join(topic) => {
                    if let Err((code, message)) = self.subscribe_to(&topic, None, true).await {
                        tracing::debug!(conn = %self.ctx.conn_id, code, %message, "a server subscription not made");
                    }
                }
                Order::Leave(topic) => {
                    if **self.subscriptions.home() == *topic {
                        tracing::debug!(conn = %self.ctx.conn_id, topic = &*topic, "the URL's topic is not left");
                    } else if self.unsubscribe_from(&topic).await {
                        self.ctx.outbox.push(protocol::unsubscribed_frame(&topic));
                    }
                }
            }
        }
    }

    /// Answers who is subscribed to `topic`, on every instance: for a
    /// connection that may subscribe to it.
    async fn presence(&mut self, id: Option<&RawValue>, topic: &str) {
        if let Err(message) = self.check_named_topic(topic) {
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        // A topic the connection follows was authorized when it subscribed.
        let follows = self.subscriptions.find(topic).is_some();
        if !follows && !self.may_subscribe(topic).await {
            return self.forbidden(id, topic);
        }
        let answer = if follows {
            // The answer may be queued at its place in the topic's stream,
            // so the answers before it go first.
            self.answers.flush(&self.ctx.outbox).await;
            let outbox = &self.ctx.outbox;
            self.topics.presence_for(topic, outbox, id).await
        } else {
            self.topics.presence(topic).await.map(Some)
        };
        match answer {
            Ok(None) => {}
            Ok(Some(presence)) => {
                let value =
                    serde_json::value::to_raw_value(&presence).expect("presence always serializes");
                self.answer(protocol::reply_frame(id, &value));
            }
            Err(error) => {
                let message = match &error {
                    PresenceError::Broker(cause) => {
                        tracing::warn!(conn = %self.ctx.conn_id, topic, error = %cause, "presence read failed");
                        format!("cannot read the presence of `{topic}` now: {cause}")
                    }
                    _ => error.to_string(),
                };
                self.fail(id, error.code(), &message);
            }
        }
    }

    /// Unsubscribes from a `$join`ed topic; no event of it is written after
    /// the acknowledgement.
    async fn leave(&mut self, id: Option<&RawValue>, topic: &str) {
        if let Err(message) = self.check_topic_length(topic) {
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        if &**self.subscriptions.home() == topic {
            let message = format!(
                "cannot leave `{topic}`, the topic of this connection's URL; close the socket instead"
            );
            return self.fail(id, error_code::BAD_REQUEST, &message);
        }
        if self.unsubscribe_from(topic).await {
            self.acknowledge(id);
        } else {
            let message = format!("not subscribed to topic `{topic}`");
            self.fail(id, error_code::BAD_REQUEST, &message);
        }
    }

    /// Leaves a `$join`ed topic: no event of it is written after what is
    /// queued next. Whether the connection was subscribed.
    async fn unsubscribe_from(&mut self, topic: &str) -> bool {
        let Some((name, subscription)) = self.subscriptions.remove(topic) else {
            return false;
        };
        drop(subscription);
        self.ctx.outbox.unsubscribe(Arc::clone(&name));
        self.handler.on_leave(self.ctx, &name).await;
        true
    }

    /// Replaces the connection's token with a fresh one of the same user:
    /// its expiry becomes the connection's. A token the validator refuses
    /// is error 401, another user's 403; either way the connection keeps
    /// its user and its expiry.
    async fn refresh(&mut self, id: Option<&RawValue>, token: &str) {
        let identity = match self.topics.identify(token).await {
            Ok(identity) => identity,
            Err(error) => {
                let message = format!("{error}; the connection keeps its token");
                return self.fail(id, error_code::UNAUTHORIZED, &message);
            }
        };
        // Compared by their `Debug` form, as users are told apart for the
        // per-user limits: no `PartialEq` is asked of a user id.
        let user = self.ctx.user_id();
        if format!("{:?}", identity.user) != format!("{user:?}") {
            let message = "the token is another user's; the connection keeps its user";
            return self.fail(id, error_code::FORBIDDEN, message);
        }
        let now = std::time::SystemTime::now();
        let left = identity.expires_in(now);
        match (identity.expires_at, self.expiry.as_deref_mut()) {
            (Some(at), Some(expiry)) => expiry.renew(at, self.config.token_notice),
            (Some(at), None) => {
                let mut expiry = Expiry::new(at, self.config.token_notice);
                expiry.renew(at, self.config.token_notice);
                self.expiry = Some(expiry);
            }
            (None, _) => self.expiry = None,
        }
        tracing::debug!(conn = %self.ctx.conn_id, ?left, "token refreshed");
        if let Some(id) = id {
            self.answer(protocol::refreshed_frame(id, left));
        }
    }

    /// Publishes the event and answers once the broker has taken it. The
    /// read loop goes on meanwhile: later frames are handled, and their
    /// answers wait behind this one.
    async fn broadcast(
        &mut self,
        id: Option<&RawValue>,
        key: Option<&str>,
        event: &H::ServerEvent,
    ) {
        let frame = match protocol::event_frame(self.ctx.topic(), event) {
            Ok(frame) => frame,
            Err(error) => return self.handler_failed(id, &HandlerError::from(error)),
        };
        if let Err(message) = self.check_size("event", frame.as_str().len()) {
            return self.fail(id, error_code::INTERNAL, &message);
        }
        // The frame's topic is one this connection follows: never a new
        // topic for the user's budget, so no lookup.
        let bytes = frame.as_str().len();
        if let Some(budget) = self.ctx.budget.as_deref()
            && let Err(over) = budget.charge(bytes, false)
        {
            return self.fail(id, error_code::TOO_MANY_REQUESTS, &over.to_string());
        }
        // Given back if the broker does not take it.
        let budget = self.ctx.budget.clone();
        let topics = self.topics;
        let topic = Arc::clone(&self.ctx.topic);
        let conn = self.ctx.conn_id;
        // Owned: the frame the id and the key borrow from is gone before
        // the answer.
        let id = id.map(ToOwned::to_owned);
        let key: Option<Box<str>> = key.map(Into::into);
        let published = async move {
            match topics.publish(&topic, frame, key.as_deref()).await {
                Ok(position) => id.map(|id| protocol::published_frame(&id, position.as_ref())),
                Err(error) => {
                    if let Some(budget) = &budget {
                        budget.refund(bytes, false);
                    }
                    // While the broker is away every publish fails, and the
                    // broker said so once: one line each would flood the log.
                    if matches!(
                        error,
                        BrokerError::Unavailable(_) | BrokerError::HistoryFull
                    ) {
                        tracing::debug!(%conn, topic = &*topic, error = %error, "publish failed");
                    } else {
                        tracing::warn!(%conn, topic = &*topic, error = %error, "publish failed");
                    }
                    // A timed-out PUBLISH may still reach Redis; only say
                    // what is known.
                    let message = match error {
                        BrokerError::Timeout(_) => {
                            format!("{error}; the event may not have been delivered")
                        }
                        _ => format!("{error}; the event was not delivered"),
                    };
                    Some(protocol::error_frame(
                        id.as_deref(),
                        error_code::UNAVAILABLE,
                        &message,
                    ))
                }
            }
        };
        // Unconstrained: Tokio's cooperative budget could otherwise make the
        // first poll return early without queueing the command, and a later
        // publish, polled with a fresh budget, would overtake it.
        let published = tokio::task::unconstrained(published);
        self.answers
            .publish(&self.ctx.outbox, Box::pin(published))
            .await;
    }

    fn acknowledge(&mut self, id: Option<&RawValue>) {
        if let Some(id) = id {
            self.answer(protocol::ack_frame(id));
        }
    }

    fn handler_failed(&mut self, id: Option<&RawValue>, error: &HandlerError) {
        if error.code() >= 500 {
            tracing::error!(conn = %self.ctx.conn_id, error = %error, source = ?std::error::Error::source(error), "handler failed");
        }
        self.fail(id, error.code(), error.message());
    }

    fn fail(&mut self, id: Option<&RawValue>, code: u16, message: &str) {
        self.answer(protocol::error_frame(id, code, message));
    }

    fn answer(&mut self, frame: Frame) {
        self.answers.ready(&self.ctx.outbox, Some(frame));
    }
}

/// Resolves when the token's timer is due; never without a timer.
async fn token_due(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A failed read: a frame over the size limit gets 1009, text that is not
/// UTF-8 gets 1007 and a broken frame (unmasked, a reserved opcode or bit,
/// a length with its top bit set) 1002, as RFC 6455 asks; a message in too
/// many fragments or too slow in coming 1008 (see `websocket::guard`);
/// anything else means the peer is gone.
fn read_error(error: &tungstenite::Error) -> End {
    use tungstenite::error::ProtocolError;
    let code = match error {
        tungstenite::Error::Capacity(_) => Some(close_code::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(close_code::INVALID_DATA),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(_) => Some(close_code::PROTOCOL_ERROR),
        tungstenite::Error::Io(io) => Violation::of(io).map(Violation::code),
        _ => None,
    };
    match code {
        Some(code) => {
            tracing::debug!(error = %error, code, "client broke the protocol; closing");
            End::Close(code)
        }
        None => {
            tracing::debug!(error = %error, "read failed; dropping the connection");
            End::PeerGone
        }
    }
}

/// A token bucket: `Config::rate_burst` frames at once, refilled at
/// `Config::max_messages_per_sec`, and the count of frames it refused.
///
/// Small on purpose, since every idle connection holds one: the limits are
/// read from the config, not copied, and times are milliseconds since a
/// process-wide epoch (`u32`, compared by wrapping differences, so they
/// stay right across the wrap after 49 days) rather than 16-byte
/// `Instant`s.
#[derive(Debug)]
pub(super) struct RateLimiter {
    tokens: f32,
    /// When the last frame was counted.
    last: u32,
    /// Frames refused in the current streak.
    strikes: u32,
    /// When the current streak of refusals began, and the last refusal.
    streak_start: u32,
    last_strike: u32,
}

impl RateLimiter {
    fn new(burst: u32, now: Instant) -> Self {
        let now = millis(now);
        Self {
            tokens: burst as f32,
            last: now,
            strikes: 0,
            streak_start: now,
            last_strike: now,
        }
    }

    /// Takes a token for one frame; `false` (and a strike) when there is none.
    fn admit(&mut self, now: Instant, config: &Config) -> bool {
        let now = millis(now);
        let elapsed = now.wrapping_sub(self.last);
        self.last = now;
        let refill = elapsed as f32 / 1000.0 * config.max_messages_per_sec as f32;
        self.tokens = (self.tokens + refill).min(config.rate_burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        // A refusal long after the last one (a whole burst's refill time)
        // starts a new streak: a client that calmed down starts over. An
        // admitted frame does not: at a steady flood a token refills every
        // few milliseconds, and forgiving on each would never close it.
        if self.strikes == 0 || now.wrapping_sub(self.last_strike) > burst_refill_ms(config) {
            self.strikes = 0;
            self.streak_start = now;
        }
        self.strikes += 1;
        self.last_strike = now;
        false
    }

    /// Whether the client has kept flooding: more refusals in one streak
    /// than a burst, or a streak that has lasted two bursts' refill time,
    /// so that a client barely over the limit is closed in bounded time too.
    fn flooding(&self, now: Instant, config: &Config) -> bool {
        let streak = millis(now).wrapping_sub(self.streak_start);
        self.strikes > config.rate_burst || streak >= burst_refill_ms(config).saturating_mul(2)
    }
}

/// How long the rate limit takes to refill a whole burst, in milliseconds:
/// at least 1, so that a streak has some length to last, and at most a
/// quarter of the clock's wrap.
fn burst_refill_ms(config: &Config) -> u32 {
    let ms = u64::from(config.rate_burst) * 1000 / u64::from(config.max_messages_per_sec);
    u32::try_from(ms).unwrap_or(u32::MAX).clamp(1, u32::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(per_sec: u32, burst: u32) -> Config {
        Config {
            max_messages_per_sec: per_sec,
            rate_burst: burst,
            ..Config::default()
        }
    }

    /// Sends frames every `gap` from `start` until the limiter calls it a
    /// flood; returns how many were sent and when, or `None` by `until`.
    fn flood(config: &Config, gap: Duration, until: Duration) -> Option<(u32, Duration)> {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(config.rate_burst, start);
        let mut sent = 0;
        let mut at = Duration::ZERO;
        while at < until {
            sent += 1;
            if !limiter.admit(start + at, config) && limiter.flooding(start + at, config) {
                return Some((sent, at));
            }
            at += gap;
        }
        None
    }

    #[test]
    fn limiter_admits_a_burst_then_refills() {
        let start = Instant::now();
        let config = config(10, 3);
        let mut limiter = RateLimiter::new(config.rate_burst, start);
        assert!((0..3).all(|_| limiter.admit(start, &config)));
        assert!(!limiter.admit(start, &config));
        assert_eq!(limiter.strikes, 1);
        assert!(limiter.admit(start + Duration::from_millis(100), &config));
        // An admitted frame does not forgive the streak.
        assert_eq!(limiter.strikes, 1);
    }

    #[test]
    fn a_steady_flood_is_closed_after_a_burst_of_refusals() {
        // 5000 frames/s against 100/s: the old rule forgave the client at
        // every refilled token, and never closed it.
        let config = config(100, 200);
        let (sent, at) =
            flood(&config, Duration::from_micros(200), Duration::from_secs(10)).expect("closed");
        assert!(sent <= 200 + 201 + 10, "{sent} frames");
        assert!(at < Duration::from_millis(200), "{at:?}");
    }

    #[test]
    fn a_client_barely_over_the_limit_is_closed_in_bounded_time() {
        // 110 frames/s against 100/s: about ten refusals a second, never a
        // burst's worth in one go; closed after two bursts' refill time
        // (4 s) of refusals.
        let config = config(100, 200);
        let (_, at) = flood(
            &config,
            Duration::from_micros(9_090),
            Duration::from_secs(60),
        )
        .expect("closed");
        assert!(at < Duration::from_secs(30), "{at:?}");
    }

    #[test]
    fn a_client_that_calms_down_starts_over() {
        let config = config(10, 2); // a burst refills in 200 ms
        let start = Instant::now();
        let mut limiter = RateLimiter::new(config.rate_burst, start);
        assert!(limiter.admit(start, &config) && limiter.admit(start, &config));
        assert!(!limiter.admit(start, &config));
        let later = start + Duration::from_secs(1);
        assert!((0..2).all(|_| limiter.admit(later, &config)));
        assert!(!limiter.admit(later, &config));
        assert_eq!(limiter.strikes, 1);
        assert!(!limiter.flooding(later, &config));
    }
}
