//! A write that finishes a record (parking it, its copy to the retry or
//! dead-letter topic, unparking it) fails once and is tried again: the
//! record comes out as if nothing had failed, with the same round and
//! attempts, and one dead letter.

use std::time::Duration;

use e2e::load::{dead_letters, envelope_of, new_users, token_issued};
use e2e::process::NO_PRODUCER;
use e2e::{eventually, TestContext};
use kafka_service::failure::header;
use kafka_service::{EventProducer, Topic};

use crate::header_text;

/// A token for a user the producer cannot be asked about (nothing listens
/// where it should be): three tries in place, then parked for round 1. The
/// broker (librdkafka's mock cluster) refuses the copy's first produce
/// request (`INVALID_RECORD`, which librdkafka does not retry by itself;
/// `MSG_SIZE_TOO_LARGE` would dead-letter the record, as a copy that can
/// never be written). The copy sent on the next try is the same one, round
/// 1 with 3 attempts, not a round-0 copy "behind" the record's own parking
/// (which is what re-running the whole step made of it).
#[tokio::test]
async fn a_retry_copy_refused_once_is_sent_again_with_its_round_and_attempts() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = MockCluster::new(1).unwrap();
    let context = TestContext::with_broker(cluster.bootstrap_servers());
    for topic in Topic::ALL {
        cluster.create_topic(context.topics.name(topic), 8, 1).unwrap();
    }
    let mut settings = context.consumer_settings(NO_PRODUCER);
    // The in-place tries take about 2 s, time to arm the broker's refusal
    // after the record is published; the copy is due long after the test.
    settings.retry.attempts = 3;
    settings.retry.initial_delay_ms = 1_000;
    settings.retry.max_delay_ms = 1_000;
    settings.retry.max_elapsed_ms = 5_000;
    settings.retry.topic_initial_delay_ms = 60_000;
    settings.retry.topic_max_delay_ms = 60_000;
    let consumer = context.spawn_consumer_with(settings).await;
    let kafka = context.kafka();
    let (users, _) = new_users(1);
    let record = envelope_of(&token_issued(users[0]));
    EventProducer::new(&kafka, "test")
        .unwrap()
        .send(kafka.topics.name(Topic::IssuedToken), &record)
        .await
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );

    let retry_topic = kafka.topics.name(Topic::Retry);
    eventually(Duration::from_secs(30), "the record parked", || async {
        let copies = kafka_service::reader::read_topic(&kafka, retry_topic).await.ok()?;
        (!copies.is_empty()).then_some(())
    })
    .await;
    // Time for a second, wrong copy to appear, had the step started over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copies = kafka_service::reader::read_topic(&kafka, retry_topic).await.unwrap();
    assert_eq!(copies.len(), 1, "one copy on the retry topic");
    assert_eq!(header_text(&copies[0], header::RETRY_ROUND), "1");
    assert_eq!(header_text(&copies[0], header::ATTEMPTS), "3");
    let pool = context.consumer_pool().await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 1);
    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}

/// A token for a user the producer cannot be asked about: parked, and
/// dead-lettered as `exhausted` after its rounds. The database refuses the
/// unparking that follows the dead-letter copy once (a trigger on
/// `parked_records`). The next try unparks without copying the record
/// again: one dead letter, and the row gone. (A record that is not parked
/// has no unparking: its copy is its only write.)
#[tokio::test]
async fn a_dead_letter_whose_unparking_fails_once_is_written_once() {
    let context = TestContext::new();
    // The producer counts as answering: its failures use up the rounds.
    let mut settings = context.consumer_settings(NO_PRODUCER);
    settings.circuit_breaker.failure_threshold = u32::MAX;
    let consumer = context.spawn_consumer_with(settings).await;
    let pool = context.consumer_pool().await;
    sqlx::raw_sql(
        "CREATE SEQUENCE unparkings; \
         CREATE FUNCTION refuse_first_unparking() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF nextval('unparkings') = 1 THEN RAISE EXCEPTION 'injected: the first unparking fails'; END IF; \
           RETURN NULL; \
         END $$; \
         CREATE TRIGGER refuse_first_unparking BEFORE DELETE ON parked_records \
           FOR EACH STATEMENT EXECUTE FUNCTION refuse_first_unparking();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (users, _) = new_users(1);
    e2e::load::publish(&context, &[token_issued(users[0])]).await;

    eventually(
        Duration::from_secs(30),
        "the token dead-lettered and unparked",
        || async {
            let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_records")
                .fetch_one(&pool)
                .await
                .unwrap();
            (parked == 0 && !dead_letters(&context).await.is_empty()).then_some(())
        },
    )
    .await;
    let calls: i64 = sqlx::query_scalar("SELECT last_value FROM unparkings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(calls >= 2, "the unparking failed once and was tried again");
    let dead = dead_letters(&context).await;
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(header_text(&dead[0], header::ERROR_CLASS), "exhausted");
    pool.close().await;
    consumer.stop().await.unwrap();
    context.drop_databases().await;
}
