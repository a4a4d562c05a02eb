//! The axum side: the upgrade handler and the router that
//! `#[realtime_handler]`'s `router()` returns.
//!
//! An upgrade request goes through, in order: the topic's length (400),
//! `since` and `heartbeat` (400), the token (401), the topic authorization
//! (403), the upgrade headers (400, 405 or 426: see [`Upgrade`]), the
//! connection limit (503), and the subscription of the instance to the
//! topic (503 if the broker is down).
//! Only then is the socket upgraded, so a refused client never holds a
//! WebSocket.
//!
//! A browser's `WebSocket` sees no HTTP status, so a client learns why it
//! was refused with a plain GET of the same URL (no `Upgrade` header): it
//! gets the 400, 401 or 403 the upgrade got, 503 while the instance would
//! refuse it (full, shutting down, or its broker away), and 426 "upgrade
//! required" when the upgrade would be accepted now.

use axum::Router;
use axum::extract::{FromRef, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tungstenite::protocol::WebSocketConfig;

use crate::auth::{self, AuthError, Authenticator, BEARER_PROTOCOL, TokenSource};
use crate::broker::{Broker, BrokerError};
use crate::handler::MessageHandler;
use crate::history::Position;
use crate::hub::CONTROL_TOPIC;
use crate::service::{Refusal, Service};
use crate::telemetry;
use crate::websocket;
pub use crate::websocket::{Upgrade, UpgradeRefused};

/// The router with one route, `path`, that upgrades to `service`.
///
/// `path` holds one parameter, `{topic}`, as in `"/ws/{topic}"`. Merge the
/// result into the application's router.
///
/// # Panics
///
/// When `path` has no `{topic}` segment: that is a setup mistake.
///
/// # Examples
///
/// See [`Service`].
#[track_caller]
pub fn router<H: MessageHandler, B: Broker>(service: Service<H, B>, path: &str) -> Router {
    assert!(
        path.contains("{topic}"),
        "the realtime route `{path}` needs a `{{topic}}` segment, as in \"/ws/{{topic}}\""
    );
    Router::new()
        .route(path, get(upgrade::<H, B>))
        .with_state(service)
}

/// The upgrade handler, for applications that assemble their routes by hand:
/// `get(upgrade::<Chat, MemoryBroker>)` on a path with `{topic}`, with the
/// [`Service`] as state.
///
/// # Errors
///
/// Answers with an [`UpgradeError`] instead of upgrading when the request
/// is refused.
pub async fn upgrade<H: MessageHandler, B: Broker>(
    State(service): State<Service<H, B>>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<Upgrade, UpgradeRefused>,
) -> Result<Response, UpgradeError> {
    let max = service.config().max_topic_bytes;
    if topic.len() > max {
        return Err(UpgradeError::TopicTooLong { max });
    }
    if topic == CONTROL_TOPIC {
        return Err(UpgradeError::ReservedTopic);
    }
    if !origin_allowed(&headers, &service.config().allowed_origins) {
        return Err(UpgradeError::ForbiddenOrigin);
    }
    let since = since(query.as_deref())?;
    let text_heartbeat = text_heartbeat(query.as_deref())?;
    let (token, source) = auth::extract_token(&headers, query.as_deref())?;
    let identity = service.identify(&token).await?;
    let user = &identity.user;
    service.authorize(user, &topic).await?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) if !asks_to_upgrade(&headers) => return probe(&service, user),
        Err(rejection) => {
            let response = rejection.into_response();
            telemetry::upgrade_refused(response.status().as_u16());
            return Ok(response);
        }
    };
    let mut admission = service.admit().map_err(refused_for)?;
    service
        .admit_user(&mut admission, user)
        .map_err(refused_for)?;
    let accepted = service
        .accept(&topic, since.as_ref(), identity, admission)
        .await
        .map_err(UpgradeError::Broker)?;
    if text_heartbeat {
        accepted.heartbeat_in_text();
    }

    let config = service.config();
    let socket = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let limits = websocket::Limits::new(
        config.frame_budget(),
        config.max_fragments,
        config.fragment_timeout,
    );
    let protocol = (source == TokenSource::Protocol).then_some(BEARER_PROTOCOL);
    // If the upgrade fails, `accepted` is dropped with the closure: the
    // connection unsubscribes from its topic and frees its place. Boxed,
    // because the task keeps the closure's room for the connection's whole
    // life, and a pointer is smaller.
    let accepted = Box::new(accepted);
    let inflate_limit = config.compression.then_some(config.max_frame_bytes);
    Ok(ws.answer(
        socket,
        limits,
        inflate_limit,
        protocol,
        move |socket, deflate| service.serve(socket, deflate, *accepted),
    ))
}

/// Whether the request asks for a WebSocket at all (`Upgrade: websocket`):
/// one that does not is a client asking why its socket failed.
fn asks_to_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::UPGRADE)
        .iter()
        .any(|value| {
            value
                .to_str()
                .is_ok_and(|value| value.to_ascii_lowercase().contains("websocket"))
        })
}

/// The answer to a plain GET whose token, topic, `since` and `heartbeat`
/// passed: what the upgrade would get now. 503 where it would be refused (the instance
/// is full or shutting down, or its broker is away), 429 when the user
/// holds its connections' limit here, else 426 "upgrade
/// required": a client may try its socket again. (axum's own answer, 400,
/// would tell a client to stop for good.)
fn probe<H: MessageHandler, B: Broker>(
    service: &Service<H, B>,
    user: &H::UserId,
) -> Result<Response, UpgradeError> {
    service.would_admit().map_err(refused_for)?;
    service.would_admit_user(user).map_err(refused_for)?;
    if !service.broker().is_connected() {
        return Err(UpgradeError::BrokerAway);
    }
    telemetry::upgrade_refused(StatusCode::UPGRADE_REQUIRED.as_u16());
    let response = (
        StatusCode::UPGRADE_REQUIRED,
        [(axum::http::header::UPGRADE, "websocket")],
        "this route upgrades to a WebSocket; the upgrade would be accepted now",
    );
    Ok(response.into_response())
}

fn refused_for(refusal: Refusal) -> UpgradeError {
    match refusal {
        Refusal::AtCapacity => UpgradeError::AtCapacity,
        Refusal::ShuttingDown => UpgradeError::ShuttingDown,
        Refusal::UserAtCapacity => UpgradeError::TooManyForUser,
    }
}

/// Whether the request's `Origin` is allowed: any, when `allowed` is empty
/// or the request has none (not a browser: a browser always sends one on
/// a WebSocket upgrade, and other clients can send any they like, so the
/// check protects users' browsers from other sites' pages, not the server
/// from clients).
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|pattern| origin_matches(pattern, origin))
}

/// Whether `origin` is `pattern` (ASCII case aside), or, for a pattern
/// with one `*` (`https://*.example.com`), has its text before and after
/// the star around one or more host labels.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(origin),
        Some((before, after)) => {
            let origin = origin.to_ascii_lowercase();
            let (before, after) = (before.to_ascii_lowercase(), after.to_ascii_lowercase());
            origin.len() > before.len() + after.len()
                && origin.starts_with(&before)
                && origin.ends_with(&after)
                && origin[before.len()..origin.len() - after.len()]
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
        }
    }
}

/// The `since` of the query string (`?since=42.x7Fq`): where a client
/// resumes the URL's topic.
fn since(query: Option<&str>) -> Result<Option<Position>, UpgradeError> {
    // Decoded like `token`: a client's URL library may encode the `.`.
    let Some(value) = query_value(query, "since") else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| UpgradeError::BadSince)
}

/// Whether the query string asks for the heartbeat as a text frame
/// (`?heartbeat=text`) rather than a WebSocket ping (`heartbeat=ping`, the
/// default): a client in a browser, which sees no ping, asks for it so
/// that it hears the server without asking itself.
fn text_heartbeat(query: Option<&str>) -> Result<bool, UpgradeError> {
    match query_value(query, "heartbeat").as_deref() {
        None | Some("ping") => Ok(false),
        Some("text") => Ok(true),
        Some(_) => Err(UpgradeError::BadHeartbeat),
    }
}

/// The first value of `name` in the query string, percent-decoded.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    form_urlencoded::parse(query?.as_bytes())
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// A service as router state gives [`HttpAuth`](crate::auth::HttpAuth) its
/// validator.
impl<H: MessageHandler, B: Broker> FromRef<Service<H, B>> for Authenticator<H::UserId> {
    fn from_ref(service: &Service<H, B>) -> Self {
        service.authenticator().clone()
    }
}

/// Why an upgrade request was answered with an HTTP error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Missing or invalid token (401), or a forbidden topic (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The topic is longer than `Config::max_topic_bytes` (400).
    #[error("topic longer than {max} bytes")]
    TopicTooLong {
        /// The limit.
        max: usize,
    },
    /// The `since` of the query string is not `<offset>.<epoch>` (400).
    #[error("`since` must read `<offset>.<epoch>`, as in `since=42.x7Fq`")]
    BadSince,
    /// The `heartbeat` of the query string is neither `text` nor `ping`
    /// (400).
    #[error("`heartbeat` must read `text` or `ping`")]
    BadHeartbeat,
    /// The instance holds `Config::max_connections` already (503).
    #[error("too many connections on this instance; try again later")]
    AtCapacity,
    /// The instance is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The broker could not subscribe the instance to the topic (503), or
    /// the user's budget of new topics is spent (429).
    #[error("cannot subscribe to the topic now")]
    Broker(#[source] BrokerError),
    /// A plain GET asked whether an upgrade would work, and the broker's
    /// link is down now (503).
    #[error("the broker is unavailable; try again later")]
    BrokerAway,
    /// The topic is the service's own control topic (400).
    #[error("the topic is reserved for the service")]
    ReservedTopic,
    /// The user holds `Config::max_connections_per_user` connections on
    /// this instance already (429).
    #[error("too many connections of this user on this instance")]
    TooManyForUser,
    /// The request's `Origin` is not among `Config::allowed_origins` (403).
    #[error("origin not allowed")]
    ForbiddenOrigin,
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        let response = self.response();
        telemetry::upgrade_refused(response.status().as_u16());
        response
    }
}

impl UpgradeError {
    fn response(self) -> Response {
        match self {
            Self::Auth(error) => error.into_response(),
            Self::TopicTooLong { .. }
            | Self::BadSince
            | Self::BadHeartbeat
            | Self::ReservedTopic => (StatusCode::BAD_REQUEST, self.to_string()).into_response(),
            Self::TooManyForUser => {
                (StatusCode::TOO_MANY_REQUESTS, self.to_string()).into_response()
            }
            Self::Broker(BrokerError::TopicBudget) => {
                let body = format!("{self}: {}", BrokerError::TopicBudget);
                (StatusCode::TOO_MANY_REQUESTS, body).into_response()
            }
            Self::ForbiddenOrigin => (StatusCode::FORBIDDEN, self.to_string()).into_response(),
            other => {
                match &other {
                    // A client's own doing, as often as it likes: not a warning.
                    Self::Broker(BrokerError::ReplayBudget) => {
                        tracing::debug!("refused a resume past the replay budget");
                    }
                    Self::Broker(error) => tracing::warn!(%error, "refused an upgrade"),
                    _ => {}
                }
                // The body names the cause too: "...: broker unavailable".
                let body = match &other {
                    Self::Broker(error) => format!("{other}: {error}"),
                    _ => other.to_string(),
                };
                (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::origin_matches;

    #[test]
    fn origins_match_exactly_or_by_one_star_over_host_labels() {
        assert!(origin_matches(
            "https://chat.example",
            "https://chat.example"
        ));
        assert!(origin_matches(
            "https://chat.example",
            "HTTPS://Chat.Example"
        ));
        assert!(!origin_matches(
            "https://chat.example",
            "https://chat.example.evil"
        ));
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://evil.com/.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://a.example.com:8080"
        ));
    }
}
