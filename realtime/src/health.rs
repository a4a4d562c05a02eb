//! Readiness and liveness for load balancers and orchestrators: a router
//! with `GET /ready` and `GET /live` to merge into the application's.
//!
//! - `/ready` answers 200 `ready` while the broker is connected and the
//!   service takes connections; otherwise 503 with the reason:
//!   `draining` (shutting down, or asked to drain by
//!   [`Serve::drain_delay`](crate::serve::Serve::drain_delay)) or
//!   `broker disconnected` (Redis is unreachable: broadcasts would fail).
//! - `/live` answers 200 `live` while the process serves requests at all:
//!   an orchestrator restarts an instance whose `/live` stops answering,
//!   not one that waits for Redis.
//!
//! # Examples
//!
//! ```
//! # use realtime::Service;
//! # use realtime::__private::doc::Chat;
//! use realtime::auth::validate_with;
//!
//! let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
//!     .build()
//!     .expect("the default config is valid");
//! let app: axum::Router = realtime::route::router(service.clone(), "/ws/{topic}")
//!     .merge(realtime::health::routes(service));
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::broker::Broker;
use crate::handler::MessageHandler;
use crate::service::Service;

/// Why an instance is not ready, as `/ready` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReady {
    /// The service is shutting down or draining.
    Draining,
    /// The broker has no working link (Redis is down or unreachable).
    BrokerDisconnected,
}

impl NotReady {
    /// The reason as `/ready` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::BrokerDisconnected => "broker disconnected",
        }
    }
}

/// Whether `service` should take traffic; the reason if not.
///
/// # Errors
///
/// [`NotReady`] saying why not.
pub fn readiness<H: MessageHandler, B: Broker>(service: &Service<H, B>) -> Result<(), NotReady> {
    if service.is_shutting_down() || service.is_draining() {
        return Err(NotReady::Draining);
    }
    if !service.broker().is_connected() {
        return Err(NotReady::BrokerDisconnected);
    }
    Ok(())
}

/// `GET /ready` and `GET /live` for `service`; see the module docs.
pub fn routes<H: MessageHandler, B: Broker>(service: Service<H, B>) -> Router {
    Router::new()
        .route("/ready", get(ready::<H, B>))
        .route("/live", get(|| async { "live" }))
        .with_state(service)
}

async fn ready<H: MessageHandler, B: Broker>(
    State(service): State<Service<H, B>>,
) -> (StatusCode, &'static str) {
    match readiness(&service) {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason.as_str()),
    }
}
