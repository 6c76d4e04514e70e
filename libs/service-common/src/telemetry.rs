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

/// Installs the global subscriber: JSON lines in production, human-readable
/// lines locally, at the level `RUST_LOG` gives (else `default`, e.g.
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
        Environment::Local => fmt.boxed(),
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
