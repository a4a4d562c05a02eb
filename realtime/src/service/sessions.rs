//! Ending a user's sessions on every instance: `Service::disconnect_user`
//! publishes on the service's control topic, which every instance with a
//! connection follows at its broker, and each closes that user's
//! connections with 3003.
//!
//! Control messages are Pub/Sub messages like events: an instance whose
//! link to the broker is down when one is sent misses it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Inner, PublishError, Service};
use crate::broker::{Broker, BrokerError};
use crate::handler::MessageHandler;
use crate::hub::CONTROL_TOPIC;
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
}

impl<H: MessageHandler, B: Broker> Inner<H, B> {
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
            Err(error) => tracing::warn!(%error, "an unreadable control message"),
        }
    }
}
