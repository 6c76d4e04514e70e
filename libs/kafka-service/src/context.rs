//! What every client of this crate shares: librdkafka's logs go to
//! `tracing` (target `librdkafka`), and with [`Security::MskIam`] the client
//! authenticates with SASL/OAUTHBEARER tokens signed by the process's AWS
//! credentials.
//!
//! An MSK IAM token is a SigV4 presigned URL for the `kafka-cluster:Connect`
//! action, base64url-encoded, valid for 15 minutes; librdkafka asks for a new
//! one when 80 % of that has passed (`aws-msk-iam-sasl-signer`, and the
//! MSK developer guide, "IAM access control"). Credentials come from the
//! default AWS chain: on ECS, the task role.
//!
//! librdkafka asks for tokens while the client is polled. The producer and
//! the group consumer are polled continuously; the short-lived metadata
//! clients poll once before their first request
//! (`KafkaContext::base_consumer`). rdkafka's `AdminClient` never polls the
//! queue where token requests arrive (rust-rdkafka issue #757), so under MSK
//! IAM topic creation fails; see [`crate::admin::ensure_topics`].

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::region::Region;
use rdkafka::client::OAuthToken;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::ClientContext;

use crate::settings::{KafkaSettings, Security};

/// How long signing one token may take, including fetching credentials
/// (on ECS, an HTTP call to the task's credentials endpoint).
const SIGNING_TIMEOUT: Duration = Duration::from_secs(10);

/// The client context: log forwarding and, for MSK IAM, token signing.
#[derive(Clone, Default)]
pub struct KafkaContext {
    signer: Option<Arc<MskIamSigner>>,
}

impl KafkaContext {
    /// The context `settings.security` calls for.
    pub(crate) fn new(settings: &KafkaSettings) -> Self {
        let signer = match &settings.security {
            Security::MskIam { region } => Some(Arc::new(MskIamSigner::from_default_chain(region))),
            Security::Plaintext | Security::Ssl { .. } => None,
        };
        Self { signer }
    }

    /// A short-lived client for metadata, offsets and reads outside any
    /// group, with `properties` on top of the shared ones.
    ///
    /// Under MSK IAM it is polled once, so that its first token is fetched
    /// before its first request (librdkafka, `rd_kafka_oauthbearer_set_token`:
    /// before any SASL/OAUTHBEARER connection can succeed the application
    /// must poll).
    pub(crate) fn base_consumer(
        settings: &KafkaSettings,
        client_id: &str,
        properties: &[(&str, String)],
    ) -> KafkaResult<BaseConsumer<KafkaContext>> {
        let consumer: BaseConsumer<KafkaContext> = settings
            .client_config(client_id, properties)
            .create_with_context(KafkaContext::new(settings))?;
        if consumer.context().signer.is_some() {
            // Nothing is assigned, so the poll only serves the token request.
            let _ = consumer.poll(Duration::ZERO);
        }
        Ok(consumer)
    }

    pub(crate) fn uses_oauthbearer(&self) -> bool {
        self.signer.is_some()
    }
}

impl ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }

    fn generate_oauth_token(&self, _config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        match &self.signer {
            Some(signer) => signer.token(),
            None => Err("sasl.mechanism OAUTHBEARER needs kafka.security.protocol msk_iam".into()),
        }
    }
}

impl ConsumerContext for KafkaContext {}

/// Signs MSK IAM authentication tokens.
pub struct MskIamSigner {
    region: Region,
    credentials: Option<SharedCredentialsProvider>,
}

impl MskIamSigner {
    /// Signs with the default AWS credential chain (environment, profile,
    /// ECS task role, instance role) in `region`.
    pub fn from_default_chain(region: &str) -> Self {
        Self {
            region: Region::new(region.to_owned()),
            credentials: None,
        }
    }

    /// Signs with the credentials `provider` gives, in `region`.
    pub fn with_credentials(region: &str, provider: SharedCredentialsProvider) -> Self {
        Self {
            region: Region::new(region.to_owned()),
            credentials: Some(provider),
        }
    }

    /// A fresh token and its expiry (`lifetime_ms`, milliseconds since the
    /// Unix epoch), as librdkafka wants it.
    ///
    /// librdkafka calls this from inside the thread that polls the client,
    /// which may be a Tokio worker, so signing runs on its own thread with a
    /// small runtime of its own.
    ///
    /// # Errors
    ///
    /// When no credentials can be found, or signing takes longer than 10 s.
    /// librdkafka logs the error, fails connections that need a token, and
    /// asks again.
    pub fn token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let region = self.region.clone();
        let credentials = self.credentials.clone();
        let signed = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async move {
                        let signing = async {
                            match credentials {
                                Some(provider) => {
                                    aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
                                        region, provider,
                                    )
                                    .await
                                }
                                None => aws_msk_iam_sasl_signer::generate_auth_token(region).await,
                            }
                        };
                        match tokio::time::timeout(SIGNING_TIMEOUT, signing).await {
                            Ok(result) => result.map_err(|error| -> Box<dyn Error + Send + Sync> { error.into() }),
                            Err(_) => Err("signing the MSK IAM token took longer than 10 s".into()),
                        }
                    })
                })
                .join()
        });
        let (token, expires_at_ms) = match signed {
            Ok(result) => result.map_err(|error| -> Box<dyn Error> { error })?,
            Err(_) => return Err("signing the MSK IAM token panicked".into()),
        };
        Ok(OAuthToken {
            token,
            principal_name: String::new(),
            lifetime_ms: expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;
    use base64::Engine;

    use super::*;

    #[test]
    fn a_token_is_a_presigned_connect_url_for_the_region() {
        let credentials = Credentials::from_keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None);
        let signer = MskIamSigner::with_credentials("eu-west-1", SharedCredentialsProvider::new(credentials));
        let now_ms = chrono::Utc::now().timestamp_millis();

        let token = signer.token().unwrap();

        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token.token)
            .expect("the token is base64url without padding");
        let url = String::from_utf8(url).unwrap();
        assert!(url.starts_with("https://kafka.eu-west-1.amazonaws.com/?"), "{url}");
        assert!(url.contains("Action=kafka-cluster%3AConnect"), "{url}");
        assert!(url.contains("X-Amz-Credential=AKIDEXAMPLE%2F"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        // Valid for 15 minutes from now, in epoch milliseconds.
        let lifetime = token.lifetime_ms - now_ms;
        assert!((880_000..=905_000).contains(&lifetime), "lifetime {lifetime} ms");
    }

    #[test]
    fn signing_also_works_from_inside_a_tokio_runtime() {
        let credentials = Credentials::from_keys("AKIDEXAMPLE", "secret", None);
        let signer = MskIamSigner::with_credentials("us-east-1", SharedCredentialsProvider::new(credentials));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let token = runtime.block_on(async { signer.token() }).unwrap();
        assert!(!token.token.is_empty());
    }

    #[test]
    fn plaintext_clients_refuse_to_make_tokens() {
        let context = KafkaContext::new(&KafkaSettings::new("127.0.0.1:9092"));
        assert!(!context.uses_oauthbearer());
        assert!(context.generate_oauth_token(None).is_err());
    }
}
