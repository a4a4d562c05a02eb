//! A ready [`TokenValidator`] for JSON Web Tokens (feature `jwt`): HS256,
//! RS256 or ES256 through the `jsonwebtoken` crate. `sub` is the user,
//! `exp` the connection's expiry (a connection past it is closed with 3000
//! unless the client sent a fresh token with `$refresh`), and the
//! application's own claims reach its user type through
//! [`JwtValidator::user`].
//!
//! Only the algorithm the validator was made for is accepted: a token that
//! names another (`none`, or HS256 signed with an RSA public key) is
//! refused.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{AuthError, Identity, TokenValidator};

/// The claims of a token: `sub`, `exp`, and the application's own, `C`
/// (the remaining claims as a JSON map by default; `iat`, `iss`, `aud` and
/// the like are among them).
///
/// # Examples
///
/// ```
/// use realtime::auth::jwt::Claims;
///
/// #[derive(serde::Deserialize)]
/// struct Roles {
///     #[serde(default)]
///     admin: bool,
/// }
///
/// fn is_admin(claims: &Claims<Roles>) -> bool {
///     claims.extra.admin
/// }
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct Claims<C = serde_json::Map<String, serde_json::Value>> {
    /// The subject: who the token stands for.
    pub sub: String,
    /// When the token runs out, in seconds since 1970.
    pub exp: u64,
    /// The other claims.
    #[serde(flatten)]
    pub extra: C,
}

/// The key a [`JwtValidator`] could not be made from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// An HS256 secret shorter than the hash (32 bytes), which RFC 7518
    /// forbids: a short secret can be found from one token by brute force.
    #[error("an HS256 secret must be at least 32 bytes, not {0}")]
    ShortSecret(usize),
    /// A PEM key that is not one of the algorithm's public keys.
    #[error("unusable JWT key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
}

/// Makes the user of a token from its claims.
type MakeUser<U, C> = Arc<dyn Fn(Claims<C>) -> Result<U, AuthError> + Send + Sync>;

/// Checks JSON Web Tokens signed with one key and one algorithm.
///
/// `exp` and `sub` are required. The signature, `exp` and `nbf` (when
/// present) are checked, with no leeway unless one is set: a connection is
/// closed at `exp` plus the leeway. `aud` and `iss` are checked when
/// [`audience`](Self::audience) or [`issuer`](Self::issuer) name them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use realtime::auth::jwt::JwtValidator;
///
/// let validator = JwtValidator::hs256(b"a secret of at least 32 bytes....")?
///     .leeway(Duration::from_secs(2))
///     .issuer(&["https://login.example"]);
/// # let _ = validator;
/// # Ok::<(), realtime::auth::jwt::JwtKeyError>(())
/// ```
///
/// The application's own claims, into its own user type:
///
/// ```
/// use realtime::AuthError;
/// use realtime::auth::jwt::{Claims, JwtValidator};
///
/// #[derive(Debug, Clone, serde::Deserialize)]
/// struct Org {
///     org: String,
/// }
///
/// #[derive(Debug, Clone)]
/// struct Member {
///     id: String,
///     org: String,
/// }
///
/// let validator = JwtValidator::hs256(b"a secret of at least 32 bytes....")?
///     .user(|claims: Claims<Org>| {
///         if claims.extra.org.is_empty() {
///             return Err(AuthError::InvalidToken);
///         }
///         Ok(Member { id: claims.sub, org: claims.extra.org })
///     });
/// # let _ = validator;
/// # Ok::<(), realtime::auth::jwt::JwtKeyError>(())
/// ```
pub struct JwtValidator<U = String, C = serde_json::Map<String, serde_json::Value>> {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
    user: MakeUser<U, C>,
}

impl<U, C> fmt::Debug for JwtValidator<U, C> {
    /// The algorithm and the checks; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("algorithms", &self.validation.algorithms)
            .field("leeway", &self.leeway)
            .field("aud", &self.validation.aud)
            .field("iss", &self.validation.iss)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// Tokens signed with HMAC-SHA256 and `secret`, of at least 32 bytes.
    ///
    /// # Errors
    ///
    /// [`JwtKeyError::ShortSecret`] for a shorter secret.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::auth::jwt::JwtValidator;
    ///
    /// assert!(JwtValidator::hs256(b"a secret of at least 32 bytes....").is_ok());
    /// assert!(JwtValidator::hs256(b"secret").is_err());
    /// ```
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtKeyError> {
        if secret.len() < 32 {
            return Err(JwtKeyError::ShortSecret(secret.len()));
        }
        let key = DecodingKey::from_secret(secret).map_err(JwtKeyError::Key)?;
        Ok(Self::with_key(key, Algorithm::HS256))
    }

    /// Tokens signed with RSA (PKCS#1 v1.5, SHA-256), checked with the
    /// public key `pem` (PEM, `-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    ///
    /// [`JwtKeyError`] when `pem` is not an RSA public key.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::auth::jwt::JwtValidator;
    ///
    /// assert!(JwtValidator::rs256(b"not a key").is_err());
    /// ```
    pub fn rs256(pem: &[u8]) -> Result<Self, JwtKeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(JwtKeyError::Key)?;
        Ok(Self::with_key(key, Algorithm::RS256))
    }

    /// Tokens signed with ECDSA on P-256 and SHA-256, checked with the
    /// public key `pem` (PEM, `-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    ///
    /// [`JwtKeyError`] when `pem` is not an EC public key.
    ///
    /// # Examples
    ///
    /// ```
    /// use realtime::auth::jwt::JwtValidator;
    ///
    /// assert!(JwtValidator::es256(b"not a key").is_err());
    /// ```
    pub fn es256(pem: &[u8]) -> Result<Self, JwtKeyError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(JwtKeyError::Key)?;
        Ok(Self::with_key(key, Algorithm::ES256))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        // `aud` is checked only when `audience` names one: a token that
        // carries one is not refused for it otherwise.
        validation.validate_aud = false;
        Self {
            key,
            validation,
            leeway: Duration::ZERO,
            user: Arc::new(|claims: Claims| Ok(claims.sub)),
        }
    }
}

impl<U, C> JwtValidator<U, C> {
    /// How far past `exp` (and before `nbf`) a token is still good, for
    /// clocks that differ between the issuer and the server. The
    /// connection is closed at `exp` plus the leeway. None by default.
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self.leeway = Duration::from_secs(leeway.as_secs());
        self
    }

    /// Refuses a token whose `aud` names none of `audience`.
    #[must_use]
    pub fn audience(mut self, audience: &[&str]) -> Self {
        self.validation.set_audience(audience);
        self.validation.validate_aud = true;
        self
    }

    /// Refuses a token whose `iss` is none of `issuers`.
    #[must_use]
    pub fn issuer(mut self, issuers: &[&str]) -> Self {
        self.validation.set_issuer(issuers);
        self
    }

    /// Makes the user from the claims, the application's own (`C2`)
    /// among them; the default user is `sub`. An error refuses the token.
    ///
    /// Users are told apart by their `Debug` form (the per-user limits,
    /// `$refresh`, `disconnect_user`): keep what changes from one token to
    /// the next (`iat`, `exp`) out of the user.
    #[must_use]
    pub fn user<U2, C2, F>(self, make: F) -> JwtValidator<U2, C2>
    where
        F: Fn(Claims<C2>) -> Result<U2, AuthError> + Send + Sync + 'static,
    {
        JwtValidator {
            key: self.key,
            validation: self.validation,
            leeway: self.leeway,
            user: Arc::new(make),
        }
    }
}

impl<U, C> JwtValidator<U, C>
where
    C: DeserializeOwned,
{
    fn check(&self, token: &str) -> Result<Identity<U>, AuthError> {
        let data = jsonwebtoken::decode::<Claims<C>>(token, &self.key, &self.validation).map_err(
            |error| {
                // The kind only: the token itself is never logged.
                tracing::debug!(kind = ?error.kind(), "a JWT refused");
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::ExpiredToken,
                    _ => AuthError::InvalidToken,
                }
            },
        )?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(data.claims.exp) + self.leeway;
        let user = (self.user)(data.claims)?;
        Ok(Identity::until(user, at))
    }
}

impl<U, C> TokenValidator for JwtValidator<U, C>
where
    U: Send + 'static,
    C: DeserializeOwned + 'static,
{
    type UserId = U;

    async fn validate(&self, token: &str) -> Result<U, AuthError> {
        self.check(token).map(|identity| identity.user)
    }

    async fn identify(&self, token: &str) -> Result<Identity<U>, AuthError> {
        self.check(token)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::{Claims, JwtValidator};
    use crate::AuthError;

    const SECRET: &[u8] = b"a secret of at least 32 bytes....";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    fn sign(claims: &serde_json::Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET).expect("a secret"),
        )
        .expect("signs")
    }

    #[test]
    fn sub_is_the_user_and_exp_the_expiry() {
        let exp = now() + 60;
        let token = sign(&json!({"sub": "alice", "exp": exp}));
        let identity = JwtValidator::hs256(SECRET)
            .expect("a long secret")
            .check(&token)
            .expect("valid");
        assert_eq!(identity.user, "alice");
        assert_eq!(
            identity.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp))
        );
    }

    #[test]
    fn an_expired_token_is_told_apart_within_the_leeway_it_is_not() {
        let token = sign(&json!({"sub": "alice", "exp": now() - 5}));
        let refused = JwtValidator::hs256(SECRET)
            .expect("a long secret")
            .check(&token);
        assert!(matches!(refused, Err(AuthError::ExpiredToken)));
        let lenient = JwtValidator::hs256(SECRET)
            .expect("a long secret")
            .leeway(Duration::from_secs(30));
        let identity = lenient.check(&token).expect("within the leeway");
        assert!(identity.expires_at > Some(SystemTime::now()));
    }

    #[test]
    fn a_bad_signature_a_missing_claim_or_another_algorithm_is_refused() {
        let exp = now() + 60;
        let validator = JwtValidator::hs256(SECRET).expect("a long secret");
        let forged = encode(
            &Header::default(),
            &json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(b"another secret of 32 bytes......").expect("a secret"),
        )
        .expect("signs");
        let no_sub = sign(&json!({"exp": exp}));
        let no_exp = sign(&json!({"sub": "alice"}));
        let hs512 = encode(
            &Header::new(jsonwebtoken::Algorithm::HS512),
            &json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(SECRET).expect("a secret"),
        )
        .expect("signs");
        for token in [forged, no_sub, no_exp, hs512, "not.a.jwt".to_owned()] {
            assert!(
                matches!(validator.check(&token), Err(AuthError::InvalidToken)),
                "{token}"
            );
        }
    }

    #[test]
    fn the_applications_claims_reach_its_user() {
        #[derive(Debug, serde::Deserialize)]
        struct Role {
            role: String,
        }
        let validator = JwtValidator::hs256(SECRET)
            .expect("a long secret")
            .issuer(&["login"])
            .user(|claims: Claims<Role>| Ok((claims.sub, claims.extra.role)));
        let token =
            sign(&json!({"sub": "alice", "exp": now() + 60, "role": "admin", "iss": "login"}));
        let identity = validator.check(&token).expect("valid");
        assert_eq!(identity.user, ("alice".to_owned(), "admin".to_owned()));
        let foreign =
            sign(&json!({"sub": "alice", "exp": now() + 60, "role": "admin", "iss": "else"}));
        assert!(validator.check(&foreign).is_err());
    }
}
