//! What both services' OpenAPI documents share: the bearer-token security
//! scheme, the health and metrics endpoints, and the check that keeps the
//! copies in `docs/openapi/` current.
//!
//! Each service derives its document from its handlers with `utoipa`
//! (`ApiDoc` in its `openapi` module) and serves it at `GET /openapi.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::{Modify, ToSchema};

/// The name of the security scheme handlers refer to
/// (`security(("bearer" = []))`).
pub const BEARER: &str = "bearer";

/// Adds the `bearer` scheme: an `Authorization: Bearer <JWT>` header, a
/// token from the producer's `POST /auth/token` or a service credential.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from the producer's POST /auth/token, or a service credential (HS256, \
                         issuer kafka-example)",
                    ))
                    .build(),
            ),
        );
    }
}

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` (live) or `ready`.
    pub status: String,
}

/// The producer's readiness: `{"status": "ready", "broker": "reachable"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// `reachable`, `unreachable` or `unknown` (before the first check):
    /// whether a broker answered the last metadata request, made every 10 s
    /// (within `kafka.request_timeout_ms`). Unreachable does not make the
    /// producer unready: its outbox keeps the events until one answers.
    pub broker: String,
}

/// `GET /openapi.json`: the document `D` derives.
pub async fn document<D: utoipa::OpenApi>() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(D::openapi())
}

/// Compares `spec` with the checked-in copy at `path`, or, when the
/// environment variable `UPDATE_OPENAPI` is set, writes it there.
///
/// # Panics
///
/// When they differ (a handler or type changed without the copy), saying
/// how to update it.
pub fn assert_checked_in(spec: &OpenApi, path: &Path) {
    let generated = spec.to_pretty_json().expect("the document serializes") + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is not the document the code generates; run `UPDATE_OPENAPI=1 cargo test --workspace openapi` \
         and commit the result",
        path.display()
    );
}
