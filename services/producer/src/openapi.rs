//! The producer's OpenAPI 3.1 document, generated from its handlers and
//! types, served at `GET /openapi.json` and checked in as
//! `docs/openapi/producer.json`.

use service_common::openapi::BearerAuth;
use utoipa::OpenApi;

use crate::routes::{auth, outbox, users};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "producer",
        description = "Owns users. Creating a user and issuing a token each publish an event \
                       (`new-user-created`, `issued-token`) through a transactional outbox. \
                       Every 4xx and 5xx answer carries the JSON error body.",
        license(name = "MIT")
    ),
    paths(
        users::create_user,
        users::get_user,
        auth::issue_token,
        outbox::list_failing,
        outbox::retry,
        outbox::set_aside,
        service_common::health::live,
        service_common::health::ready,
        service_common::metrics::endpoint,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "users", description = "Users: create, read"),
        (name = "auth", description = "Access tokens"),
        (name = "outbox", description = "Outbox rows that could not be published: list, retry, set aside"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Metrics"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_checked_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi/producer.json");
        service_common::openapi::assert_checked_in(&ApiDoc::openapi(), &path);
    }
}
