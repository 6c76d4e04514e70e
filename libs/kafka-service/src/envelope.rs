//! The event envelope: a CloudEvents 1.0 event in the Kafka protocol
//! binding's binary content mode.
//!
//! Source: CloudEvents "Kafka Protocol Binding" 1.0, §3.2 (binary content
//! mode). Each context attribute is a record header named `ce_<attribute>`
//! with a UTF-8 value; `datacontenttype` maps to the `content-type` header;
//! the record value is the event data itself (here always JSON). The record
//! key is the event's subject, the user id, so one user's events stay in
//! one partition, in order.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::consumer::Record;

/// The CloudEvents version this envelope implements (`ce_specversion`).
pub const SPEC_VERSION: &str = "1.0";
/// The only data content type events carry (`content-type`).
pub const CONTENT_TYPE: &str = "application/json";

/// Header names of the binary content mode.
pub mod headers {
    /// `specversion`: always [`super::SPEC_VERSION`].
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// `id`: unique per event; consumers deduplicate on it.
    pub const ID: &str = "ce_id";
    /// `type`: what happened, with a version suffix, e.g. `user.created.v1`.
    pub const TYPE: &str = "ce_type";
    /// `source`: the service that produced the event, e.g. `/producer`.
    pub const SOURCE: &str = "ce_source";
    /// `time`: when it happened, RFC 3339.
    pub const TIME: &str = "ce_time";
    /// `subject`: the aggregate the event is about (the user id).
    pub const SUBJECT: &str = "ce_subject";
    /// `datacontenttype`.
    pub const CONTENT_TYPE: &str = "content-type";

    /// Every header the envelope reads.
    pub const ALL: [&str; 7] = [SPEC_VERSION, ID, TYPE, SOURCE, TIME, SUBJECT, CONTENT_TYPE];
}

/// One event: its CloudEvents context attributes and its JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `ce_id`: unique per event (a UUID).
    pub id: Uuid,
    /// `ce_type`, e.g. `user.created.v1`.
    pub event_type: String,
    /// `ce_source`, e.g. `/producer`.
    pub source: String,
    /// `ce_time`: when the event happened (not when it was published).
    pub time: DateTime<Utc>,
    /// `ce_subject`: the user id; also the record key.
    pub subject: String,
    /// The record value: the event data, serialized JSON.
    pub data: Vec<u8>,
}

/// Why a record is not a valid envelope. None of these gets better by
/// retrying: such a record is a poison pill.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A required header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but its value is not valid.
    #[error("invalid header `{header}`: {reason}")]
    InvalidHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The record has no value.
    #[error("record has no value")]
    MissingValue,
    /// The record key is not the event's subject.
    #[error("record key does not match header `ce_subject`")]
    KeyMismatch,
    /// Some header names are not UTF-8, so those headers could not be read
    /// ([`Record::unreadable_header_names`]). No producer of this project
    /// writes such a name, and what the record says cannot be known
    /// without them.
    #[error("{0} header name(s) not UTF-8")]
    UnreadableHeaderNames(usize),
}

impl Envelope {
    /// The record headers for this event, in binary content mode.
    pub fn headers(&self) -> [(&'static str, String); 7] {
        [
            (headers::SPEC_VERSION, SPEC_VERSION.to_owned()),
            (headers::ID, self.id.to_string()),
            (headers::TYPE, self.event_type.clone()),
            (headers::SOURCE, self.source.clone()),
            (headers::TIME, self.time.to_rfc3339_opts(SecondsFormat::Micros, true)),
            (headers::SUBJECT, self.subject.clone()),
            (headers::CONTENT_TYPE, CONTENT_TYPE.to_owned()),
        ]
    }

    /// The record key: the subject's bytes.
    pub fn key(&self) -> &[u8] {
        self.subject.as_bytes()
    }

    /// Reads an envelope from a consumed record.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when a required header is missing or invalid
    /// (wrong spec version, an id that is not a UUID, a time that is not
    /// RFC 3339, a content type other than JSON) or repeated (readers that
    /// take the first and readers that take the last would see different
    /// events), when a header's name is not UTF-8, when the value is
    /// absent, or when the key differs from `ce_subject`. The data itself
    /// is not parsed here: its schema belongs to the event type.
    pub fn decode(record: &Record) -> Result<Self, EnvelopeError> {
        if record.unreadable_header_names > 0 {
            return Err(EnvelopeError::UnreadableHeaderNames(record.unreadable_header_names));
        }
        for name in headers::ALL {
            if record.headers.iter().filter(|(key, _)| key == name).count() > 1 {
                return Err(invalid(name, "repeated".to_owned()));
            }
        }
        let spec_version = required(record, headers::SPEC_VERSION)?;
        if spec_version != SPEC_VERSION {
            return Err(invalid(
                headers::SPEC_VERSION,
                format!("unsupported version `{spec_version}`"),
            ));
        }
        if let Some(content_type) = header_str(record, headers::CONTENT_TYPE)? {
            // Parameters such as `; charset=utf-8` are allowed.
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if !media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
                return Err(invalid(
                    headers::CONTENT_TYPE,
                    format!("expected `{CONTENT_TYPE}`, got `{content_type}`"),
                ));
            }
        }
        let id = required(record, headers::ID)?;
        let id = Uuid::parse_str(id).map_err(|e| invalid(headers::ID, e.to_string()))?;
        let time = required(record, headers::TIME)?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|e| invalid(headers::TIME, e.to_string()))?
            .with_timezone(&Utc);
        let event_type = non_empty(record, headers::TYPE)?;
        let source = non_empty(record, headers::SOURCE)?;
        let subject = non_empty(record, headers::SUBJECT)?;
        if record.key.as_deref() != Some(subject.as_bytes()) {
            return Err(EnvelopeError::KeyMismatch);
        }
        let data = record.value.clone().ok_or(EnvelopeError::MissingValue)?;
        Ok(Self {
            id,
            event_type,
            source,
            time,
            subject,
            data,
        })
    }
}

fn invalid(header: &'static str, reason: String) -> EnvelopeError {
    EnvelopeError::InvalidHeader { header, reason }
}

fn header_str<'r>(record: &'r Record, name: &'static str) -> Result<Option<&'r str>, EnvelopeError> {
    match record.header(name) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| invalid(name, "not UTF-8".to_owned())),
    }
}

fn required<'r>(record: &'r Record, name: &'static str) -> Result<&'r str, EnvelopeError> {
    header_str(record, name)?.ok_or(EnvelopeError::MissingHeader(name))
}

fn non_empty(record: &Record, name: &'static str) -> Result<String, EnvelopeError> {
    match required(record, name)? {
        "" => Err(invalid(name, "empty".to_owned())),
        value => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            event_type: "user.created.v1".to_owned(),
            source: "/producer".to_owned(),
            time: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            subject: Uuid::new_v4().to_string(),
            data: br#"{"user_id":"x"}"#.to_vec(),
        }
    }

    /// The record a consumer would receive for `envelope`.
    fn record_of(envelope: &Envelope) -> Record {
        Record {
            topic: "t".to_owned(),
            partition: 3,
            offset: 42,
            key: Some(envelope.key().to_vec()),
            headers: envelope
                .headers()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Some(value.into_bytes())))
                .collect(),
            value: Some(envelope.data.clone()),
            timestamp_ms: None,
            unreadable_header_names: 0,
        }
    }

    fn without_header(mut record: Record, name: &str) -> Record {
        record.headers.retain(|(key, _)| key != name);
        record
    }

    #[test]
    fn an_encoded_envelope_decodes_to_itself() {
        let original = envelope();
        assert_eq!(Envelope::decode(&record_of(&original)), Ok(original));
    }

    #[test]
    fn a_record_with_a_header_name_that_is_not_utf8_is_rejected() {
        let mut record = record_of(&envelope());
        record.unreadable_header_names = 1;
        assert_eq!(Envelope::decode(&record), Err(EnvelopeError::UnreadableHeaderNames(1)));
    }

    #[test]
    fn headers_follow_the_cloudevents_kafka_binary_mode() {
        let original = envelope();
        let headers = original.headers();
        let names: Vec<_> = headers.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "ce_specversion",
                "ce_id",
                "ce_type",
                "ce_source",
                "ce_time",
                "ce_subject",
                "content-type"
            ]
        );
        assert_eq!(headers[0].1, "1.0");
        assert_eq!(headers[4].1, "2026-11-22T10:00:00.123456Z");
        assert_eq!(original.key(), original.subject.as_bytes());
    }

    #[test]
    fn a_repeated_envelope_header_is_rejected_whichever_copy_is_valid() {
        for name in headers::ALL {
            let mut record = record_of(&envelope());
            let copy = record.headers.iter().find(|(key, _)| key == name).unwrap().clone();
            record.headers.insert(0, copy);
            assert_eq!(
                Envelope::decode(&record),
                Err(EnvelopeError::InvalidHeader {
                    header: name,
                    reason: "repeated".to_owned()
                }),
                "{name} twice"
            );
        }
        let mut record = record_of(&envelope());
        record.headers.push(("traceparent".to_owned(), None));
        record.headers.push(("traceparent".to_owned(), None));
        assert!(Envelope::decode(&record).is_ok(), "other headers may repeat");
    }

    #[test]
    fn every_required_header_is_checked() {
        for name in [
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "ce_subject",
        ] {
            let record = without_header(record_of(&envelope()), name);
            assert_eq!(
                Envelope::decode(&record),
                Err(EnvelopeError::MissingHeader(match name {
                    "ce_specversion" => headers::SPEC_VERSION,
                    "ce_id" => headers::ID,
                    "ce_type" => headers::TYPE,
                    "ce_source" => headers::SOURCE,
                    "ce_time" => headers::TIME,
                    _ => headers::SUBJECT,
                })),
                "without {name}"
            );
        }
    }

    #[test]
    fn a_malformed_id_time_or_version_is_rejected_with_the_header_named() {
        for (name, value) in [
            ("ce_id", "not-a-uuid"),
            ("ce_time", "yesterday"),
            ("ce_specversion", "0.3"),
        ] {
            let mut record = without_header(record_of(&envelope()), name);
            record.headers.push((name.to_owned(), Some(value.as_bytes().to_vec())));
            match Envelope::decode(&record) {
                Err(EnvelopeError::InvalidHeader { header, .. }) => assert_eq!(header, name),
                other => panic!("{name}={value}: expected InvalidHeader, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_key_other_than_the_subject_is_rejected() {
        let mut record = record_of(&envelope());
        record.key = Some(b"someone-else".to_vec());
        assert_eq!(Envelope::decode(&record), Err(EnvelopeError::KeyMismatch));
    }

    #[test]
    fn a_record_without_value_or_with_another_content_type_is_rejected() {
        let mut record = record_of(&envelope());
        record.value = None;
        assert_eq!(Envelope::decode(&record), Err(EnvelopeError::MissingValue));

        let mut record = without_header(record_of(&envelope()), "content-type");
        record
            .headers
            .push(("content-type".to_owned(), Some(b"text/plain".to_vec())));
        assert!(matches!(
            Envelope::decode(&record),
            Err(EnvelopeError::InvalidHeader {
                header: "content-type",
                ..
            })
        ));
    }

    #[test]
    fn a_header_that_is_not_utf8_is_rejected() {
        let mut record = without_header(record_of(&envelope()), "ce_type");
        record.headers.push(("ce_type".to_owned(), Some(vec![0xff, 0xfe])));
        assert!(matches!(
            Envelope::decode(&record),
            Err(EnvelopeError::InvalidHeader { header: "ce_type", .. })
        ));
    }
}
