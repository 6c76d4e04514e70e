//! The record format as a checked contract: JSON Schemas generated from
//! the Rust types, checked in under `docs/events/`, and the rule that a
//! published version changes only compatibly.
//!
//! - `docs/events/headers.json`: the CloudEvents headers of every record
//!   (Kafka protocol binding, binary mode), as header name → UTF-8 value.
//! - `docs/events/<ce_type>.json`: the record value (JSON) of each type.
//!
//! A change is compatible when every reader of the old schema still reads
//! the new records: no property removed or retyped, no property newly
//! required (readers ignore properties they do not know). Anything else
//! needs a new `ce_type` version, with its own schema file, while the
//! old version's file, and consumers' support for it, stay.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde_json::Value;
use uuid::Uuid;

use crate::{TokenIssued, UserCreated, UserEvent};

/// The CloudEvents headers of every event record. Header values are UTF-8
/// text; this describes them as a JSON object, header name → value.
#[derive(JsonSchema)]
#[allow(dead_code)] // A description for the schema, never built.
pub struct EventHeaders {
    /// CloudEvents `specversion`.
    #[serde(rename = "ce_specversion")]
    #[schemars(extend("const" = "1.0"))]
    spec_version: String,
    /// `id`: unique per event; consumers apply each id once.
    #[serde(rename = "ce_id")]
    id: Uuid,
    /// `type`: the event type and its version.
    #[serde(rename = "ce_type")]
    #[schemars(extend("enum" = ["user.created.v1", "user.token_issued.v1"]))]
    event_type: String,
    /// `source`: the service that emitted it.
    #[serde(rename = "ce_source")]
    #[schemars(extend("const" = "/producer"))]
    source: String,
    /// `time`: when it happened (RFC 3339).
    #[serde(rename = "ce_time")]
    time: DateTime<Utc>,
    /// `subject`: the user id; also the record key.
    #[serde(rename = "ce_subject")]
    subject: Uuid,
    /// `datacontenttype` of the record value.
    #[serde(rename = "content-type")]
    #[schemars(extend("const" = "application/json"))]
    content_type: String,
}

/// Every schema file of the contract, by file name under `docs/events/`.
pub fn schemas() -> Vec<(String, Value)> {
    let value = |schema: schemars::Schema| serde_json::to_value(schema).expect("a schema serializes");
    vec![
        ("headers.json".to_owned(), value(schemars::schema_for!(EventHeaders))),
        (
            format!("{}.json", UserEvent::CREATED_V1),
            value(schemars::schema_for!(UserCreated)),
        ),
        (
            format!("{}.json", UserEvent::TOKEN_ISSUED_V1),
            value(schemars::schema_for!(TokenIssued)),
        ),
    ]
}

/// Why readers of `old` could not read records written to `new`: each
/// property removed or retyped (`type` or `format` changed), and each
/// property that became required. Empty when the change is compatible.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let properties = |schema: &Value| {
        schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let required = |schema: &Value| -> BTreeSet<String> {
        schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let (old_properties, new_properties) = (properties(old), properties(new));
    let mut breaking = Vec::new();
    for (name, old_property) in &old_properties {
        match new_properties.get(name) {
            None => breaking.push(format!("property `{name}` removed")),
            Some(new_property) => {
                for facet in ["type", "format", "const", "enum"] {
                    if old_property.get(facet) != new_property.get(facet) {
                        breaking.push(format!(
                            "property `{name}`: {facet} changed from {} to {}",
                            old_property.get(facet).unwrap_or(&Value::Null),
                            new_property.get(facet).unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
        }
    }
    for name in required(new).difference(&required(old)) {
        breaking.push(format!("property `{name}` is newly required"));
    }
    breaking
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::json;

    use super::*;

    fn directory() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/events")
    }

    /// The generated schemas equal the checked-in ones. With
    /// `UPDATE_EVENT_SCHEMAS=1` a compatible change is written; an
    /// incompatible one is refused either way.
    #[test]
    fn checked_in_schemas_are_current_and_changes_are_compatible() {
        let update = std::env::var_os("UPDATE_EVENT_SCHEMAS").is_some();
        for (file, generated) in schemas() {
            let path = directory().join(&file);
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            let checked_in: Option<Value> = std::fs::read_to_string(&path)
                .ok()
                .map(|old| serde_json::from_str(&old).expect("a checked-in schema is JSON"));
            if let Some(old) = &checked_in {
                let breaking = breaking_changes(old, &generated);
                assert!(
                    breaking.is_empty(),
                    "{file}: an incompatible change to a published version ({}); keep this version and add the \
                     type as a new version (`...v2`) instead",
                    breaking.join("; ")
                );
            }
            if update {
                std::fs::write(&path, &text).unwrap();
            } else {
                assert_eq!(
                    checked_in.as_ref(),
                    Some(&generated),
                    "{} is not the schema the code generates; run `UPDATE_EVENT_SCHEMAS=1 cargo test -p events` \
                     and commit the result",
                    path.display()
                );
            }
        }
    }

    /// Consumers apply every version ever published: each schema file under
    /// `docs/events/` is a type this version accepts, and the other way
    /// round.
    #[test]
    fn every_published_version_is_still_accepted() {
        let mut published: Vec<String> = std::fs::read_dir(directory())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
            .filter(|name| name != "headers")
            .collect();
        published.sort();
        let mut accepted: Vec<String> = UserEvent::ACCEPTED_TYPES.iter().map(|t| (*t).to_owned()).collect();
        accepted.sort();
        assert_eq!(published, accepted);
        let header_types = &schemas()[0].1["properties"]["ce_type"]["enum"];
        assert_eq!(header_types, &json!(UserEvent::ACCEPTED_TYPES));
    }

    fn schema(properties: Value, required: &[&str]) -> Value {
        json!({ "type": "object", "properties": properties, "required": required })
    }

    #[test]
    fn removing_retyping_or_newly_requiring_a_field_breaks_readers() {
        let old = schema(
            json!({ "a": { "type": "string" }, "b": { "type": "string", "format": "uuid" } }),
            &["a"],
        );
        let removed = schema(json!({ "a": { "type": "string" } }), &["a"]);
        assert_eq!(breaking_changes(&old, &removed), ["property `b` removed"]);
        let retyped = schema(json!({ "a": { "type": "integer" }, "b": { "type": "string" } }), &["a"]);
        assert_eq!(breaking_changes(&old, &retyped).len(), 2);
        let required = schema(
            json!({ "a": { "type": "string" }, "b": { "type": "string", "format": "uuid" } }),
            &["a", "b"],
        );
        assert_eq!(breaking_changes(&old, &required), ["property `b` is newly required"]);
    }

    #[test]
    fn a_new_optional_field_is_compatible() {
        let old = schema(json!({ "a": { "type": "string" } }), &["a"]);
        let new = schema(
            json!({ "a": { "type": "string" }, "c": { "type": ["string", "null"] } }),
            &["a"],
        );
        assert!(breaking_changes(&old, &new).is_empty());
        // And the real types compared with themselves.
        for (_, generated) in schemas() {
            assert!(breaking_changes(&generated, &generated).is_empty());
        }
    }
}
