//! [`Context`]: what a handler sees of the connection a message came from,
//! and [`ConnectionId`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use super::HandlerError;
use crate::history::{History, HistoryError};
use crate::outbox::{Order, Outbox};
use crate::presence::{Presence, PresenceError};
use crate::protocol::{self, Frame, error_code};
use crate::service::PublishBudget;

/// Identifies one connection within one service instance.
///
/// # Examples
///
/// ```
/// use realtime::{ConnectionId, Context};
///
/// fn log_line(ctx: &Context<(), String>) -> String {
///     let id: ConnectionId = ctx.conn_id();
///     format!("{id} ({})", ctx.user_id()) // "conn-7 (alice)"
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Where [`Context::publish`] sends an event: the service, as a handler
/// reaches it without naming it (the service implements this).
pub(crate) trait Publish: Send + Sync {
    /// Publishes `frame` on `topic`; an error is what the handler answers.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        frame: Frame,
        budget: Option<&'a PublishBudget>,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

    /// Reads a topic's history, as `Service::history`.
    fn history<'a>(
        &'a self,
        topic: &'a str,
        since: Option<u64>,
        limit: usize,
    ) -> Pin<Box<dyn Future<Output = Result<History, HistoryError>> + Send + 'a>>;

    /// Ends the sessions of the user whose id's `Debug` form is `user`, as
    /// `Service::disconnect_user`.
    fn disconnect_user<'a>(
        &'a self,
        user: String,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

    /// Has the connections of the user whose id's `Debug` form is `user`
    /// join or leave a topic, as `Service::subscribe_user` and
    /// `Service::unsubscribe_user`.
    fn move_user<'a>(
        &'a self,
        user: String,
        order: Order,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

    /// Reads a topic's presence, as `Service::presence`.
    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Presence, PresenceError>> + Send + 'a>>;
}

/// What a handler sees of the connection a message came from.
///
/// Every method of a [`MessageHandler`](crate::MessageHandler) receives one. It is cheap to keep:
/// the topic and the app state are shared.
///
/// # Examples
///
/// ```
/// use realtime::{Context, HandlerError};
///
/// struct AppState { greeting: String }
///
/// async fn greet(ctx: &Context<AppState, String>) -> Result<(), HandlerError> {
///     let line = format!("{}, {} (on {})", ctx.state().greeting, ctx.user_id(), ctx.topic());
///     ctx.send(&line)?;
///     Ok(())
/// }
/// ```
pub struct Context<S, U> {
    pub(crate) conn_id: ConnectionId,
    pub(crate) user_id: U,
    pub(crate) topic: Arc<str>,
    pub(crate) state: Arc<S>,
    pub(crate) outbox: Outbox,
    pub(crate) publisher: Arc<dyn Publish>,
    /// The user's publish budget on this instance, which its publishes
    /// draw from.
    pub(crate) budget: Option<Arc<PublishBudget>>,
}

impl<S, U> Context<S, U> {
    /// This connection's id, unique within this service instance.
    pub fn conn_id(&self) -> ConnectionId {
        self.conn_id
    }

    /// The user the token validator returned for this connection.
    pub fn user_id(&self) -> &U {
        &self.user_id
    }

    /// The topic of the message being handled: the `{topic}` of the route,
    /// or, for a connection subscribed to more topics with `$join`, the
    /// topic the frame names in its `topic` key. Outside a message
    /// (`on_connect`, `on_disconnect`) it is the route's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The application state given to the service builder.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The application state as the shared pointer the service holds.
    pub fn state_arc(&self) -> &Arc<S> {
        &self.state
    }

    /// Sends `event` to this client only, as an event frame of [`topic`](Self::topic):
    /// `{"topic": "...", "event": ...}`. It goes through the connection's
    /// own queue, after what is queued there already. That queue is not the
    /// topic's: the topic's events may come before or after it.
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 500 when `event` does not serialize, and with
    /// code 503 when the connection is closing or its queue is full (the
    /// client is then closed with 1013, as for any slow reader).
    pub fn send<T: Serialize + ?Sized>(&self, event: &T) -> Result<(), HandlerError> {
        let frame = protocol::event_frame(&self.topic, event)?;
        if self.outbox.push(frame) {
            Ok(())
        } else {
            Err(HandlerError::new(
                error_code::UNAVAILABLE,
                "the connection is closing",
            ))
        }
    }
}

impl<S, U> Context<S, U> {
    /// Publishes `event` on `topic` to every subscriber, on every instance,
    /// and returns once the broker took it, as [`Service::publish`] does.
    ///
    /// It lets a handler change shared state and publish the result as one
    /// step: hold the application's async lock across both, and the events
    /// reach every subscriber in the order of the changes. A `#[broadcast]`
    /// method that publishes this way returns `Ok(None)`.
    ///
    /// [`Service::publish`]: crate::Service::publish
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 500 when `event` does not serialize, with
    /// code 429 when the user's publish budget does not cover it
    /// ([`Config::max_publish_bytes_per_user_per_sec`],
    /// [`Config::max_new_topics_per_user_per_min`]), and with code 503 when
    /// the broker did not take it.
    ///
    /// [`Config::max_publish_bytes_per_user_per_sec`]: crate::Config::max_publish_bytes_per_user_per_sec
    /// [`Config::max_new_topics_per_user_per_min`]: crate::Config::max_new_topics_per_user_per_min
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::prelude::*;
    /// use serde::Serialize;
    ///
    /// #[derive(Default)]
    /// struct Board { count: tokio::sync::Mutex<u64> }
    ///
    /// #[derive(Serialize)]
    /// struct Count { value: u64 }
    ///
    /// struct Counter;
    ///
    /// #[realtime_handler]
    /// impl Counter {
    ///     /// Adds `by`; every subscriber sees the totals in order.
    ///     #[broadcast]
    ///     async fn increment(&self, ctx: &Context<Board, String>, by: u64)
    ///         -> Result<Option<Count>, HandlerError>
    ///     {
    ///         let mut count = ctx.state().count.lock().await;
    ///         *count += by;
    ///         ctx.publish(ctx.topic(), &Count { value: *count }).await?;
    ///         Ok(None)
    ///     }
    /// }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        event: &T,
    ) -> Result<(), HandlerError> {
        let frame = protocol::event_frame(topic, event)?;
        self.publisher
            .publish(topic, frame, self.budget.as_deref())
            .await
    }

    /// Closes every connection of `user`, on every instance, with 3003
    /// and `reason`, as [`Service::disconnect_user`] does: for a handler
    /// that lets a moderator remove someone.
    ///
    /// [`Service::disconnect_user`]: crate::Service::disconnect_user
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 503 when the broker did not take it.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::{Context, HandlerError};
    ///
    /// async fn kick(ctx: &Context<(), String>, user: &String) -> Result<(), HandlerError> {
    ///     if ctx.user_id() != "admin" {
    ///         return Err(HandlerError::new(403, "only admin may kick"));
    ///     }
    ///     ctx.disconnect_user(user, "kicked by admin").await
    /// }
    /// ```
    pub async fn disconnect_user(&self, user: &U, reason: &str) -> Result<(), HandlerError>
    where
        U: fmt::Debug,
    {
        self.publisher
            .disconnect_user(format!("{user:?}"), reason)
            .await
    }

    /// Subscribes every connection of `user`, on every instance, to
    /// `topic`, as [`Service::subscribe_user`] does: for a handler that
    /// invites someone into a room. `authorize_topic` still decides, for
    /// the invited user.
    ///
    /// [`Service::subscribe_user`]: crate::Service::subscribe_user
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 503 when the broker did not take it.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::{Context, HandlerError};
    ///
    /// async fn invite(ctx: &Context<(), String>, user: &String) -> Result<(), HandlerError> {
    ///     ctx.subscribe_user(user, ctx.topic()).await
    /// }
    /// ```
    pub async fn subscribe_user(&self, user: &U, topic: &str) -> Result<(), HandlerError>
    where
        U: fmt::Debug,
    {
        self.publisher
            .move_user(format!("{user:?}"), Order::Join(topic.into()))
            .await
    }

    /// Unsubscribes every connection of `user`, on every instance, from
    /// `topic`, as [`Service::unsubscribe_user`] does.
    ///
    /// [`Service::unsubscribe_user`]: crate::Service::unsubscribe_user
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 503 when the broker did not take it.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::{Context, HandlerError};
    ///
    /// async fn remove(ctx: &Context<(), String>, user: &String) -> Result<(), HandlerError> {
    ///     ctx.unsubscribe_user(user, ctx.topic()).await
    /// }
    /// ```
    pub async fn unsubscribe_user(&self, user: &U, topic: &str) -> Result<(), HandlerError>
    where
        U: fmt::Debug,
    {
        self.publisher
            .move_user(format!("{user:?}"), Order::Leave(topic.into()))
            .await
    }

    /// Reads `topic`'s history, as [`Service::history`] does: the events
    /// after offset `since`, or with `since` `None` the last `limit` ones,
    /// oldest first, with the topic's position.
    ///
    /// [`Service::history`]: crate::Service::history
    ///
    /// At most seven eighths of
    /// [`Config::max_reply_bytes`](crate::Config::max_reply_bytes) of events
    /// are read (the rest is room for the reply's own envelope): after
    /// `since`, those up to the budget; the last ones, the newest that fit.
    /// So fewer than `limit` may come back: page on the offsets, not on the
    /// count.
    ///
    /// # Errors
    ///
    /// [`HandlerError`] with code 400 when the service keeps no history for
    /// `topic`, and with code 503 when the broker could not be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::prelude::*;
    ///
    /// struct Chat;
    ///
    /// #[realtime_handler]
    /// impl Chat {
    ///     /// The last `limit` lines of this room.
    ///     #[direct]
    ///     async fn history(&self, ctx: &Context<(), String>, limit: usize)
    ///         -> Result<Vec<String>, HandlerError>
    ///     {
    ///         let history = ctx.history(ctx.topic(), None, limit).await?;
    ///         Ok(history.events.iter().filter_map(|line| line.event().ok()).collect())
    ///     }
    /// }
    /// ```
    pub async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<History, HandlerError> {
        self.publisher
            .history(topic, since, limit)
            .await
            .map_err(|error| {
                let code = match error {
                    HistoryError::NotKept(_) => error_code::BAD_REQUEST,
                    _ => error_code::UNAVAILABLE,
                };
                HandlerError::new(
                    code,
                    format!("cannot read the history of `{topic}`: {error}"),
                )
                .with_source(error)
            })
    }

    /// Who is subscribed to `topic`, on every instance, as
    /// [`Service::presence`](crate::Service::presence) says. The handler
    /// decides who may ask: `$presence` from a client checks
    /// `authorize_topic` first, this does not.
    ///
    /// # Errors
    ///
    /// A [`HandlerError`] with code 400 when the service does not track
    /// `topic`'s presence, 503 when the broker could not be read: the
    /// answer a `#[direct]` method would give the client.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::{Context, HandlerError};
    ///
    /// /// How many people are in this room.
    /// async fn headcount(ctx: &Context<(), String>) -> Result<usize, HandlerError> {
    ///     Ok(ctx.presence(ctx.topic()).await?.users.len())
    /// }
    /// ```
    pub async fn presence(&self, topic: &str) -> Result<Presence, HandlerError> {
        self.publisher.presence(topic).await.map_err(|error| {
            let message = format!("cannot read the presence of `{topic}`: {error}");
            HandlerError::new(error.code(), message).with_source(error)
        })
    }
}

impl<S, U: fmt::Debug> fmt::Debug for Context<S, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("conn_id", &self.conn_id)
            .field("user_id", &self.user_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
