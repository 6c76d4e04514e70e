//! Access tokens: JWTs signed with HS256 and the shared `auth.jwt_secret`.
//!
//! Two kinds, told apart by their audience:
//!
//! - **user tokens** (`aud = "users"`, `sub` = the user id), issued by the
//!   producer's `POST /auth/token`;
//! - **service credentials** (`aud = "services"`, `sub` = the calling
//!   service's name), minted by a service for its own calls to another.
//!
//! Both carry `iss = "kafka-example"`, `iat`, `exp` and a unique `jti`. A
//! user token is never accepted where a service credential is required, nor
//! the other way round, because the audience is checked.

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::configuration::{ConfigurationError, Environment};
use crate::http::error_response;

/// The `iss` claim of every token.
pub const ISSUER: &str = "kafka-example";
/// The `aud` claim of user tokens.
pub const USER_AUDIENCE: &str = "users";
/// The `aud` claim of service credentials.
pub const SERVICE_AUDIENCE: &str = "services";
/// Shortest signing key accepted, in bytes: 256 bits, the HS256 hash size
/// (RFC 7518 §3.2: "a key of the same size as the hash output ... MUST be
/// used").
pub const MIN_SECRET_BYTES: usize = 32;

/// The signing key both services' `local.yaml` use: public, so never
/// accepted in `production` (see [`check_production_secret`]).
pub const LOCAL_DEVELOPMENT_SECRET: &str = "local-development-signing-key-not-for-production-use";

/// The `service-token` subcommand of each service: prints a service
/// credential named `operator` (valid for five minutes) for the operator
/// endpoints, signed with `secret`, the service's configured
/// `auth.jwt_secret`. Exit status 2, with the reason on stderr, when the
/// configuration did not load or the key is invalid.
pub fn print_service_token(service: &str, secret: Result<SecretString, ConfigurationError>) -> std::process::ExitCode {
    let keys = secret
        .map_err(|error| format!("{:#}", anyhow::Error::from(error)))
        .and_then(|secret| {
            TokenKeys::new(&secret).map_err(|error| format!("invalid configuration: auth.jwt_secret: {error}"))
        });
    match keys {
        Ok(keys) => {
            println!("{}", keys.service_token("operator").expose_secret());
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{service}: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Refuses, in `production`, a signing key that is too short or is the
/// public local development key.
///
/// # Errors
///
/// A [`ConfigurationError`] naming `auth.jwt_secret`.
pub fn check_production_secret(environment: Environment, secret: &SecretString) -> Result<(), ConfigurationError> {
    if environment != Environment::Production {
        return Ok(());
    }
    let secret = secret.expose_secret();
    if secret == LOCAL_DEVELOPMENT_SECRET {
        return Err(ConfigurationError::Invalid(
            "auth.jwt_secret is the public local development key; set APP_AUTH__JWT_SECRET to a secret of your own"
                .to_owned(),
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigurationError::Invalid(format!(
            "auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes"
        )));
    }
    Ok(())
}
/// Lifetime of a service credential.
const SERVICE_TOKEN_TTL: Duration = Duration::minutes(5);

/// Who presented a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user, by id.
    User(Uuid),
    /// A service, by name.
    Service(String),
}

impl Principal {
    /// Whether this principal may read user `id`'s data: a service may
    /// read anyone's, a user only its own.
    pub fn may_read_user(&self, id: Uuid) -> bool {
        match self {
            Principal::Service(_) => true,
            Principal::User(user) => *user == id,
        }
    }
}

/// The claims of both token kinds.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    iss: String,
    iat: i64,
    exp: i64,
    jti: Uuid,
}

/// A freshly issued user token.
#[derive(Debug)]
pub struct IssuedToken {
    /// The encoded JWT (a secret: never log it).
    pub token: SecretString,
    /// Its `jti`.
    pub token_id: Uuid,
    /// Its `iat`, truncated to whole seconds.
    pub issued_at: DateTime<Utc>,
    /// Its `exp`, truncated to whole seconds.
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Bad signature, expired, wrong issuer or audience, or malformed.
    #[error("invalid or expired token")]
    Invalid,
    /// The signing key is shorter than [`MIN_SECRET_BYTES`].
    #[error("auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            AuthError::WeakSecret => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_response(self.status_code(), "unauthorized", &self.to_string());
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    }
}

/// Signs and verifies tokens with the shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys([REDACTED])")
    }
}

impl TokenKeys {
    /// Keys from the shared secret.
    ///
    /// # Errors
    ///
    /// [`AuthError::WeakSecret`] when it is shorter than
    /// [`MIN_SECRET_BYTES`].
    pub fn new(secret: &SecretString) -> Result<Self, AuthError> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(AuthError::WeakSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        })
    }

    /// Issues a user token for `user_id`, valid for `ttl`.
    pub fn issue_user_token(&self, user_id: Uuid, ttl: Duration) -> IssuedToken {
        let (token, claims) = self.sign(user_id.to_string(), USER_AUDIENCE, ttl);
        IssuedToken {
            token: token.into(),
            token_id: claims.jti,
            issued_at: DateTime::from_timestamp(claims.iat, 0).expect("iat in range"),
            expires_at: DateTime::from_timestamp(claims.exp, 0).expect("exp in range"),
        }
    }

    /// Mints a short-lived service credential for service `name`.
    pub fn service_token(&self, name: &str) -> SecretString {
        self.sign(name.to_owned(), SERVICE_AUDIENCE, SERVICE_TOKEN_TTL).0.into()
    }

    /// Verifies a token of either kind.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for a bad signature, an expired token, a wrong
    /// issuer or audience, or a user token whose subject is not a UUID.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[USER_AUDIENCE, SERVICE_AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        match claims.aud.as_str() {
            USER_AUDIENCE => claims.sub.parse().map(Principal::User).map_err(|_| AuthError::Invalid),
            SERVICE_AUDIENCE => Ok(Principal::Service(claims.sub)),
            _ => Err(AuthError::Invalid),
        }
    }

    fn sign(&self, sub: String, aud: &str, ttl: Duration) -> (String, Claims) {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub,
            aud: aud.to_owned(),
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + ttl.num_seconds(),
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }
}

/// An extractor for the principal of a request's valid bearer token.
/// Needs `web::Data<TokenKeys>` in the app data; answers `401` with the JSON
/// error body otherwise.
#[derive(Debug)]
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = AuthError;
    type Future = std::future::Ready<Result<Self, AuthError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticate(req).map(Authenticated))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Principal, AuthError> {
    let keys = req
        .app_data::<web::Data<TokenKeys>>()
        .expect("TokenKeys registered as app data");
    let value = req.headers().get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Invalid)?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Missing),
    };
    keys.verify(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&SecretString::from(secret.to_owned())).unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_user_token_verifies_as_its_user() {
        let keys = keys(SECRET);
        let user = Uuid::new_v4();
        let issued = keys.issue_user_token(user, Duration::minutes(15));
        assert_eq!(
            keys.verify(issued.token.expose_secret()).unwrap(),
            Principal::User(user)
        );
        assert_eq!((issued.expires_at - issued.issued_at).num_seconds(), 900);
    }

    #[test]
    fn a_service_credential_verifies_as_its_service() {
        let keys = keys(SECRET);
        let token = keys.service_token("consumer");
        assert_eq!(
            keys.verify(token.expose_secret()).unwrap(),
            Principal::Service("consumer".into())
        );
    }

    #[test]
    fn a_token_signed_with_another_key_or_expired_is_refused() {
        let other = keys("another-secret-of-32-bytes-length!!");
        let token = other.issue_user_token(Uuid::new_v4(), Duration::minutes(15));
        assert!(matches!(
            keys(SECRET).verify(token.token.expose_secret()),
            Err(AuthError::Invalid)
        ));

        // Past the 60 s leeway jsonwebtoken allows by default.
        let expired = keys(SECRET).issue_user_token(Uuid::new_v4(), Duration::minutes(-5));
        assert!(matches!(
            keys(SECRET).verify(expired.token.expose_secret()),
            Err(AuthError::Invalid)
        ));
    }

    #[test]
    fn production_refuses_the_local_development_key_and_short_keys() {
        let local = SecretString::from(LOCAL_DEVELOPMENT_SECRET.to_owned());
        let short = SecretString::from("too-short".to_owned());
        let good = SecretString::from(SECRET.to_owned());
        assert!(check_production_secret(Environment::Production, &local).is_err());
        assert!(check_production_secret(Environment::Production, &short).is_err());
        assert!(check_production_secret(Environment::Production, &good).is_ok());
        assert!(check_production_secret(Environment::Local, &local).is_ok());
    }

    #[test]
    fn a_secret_shorter_than_256_bits_is_refused() {
        let short = SecretString::from("too-short".to_owned());
        assert!(matches!(TokenKeys::new(&short), Err(AuthError::WeakSecret)));
    }
}
