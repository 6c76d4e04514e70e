//! OpenTelemetry's messaging conventions on the event flow, checked on the
//! spans both services export, collected in process: the test installs
//! the global subscriber with an in-memory exporter (hence a test binary
//! of its own), runs both services in process, and reads what they
//! exported.

use std::time::Duration;

use e2e::{create_user, eventually, issue_token, TestContext};
use kafka_service::Topic;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::Client;
use tracing_subscriber::layer::SubscriberExt;

/// Users created while no consumer runs, then a consumer: it applies the
/// waiting records in batches. Every record has a `publish` span (kind
/// producer) in the request's trace, and a `process` span (kind consumer)
/// that continues it, both with the messaging attributes; each batch has
/// a `process` span with a link to each of its records' traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_process_spans_carry_the_messaging_attributes_and_batches_link_their_records() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");

    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let client = Client::new();
    let mut users = Vec::new();
    for i in 0..24 {
        users.push(create_user(&client, &producer.url(), &format!("traced{i}")).await);
    }
    issue_token(&client, &producer.url(), &users[0].username).await;
    let settings = context.consumer_settings(&producer.url());
    let group = settings.consumer.group_id.clone();
    let _consumer = context.spawn_consumer_with(settings).await;
    let pool = context.consumer_pool().await;
    eventually(Duration::from_secs(30), "every event applied", || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        (applied == 25).then_some(())
    })
    .await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let kafka = context.kafka();
    let created = kafka.topics.name(Topic::NewUserCreated);
    let issued = kafka.topics.name(Topic::IssuedToken);
    let publish: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.name == format!("publish {created}") || span.name == format!("publish {issued}"))
        .collect();
    assert_eq!(publish.len(), 25, "one publish span per event");
    for span in &publish {
        assert_eq!(span.span_kind, SpanKind::Producer);
        assert_eq!(attribute(span, "messaging.system"), Some(Value::from("kafka")));
        assert_eq!(attribute(span, "messaging.operation.type"), Some(Value::from("send")));
        let topic = attribute(span, "messaging.destination.name")
            .expect("destination")
            .to_string();
        assert!(span.name.ends_with(&topic), "{}", span.name);
        assert!(attribute(span, "messaging.kafka.message.key").is_some());
        assert!(
            attribute(span, "messaging.kafka.offset").is_some(),
            "the delivery recorded"
        );
        assert!(attribute(span, "messaging.destination.partition.id").is_some());
    }

    // The token's record: its process span continues its publish span.
    let key = users[0].id.to_string();
    let of_token = |name: &str| {
        spans
            .iter()
            .filter(|span| span.name == format!("{name} {issued}"))
            .find(|span| attribute(span, "messaging.kafka.message.key") == Some(Value::from(key.clone())))
    };
    let published = of_token("publish").expect("the token's publish span");
    let processed = spans
        .iter()
        .filter(|span| span.name == format!("process {issued}"))
        .find(|span| span.parent_span_id == published.span_context.span_id())
        .expect("a process span whose parent is the token's publish span");
    assert_eq!(processed.span_kind, SpanKind::Consumer);
    assert_eq!(processed.span_context.trace_id(), published.span_context.trace_id());
    for (name, value) in [
        ("messaging.system", Value::from("kafka")),
        ("messaging.operation.type", Value::from("process")),
        ("messaging.destination.name", Value::from(issued.to_owned())),
        ("messaging.kafka.message.key", Value::from(key.clone())),
        ("messaging.consumer.group.name", Value::from(group.clone())),
        (
            "messaging.kafka.offset",
            attribute(published, "messaging.kafka.offset").unwrap(),
        ),
    ] {
        assert_eq!(attribute(processed, name), Some(value), "{name}");
    }

    // Batches: 24 user.created records over 8 partitions, waiting when the
    // consumer started, are applied a partition's run at a time.
    let batches: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.name == format!("process {created}"))
        .filter(|span| attribute(span, "messaging.batch.message_count").is_some())
        .collect();
    assert!(!batches.is_empty(), "at least one batch of user.created records");
    for batch in batches {
        let Some(Value::I64(count)) = attribute(batch, "messaging.batch.message_count") else {
            panic!("a count");
        };
        assert_eq!(batch.links.links.len() as i64, count, "a link per record");
        assert_eq!(
            attribute(batch, "messaging.consumer.group.name"),
            Some(Value::from(group.clone()))
        );
        for link in &batch.links.links {
            assert!(
                publish
                    .iter()
                    .any(|span| span.span_context.span_id() == link.span_context.span_id()),
                "each link names a record's publish span"
            );
        }
    }
}

fn attribute(span: &SpanData, name: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == name)
        .map(|attribute| attribute.value.clone())
}
