//! Ending and moving a user's sessions on every instance:
//! `Service::disconnect_user`, `subscribe_user` and `unsubscribe_user`
//! publish on the service's control topic, which every instance with a
//! connection follows at its broker. Each instance closes that user's
//! connections with 3003, or hands each of their read loops the order to
//! join or leave the topic (the read loop owns the subscriptions, and the
//! handler's `authorize_topic` still decides a join).
//!
//! Control messages are Pub/Sub messages like events: an instance whose
//! link to the broker is down when one is sent misses it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Inner, PublishError, Service};
use crate::broker::{Broker, BrokerError};
use crate::handler::MessageHandler;
use crate::hub::CONTROL_TOPIC;
use crate::outbox::Order;
use crate::protocol::{Frame, close_code};

/// The longest close reason: a close frame's payload is at most 125 bytes,
/// two of them the code.
const MAX_REASON_BYTES: usize = 123;

/// What one instance tells the others on the control topic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control<'a> {
    /// Close the connections of the user whose id's `Debug` form is `user`.
    Disconnect {
        #[serde(borrow)]
        user: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        reason: std::borrow::Cow<'a, str>,
    },
    /// Subscribe the user's connections to `topic`.
    Subscribe {
        #[serde(borrow)]
        user: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
    },
    /// Unsubscribe the user's connections from `topic`.
    Unsubscribe {
        #[serde(borrow)]
        user: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
    },
}

impl<H: MessageHandler, B: Broker> Service<H, B> {
    /// Closes every connection of `user`, on every instance, with 3003
    /// (registered for WebSocket as "Forbidden") and `reason` (cut to 123
    /// bytes): the client is told not to reconnect. Users are told apart
    /// by their id's `Debug` form, as for the per-user limits.
    ///
    /// It travels through the broker, as events do: an instance cut off
    /// from the broker when it is sent does not get it, and a user may
    /// connect again afterwards (refuse its token to keep it out).
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker does not take the message.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn kick(service: &Service<Chat>, user: &String) -> Result<(), realtime::service::PublishError> {
    ///     service.disconnect_user(user, "removed by a moderator").await
    /// }
    /// ```
    pub async fn disconnect_user(
        &self,
        user: &H::UserId,
        reason: &str,
    ) -> Result<(), PublishError> {
        self.inner
            .disconnect_user(&format!("{user:?}"), reason)
            .await
    }

    /// Subscribes every connection of `user`, on every instance, to
    /// `topic`, as if each had sent `$join` without `since`: the handler's
    /// `authorize_topic` decides, and `on_join` runs. Each connection gets
    /// the `subscribed` frame (a topic with history: from its current
    /// position), then the topic's events. A connection already
    /// subscribed, or at `Config::max_topics_per_connection`, is left as it
    /// is. Users are told apart by their id's `Debug` form.
    ///
    /// It travels through the broker, as events do: an instance cut off
    /// from the broker when it is sent does not get it, and a connection
    /// made afterwards is not subscribed.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker does not take the message.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn invite(service: &Service<Chat>, user: &String) -> Result<(), realtime::service::PublishError> {
    ///     service.subscribe_user(user, "room:rust").await
    /// }
    /// ```
    pub async fn subscribe_user(&self, user: &H::UserId, topic: &str) -> Result<(), PublishError> {
        self.inner
            .move_user(&format!("{user:?}"), &Order::Join(topic.into()))
            .await
    }

    /// Unsubscribes every connection of `user`, on every instance, from
    /// `topic`: each gets `{"topic": .., "unsubscribed": {}}` after the
    /// topic's last event for it, and `on_leave` runs. The topic of a
    /// connection's URL is not left (close the connection instead).
    ///
    /// # Errors
    ///
    /// [`PublishError`] when the broker does not take the message.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// async fn remove(service: &Service<Chat>, user: &String) -> Result<(), realtime::service::PublishError> {
    ///     service.unsubscribe_user(user, "room:rust").await
    /// }
    /// ```
    pub async fn unsubscribe_user(
        &self,
        user: &H::UserId,
        topic: &str,
    ) -> Result<(), PublishError> {
        self.inner
            .move_user(&format!("{user:?}"), &Order::Leave(topic.into()))
            .await
    }
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
    /// Tells every instance to have the connections of the user whose id's
    /// `Debug` form is `user` join or leave a topic.
    pub(super) async fn move_user(&self, user: &str, order: &Order) -> Result<(), PublishError> {
        let control = match order {
            Order::Join(topic) => Control::Subscribe {
                user: user.into(),
                topic: (&**topic).into(),
            },
            Order::Leave(topic) => Control::Unsubscribe {
                user: user.into(),
                topic: (&**topic).into(),
            },
        };
        let frame = Frame::from(serde_json::to_string(&control)?);
        self.broker.publish(CONTROL_TOPIC, frame, None).await?;
        Ok(())
    }

    /// Tells every instance to close the connections of the user whose
    /// id's `Debug` form is `user`.
    pub(super) async fn disconnect_user(
        &self,
        user: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let control = Control::Disconnect {
            user: user.into(),
            reason: reason[..end].into(),
        };
        let frame = Frame::from(serde_json::to_string(&control)?);
        self.broker.publish(CONTROL_TOPIC, frame, None).await?;
        Ok(())
    }
    /// Follows the control topic at the broker, once; called with the lock
    /// of the topics followed, as a connection is accepted.
    pub(super) async fn follow_control(
        &self,
        subscribed: &mut std::collections::HashSet<Arc<str>>,
    ) -> Result<(), BrokerError> {
        if subscribed.contains(CONTROL_TOPIC) {
            return Ok(());
        }
        self.broker.subscribe(CONTROL_TOPIC).await?;
        subscribed.insert(CONTROL_TOPIC.into());
        Ok(())
    }

    /// Carries out a control message from any instance, this one included.
    pub(super) fn control(&self, frame: &Frame) {
        match serde_json::from_str::<Control<'_>>(frame.as_str()) {
            Ok(Control::Disconnect { user, reason }) => {
                let sessions = self.users.sessions_of(&user);
                tracing::info!(closed = sessions.len(), %reason, "a user's sessions ended");
                for status in sessions {
                    status.abort_with(close_code::FORBIDDEN, &reason);
                }
            }
            Ok(Control::Subscribe { user, topic }) => {
                let ordered = self.users.order(&user, &Order::Join(topic.into()));
                tracing::debug!(ordered, "a user's sessions asked to join a topic");
            }
            Ok(Control::Unsubscribe { user, topic }) => {
                let ordered = self.users.order(&user, &Order::Leave(topic.into()));
                tracing::debug!(ordered, "a user's sessions asked to leave a topic");
            }
            Err(error) => tracing::warn!(%error, "an unreadable control message"),
        }
    }
}
