//! Kafka over TLS (`kafka.security.protocol: ssl`): both services against a
//! broker whose listener only accepts TLS, with a certificate from a CA the
//! test makes; and a producer that trusts another CA, which must refuse the
//! broker and say why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::broker::{Broker, ServerTls};
use e2e::{create_user, eventually, issue_token, read_model_token_counts, TestContext};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::Client;

#[tokio::test]
async fn both_services_work_over_tls_and_a_wrong_ca_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("e2e-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, tls) = broker_certificates(&dir);
    let broker = Broker::start_tls(tls);
    let context = TestContext::with_broker(broker.bootstrap_servers());

    let trusting = trust(&ca);
    let producer = context.start_producer_process_with(&trusting).await;
    let consumer = context.start_consumer_process(&producer.url(), &trusting).await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "tls").await;
    issue_token(&client, &producer.url(), &user.username).await;
    let pool = context.consumer_pool().await;
    eventually(Duration::from_secs(60), "the user and its token over TLS", || async {
        (read_model_token_counts(&pool).await.get(&user.id) == Some(&1)).then_some(())
    })
    .await;

    // A CA that did not sign the broker's certificate.
    let (other_ca, _) = broker_certificates(&dir.join("other"));
    let distrusting = trust(&other_ca);
    let wrong = context.start_producer_process_with(&distrusting).await;
    let log = wrong.log.clone();
    eventually(
        Duration::from_secs(30),
        "the producer with the wrong CA to log why it cannot reach the broker",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("certificate verify failed").then_some(())
        },
    )
    .await;
    e2e::wait_until_ready_without_broker(&client, &wrong.url()).await;

    wrong.kill().await;
    consumer.kill().await;
    producer.kill().await;
    pool.close().await;
    context.drop_databases().await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `APP_*` variables that make a service trust the CA in `ca` (PEM).
fn trust(ca: &Path) -> [(&'static str, &str); 2] {
    [
        ("APP_KAFKA__SECURITY__PROTOCOL", "ssl"),
        ("APP_KAFKA__SECURITY__CA_LOCATION", ca.to_str().expect("UTF-8 path")),
    ]
}

/// Makes a CA and a broker certificate it signs, for `127.0.0.1` and
/// `localhost` (librdkafka checks the broker's name against it:
/// `ssl.endpoint.identification.algorithm=https`), in `dir`. Returns the
/// CA's certificate file and the broker's files.
fn broker_certificates(dir: &Path) -> (PathBuf, ServerTls) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "e2e test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let broker_key = KeyPair::generate().unwrap();
    let mut broker_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    broker_params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let broker_cert = broker_params.signed_by(&broker_key, &ca).unwrap();

    let files = (dir.join("ca.pem"), dir.join("broker.pem"), dir.join("broker.key"));
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, broker_cert.pem()).unwrap();
    std::fs::write(&files.2, broker_key.serialize_pem()).unwrap();
    (
        files.0.clone(),
        ServerTls {
            cert: files.1,
            key: files.2,
            ca: files.0,
        },
    )
}
