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

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::broker::BrokerError;
use crate::config::Config;
use crate::handler::{Context, MessageHandler};
use crate::protocol::Frame;

mod outbox;
mod reader;
mod subscriptions;
mod writer;

pub use outbox::ConnectionId;
pub(crate) use outbox::{Counters, Outbound, Outbox, Ring, Signal, bump};
pub(crate) use subscriptions::Subscriptions;

/// The service as a connection sees it: where the events its handler
/// produces go, and where it subscribes to more topics.
pub(crate) trait Topics: Send + Sync {
    /// A connection's place among a topic's local subscribers; dropping it
    /// unsubscribes.
    type Subscription: Send;

    /// Publishes one event frame on `topic`.
    fn publish(
        &self,
        topic: &str,
        frame: Frame,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Subscribes a connection to `topic` (and the instance at the broker if
    /// it is the topic's first local subscriber). Returns the shared topic
    /// name, the subscription and the topic's ring, which holds every event
    /// published from now on.
    fn subscribe(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<(Arc<str>, Self::Subscription, Ring), BrokerError>> + Send;
}

/// Everything one connection needs besides its socket.
pub(crate) struct Session<'a, H: MessageHandler, T: Topics> {
    pub(crate) handler: &'a H,
    pub(crate) topics: &'a T,
    pub(crate) config: &'a Config,
    pub(crate) ctx: Context<H::AppState, H::UserId>,
    /// The receiving end of `ctx`'s outbox.
    pub(crate) queue: mpsc::Receiver<Outbound>,
    /// The topic of the URL, subscribed before the upgrade.
    pub(crate) home: (T::Subscription, Ring),
    /// Fired when the service shuts down.
    pub(crate) shutdown: &'a Signal,
}

/// Serves one upgraded socket until it closes: runs `on_connect`, the read
/// loop and `on_disconnect` (exactly once each). The subscriptions end as
/// soon as the read loop does, so that no more events are written after the
/// connection's close.
pub(crate) async fn run<H, T>(socket: WebSocket, session: Session<'_, H, T>)
where
    H: MessageHandler,
    T: Topics,
{
    let Session {
        handler,
        topics,
        config,
        mut ctx,
        queue,
        home: (home, ring),
        shutdown,
    } = session;
    let outbox = ctx.outbox.clone();
    let (sink, mut stream) = socket.split();
    let sources = writer::Sources::new(queue, (Arc::clone(&ctx.topic), ring), config.topic_backlog);
    let writer = tokio::spawn(writer::write(
        sink,
        sources,
        Arc::clone(outbox.status()),
        config.write_batch,
        config.close_timeout,
    ));

    handler.on_connect(&ctx).await;
    let subscriptions = Subscriptions::new(
        Arc::clone(&ctx.topic),
        home,
        config.max_topics_per_connection,
    );
    let end = reader::read(
        reader::Reader::new(handler, topics, &mut ctx, &outbox, subscriptions, config),
        &mut stream,
        shutdown,
    )
    .await;

    let mut writer = writer;
    match end {
        reader::End::PeerGone => outbox.abort(0),
        reader::End::Aborted => {}
        reader::End::Close(code) => outbox.close(code, config.close_timeout).await,
    }
    if end != reader::End::PeerGone {
        // Read until the peer answers our close frame (or the deadline), so
        // the socket is not dropped with unread input, which would reset the
        // connection before the client could read the close frame.
        let _ = tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, axum::extract::ws::Message::Close(_)) {
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
        outbox.abort(0);
        let _ = writer.await;
    }
    drop(stream);
    handler.on_disconnect(&ctx).await;
}
