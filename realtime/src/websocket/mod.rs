//! The WebSocket upgrade (RFC 6455's opening handshake over HTTP/1.1), done
//! here rather than by axum's `WebSocketUpgrade`, so that the socket
//! tungstenite reads is [`Guarded`]: every frame counted from the first byte
//! after the upgrade (see [`guard`]); and written by frames made once and
//! shared (see [`framing`] and [`queued`]).
//!
//! The request checks and their statuses are axum's: 405 for a method that
//! is not GET, 426 without `Connection: upgrade` or on a connection that
//! cannot be upgraded, 400 for a wrong `Upgrade`, `Sec-WebSocket-Version`
//! or a missing `Sec-WebSocket-Key`. HTTP/2's extended CONNECT is not
//! served: browsers fall back to HTTP/1.1 for WebSockets.
//!
//! permessage-deflate (RFC 7692) is negotiated here too, when the service
//! allows it and the client offers it; see [`deflate`].

pub(crate) mod deflate;
pub(crate) mod framing;
mod guard;
mod halves;
mod queued;

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

pub(crate) use guard::{Guarded, Limits, Violation};
pub(crate) use halves::{Incoming, Outgoing, Pinger, split};
pub(crate) use queued::Queued;

/// An upgraded socket: guarded as it is read, written by frames queued
/// whole.
pub(crate) type Socket = WebSocketStream<Queued<Guarded<TokioIo<hyper::upgrade::Upgraded>>>>;

/// A request that asks for a WebSocket and can have one: the extractor of
/// [`route::upgrade`](crate::route::upgrade), in place of axum's
/// `WebSocketUpgrade`, so that the upgraded socket's frames are counted
/// from its first byte.
///
/// # Examples
///
/// ```
/// use realtime::route::{Upgrade, UpgradeRefused};
///
/// async fn handler(upgrade: Result<Upgrade, UpgradeRefused>) -> &'static str {
///     if upgrade.is_ok() { "would upgrade" } else { "not a WebSocket request" }
/// }
/// let _: axum::routing::MethodRouter = axum::routing::get(handler);
/// ```
#[derive(Debug)]
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The answer to the client's permessage-deflate offer, if it made one
    /// the server can accept.
    deflate: Option<&'static str>,
}

/// Why a request cannot be upgraded, answered with its HTTP status (400,
/// 405 or 426) and a line that says why.
///
/// # Examples
///
/// ```
/// use axum::response::IntoResponse;
/// # fn show(refused: realtime::route::UpgradeRefused) {
/// let status = refused.status();
/// let response = refused.into_response();
/// assert_eq!(response.status(), status);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRefused {
    status: StatusCode,
    why: &'static str,
}

impl UpgradeRefused {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        (self.status, self.why).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRefused;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, UpgradeRefused> {
        let refuse = |status, why| Err(UpgradeRefused { status, why });
        if parts.version > Version::HTTP_11 {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket upgrades are served over HTTP/1.1",
            );
        }
        if parts.method != Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            );
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "`Connection` header did not include `upgrade`",
            );
        }
        if !is(&parts.headers, header::UPGRADE, "websocket") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include `websocket`",
            );
        }
        if !is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include `13`",
            );
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            );
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "the connection cannot be upgraded",
            );
        };
        let deflate = deflate::answer(
            parts
                .headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        Ok(Self {
            key,
            on_upgrade,
            deflate,
        })
    }
}

impl Upgrade {
    /// The 101 answer; once it is sent, `serve` runs on the socket in a task
    /// of its own, told whether permessage-deflate was negotiated: it is
    /// when `inflate_limit` is given (the service allows compression, and
    /// compressed messages inflate to at most that many bytes) and the
    /// client offered it. `protocol` is the `Sec-WebSocket-Protocol`
    /// chosen, if any.
    pub(crate) fn answer<F, Fut>(
        self,
        config: WebSocketConfig,
        limits: Limits,
        inflate_limit: Option<usize>,
        protocol: Option<&'static str>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket, bool) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        let (extension, limits) = match (inflate_limit, self.deflate) {
            (Some(max), Some(answer)) => (Some(answer), limits.inflating(max)),
            _ => (None, limits),
        };
        let deflate = extension.is_some();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                // The client went away before the 101 reached it; `serve`
                // and what it holds are dropped.
                tracing::debug!("the upgrade failed before the socket opened");
                return;
            };
            let io = Queued::new(Guarded::new(TokioIo::new(upgraded), limits));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(socket, deflate).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(answer) = extension {
            headers.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(answer),
            );
        }
        if let Some(protocol) = protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

/// Whether the header's value is `value`, in any case.
fn is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|header| header.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether one of the header's comma-separated tokens is `token`, in any
/// case (`Connection: keep-alive, Upgrade`).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|header| {
        header
            .as_bytes()
            .split(|byte| *byte == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
