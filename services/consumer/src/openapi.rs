//! The consumer's OpenAPI 3.1 document, generated from its handlers and
//! types, served at `GET /openapi.json` and checked in as
//! `docs/openapi/consumer.json`.

use service_common::openapi::BearerAuth;
use utoipa::OpenApi;

use crate::routes::{consumption, dead_letters, events, health, parked, records, users};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "consumer",
        description = "The read model that the consumer group builds from `new-user-created` and \
                       `issued-token`, and the operator endpoints of the dead-letter topic. \
                       Every 4xx and 5xx answer carries the JSON error body.",
        license(name = "MIT")
    ),
    components(schemas(crate::feed::FeedEvent)),
    paths(
        users::get_user,
        dead_letters::list,
        dead_letters::redrive,
        parked::list,
        parked::release,
        parked::dead_letter,
        records::dead_letter,
        consumption::pause,
        consumption::resume,
        consumption::list,
        consumption::replay,
        consumption::replays,
        events::stream,
        health::live,
        health::ready,
        service_common::metrics::endpoint,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "users", description = "The read model"),
        (name = "dead letters", description = "Operating the dead-letter topic (service credential)"),
        (name = "parked", description = "Records parked on the retry topic: list, release, dead-letter (service credential)"),
        (name = "records", description = "Consumed records by topic, partition and offset: dead-letter one that no handling gets past (service credential)"),
        (name = "consumption", description = "Pausing and resuming consumption of a topic or partition on every member (service credential)"),
        (name = "events", description = "The live feed of applied events"),
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
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi/consumer.json");
        service_common::openapi::assert_checked_in(&ApiDoc::openapi(), &path);
    }
}
