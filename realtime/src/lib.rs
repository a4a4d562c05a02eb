//! Realtime WebSocket applications on axum.
//!
//! An application writes one impl block; `#[realtime_handler]` turns its
//! `#[direct]` methods (answered to the sender) and `#[broadcast]` methods
//! (an event for every subscriber of the topic, on every instance) into a
//! client-message enum, a [`MessageHandler`] impl and an axum route. The
//! [`Service`] keeps the connections: authentication, topic authorization,
//! heartbeat, limits, backpressure, graceful shutdown. The [`Broker`] fans
//! events out: in process by default ([`MemoryBroker`]), across instances
//! through Redis ([`RedisBroker`]).
//!
//! The wire protocol is described in [`protocol`]. Beside the WebSocket
//! route, [`auth::HttpAuth`] guards an application's plain HTTP routes with the
//! same token validator. With the `coalesce` feature, `coalesce::Coalescer`
//! lets concurrent requests for the same data share one query.
//!
//! # A handler
//!
//! ```
//! use realtime::auth::validate_with;
//! use realtime::prelude::*;
//! use realtime::Service;
//!
//! struct Chat;
//!
//! #[realtime_handler]
//! impl Chat {
//!     /// Answered to the sender only: `{"reply_to": 1, "ok": "HI"}`.
//!     #[direct]
//!     async fn shout(&self, ctx: &Context<(), String>, text: String) -> Result<String, HandlerError> {
//!         Ok(text.to_uppercase())
//!     }
//!
//!     /// Published to every subscriber of the topic, on every instance:
//!     /// `{"topic": "lobby", "event": "alice: hi"}`.
//!     #[broadcast]
//!     async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<String, HandlerError> {
//!         Ok(format!("{}: {text}", ctx.user_id()))
//!     }
//! }
//!
//! let service = Service::builder(Chat, (), validate_with(|token: &str| Ok(token.to_owned())))
//!     .build()
//!     .expect("the default config is valid");
//! let app = Chat::router(service); // an axum Router for `/ws/{topic}`
//! # let _: axum::Router = app;
//! ```
//!
//! [`realtime_handler`] documents the attribute: the rules for message
//! methods, the hooks, the options, and what it expands to.
//!
//! # Beyond the handler
//!
//! - Server-side code publishes with [`Service::publish`] (an HTTP handler,
//!   a ticker over [`Service::topics`]); a handler that changes state and
//!   publishes as one step uses [`Context::publish`].
//! - With the `testing` feature, `realtime::testing` serves a router on
//!   127.0.0.1 and speaks the protocol over a real socket, so an
//!   application's tests need no mock.
//! - Features: `redis` (default: [`RedisBroker`]), `testing`, `coalesce`,
//!   `describe` (a handler's messages as JSON Schema, a typed TypeScript
//!   client and an AsyncAPI document). Without `redis` the redis crate is
//!   not built.
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]
#![warn(clippy::print_stdout, clippy::print_stderr)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[allow(unused_extern_crates)] // used by the macro's expansion in unit tests
// Lets the macro's `::realtime` paths resolve inside this crate's own tests.
extern crate self as realtime;

pub mod auth;
pub mod broker;
#[cfg(feature = "coalesce")]
#[cfg_attr(docsrs, doc(cfg(feature = "coalesce")))]
pub mod coalesce;
pub mod config;
mod connection;
#[cfg(feature = "describe")]
#[cfg_attr(docsrs, doc(cfg(feature = "describe")))]
pub mod describe;
pub mod handler;
pub mod health;
pub mod history;
mod hub;
mod outbox;
mod pattern;
pub mod presence;
pub mod protocol;
pub mod route;
pub mod serve;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod util;
mod websocket;

pub use auth::{AuthError, TokenValidator};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use broker::redis::{RedisBroker, RedisConfig, RedisConfigError};
pub use broker::{Broker, BrokerError, MemoryBroker};
pub use config::{Config, ConfigError};
pub use handler::ConnectionId;
pub use handler::{Context, HandlerError, MessageHandler};
pub use route::UpgradeError;
pub use serve::serve;
pub use service::{BuildError, Metrics, PublishError, Service};

#[doc = include_str!("../docs/macro.md")]
pub use realtime_macros::realtime_handler;

/// Marks a message method answered to its sender only:
/// `{"reply_to": 7, "ok": <value>}`. Only meaningful inside a
/// [`#[realtime_handler]`](realtime_handler) block.
pub use realtime_macros::direct;

/// Marks a message method whose result is published to every subscriber
/// of the sender's topic. Only meaningful inside a
/// [`#[realtime_handler]`](realtime_handler) block.
pub use realtime_macros::broadcast;

/// Marks the hook run once a connection is open, before its first message.
/// Only meaningful inside a [`#[realtime_handler]`](realtime_handler) block.
pub use realtime_macros::on_connect;

/// Marks the hook run once a connection has ended, however it ended. Only
/// meaningful inside a [`#[realtime_handler]`](realtime_handler) block.
pub use realtime_macros::on_disconnect;

/// Marks the hook run once a connection has subscribed to a topic with
/// `$join`, before the client's acknowledgement: `async fn joined(&self,
/// ctx: &Context<S, U>, topic: &str)`, the context optional. Only
/// meaningful inside a [`#[realtime_handler]`](realtime_handler) block.
///
/// ```
/// use realtime::prelude::*;
///
/// struct Board;
///
/// #[realtime_handler(state = (), user = String)]
/// impl Board {
///     #[direct]
///     async fn ping(&self) -> Result<&'static str, HandlerError> {
///         Ok("pong")
///     }
///
///     #[on_join]
///     async fn joined(&self, ctx: &Context<(), String>, topic: &str) {
///         tracing::info!(user = ctx.user_id(), topic, "joined");
///     }
///
///     #[on_leave]
///     async fn left(&self, topic: &str) {
///         tracing::info!(topic, "a member left");
///     }
/// }
/// ```
pub use realtime_macros::on_join;

/// Marks the hook run once for each [`on_join`], when the connection left
/// the topic with `$leave` (before the acknowledgement) or ended while
/// subscribed (before `on_disconnect`); the same parameters as `on_join`.
/// Only meaningful inside a [`#[realtime_handler]`](realtime_handler)
/// block.
pub use realtime_macros::on_leave;

/// Marks the hook that decides whether a user may subscribe to a topic
/// (`false` answers the upgrade with HTTP 403). Only meaningful inside a
/// [`#[realtime_handler]`](realtime_handler) block.
pub use realtime_macros::authorize_topic;

/// What a handler's impl block uses: the macro, its markers, [`Context`] and
/// [`HandlerError`].
///
/// ```
/// use realtime::prelude::*;
/// # #[realtime_handler(state = (), user = String)]
/// # impl Echo { #[direct] async fn echo(&self, text: String) -> Result<String, HandlerError> { Ok(text) } }
/// # struct Echo;
/// ```
pub mod prelude {
    pub use crate::{
        Context, HandlerError, authorize_topic, broadcast, direct, on_connect, on_disconnect,
        on_join, on_leave, realtime_handler,
    };
}

/// Not public API: what the expansion of `#[realtime_handler]` names, so
/// that an application depends on `realtime` alone. It may change in any
/// release.
#[doc(hidden)]
pub mod __private {
    pub use axum;
    #[cfg(feature = "describe")]
    pub use schemars;
    pub use serde;

    /// Reads one message argument. The macro routes every argument through
    /// it so that an argument type without `Deserialize` is one error, on
    /// that type.
    ///
    /// # Errors
    ///
    /// Whatever `T`'s own `Deserialize` returns.
    pub fn deserialize_arg<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: serde::Deserialize<'de>,
    {
        T::deserialize(deserializer)
    }

    /// A handler for the examples in this crate's docs, so that each does
    /// not carry its own hidden one.
    pub mod doc {
        use crate::handler::{Context, HandlerError, MessageHandler, Outcome};

        /// A handler that takes one message, `nop`, and does nothing.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct Chat;

        /// `Chat`'s one message.
        #[derive(Debug, serde::Deserialize)]
        #[serde(tag = "type", content = "data", rename_all = "snake_case")]
        pub enum Message {
            /// Does nothing.
            Nop {},
        }

        impl MessageHandler for Chat {
            type ClientMessage = Message;
            type ServerEvent = String;
            type AppState = ();
            type UserId = String;

            async fn handle(
                &self,
                _: Message,
                _: &Context<(), String>,
            ) -> Result<Outcome<String>, HandlerError> {
                Ok(Outcome::Handled)
            }
        }
    }
}

// The README's examples compile as doc tests; they use `describe` and
// `jwt`, so they run with those (the README's test command turns on every
// feature).
#[cfg(all(doctest, feature = "describe", feature = "jwt"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
