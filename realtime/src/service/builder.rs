//! [`ServiceBuilder`]: the handler, the app state and the token validator,
//! then optionally a broker, a config and the history and presence
//! policies.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, watch};

use super::{Inner, Service};
use crate::auth::{Authenticator, TokenValidator};
use crate::broker::{Broker, Incoming, MemoryBroker};
use crate::config::{Config, ConfigError};
use crate::handler::MessageHandler;
use crate::history::HistoryPolicy;
use crate::hub::{Fan, Filler, Hub, Owner};
use crate::presence::PresencePolicy;
use crate::presence::asks::Asks;
use crate::presence::keeper::Keeper;
use crate::telemetry::Counters;
use crate::util::Signal;

/// Assembles a [`Service`]: the handler, the app state, the token validator,
/// then optionally a broker and a config.
///
/// # Examples
///
/// See [`Service`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ServiceBuilder<H: MessageHandler, B> {
    handler: H,
    state: Arc<H::AppState>,
    validator: Authenticator<H::UserId>,
    broker: B,
    config: Config,
    history: HistoryPolicy,
    presence: PresencePolicy,
    user_json: Option<super::UserJson<H::UserId>>,
}

impl<H: MessageHandler, B: fmt::Debug> fmt::Debug for ServiceBuilder<H, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("broker", &self.broker)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<H: MessageHandler> Service<H, MemoryBroker> {
    /// Starts a service with the [`MemoryBroker`] and the default [`Config`].
    ///
    /// `state` may be the state itself or an `Arc` of it.
    pub fn builder<V>(
        handler: H,
        state: impl Into<Arc<H::AppState>>,
        validator: V,
    ) -> ServiceBuilder<H, MemoryBroker>
    where
        V: TokenValidator<UserId = H::UserId>,
    {
        ServiceBuilder {
            handler,
            state: state.into(),
            validator: Authenticator::new(validator),
            broker: MemoryBroker::new(),
            config: Config::default(),
            history: HistoryPolicy::none(),
            presence: PresencePolicy::none(),
            user_json: None,
        }
    }
}

impl<H: MessageHandler, B: Broker> ServiceBuilder<H, B> {
    /// Fans out through `broker` instead of the in-process default.
    pub fn with_broker<B2: Broker>(self, broker: B2) -> ServiceBuilder<H, B2> {
        ServiceBuilder {
            handler: self.handler,
            state: self.state,
            validator: self.validator,
            broker,
            config: self.config,
            history: self.history,
            presence: self.presence,
            user_json: self.user_json,
        }
    }

    /// Sets the limits and timeouts.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Keeps history for the topics `policy` names: their events get
    /// positions, and a client that comes back resumes where it stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// use std::time::Duration;
    /// use realtime::auth::validate_with;
    /// use realtime::history::{HistoryPolicy, Retention};
    ///
    /// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
    ///     .history(HistoryPolicy::none().keep("room:*", Retention::new(100, Duration::from_secs(600))))
    ///     .build()
    ///     .expect("the default config is valid");
    /// # let _ = service;
    /// ```
    pub fn history(mut self, policy: HistoryPolicy) -> Self {
        self.history = policy;
        self
    }

    /// Tracks presence in the topics `policy` names: `$presence` and
    /// [`Service::presence`] say who is subscribed, on every instance, and
    /// topics with [`Tracking::Announced`](crate::presence::Tracking::Announced) send `join` and `leave` events.
    /// Users are told apart by their id, written as JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// # use realtime::Service;
    /// # use realtime::__private::doc::Chat;
    /// use realtime::auth::validate_with;
    /// use realtime::presence::{PresencePolicy, Tracking};
    ///
    /// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
    ///     .presence(PresencePolicy::none().track("room:*", Tracking::Announced))
    ///     .build()
    ///     .expect("the default config is valid");
    /// # let _ = service;
    /// ```
    pub fn presence(mut self, policy: PresencePolicy) -> Self
    where
        H::UserId: serde::Serialize,
    {
        self.presence = policy;
        self.user_json = Some(serde_json::to_string);
        self
    }

    /// Validates the config, attaches the broker and returns the service.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] when a limit in the config can never work;
    /// [`BuildError::HistoryUnsupported`] or
    /// [`BuildError::PresenceUnsupported`] when a policy names topics and
    /// the broker cannot keep them.
    pub fn build(self) -> Result<Service<H, B>, BuildError> {
        self.config.validate()?;
        if self.history.keeps_any() && !self.broker.supports_history() {
            return Err(BuildError::HistoryUnsupported);
        }
        if self.presence.tracks_any() && !self.broker.supports_presence() {
            return Err(BuildError::PresenceUnsupported);
        }
        let counters = Arc::new(Counters::new(H::MESSAGE_TYPES));
        let deflate_min = match self.config.compression {
            true => self.config.compression_min_bytes,
            false => usize::MAX,
        };
        let hub = Arc::new(Hub::new(
            self.config.topic_backlog,
            deflate_min,
            Arc::clone(&counters),
        ));
        let broker = Arc::new(self.broker);
        let filler = Arc::new(Filler {
            hub: Arc::clone(&hub),
            broker: Arc::clone(&broker),
            history: self.history.clone(),
        });
        let (open, _) = watch::channel(0);
        let users = Arc::new(super::users::Users::new(&self.config));
        let heartbeat =
            super::heartbeat::Heartbeat::new(self.config.ping_interval, self.config.idle_timeout);
        let inner = Arc::new_cyclic(|inner: &Weak<Inner<H, B>>| {
            let owner: Weak<dyn Owner> = inner.clone();
            broker.attach(Incoming::with_fanout(Fan {
                hub: Arc::clone(&hub),
                filler: Arc::downgrade(&filler),
                owner,
            }));
            Inner {
                handler: self.handler,
                state: self.state,
                broker,
                validator: self.validator,
                config: self.config,
                history: self.history,
                presence: self.presence,
                user_json: self.user_json,
                keeper: Keeper::new(),
                asks: Asks::default(),
                hub,
                filler,
                subscribed: Mutex::default(),
                reads: Default::default(),
                next_id: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                open,
                users,
                heartbeat,
                shutdown: Signal::default(),
                counters,
            }
        });
        Ok(Service { inner })
    }
}

/// Why [`ServiceBuilder::build`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A limit of the [`Config`] can never work.
    #[error("invalid config")]
    Config(#[from] ConfigError),
    /// The service keeps history for some topics
    /// ([`ServiceBuilder::history`]) but its broker cannot
    /// (`Broker::supports_history` is false).
    #[error("the history policy names topics, but the broker keeps no history")]
    HistoryUnsupported,
    /// The service tracks presence for some topics
    /// ([`ServiceBuilder::presence`]) but its broker cannot
    /// (`Broker::supports_presence` is false).
    #[error("the presence policy names topics, but the broker keeps no presence")]
    PresenceUnsupported,
}
