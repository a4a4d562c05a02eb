//! Who is connecting: token extraction from the upgrade request, the
//! [`TokenValidator`] seam, and [`AuthError`].
//!
//! The token is read, in this order, from:
//! 1. `Authorization: Bearer <token>`;
//! 2. `Sec-WebSocket-Protocol: bearer, <token>` (what a browser can send: its
//!    `WebSocket` constructor sets no other header; the server then answers
//!    with the `bearer` subprotocol);
//! 3. the query string, `?token=<token>`.
//!
//! A missing or rejected token is answered with HTTP 401 before the upgrade;
//! a topic the handler refuses with 403. The same check guards an
//! application's plain HTTP routes through the [`HttpAuth`] extractor.

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The subprotocol a browser names to carry its token:
/// `new WebSocket(url, ["bearer", token])`.
pub const BEARER_PROTOCOL: &str = "bearer";

/// Turns a token into the user it belongs to.
///
/// # Examples
///
/// ```
/// use realtime::{AuthError, TokenValidator};
///
/// /// Accepts `user-<n>` and returns `n`.
/// struct Numbered;
///
/// impl TokenValidator for Numbered {
///     type UserId = u64;
///
///     async fn validate(&self, token: &str) -> Result<u64, AuthError> {
///         token
///             .strip_prefix("user-")
///             .and_then(|n| n.parse().ok())
///             .ok_or(AuthError::InvalidToken)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    note = "implement `TokenValidator` for your type, or use `realtime::auth::validate_with(|token| ...)`"
)]
pub trait TokenValidator: Send + Sync + 'static {
    /// Who a valid token stands for.
    type UserId: Send + 'static;

    /// Checks `token`.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidToken`] (or any [`AuthError`]) refuses the
    /// connection before the upgrade.
    fn validate(&self, token: &str)
    -> impl Future<Output = Result<Self::UserId, AuthError>> + Send;

    /// Checks `token` and tells until when it is good. The default is
    /// [`validate`](Self::validate)'s user, for ever; a validator of tokens
    /// that expire (a JWT's `exp`) returns the expiry, and a connection
    /// past it is closed with 3000 unless the client sends a fresh token
    /// with `$refresh` first.
    ///
    /// # Errors
    ///
    /// As [`validate`](Self::validate).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use realtime::auth::Identity;
    /// use realtime::{AuthError, TokenValidator};
    ///
    /// /// `<user>:<unix seconds of expiry>`, for a demo.
    /// struct Timed;
    ///
    /// impl TokenValidator for Timed {
    ///     type UserId = String;
    ///
    ///     async fn validate(&self, token: &str) -> Result<String, AuthError> {
    ///         self.identify(token).await.map(|identity| identity.user)
    ///     }
    ///
    ///     async fn identify(&self, token: &str) -> Result<Identity<String>, AuthError> {
    ///         let (user, exp) = token.split_once(':').ok_or(AuthError::InvalidToken)?;
    ///         let secs: u64 = exp.parse().map_err(|_| AuthError::InvalidToken)?;
    ///         let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    ///         Ok(Identity::until(user.to_owned(), at))
    ///     }
    /// }
    /// ```
    fn identify(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Identity<Self::UserId>, AuthError>> + Send {
        let validated = self.validate(token);
        async move { validated.await.map(Identity::new) }
    }
}

/// Who a token stands for, and until when.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use realtime::auth::Identity;
///
/// let for_ever = Identity::new("alice");
/// assert_eq!(for_ever.expires_at, None);
/// let an_hour = Identity::until("alice", SystemTime::now() + Duration::from_secs(3600));
/// assert!(an_hour.expires_at.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity<U> {
    /// The user.
    pub user: U,
    /// When the token stops being good; `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl<U> Identity<U> {
    /// `user`, with a token that does not expire.
    pub fn new(user: U) -> Self {
        Self {
            user,
            expires_at: None,
        }
    }

    /// `user`, with a token good until `at`.
    pub fn until(user: U, at: SystemTime) -> Self {
        Self {
            user,
            expires_at: Some(at),
        }
    }

    /// How long the token has left from `now`; `None` if it does not
    /// expire, zero if it has.
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

/// A [`TokenValidator`] made from a plain function; see [`validate_with`].
#[derive(Clone, Copy)]
pub struct FnValidator<F>(F);

impl<F> fmt::Debug for FnValidator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnValidator")
    }
}

/// A validator from a function that checks a token without waiting on I/O.
///
/// # Examples
///
/// ```
/// use realtime::AuthError;
/// use realtime::auth::validate_with;
///
/// // For a demo: the token is the user's name.
/// let validator = validate_with(|token: &str| {
///     if token.is_empty() { Err(AuthError::InvalidToken) } else { Ok(token.to_owned()) }
/// });
/// # let _ = validator;
/// ```
pub fn validate_with<F, U>(check: F) -> FnValidator<F>
where
    F: Fn(&str) -> Result<U, AuthError> + Send + Sync + 'static,
    U: Send + 'static,
{
    FnValidator(check)
}

impl<F, U> TokenValidator for FnValidator<F>
where
    F: Fn(&str) -> Result<U, AuthError> + Send + Sync + 'static,
    U: Send + 'static,
{
    type UserId = U;

    fn validate(&self, token: &str) -> impl Future<Output = Result<U, AuthError>> + Send {
        std::future::ready((self.0)(token))
    }
}

/// A [`TokenValidator`] of expiring tokens made from a plain function; see
/// [`identify_with`].
#[derive(Clone, Copy)]
pub struct FnIdentifier<F>(F);

impl<F> fmt::Debug for FnIdentifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnIdentifier")
    }
}

/// A validator from a function that checks a token without waiting on I/O
/// and tells until when it is good.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use realtime::AuthError;
/// use realtime::auth::{Identity, identify_with};
///
/// // For a demo: every token is its own user, good for ten minutes.
/// let validator = identify_with(|token: &str| {
///     let at = SystemTime::now() + Duration::from_secs(600);
///     Ok::<_, AuthError>(Identity::until(token.to_owned(), at))
/// });
/// # let _ = validator;
/// ```
pub fn identify_with<F, U>(check: F) -> FnIdentifier<F>
where
    F: Fn(&str) -> Result<Identity<U>, AuthError> + Send + Sync + 'static,
    U: Send + 'static,
{
    FnIdentifier(check)
}

impl<F, U> TokenValidator for FnIdentifier<F>
where
    F: Fn(&str) -> Result<Identity<U>, AuthError> + Send + Sync + 'static,
    U: Send + 'static,
{
    type UserId = U;

    fn validate(&self, token: &str) -> impl Future<Output = Result<U, AuthError>> + Send {
        std::future::ready((self.0)(token).map(|identity| identity.user))
    }

    fn identify(&self, token: &str) -> impl Future<Output = Result<Identity<U>, AuthError>> + Send {
        std::future::ready((self.0)(token))
    }
}

/// A validator behind a pointer, so the service need not carry its type.
pub(crate) trait DynValidator<U>: Send + Sync {
    fn identify_boxed<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity<U>, AuthError>> + Send + 'a>>;
}

impl<V: TokenValidator> DynValidator<V::UserId> for V {
    fn identify_boxed<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity<V::UserId>, AuthError>> + Send + 'a>> {
        // One allocation per connection attempt, not per message.
        Box::pin(self.identify(token))
    }
}

/// A [`TokenValidator`] behind a shared pointer, its type erased: what a
/// [`Service`](crate::Service) holds, and what [`HttpAuth`] finds in the
/// router's state (through [`FromRef`]).
///
/// # Examples
///
/// ```
/// use realtime::auth::{Authenticator, validate_with};
///
/// # async fn demo() {
/// let auth = Authenticator::new(validate_with(|token: &str| Ok(token.to_uppercase())));
/// assert_eq!(auth.authenticate("alice").await, Ok("ALICE".to_owned()));
/// # }
/// ```
pub struct Authenticator<U>(Arc<dyn DynValidator<U>>);

impl<U> Clone for Authenticator<U> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<U> fmt::Debug for Authenticator<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authenticator")
    }
}

impl<U: Send + 'static> Authenticator<U> {
    /// Wraps `validator`.
    pub fn new<V: TokenValidator<UserId = U>>(validator: V) -> Self {
        Self(Arc::new(validator))
    }

    /// Runs the validator on `token`.
    ///
    /// # Errors
    ///
    /// What the validator returns, typically [`AuthError::InvalidToken`].
    pub async fn authenticate(&self, token: &str) -> Result<U, AuthError> {
        self.identify(token).await.map(|identity| identity.user)
    }

    /// Runs the validator on `token`: the user and until when the token is
    /// good. A token whose expiry has passed is refused.
    ///
    /// # Errors
    ///
    /// What the validator returns, and [`AuthError::ExpiredToken`].
    pub async fn identify(&self, token: &str) -> Result<Identity<U>, AuthError> {
        let identity = self.0.identify_boxed(token).await?;
        match identity.expires_in(SystemTime::now()) {
            Some(left) if left.is_zero() => Err(AuthError::ExpiredToken),
            _ => Ok(identity),
        }
    }
}

/// The user behind a request's token, for an application's own HTTP routes
/// and for upgrade routes assembled by hand: the token is read as for the
/// WebSocket route (header, subprotocol, then `?token=`) and checked by the
/// same validator. A missing or refused token is answered with 401, as
/// [`AuthError`]; so is an `Authorization` header of another scheme, which is
/// taken as a mistake rather than skipped.
///
/// From a plain HTTP client, send the header: a token in the query string
/// ends up in access logs and browser history. `?token=` is accepted because
/// a browser's `WebSocket` can send nothing else but the subprotocol.
///
/// The router's state must give an [`Authenticator`]: a
/// [`Service`](crate::Service) does.
///
/// # Examples
///
/// ```
/// use axum::Router;
/// use axum::routing::get;
/// use realtime::auth::{HttpAuth, validate_with};
/// use realtime::Service;
/// # use realtime::__private::doc::Chat;
///
/// /// `GET /me` with `Authorization: Bearer alice` answers "alice".
/// async fn me(HttpAuth(user): HttpAuth<String>) -> String {
///     user
/// }
///
/// let service = Service::builder(Chat, (), validate_with(|t: &str| Ok(t.to_owned())))
///     .build()
///     .expect("the default config is valid");
/// let app: Router = Router::new().route("/me", get(me)).with_state(service);
/// # let _ = app;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAuth<U>(pub U);

impl<S, U> FromRequestParts<S> for HttpAuth<U>
where
    S: Send + Sync,
    U: Send + 'static,
    Authenticator<U>: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AuthError> {
        let (token, _) = extract_token(&parts.headers, parts.uri.query())?;
        let authenticator = Authenticator::from_ref(state);
        authenticator.authenticate(&token).await.map(HttpAuth)
    }
}

/// Why an upgrade request was refused before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the header, the subprotocol or the query string (HTTP 401).
    #[error(
        "missing token: send `Authorization: Bearer <token>`, the `bearer` subprotocol, or `?token=`"
    )]
    MissingToken,
    /// The validator refused the token (HTTP 401).
    #[error("invalid token")]
    InvalidToken,
    /// The token's expiry has passed (HTTP 401).
    #[error("expired token")]
    ExpiredToken,
    /// The handler's `authorize_topic` refused this user the topic (HTTP 403).
    #[error("forbidden topic `{0}`")]
    ForbiddenTopic(String),
}

impl AuthError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken | Self::ExpiredToken => {
                StatusCode::UNAUTHORIZED
            }
            Self::ForbiddenTopic(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.to_string()).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Where the token came from; the subprotocol must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    Header,
    Protocol,
    Query,
}

/// Finds the token of an upgrade request (see the module docs for the order).
pub(crate) fn extract_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<(Cow<'a, str>, TokenSource), AuthError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::InvalidToken)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::InvalidToken)?;
        return Ok((Cow::Borrowed(token), TokenSource::Header));
    }
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        let mut entries = value.split(',').map(str::trim);
        if entries.by_ref().any(|entry| entry == BEARER_PROTOCOL)
            && let Some(token) = entries.next().filter(|token| !token.is_empty())
        {
            return Ok((Cow::Borrowed(token), TokenSource::Protocol));
        }
    }
    let in_query = query
        .and_then(|query| form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "token"));
    match in_query {
        Some((_, token)) if !token.is_empty() => Ok((token, TokenSource::Query)),
        _ => Err(AuthError::MissingToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn bearer_header_comes_first() {
        let h = headers(&[(header::AUTHORIZATION, "Bearer abc")]);
        assert_eq!(
            extract_token(&h, Some("token=q")).unwrap(),
            (Cow::Borrowed("abc"), TokenSource::Header)
        );
    }

    #[test]
    fn subprotocol_carries_the_token_after_bearer() {
        let h = headers(&[(header::SEC_WEBSOCKET_PROTOCOL, "bearer, s3cret")]);
        assert_eq!(
            extract_token(&h, None).unwrap(),
            (Cow::Borrowed("s3cret"), TokenSource::Protocol)
        );
    }

    #[test]
    fn query_token_is_decoded() {
        let headers = HeaderMap::new();
        let (token, source) = extract_token(&headers, Some("a=1&token=x%20y")).unwrap();
        assert_eq!((token.as_ref(), source), ("x y", TokenSource::Query));
    }

    #[test]
    fn nothing_is_missing_token() {
        assert_eq!(
            extract_token(&HeaderMap::new(), Some("a=1")),
            Err(AuthError::MissingToken)
        );
        let h = headers(&[(header::AUTHORIZATION, "Basic abc")]);
        assert_eq!(extract_token(&h, None), Err(AuthError::InvalidToken));
    }
}
