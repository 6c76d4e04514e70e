//! Prometheus metrics: the registry each service fills, the HTTP metrics
//! every request updates, and `GET /metrics` (OpenMetrics text, which
//! Prometheus scrapes natively).
//!
//! Names follow Prometheus conventions: base units in the name (`_seconds`),
//! counters end in `_total` (prometheus-client adds it).

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// Histogram buckets for durations, in seconds: 0.5 ms doubling to about
/// 16 s (the Kafka crate's, so both measure alike).
pub use kafka_service::monitor::seconds_histogram;

/// Labels of `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The route pattern (`/users/{id}`), or `unmatched`: never the raw path,
    /// which would make one series per user.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of `http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The route pattern, or `unmatched`.
    pub route: String,
}

/// Labels of a metric kept per topic (the Kafka crate's, so both label
/// their metrics alike).
pub use kafka_service::monitor::TopicLabels;

/// The service's metrics registry (complete once the service is built) and
/// the HTTP metrics in it. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Adds the HTTP metrics to `registry`, which holds the service's own
    /// metrics, and freezes it:
    ///
    /// - `http_requests_total{method,route,status}`: requests answered;
    /// - `http_request_duration_seconds{method,route}`: time to answer.
    pub fn new(mut registry: Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving an HTTP request to its response",
            durations.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            durations,
        }
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// `GET /metrics`. Needs `web::Data<Metrics>` in the app data.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text exposition format (OpenMetrics)",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
pub async fn endpoint(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.encode())
}

/// Middleware counting and timing every request by route pattern, and
/// logging one line per request.
pub async fn record_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.call(request).await?;
    // Routing has happened by now, so the pattern is known.
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let elapsed = started.elapsed();
    // Inside the request's span (TracingLogger wraps this middleware), so
    // the line carries the request id and trace id.
    tracing::info!(
        status = response.status().as_u16(),
        route,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "request answered"
    );
    if let Some(metrics) = metrics {
        metrics
            .durations
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(elapsed.as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: response.status().as_u16(),
            })
            .inc();
    }
    Ok(response)
}
