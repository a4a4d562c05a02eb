//! Admission: a place among the instance's connections, the checks before
//! an upgrade, the subscription made before it, and the serving of the
//! upgraded socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::websocket::Socket;
use tokio::sync::watch;

use super::subscribe::{Entry, Subscription};
use super::users::UserPlace;
use super::{Inner, Service};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::broker::{Broker, BrokerError};
use crate::connection::{self, Session};
use crate::handler::ConnectionId;
use crate::handler::{Context, MessageHandler, Publish};
use crate::history::Position;
use crate::hub::Feed;
use crate::outbox::Outbox;
use crate::telemetry;

/// Why the instance takes no new connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    AtCapacity,
    ShuttingDown,
    /// The user holds `Config::max_connections_per_user` here already.
    UserAtCapacity,
}

/// A place among the open connections, and the user's among its own, held
/// from admission to the end of the connection; dropping it frees them.
pub(crate) struct Admission {
    open: watch::Sender<usize>,
    user: Option<UserPlace>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.send_modify(|open| *open -= 1);
        metrics::gauge!(telemetry::CONNECTIONS).decrement(1.0);
    }
}

/// A connection accepted and subscribed to its topic but not yet upgraded.
/// If the upgrade never happens, dropping it unsubscribes it and frees its
/// place.
pub(crate) struct Accepted<H: MessageHandler, B: Broker> {
    id: ConnectionId,
    topic: Arc<str>,
    subscription: Subscription<H, B>,
    feed: Feed,
    /// The connection's presence in its URL's topic, written at the upgrade.
    entry: Option<Entry>,
    user: H::UserId,
    /// When the user's token runs out, if it does.
    expires_at: Option<std::time::SystemTime>,
    outbox: Outbox,
    admission: Admission,
}

impl<H: MessageHandler, B: Broker> Accepted<H, B> {
    /// Makes the connection's heartbeat a text frame (`?heartbeat=text`).
    pub(crate) fn heartbeat_in_text(&self) {
        self.outbox.status().heartbeat_in_text();
    }
}

impl<H: MessageHandler, B: Broker> Service<H, B> {
    /// Whether [`admit`](Self::admit) would take a place now, without
    /// taking it.
    pub(crate) fn would_admit(&self) -> Result<(), Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        if *self.inner.open.borrow() >= self.inner.config.max_connections {
            return Err(Refusal::AtCapacity);
        }
        Ok(())
    }

    /// Takes a place among the open connections.
    pub(crate) fn admit(&self) -> Result<Admission, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let max = self.inner.config.max_connections;
        let admitted = self.inner.open.send_if_modified(|open| {
            if *open >= max {
                return false;
            }
            *open += 1;
            true
        });
        if admitted {
            metrics::gauge!(telemetry::CONNECTIONS).increment(1.0);
            Ok(Admission {
                open: self.inner.open.clone(),
                user: None,
            })
        } else {
            Err(Refusal::AtCapacity)
        }
    }

    /// Whether [`admit_user`](Self::admit_user) would take a place now,
    /// without taking it.
    pub(crate) fn would_admit_user(&self, user: &H::UserId) -> Result<(), Refusal> {
        self.inner
            .users
            .would_admit(user)
            .map_err(|_| Refusal::UserAtCapacity)
    }

    /// Takes a place among `user`'s open connections on this instance.
    pub(crate) fn admit_user(
        &self,
        admission: &mut Admission,
        user: &H::UserId,
    ) -> Result<(), Refusal> {
        let open = *self.inner.open.borrow();
        let place = self
            .inner
            .users
            .admit(user, open)
            .map_err(|_| Refusal::UserAtCapacity)?;
        admission.user = Some(place);
        Ok(())
    }

    /// The token validator, shared.
    pub(crate) fn authenticator(&self) -> &Authenticator<H::UserId> {
        &self.inner.validator
    }

    pub(crate) async fn identify(&self, token: &str) -> Result<Identity<H::UserId>, AuthError> {
        self.inner.validator.identify(token).await
    }

    pub(crate) async fn authorize(&self, user: &H::UserId, topic: &str) -> Result<(), AuthError> {
        let allowed = self
            .inner
            .handler
            .authorize_topic(&self.inner.state, user, topic)
            .await;
        if allowed {
            Ok(())
        } else {
            Err(AuthError::ForbiddenTopic(topic.to_owned()))
        }
    }

    /// Subscribes a new connection to `topic` before its upgrade (and the
    /// instance at the broker if it is the topic's first local subscriber).
    /// Events published from now on are kept for it, so a client that saw
    /// the upgrade succeed misses nothing.
    pub(crate) async fn accept(
        &self,
        topic: &str,
        since: Option<&Position>,
        identity: Identity<H::UserId>,
        admission: Admission,
    ) -> Result<Accepted<H, B>, BrokerError> {
        let Identity {
            user, expires_at, ..
        } = identity;
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let config = &self.inner.config;
        let outbox = Outbox::new(
            config.outbound_queue,
            config.outbound_queue_bytes,
            Arc::clone(&self.inner.counters),
        );
        // Listed at once, so that a `disconnect_user` while the topic is
        // read and the socket upgraded still finds it: the read loop checks
        // for an abort before anything else.
        let mut admission = admission;
        if let Some(place) = admission.user.as_mut() {
            place.attach(id.0, outbox.status());
        }
        let budget = admission.user.as_ref().map(|place| &**place.budget());
        let (topic, subscription, feed, entry) =
            Inner::subscribe(&self.inner, topic, since, id, &user, budget).await?;
        Ok(Accepted {
            id,
            topic,
            subscription,
            feed,
            entry,
            user,
            expires_at,
            outbox,
            admission,
        })
    }

    /// Serves an upgraded socket to the end. The write task starts now; the
    /// returned future runs the rest (see [`connection::start`] for why the
    /// socket is not moved into it).
    pub(crate) fn serve(
        self,
        socket: Socket,
        deflate: bool,
        accepted: Accepted<H, B>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Accepted {
            id,
            topic,
            mut subscription,
            feed,
            entry,
            user,
            expires_at,
            outbox,
            admission,
        } = accepted;
        if let Some(entry) = entry {
            subscription.enter(entry);
        }
        // The catch-up of a resumed URL topic goes first in the queue,
        // which the write task empties before it reads any ring.
        let mut feed = feed;
        outbox.catch_up(&mut feed);
        let mut started = connection::start(socket, deflate, &outbox, feed, &self.inner.config);
        self.inner
            .heartbeat
            .watch(outbox.status(), started.pinger());
        let mut ctx = Context {
            conn_id: id,
            user_id: user,
            topic,
            state: Arc::clone(&self.inner.state),
            outbox,
            publisher: Arc::clone(&self.inner) as Arc<dyn Publish>,
            budget: admission
                .user
                .as_ref()
                .map(|place| Arc::clone(place.budget())),
        };
        metrics::counter!(telemetry::ACCEPTED).increment(1);
        if deflate {
            metrics::counter!(telemetry::COMPRESSED).increment(1);
        }
        // Every event of the connection's life is logged inside this span:
        // which connection, whose, on which topic. Frames are `debug`.
        let span = tracing::info_span!(
            "connection",
            conn = %id,
            user = ?ctx.user_id,
            topic = &*ctx.topic,
        );
        let connection = async move {
            let inner = &self.inner;
            let session = Session {
                handler: &inner.handler,
                topics: inner,
                config: &inner.config,
                shutdown: &inner.shutdown,
            };
            connection::run(&mut started, session, &mut ctx, subscription, expires_at).await;
            // The socket closes before `on_disconnect` runs.
            drop(started);
            inner.handler.on_disconnect(&ctx).await;
            drop(admission);
        };
        tracing::Instrument::instrument(connection, span)
    }
}
