//! One socket: its read loop, its write task and its subscriptions.
//!
//! A connection costs two tasks: the read loop (the task axum gives the
//! upgraded socket) and one write task. Nothing is spawned per message. The
//! read loop handles a client's frames one after another, in the order they
//! arrived. The write task writes, in batches (feed several frames, flush
//! once), the connection's own queue (answers, errors, `Context::send`) and
//! the events of its topics, which it reads from each topic's ring: an event
//! is written once per instance, whatever the number of subscribers. No
//! lock is held across a socket write.

use std::future::Future;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::websocket::{Incoming, Socket};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Identity};
use crate::broker::BrokerError;
use crate::config::Config;
use crate::handler::ConnectionId;
use crate::handler::{Context, MessageHandler};
use crate::history::Position;
use crate::hub::Feed;
use crate::outbox::{Order, Outbox};
use crate::presence::{Presence, PresenceError};
use crate::protocol::Frame;
use crate::service::PublishBudget;
use crate::telemetry::{self, Counters, EndedBy};
use crate::util::Signal;

mod answers;
mod expiry;
#[cfg(test)]
mod idle_memory;
mod reader;
mod subscriptions;
mod writer;

pub(crate) use subscriptions::Subscriptions;

/// The service as a connection sees it: where the events its handler
/// produces go, and where it subscribes to more topics.
pub(crate) trait Topics: Send + Sync {
    /// A connection's place among a topic's local subscribers; dropping it
    /// unsubscribes.
    type Subscription: Send;

    /// Who connections are: the handler's user id.
    type User;

    /// The service's counters, which a publish moves.
    fn counters(&self) -> &Counters;

    /// Publishes one event frame on `topic`, once per `key` (a client's
    /// idempotency key) within the service's window; the event's position
    /// on a topic with history.
    fn publish(
        &self,
        topic: &str,
        frame: Frame,
        key: Option<&str>,
    ) -> impl Future<Output = Result<Option<Position>, BrokerError>> + Send;

    /// Subscribes a connection to `topic` (and the instance at the broker if
    /// it is the topic's first local subscriber). Returns the shared topic
    /// name, the subscription and the feed for the write task: the topic's
    /// ring, which holds every event published from now on, and for a topic
    /// with history what the client missed since `since`.
    /// `conn` of `user` counts in the topic's presence while the
    /// subscription lasts, if the topic tracks presence. A topic with
    /// history that the instance does not follow yet is a new topic for
    /// the user's `budget`.
    fn subscribe(
        &self,
        topic: &str,
        since: Option<&Position>,
        conn: ConnectionId,
        user: &Self::User,
        budget: Option<&PublishBudget>,
    ) -> impl Future<Output = Result<(Arc<str>, Self::Subscription, Feed), BrokerError>> + Send;

    /// Checks a fresh token (`$refresh`): its user and expiry.
    fn identify(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Identity<Self::User>, AuthError>> + Send;

    /// Takes the orders the instance left for connection `conn`
    /// (`Service::subscribe_user`), oldest first.
    fn orders(&self, conn: ConnectionId) -> Vec<Order>;

    /// Who is subscribed to `topic`, on every instance.
    fn presence(&self, topic: &str)
    -> impl Future<Output = Result<Presence, PresenceError>> + Send;

    /// Who is subscribed to `topic`, on every instance, for the connection
    /// behind `outbox`, which follows it: counting that connection, and on
    /// a topic that announces joins and leaves, queued on `outbox`
    /// (answering `id`) to be written at its place among them, which
    /// returns `None`.
    fn presence_for(
        &self,
        topic: &str,
        outbox: &Outbox,
        id: Option<&RawValue>,
    ) -> impl Future<Output = Result<Option<Presence>, PresenceError>> + Send;
}

/// The most a client that goes on sending after the server's close frame
/// may make the server read (and throw away) while it waits for the client
/// to end its side; `Config::close_timeout` bounds the time.
const DISCARD_BYTES: usize = 1024 * 1024;

/// What every connection of one service shares.
pub(crate) struct Session<'a, H: MessageHandler, T: Topics> {
    pub(crate) handler: &'a H,
    pub(crate) topics: &'a T,
    pub(crate) config: &'a Config,
    /// Fired when the service shuts down.
    pub(crate) shutdown: &'a Signal,
}

// By hand: a derive would ask `H` and `T` to be `Copy`, and only references
// are copied.
impl<H: MessageHandler, T: Topics> Clone for Session<'_, H, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: MessageHandler, T: Topics> Copy for Session<'_, H, T> {}

/// A socket whose write task runs: what the read loop still needs of it.
pub(crate) struct Started {
    stream: Incoming,
    writer: JoinHandle<()>,
}

impl Started {
    /// What the heartbeat pings the socket with.
    pub(crate) fn pinger(&self) -> crate::websocket::Pinger {
        self.stream.pinger()
    }
}

impl Drop for Started {
    /// Ends the write task with the connection. On the way out of [`run`]
    /// it has ended already; but if the connection's future is dropped
    /// early (a handler panicked), the write task would otherwise wait for
    /// its queue forever and keep the socket open.
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Splits an upgraded socket and starts its write task, which writes
/// `outbox`'s queue and the events of `home` (the URL's topic's feed),
/// compressed when the socket negotiated it (`deflate`).
///
/// Not async, and called before the connection's future is made: an
/// `async fn` keeps the space of each argument it was given for as long as
/// it runs, and the socket (368 bytes, moved into the split's shared half)
/// would cost every idle connection that much again.
pub(crate) fn start(
    socket: Socket,
    deflate: bool,
    outbox: &Outbox,
    home: Feed,
    config: &Config,
) -> Started {
    let (stream, wire) = crate::websocket::split(socket);
    let deflate_min = match deflate {
        true => config.compression_min_bytes,
        false => usize::MAX,
    };
    let writer = tokio::spawn(writer::write(
        wire,
        writer::Sources::new(home, config.topic_backlog, deflate_min),
        Arc::clone(outbox.status()),
        config.write_batch,
        config.close_timeout,
    ));
    Started { stream, writer }
}

/// Serves a started socket until it closes: runs `on_connect` (once) and
/// the read loop, then the close. `home` is the subscription to the URL's
/// topic, made before the upgrade. The subscriptions end as soon as the read
/// loop does, so that no more events are written after the connection's
/// close; then the `on_leave` hook runs for each topic still `$join`ed. The
/// caller drops `started`, which closes the socket, then runs
/// `on_disconnect`.
///
/// Its arguments are references or small, and it is a block, not an `async
/// fn` (which keeps its arguments twice, as given and as bound): every byte
/// of this future is held by every idle connection (see [`start`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice; see above"
)]
pub(crate) fn run<'a, H, T>(
    started: &'a mut Started,
    session: Session<'a, H, T>,
    ctx: &'a mut Context<H::AppState, H::UserId>,
    home: T::Subscription,
    expires_at: Option<std::time::SystemTime>,
) -> impl Future<Output = ()> + 'a
where
    H: MessageHandler,
    T: Topics<User = H::UserId> + 'a,
{
    async move {
        // Fields are used in place, not bound to locals: a binding would be a
        // second copy in this future.
        let config = session.config;

        session.handler.on_connect(ctx).await;
        let subscriptions = Subscriptions::new(
            Arc::clone(&ctx.topic),
            home,
            config.max_topics_per_connection,
        );
        let expiry = expires_at.map(|at| expiry::Expiry::new(at, config.token_notice));
        let mut reader = reader::Reader::new(
            session.handler,
            session.topics,
            ctx,
            subscriptions,
            expiry,
            config,
        );
        let end = reader::read(&mut reader, &mut started.stream, session.shutdown).await;
        let joined = reader.into_joined();
        let outbox = &ctx.outbox;

        match end {
            reader::End::PeerClosed(code) => {
                telemetry::connection_ended(EndedBy::Client, code);
                // What is queued (a reply to a request that came before the
                // close) is written, then tungstenite's answer to the close.
                outbox.close(code);
            }
            reader::End::PeerGone => {
                telemetry::connection_ended(EndedBy::Nobody, telemetry::ABNORMAL_CLOSURE);
                outbox.abort(0);
            }
            // The write task ended first: with the code of the abort (a
            // slow client's 1013), or with none when a write failed.
            reader::End::Aborted => match outbox.status().abort_code() {
                0 => telemetry::connection_ended(EndedBy::Nobody, telemetry::ABNORMAL_CLOSURE),
                code => telemetry::connection_ended(EndedBy::Server, code),
            },
            reader::End::Close(code) => {
                telemetry::connection_ended(EndedBy::Server, code);
                outbox.close(code);
            }
        }
        // Whether the client went on sending after the server's close frame
        // without answering it.
        let mut sending = false;
        if matches!(end, reader::End::Close(_) | reader::End::Aborted) {
            // Read until the peer answers our close frame (or the deadline), so
            // the socket is not dropped with unread input, which would reset the
            // connection before the client could read the close frame. At most
            // a burst's worth of frames: each ping read here is still answered
            // with a pong, and a flooding client gets no more than that.
            let _ = tokio::time::timeout(config.close_timeout, async {
                let mut budget = config.rate_burst;
                while let Some(Ok(message)) = started.stream.next().await {
                    if matches!(message, tungstenite::Message::Close(_)) {
                        sending = false;
                        break;
                    }
                    sending = true;
                    budget = budget.saturating_sub(1);
                    if budget == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        // The write task ends by itself after a close frame; bound the wait for
        // a client that stopped reading.
        let written = tokio::time::timeout(config.close_timeout, &mut started.writer)
            .await
            .is_ok();
        if !written {
            outbox.abort(0);
            let _ = (&mut started.writer).await;
        }
        // Only once the close frame is out whole: the server's side ends
        // after it.
        if sending && written {
            // The client still sends: its input is thrown away unread until
            // it has read the close frame and ended its side. Boxed: rare.
            let discard = Box::pin(started.stream.discard(DISCARD_BYTES));
            let _ = tokio::time::timeout(config.close_timeout, discard).await;
        }
        if !joined.is_empty() {
            // Boxed: rare, and the hooks' futures would otherwise take room
            // in every idle connection's future.
            Box::pin(async {
                for topic in &joined {
                    session.handler.on_leave(ctx, topic).await;
                }
            })
            .await;
        }
    }
}
