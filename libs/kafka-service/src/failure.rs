//! Records that failed: their copies on the retry topic and the dead-letter
//! topic, and the headers those copies carry.
//!
//! A copy keeps the original key, value and headers, and adds the headers
//! below (values are UTF-8 text). Headers this module added to an earlier
//! copy are replaced, never repeated, so a record that went through the retry
//! topic five times still carries one `retry-round`.
//!
//! | header             | on            | value                                                         |
//! |--------------------|---------------|---------------------------------------------------------------|
//! | `origin-topic`     | retry, dead   | topic the record was first consumed from                      |
//! | `origin-partition` | retry, dead   | its partition there                                           |
//! | `origin-offset`    | retry, dead   | its offset there                                              |
//! | `attempts`         | retry, dead   | processing attempts so far, in-place retries included         |
//! | `retry-round`      | retry         | `0`: parked behind an earlier record of its key, not tried yet; `n`: the n-th round on the retry topic |
//! | `retry-not-before` | retry         | earliest time of the next attempt, RFC 3339 UTC               |
//! | `error-message`    | retry, dead   | the last error, with its causes                               |
//! | `error-class`      | dead          | [`FailureClass`]: `permanent` or `exhausted`                  |
//! | `failed-at`        | dead          | when it was dead-lettered, RFC 3339 UTC                       |
//! | `dropped-content`  | dead          | what [`without_content`] left out, with sizes: the whole copy was larger than the topic accepts |

use chrono::{DateTime, SecondsFormat, Utc};

use crate::consumer::Record;
use crate::producer::OutgoingRecord;

/// Header names added to retry and dead-letter copies.
pub mod header {
    /// Topic the record was first consumed from.
    pub const ORIGIN_TOPIC: &str = "origin-topic";
    /// Partition of the record on its origin topic.
    pub const ORIGIN_PARTITION: &str = "origin-partition";
    /// Offset of the record on its origin topic.
    pub const ORIGIN_OFFSET: &str = "origin-offset";
    /// Processing attempts so far, in-place retries included.
    pub const ATTEMPTS: &str = "attempts";
    /// Retry round this copy is for; `0` for a record parked behind another.
    pub const RETRY_ROUND: &str = "retry-round";
    /// Earliest time of the next attempt (RFC 3339, UTC).
    pub const RETRY_NOT_BEFORE: &str = "retry-not-before";
    /// The last error, with its causes.
    pub const ERROR_MESSAGE: &str = "error-message";
    /// Why the record was dead-lettered ([`super::FailureClass`]).
    pub const ERROR_CLASS: &str = "error-class";
    /// When the record was dead-lettered (RFC 3339, UTC).
    pub const FAILED_AT: &str = "failed-at";
    /// What a dead letter left out of the record (see
    /// [`super::without_content`]).
    pub const DROPPED_CONTENT: &str = "dropped-content";

    /// Every header this module adds.
    pub const ALL: [&str; 10] = [
        ORIGIN_TOPIC,
        ORIGIN_PARTITION,
        ORIGIN_OFFSET,
        ATTEMPTS,
        RETRY_ROUND,
        RETRY_NOT_BEFORE,
        ERROR_MESSAGE,
        ERROR_CLASS,
        FAILED_AT,
        DROPPED_CONTENT,
    ];
}

/// Where a record was first consumed from: its own coordinates, or those in
/// its `origin-*` headers when it is a retry or dead-letter copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The origin topic.
    pub topic: String,
    /// The partition on the origin topic.
    pub partition: i32,
    /// The offset on the origin topic.
    pub offset: i64,
}

impl Origin {
    /// The origin of `record`.
    ///
    /// # Errors
    ///
    /// [`FailureHeaderError`] when the record has `origin-*` headers but one
    /// is missing or not a number.
    pub fn of(record: &Record) -> Result<Self, FailureHeaderError> {
        if record.header(header::ORIGIN_TOPIC).is_none() {
            return Ok(Self::consumed_at(record));
        }
        Ok(Self {
            topic: text(record, header::ORIGIN_TOPIC)?.to_owned(),
            partition: number(record, header::ORIGIN_PARTITION)?,
            offset: number(record, header::ORIGIN_OFFSET)?,
        })
    }
}

impl Origin {
    /// Where `record` itself was consumed, whatever its headers say.
    pub fn consumed_at(record: &Record) -> Self {
        Self {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// The failure headers of a retry copy, one shape both ways: a copy is
/// written from it ([`RetryHeaders::copy`]) and read back into it
/// ([`RetryHeaders::of`]), so what is written is what is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryHeaders {
    /// Where the record came from.
    pub origin: Origin,
    /// `0` when the record was parked behind another and never tried;
    /// otherwise the retry round this copy is for (1-based).
    pub round: u32,
    /// Processing attempts so far, in-place retries included.
    pub attempts: u32,
    /// Earliest time of the next attempt (written with millisecond
    /// precision).
    pub not_before: DateTime<Utc>,
    /// The last error, with its causes.
    pub error: String,
}

impl RetryHeaders {
    /// Reads the retry headers of `record`.
    ///
    /// # Errors
    ///
    /// [`FailureHeaderError`] when a retry header is missing or malformed
    /// (a record put on the retry topic by something else).
    pub fn of(record: &Record) -> Result<Self, FailureHeaderError> {
        if record.header(header::ORIGIN_TOPIC).is_none() {
            return Err(FailureHeaderError::Missing(header::ORIGIN_TOPIC));
        }
        Ok(Self {
            origin: Origin::of(record)?,
            round: number(record, header::RETRY_ROUND)?,
            attempts: number(record, header::ATTEMPTS)?,
            not_before: time(record, header::RETRY_NOT_BEFORE)?,
            error: text(record, header::ERROR_MESSAGE)?.to_owned(),
        })
    }

    /// A copy of `record` for the retry topic, carrying these headers.
    pub fn copy(&self, record: &Record) -> OutgoingRecord {
        copy(
            record,
            &self.origin,
            [
                (header::ATTEMPTS, self.attempts.to_string()),
                (header::RETRY_ROUND, self.round.to_string()),
                (header::RETRY_NOT_BEFORE, rfc3339(self.not_before)),
                (header::ERROR_MESSAGE, self.error.clone()),
            ],
        )
    }
}

/// The failure headers of a dead-letter copy, one shape both ways, as
/// [`RetryHeaders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    /// Where the record came from.
    pub origin: Origin,
    /// Why it was dead-lettered.
    pub class: FailureClass,
    /// Processing attempts, in-place retries included.
    pub attempts: u32,
    /// The last error, with its causes.
    pub error: String,
    /// When it was dead-lettered (written with millisecond precision).
    pub failed_at: DateTime<Utc>,
}

impl DeadLetterHeaders {
    /// Reads the dead-letter headers of `record`.
    ///
    /// # Errors
    ///
    /// [`FailureHeaderError`] when a dead-letter header is missing or
    /// malformed (a record put on the dead-letter topic by something else).
    pub fn of(record: &Record) -> Result<Self, FailureHeaderError> {
        if record.header(header::ORIGIN_TOPIC).is_none() {
            return Err(FailureHeaderError::Missing(header::ORIGIN_TOPIC));
        }
        Ok(Self {
            origin: Origin::of(record)?,
            class: text(record, header::ERROR_CLASS)?
                .parse()
                .map_err(|_| FailureHeaderError::Malformed(header::ERROR_CLASS))?,
            attempts: number(record, header::ATTEMPTS)?,
            error: text(record, header::ERROR_MESSAGE)?.to_owned(),
            failed_at: time(record, header::FAILED_AT)?,
        })
    }

    /// A copy of `record` for the dead-letter topic, carrying these headers.
    pub fn copy(&self, record: &Record) -> OutgoingRecord {
        copy(
            record,
            &self.origin,
            [
                (header::ATTEMPTS, self.attempts.to_string()),
                (header::ERROR_CLASS, self.class.as_str().to_owned()),
                (header::ERROR_MESSAGE, self.error.clone()),
                (header::FAILED_AT, rfc3339(self.failed_at)),
            ],
        )
    }
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// It can never be processed: not a valid envelope, an unknown event
    /// type, invalid data.
    Permanent,
    /// It failed every in-place retry and every retry round.
    Exhausted,
}

impl FailureClass {
    /// The `error-class` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Permanent => "permanent",
            FailureClass::Exhausted => "exhausted",
        }
    }
}

impl std::str::FromStr for FailureClass {
    type Err = ();

    /// The class an `error-class` header value names.
    fn from_str(value: &str) -> Result<Self, ()> {
        match value {
            "permanent" => Ok(FailureClass::Permanent),
            "exhausted" => Ok(FailureClass::Exhausted),
            _ => Err(()),
        }
    }
}

/// `record` as it was before it failed: original key, value and headers,
/// without the failure headers (to redrive a dead letter to its origin).
pub fn original(record: &Record) -> OutgoingRecord {
    OutgoingRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: without_failure_headers(record),
    }
}

/// Longest key a copy [`without_content`] keeps, in bytes. Keys of this
/// project are UUIDs (36 bytes); a longer one is a hostile peer's.
pub const KEPT_KEY_BYTES: usize = 1024;

/// Longest `error-message` a copy [`without_content`] keeps, in bytes (cut
/// at a character boundary).
pub const KEPT_ERROR_BYTES: usize = 1024;

/// `copy` (a dead-letter copy) without the record's value and original
/// headers, and without its key when that is over [`KEPT_KEY_BYTES`]: what
/// goes to the dead-letter topic when the whole copy is larger than the
/// producer or the topic accepts (`message.max.bytes`,
/// `max.message.bytes`). A record close to the size limit fits its own
/// topic but not with the failure headers added, and a copy that can never
/// be written would stop its partition for good.
///
/// The failure headers stay, `error-message` cut to [`KEPT_ERROR_BYTES`],
/// and `dropped-content` says what was left out and how large it was
/// (`value (1048000 bytes), 7 header(s) (412 bytes)`). The original stays at
/// `origin-topic`, `origin-partition`, `origin-offset` while that topic
/// retains it.
pub fn without_content(copy: &OutgoingRecord) -> OutgoingRecord {
    let (failure, original): (Vec<_>, Vec<_>) = copy
        .headers
        .iter()
        .partition(|(name, _)| header::ALL.contains(&name.as_str()));
    let mut dropped = Vec::new();
    if let Some(value) = &copy.value {
        dropped.push(format!("value ({} bytes)", value.len()));
    }
    if !original.is_empty() {
        let bytes: usize = original
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        dropped.push(format!("{} header(s) ({bytes} bytes)", original.len()));
    }
    let key = match &copy.key {
        Some(key) if key.len() > KEPT_KEY_BYTES => {
            dropped.push(format!("key ({} bytes)", key.len()));
            None
        }
        key => key.clone(),
    };
    // A copy already without content drops nothing more: it keeps saying
    // what its first shrinking dropped.
    let said = match failure.iter().find(|(name, _)| name == header::DROPPED_CONTENT) {
        Some((_, Some(earlier))) if dropped.is_empty() => earlier.clone(),
        _ => dropped.join(", ").into_bytes(),
    };
    let mut headers: Vec<_> = failure
        .into_iter()
        .filter(|(name, _)| name != header::DROPPED_CONTENT)
        .map(|(name, value)| {
            let value = match value {
                Some(value) if name == header::ERROR_MESSAGE => Some(cut_at_char(value, KEPT_ERROR_BYTES).to_vec()),
                value => value.clone(),
            };
            (name.clone(), value)
        })
        .collect();
    headers.push((header::DROPPED_CONTENT.to_owned(), Some(said)));
    OutgoingRecord {
        key,
        value: None,
        headers,
    }
}

/// The longest prefix of `text` of at most `limit` bytes that does not end
/// inside a UTF-8 character (`text` is UTF-8, as every failure header is).
fn cut_at_char(text: &[u8], limit: usize) -> &[u8] {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    // A continuation byte is 0b10xx_xxxx.
    while end > 0 && text[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &text[..end]
}

fn copy<const N: usize>(record: &Record, origin: &Origin, extra: [(&str, String); N]) -> OutgoingRecord {
    let mut headers = without_failure_headers(record);
    headers.extend(
        [
            (header::ORIGIN_TOPIC, origin.topic.clone()),
            (header::ORIGIN_PARTITION, origin.partition.to_string()),
            (header::ORIGIN_OFFSET, origin.offset.to_string()),
        ]
        .into_iter()
        .chain(extra)
        .map(|(name, value)| (name.to_owned(), Some(value.into_bytes()))),
    );
    OutgoingRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
    }
}

fn without_failure_headers(record: &Record) -> Vec<(String, Option<Vec<u8>>)> {
    record
        .headers
        .iter()
        .filter(|(name, _)| !header::ALL.contains(&name.as_str()))
        .cloned()
        .collect()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn text<'r>(record: &'r Record, name: &'static str) -> Result<&'r str, FailureHeaderError> {
    let value = record.header(name).ok_or(FailureHeaderError::Missing(name))?;
    std::str::from_utf8(value).map_err(|_| FailureHeaderError::Malformed(name))
}

fn time(record: &Record, name: &'static str) -> Result<DateTime<Utc>, FailureHeaderError> {
    DateTime::parse_from_rfc3339(text(record, name)?)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| FailureHeaderError::Malformed(name))
}

fn number<T: std::str::FromStr>(record: &Record, name: &'static str) -> Result<T, FailureHeaderError> {
    text(record, name)?
        .parse()
        .map_err(|_| FailureHeaderError::Malformed(name))
}

/// A retry or dead-letter header that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureHeaderError {
    /// The header is absent.
    #[error("missing header `{0}`")]
    Missing(&'static str),
    /// The header's value cannot be parsed.
    #[error("malformed header `{0}`")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            topic: "issued-token".to_owned(),
            partition: 3,
            offset: 41,
            key: Some(b"user-1".to_vec()),
            headers: vec![("ce_type".to_owned(), Some(b"user.token_issued.v1".to_vec()))],
            value: Some(b"{}".to_vec()),
            timestamp_ms: None,
            unreadable_header_names: 0,
        }
    }

    fn consumed(topic: &str, copy: OutgoingRecord) -> Record {
        Record {
            topic: topic.to_owned(),
            partition: 0,
            offset: 7,
            key: copy.key,
            headers: copy.headers,
            value: copy.value,
            timestamp_ms: None,
            unreadable_header_names: 0,
        }
    }

    #[test]
    fn a_record_that_never_failed_is_its_own_origin() {
        let origin = Origin::of(&record()).unwrap();
        assert_eq!(origin.to_string(), "issued-token[3]@41");
    }

    fn at(time: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(time).unwrap().with_timezone(&Utc)
    }

    fn retry(origin: &Origin, round: u32, attempts: u32, error: &str) -> RetryHeaders {
        RetryHeaders {
            origin: origin.clone(),
            round,
            attempts,
            not_before: at("2026-11-22T10:00:00.250Z"),
            error: error.to_owned(),
        }
    }

    #[test]
    fn a_retry_copy_keeps_key_value_and_headers_and_round_trips_its_headers() {
        let original = record();
        let origin = Origin::of(&original).unwrap();
        let headers = retry(&origin, 2, 7, "timed out");
        let copy = consumed("retry", headers.copy(&original));

        assert_eq!(copy.key, original.key);
        assert_eq!(copy.value, original.value);
        assert_eq!(copy.header("ce_type"), Some(&b"user.token_issued.v1"[..]));
        assert_eq!(RetryHeaders::of(&copy).unwrap(), headers);
        assert_eq!(copy.header(header::ERROR_MESSAGE), Some(&b"timed out"[..]));
    }

    #[test]
    fn a_dead_letter_copy_round_trips_its_headers() {
        let original = record();
        let headers = DeadLetterHeaders {
            origin: Origin::of(&original).unwrap(),
            class: FailureClass::Permanent,
            attempts: 4,
            error: "invalid data: missing field `email`".to_owned(),
            failed_at: at("2026-11-22T10:00:01.500Z"),
        };
        let dead = consumed("dead", headers.copy(&original));
        assert_eq!(DeadLetterHeaders::of(&dead).unwrap(), headers);
        assert_eq!(dead.header(header::ERROR_CLASS), Some(&b"permanent"[..]));
        assert_eq!(
            DeadLetterHeaders::of(&original),
            Err(FailureHeaderError::Missing(header::ORIGIN_TOPIC))
        );
    }

    #[test]
    fn a_copy_without_content_keeps_the_failure_headers_and_says_what_it_dropped() {
        let mut original = record();
        original.value = Some(vec![b'A'; 1000]);
        let headers = DeadLetterHeaders {
            origin: Origin::of(&original).unwrap(),
            class: FailureClass::Permanent,
            attempts: 1,
            // 2-byte characters across the cut.
            error: "é".repeat(KEPT_ERROR_BYTES),
            failed_at: at("2026-11-22T10:00:01.500Z"),
        };
        let full = headers.copy(&original);
        let small = without_content(&full);
        assert_eq!(small.key, original.key, "a short key is kept");
        assert_eq!(small.value, None);
        let dead = consumed("dead", small.clone());
        let read = DeadLetterHeaders::of(&dead).unwrap();
        assert_eq!(read.origin, headers.origin);
        assert_eq!(read.error, "é".repeat(KEPT_ERROR_BYTES / 2), "cut at a character");
        assert_eq!(dead.header("ce_type"), None, "the original's headers are dropped");
        assert_eq!(
            dead.header(header::DROPPED_CONTENT),
            Some(&b"value (1000 bytes), 1 header(s) (27 bytes)"[..])
        );
        assert_eq!(without_content(&small), small, "shrinking twice changes nothing");

        let mut long_key = full;
        long_key.key = Some(vec![b'k'; KEPT_KEY_BYTES + 1]);
        let dead = consumed("dead", without_content(&long_key));
        assert_eq!(dead.key, None);
        assert_eq!(
            dead.header(header::DROPPED_CONTENT),
            Some(&b"value (1000 bytes), 1 header(s) (27 bytes), key (1025 bytes)"[..])
        );
    }

    #[test]
    fn copying_a_copy_replaces_failure_headers_instead_of_repeating_them() {
        let original = record();
        let origin = Origin::of(&original).unwrap();
        let first = consumed("retry", retry(&origin, 1, 3, "first").copy(&original));
        // The copy's origin is still the original record, not the retry topic.
        assert_eq!(Origin::of(&first).unwrap(), origin);
        let dead = DeadLetterHeaders {
            origin: origin.clone(),
            class: FailureClass::Exhausted,
            attempts: 9,
            error: "last".to_owned(),
            failed_at: Utc::now(),
        };
        let dead = consumed("dead", dead.copy(&first));

        let count = |name: &str| dead.headers.iter().filter(|(key, _)| key == name).count();
        assert_eq!(count(header::ERROR_MESSAGE), 1);
        assert_eq!(count(header::ORIGIN_TOPIC), 1);
        assert_eq!(count(header::RETRY_ROUND), 0);
        assert_eq!(dead.header(header::ERROR_CLASS), Some(&b"exhausted"[..]));
        assert_eq!(dead.header(header::ORIGIN_OFFSET), Some(&b"41"[..]));

        let redriven = super::original(&dead);
        assert_eq!(redriven.headers, original.headers);
    }

    #[test]
    fn a_record_without_retry_headers_has_no_retry_headers() {
        assert_eq!(
            RetryHeaders::of(&record()),
            Err(FailureHeaderError::Missing(header::ORIGIN_TOPIC))
        );
        let origin = Origin::of(&record()).unwrap();
        let mut bad = consumed("retry", retry(&origin, 1, 1, "x").copy(&record()));
        bad.headers
            .push((header::RETRY_ROUND.to_owned(), Some(b"one".to_vec())));
        assert_eq!(
            RetryHeaders::of(&bad),
            Err(FailureHeaderError::Malformed(header::RETRY_ROUND))
        );
    }
}
