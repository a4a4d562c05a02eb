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
//! a topic the handler refuses with 403.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

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

/// A validator behind a pointer, so the service need not carry its type.
pub(crate) trait DynValidator<U>: Send + Sync {
    fn validate_boxed<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<U, AuthError>> + Send + 'a>>;
}

impl<V: TokenValidator> DynValidator<V::UserId> for V {
    fn validate_boxed<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<V::UserId, AuthError>> + Send + 'a>> {
        // One allocation per connection attempt, not per message.
        Box::pin(self.validate(token))
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
    /// The handler's `authorize_topic` refused this user the topic (HTTP 403).
    #[error("forbidden topic `{0}`")]
    ForbiddenTopic(String),
}

impl AuthError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
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
