//! The tracing subscriber, and W3C trace context across the services.
//!
//! Every span belongs to an OpenTelemetry trace (tracing-opentelemetry).
//! The trace of an HTTP request continues the caller's `traceparent`
//! header (tracing-actix-web), travels with the events it causes (the
//! outbox row, then the Kafka record's `traceparent` header), is continued
//! by the consumer's span for that record, and goes on in the consumer's
//! calls to the producer. Root spans carry the trace id as their `trace_id`
//! field, so one id finds the whole path in both services' logs.
//!
//! Spans are exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (e.g. `http://collector:4318`); the `OTEL_*` variables of the
//! OTLP exporter specification apply.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::configuration::Environment;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// The environment variable that turns OTLP export on.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Flushes exported spans when dropped (at the end of `main`).
pub struct TelemetryGuard(SdkTracerProvider);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            eprintln!("telemetry: could not flush spans: {error}");
        }
    }
}

/// Installs the global subscriber on standard output: JSON lines in
/// production, human-readable lines locally (coloured when standard output
/// is a terminal), at the level `RUST_LOG` gives (else `default`, e.g.
/// `"info"`); spans get OpenTelemetry trace ids, exported over OTLP when
/// [`OTLP_ENDPOINT_VAR`] is set. Keep the guard until the service stops.
///
/// # Panics
///
/// When a global subscriber is already installed, or the OTLP exporter
/// cannot be built from its `OTEL_*` variables.
pub fn init(service: &'static str, environment: Environment, default: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service).build());
    if std::env::var_os(OTLP_ENDPOINT_VAR).is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .expect("the OTLP exporter builds from its OTEL_* variables");
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = match environment {
        Environment::Production => fmt.json().flatten_event(true).boxed(),
        // Colours on a terminal only: a log file (scripts/run.sh's
        // `.run/*.log`) stays greppable.
        Environment::Local => fmt.with_ansi(std::io::stdout().is_terminal()).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();
    TelemetryGuard(provider)
}

/// The current span's trace context as a `traceparent` value, if it has
/// one (to store with an event, or send with a request).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` continue the trace of `traceparent` (when it is a valid W3C
/// value) and records its trace id in the span's `trace_id` field.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
        let context = TraceContextPropagator::new().extract(&carrier);
        if context.span().span_context().is_valid() {
            // Fails only when the span is disabled, and then it has no trace.
            let _ = span.set_parent(context);
        }
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// OpenTelemetry's messaging conventions on the spans of the event flow
/// (semantic conventions 1.37, "Messaging spans" and "Kafka"): a `publish`
/// span (kind producer) per record the outbox relay sends, whose context
/// the record carries in `traceparent`, and a `process` span (kind
/// consumer) per record and per batch the consumer applies. The attributes
/// go on the exported spans only, not into log lines.
pub mod messaging {
    use kafka_service::Record;
    use opentelemetry::KeyValue;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// `messaging.system` of every span here.
    pub const SYSTEM: &str = "kafka";

    /// The span of handing one record to the producer until its delivery
    /// report: named `publish <topic>`, a child of the trace in
    /// `traceparent` (the request that wrote the event). Record the
    /// delivery with [`delivered`].
    pub fn publish_span(topic: &str, key: &str, traceparent: Option<&str>) -> tracing::Span {
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("publish {topic}"),
            otel.kind = "producer",
            trace_id = tracing::field::Empty,
        );
        super::continue_trace(&span, traceparent);
        span.set_attribute("messaging.system", SYSTEM);
        span.set_attribute("messaging.operation.type", "send");
        span.set_attribute("messaging.operation.name", "publish");
        span.set_attribute("messaging.destination.name", topic.to_owned());
        span.set_attribute("messaging.kafka.message.key", key.to_owned());
        span
    }

    /// Records where the broker put the record of a [`publish_span`].
    pub fn delivered(span: &tracing::Span, partition: i32, offset: i64) {
        span.set_attribute("messaging.destination.partition.id", partition.to_string());
        span.set_attribute("messaging.kafka.offset", offset);
    }

    /// The attributes of a `process` span of `record`, consumed by `group`.
    pub fn set_process_attributes(span: &tracing::Span, record: &Record, group: &str) {
        span.set_attribute("messaging.system", SYSTEM);
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.operation.name", "process");
        span.set_attribute("messaging.destination.name", record.topic.clone());
        span.set_attribute("messaging.destination.partition.id", record.partition.to_string());
        span.set_attribute("messaging.kafka.message.key", record.key_lossy());
        span.set_attribute("messaging.kafka.offset", record.offset);
        span.set_attribute("messaging.consumer.group.name", group.to_owned());
    }

    /// The attributes of a `process` span of a batch of one partition's
    /// `records`, and a link to each record's trace (its `traceparent`),
    /// as the conventions ask of a span that handles several messages.
    pub fn set_batch_attributes(span: &tracing::Span, records: &[Record], group: &str) {
        let Some(first) = records.first() else { return };
        span.set_attribute("messaging.system", SYSTEM);
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.operation.name", "process");
        span.set_attribute("messaging.destination.name", first.topic.clone());
        span.set_attribute("messaging.destination.partition.id", first.partition.to_string());
        span.set_attribute("messaging.batch.message_count", records.len() as i64);
        span.set_attribute("messaging.consumer.group.name", group.to_owned());
        for record in records {
            let traceparent = record
                .header(super::TRACEPARENT)
                .and_then(|value| std::str::from_utf8(value).ok());
            if let Some(context) = traceparent.and_then(super::span_context_of) {
                span.add_link_with_attributes(context, vec![KeyValue::new("messaging.kafka.offset", record.offset)]);
            }
        }
    }
}

/// The span context a `traceparent` value names, when it is valid.
fn span_context_of(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}
