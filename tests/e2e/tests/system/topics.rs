//! Topic provisioning against the real broker.

use e2e::TestContext;
use kafka_service::{AdminError, Topic, TopicSpec};

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_a_topic_with_too_few_partitions() {
    let context = TestContext::new();
    let kafka = context.kafka();
    let spec = kafka.topics.spec(Topic::NewUserCreated).clone();
    let small = TopicSpec {
        partitions: 2,
        ..spec.clone()
    };

    kafka_service::ensure_topics(&kafka, &[&small])
        .await
        .expect("topic created with 2 partitions");
    kafka_service::ensure_topics(&kafka, &[&small])
        .await
        .expect("a second run changes nothing");
    let error = kafka_service::ensure_topics(&kafka, &[&spec])
        .await
        .expect_err("8 partitions configured");

    match &error {
        AdminError::TooFewPartitions {
            topic,
            expected,
            actual,
        } => {
            assert_eq!((topic.as_str(), *expected, *actual), (spec.name.as_str(), 8, 2));
        }
        other => panic!("expected TooFewPartitions, got {other:?}"),
    }
    assert!(!error.is_transient(), "retrying cannot fix it");
    assert!(
        error.to_string().contains("has 2 partitions but 8 are configured"),
        "{error}"
    );
}
