//! Calls to the producer service over HTTP.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use service_common::auth::TokenKeys;
use uuid::Uuid;

/// Name this service presents in its service credential.
const SERVICE_NAME: &str = "consumer";

/// How long an idle connection to the producer is kept for reuse: less
/// than the producer's keep-alive ([`service_common::server::KEEP_ALIVE`]),
/// after which the producer closes it. A request sent on a connection the
/// server is closing fails with "connection closed before message
/// completed" (the API fuzz in `scripts/test.sh` met it once, on
/// `GET /users/{id}`, when the producer closed idle connections after 5 s).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A user as the producer returns it from `GET /users/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProducerUser {
    /// The user id.
    pub id: Uuid,
    /// The username.
    pub username: String,
    /// The email address.
    pub email: String,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
}

/// Why a call to the producer failed. All of these are transient from the
/// consumer's point of view: the producer is down, slow or misbehaving.
#[derive(Debug, thiserror::Error)]
pub enum ProducerClientError {
    /// Connection refused, timeout, or a body that did not parse.
    #[error("request to the producer failed")]
    Transport(#[from] reqwest::Error),
    /// An answer other than `200` or `404`.
    #[error("the producer answered {0}")]
    Status(StatusCode),
}

/// An HTTP client for the producer, authenticating with a service
/// credential.
#[derive(Clone)]
pub struct ProducerClient {
    http: reqwest::Client,
    base_url: String,
    keys: TokenKeys,
}

impl ProducerClient {
    /// A client for the producer at `base_url`, with a whole-request
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (no usable TLS backend).
    pub fn new(base_url: &str, timeout: Duration, keys: TokenKeys) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            keys,
        })
    }

    /// `GET /users/{id}` on the producer: `Ok(None)` when it answers `404`.
    ///
    /// # Errors
    ///
    /// [`ProducerClientError`] for transport failures, timeouts and any
    /// other status.
    #[tracing::instrument(name = "fetch user from producer", skip(self))]
    pub async fn get_user(&self, id: Uuid) -> Result<Option<ProducerUser>, ProducerClientError> {
        let mut request = self
            .http
            .get(format!("{}/users/{id}", self.base_url))
            .bearer_auth(self.keys.service_token(SERVICE_NAME).expose_secret());
        // The trace of the record being handled goes on in the producer.
        if let Some(traceparent) = service_common::telemetry::current_traceparent() {
            request = request.header(service_common::telemetry::TRACEPARENT, traceparent);
        }
        let response = request.send().await?;
        match response.status() {
            StatusCode::OK => Ok(Some(response.json().await?)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(ProducerClientError::Status(status)),
        }
    }
}
