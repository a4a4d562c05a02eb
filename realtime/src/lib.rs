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
//! The wire protocol is described in [`protocol`].
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]
#![warn(clippy::print_stdout, clippy::print_stderr)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[allow(unused_extern_crates)] // used by the macro's expansion in unit tests
// Lets the macro's `::realtime` paths resolve inside this crate's own tests.
extern crate self as realtime;

pub mod auth;
pub mod broker;
pub mod config;
mod connection;
pub mod handler;
pub mod protocol;
pub mod route;
pub mod service;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use auth::{AuthError, TokenValidator};
pub use broker::{Broker, BrokerError, MemoryBroker, RedisBroker};
pub use config::{Config, ConfigError};
pub use handler::{ConnectionId, Context, HandlerError, MessageHandler};
pub use service::Service;
