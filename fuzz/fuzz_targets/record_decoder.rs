//! The consumer's record decoder against arbitrary records: any key, value
//! and headers (names, values, repeats, missing values, bytes that are not
//! UTF-8), whatever a producer on the topic might write.
//!
//! Properties:
//! - decoding never panics: the envelope (CloudEvents headers, key, value),
//!   the event data, and the failure and retry headers all return errors;
//! - a record with a header name that was not UTF-8 never decodes;
//! - an envelope that decodes encodes to a record that decodes to the same
//!   envelope (the time at the microseconds the headers carry).
#![no_main]

use arbitrary::Arbitrary;
use kafka_service::failure::{self, DeadLetterHeaders, Origin, RetryHeaders};
use kafka_service::{envelope, Envelope, Record};
use libfuzzer_sys::fuzz_target;

/// A record as a broker could hand it over: built from nothing or from a
/// valid `user.created.v1` record, then edited. Header names are drawn
/// mostly from the ones the decoder reads, so the fuzzer reaches past
/// "missing header" and past a successful decode.
#[derive(Debug, Arbitrary)]
struct Input {
    start_from_valid: bool,
    edits: Vec<Edit>,
}

#[derive(Debug, Arbitrary)]
enum Edit {
    /// Replace every header of this name with one value.
    Set(HeaderName, Option<Vec<u8>>),
    /// Add one more header of this name.
    Append(HeaderName, Option<Vec<u8>>),
    Remove(HeaderName),
    Key(Option<Vec<u8>>),
    Value(Option<Vec<u8>>),
    /// One more header whose name was not UTF-8 (the consumer leaves such
    /// a header out and counts it).
    UnreadableName,
}

#[derive(Debug, Arbitrary)]
enum HeaderName {
    Known(u8),
    Other(String),
}

/// The header names the decoders read, by index: the envelope's, then the
/// failure headers, as the library names them.
fn known(i: u8) -> &'static str {
    let (cloud_events, failures) = (&envelope::headers::ALL, &failure::header::ALL);
    let i = usize::from(i) % (cloud_events.len() + failures.len());
    cloud_events.get(i).copied().unwrap_or_else(|| failures[i - cloud_events.len()])
}

fn record(key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: Vec<(String, Option<Vec<u8>>)>) -> Record {
    Record {
        topic: "new-user-created".to_owned(),
        partition: 0,
        offset: 0,
        key,
        headers,
        value,
        timestamp_ms: None,
        unreadable_header_names: 0,
    }
}

const USER_ID: &str = "0192f0e4-7c1a-7cc3-9d2e-3f0a4b5c6d7e";

fn valid() -> Record {
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", "0192f0e4-7c1a-7cc3-9d2e-000000000001"),
        ("ce_type", "user.created.v1"),
        ("ce_source", "/producer"),
        ("ce_time", "2026-11-22T08:00:00.123456Z"),
        ("ce_subject", USER_ID),
        ("content-type", "application/json"),
    ];
    let value = format!(
        r#"{{"user_id":"{USER_ID}","username":"ada","email":"ada@example.com","created_at":"2026-11-22T08:00:00.123456Z"}}"#
    );
    record(
        Some(USER_ID.as_bytes().to_vec()),
        Some(value.into_bytes()),
        headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.as_bytes().to_vec())))
            .collect(),
    )
}

fn name(name: HeaderName) -> String {
    match name {
        HeaderName::Known(i) => known(i).to_owned(),
        HeaderName::Other(name) => name,
    }
}

fuzz_target!(|input: Input| {
    let untouched = input.start_from_valid && input.edits.is_empty();
    let mut received = if input.start_from_valid {
        valid()
    } else {
        record(None, None, Vec::new())
    };
    for edit in input.edits {
        match edit {
            Edit::Set(header, value) => {
                let header = name(header);
                received.headers.retain(|(name, _)| *name != header);
                received.headers.push((header, value));
            }
            Edit::Append(header, value) => received.headers.push((name(header), value)),
            Edit::Remove(header) => {
                let header = name(header);
                received.headers.retain(|(name, _)| *name != header);
            }
            Edit::Key(key) => received.key = key,
            Edit::Value(value) => received.value = value,
            Edit::UnreadableName => received.unreadable_header_names += 1,
        }
    }

    let _ = Origin::of(&received);
    let _ = RetryHeaders::of(&received);
    let _ = DeadLetterHeaders::of(&received);
    let decoded = Envelope::decode(&received);
    assert!(!untouched || decoded.is_ok(), "the valid record decodes: {decoded:?}");
    assert!(
        received.unreadable_header_names == 0 || decoded.is_err(),
        "a record with an unreadable header name never decodes"
    );
    let Ok(envelope) = decoded else {
        return;
    };
    let event = events::UserEvent::from_envelope(&envelope);
    assert!(!untouched || event.is_ok(), "the valid record is valid: {event:?}");

    let encoded = record(
        Some(envelope.key().to_vec()),
        Some(envelope.data.clone()),
        envelope
            .headers()
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.clone().into_bytes())))
            .collect(),
    );
    let again = Envelope::decode(&encoded).expect("an encoded envelope decodes");
    assert_eq!(again.id, envelope.id);
    assert_eq!(again.event_type, envelope.event_type);
    assert_eq!(again.source, envelope.source);
    assert_eq!(again.subject, envelope.subject);
    assert_eq!(again.data, envelope.data);
    assert!((again.time - envelope.time).num_microseconds().map_or(false, |us| us.abs() < 1));
});
