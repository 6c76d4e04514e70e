//! The event contract between the producer and the consumer.
//!
//! Each event type has a versioned `ce_type`, a data struct serialized as
//! the record value (JSON), and a logical topic. The record key and
//! `ce_subject` are always the user id. No event carries a password, a
//! password hash or a token: only identifiers and times.
//!
//! Readers are tolerant: a field they do not know is ignored, so a new
//! optional field is a compatible change; removing or retyping a field, or
//! adding a required one, is not, and needs a new version (`...v2`), which
//! consumers then handle beside the old one. [`contract`] turns the types
//! into the JSON Schemas checked in under `docs/events/` and refuses
//! incompatible changes to them.
#![warn(missing_docs)]

use chrono::{DateTime, Utc};
use kafka_service::{Envelope, Topic};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `ce_source` of every event the producer service emits.
pub const PRODUCER_SOURCE: &str = "/producer";

pub mod contract;

/// Data of `user.created.v1`, on topic `new-user-created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserCreated {
    /// The new user's id.
    pub user_id: Uuid,
    /// Unique username.
    pub username: String,
    /// Unique email address.
    pub email: String,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
}

/// Data of `user.token_issued.v1`, on topic `issued-token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenIssued {
    /// Whose token it is.
    pub user_id: Uuid,
    /// The token's id (its `jti` claim), never the token itself.
    pub token_id: Uuid,
    /// When the token was issued.
    pub issued_at: DateTime<Utc>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

/// Every event the services exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEvent {
    /// A user was created.
    Created(UserCreated),
    /// An access token was issued to a user.
    TokenIssued(TokenIssued),
}

/// Why an envelope does not hold a known event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// `ce_type` names no event type this version knows.
    #[error("unknown event type `{0}`; this consumer handles {accepted}", accepted = UserEvent::ACCEPTED_TYPES.join(", "))]
    UnknownType(String),
    /// The data does not match the event type's schema.
    #[error("invalid data for event type `{event_type}`")]
    InvalidData {
        /// The `ce_type`.
        event_type: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// `ce_subject` is not the data's `user_id`.
    #[error("ce_subject `{subject}` is not the event's user id")]
    SubjectMismatch {
        /// The `ce_subject`.
        subject: String,
    },
}

impl UserEvent {
    /// `ce_type` of [`UserEvent::Created`].
    pub const CREATED_V1: &'static str = "user.created.v1";
    /// Every `ce_type` a consumer of this version applies: each version
    /// ever published, since records of an old version may still sit on the
    /// topics (a test checks this list against `docs/events/`).
    pub const ACCEPTED_TYPES: [&'static str; 2] = [Self::CREATED_V1, Self::TOKEN_ISSUED_V1];
    /// `ce_type` of [`UserEvent::TokenIssued`].
    pub const TOKEN_ISSUED_V1: &'static str = "user.token_issued.v1";

    /// The event's `ce_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            UserEvent::Created(_) => Self::CREATED_V1,
            UserEvent::TokenIssued(_) => Self::TOKEN_ISSUED_V1,
        }
    }

    /// The logical topic the event goes to.
    pub fn topic(&self) -> Topic {
        topic_of(self.event_type()).expect("every event type has a topic")
    }

    /// The user the event is about: its key and `ce_subject`.
    pub fn user_id(&self) -> Uuid {
        match self {
            UserEvent::Created(data) => data.user_id,
            UserEvent::TokenIssued(data) => data.user_id,
        }
    }

    /// When it happened: its `ce_time`.
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            UserEvent::Created(data) => data.created_at,
            UserEvent::TokenIssued(data) => data.issued_at,
        }
    }

    /// The event data as JSON (the record value).
    pub fn data(&self) -> serde_json::Value {
        match self {
            UserEvent::Created(data) => serde_json::to_value(data),
            UserEvent::TokenIssued(data) => serde_json::to_value(data),
        }
        .expect("event data serializes")
    }

    /// Reads the event out of an envelope.
    ///
    /// # Errors
    ///
    /// [`EventError`] when the type is unknown, the data does not match it,
    /// or the subject is not the data's user id.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, EventError> {
        let invalid = |source| EventError::InvalidData {
            event_type: envelope.event_type.clone(),
            source,
        };
        let event = match envelope.event_type.as_str() {
            Self::CREATED_V1 => UserEvent::Created(serde_json::from_slice(&envelope.data).map_err(invalid)?),
            Self::TOKEN_ISSUED_V1 => UserEvent::TokenIssued(serde_json::from_slice(&envelope.data).map_err(invalid)?),
            other => return Err(EventError::UnknownType(other.to_owned())),
        };
        if envelope.subject != event.user_id().to_string() {
            return Err(EventError::SubjectMismatch {
                subject: envelope.subject.clone(),
            });
        }
        Ok(event)
    }
}

/// The logical topic of events of type `event_type`, if it is known.
pub fn topic_of(event_type: &str) -> Option<Topic> {
    match event_type {
        UserEvent::CREATED_V1 => Some(Topic::NewUserCreated),
        UserEvent::TOKEN_ISSUED_V1 => Some(Topic::IssuedToken),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_issued() -> UserEvent {
        let now = Utc::now();
        UserEvent::TokenIssued(TokenIssued {
            user_id: Uuid::new_v4(),
            token_id: Uuid::new_v4(),
            issued_at: now,
            expires_at: now + chrono::Duration::minutes(15),
        })
    }

    fn envelope_of(event: &UserEvent) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            source: PRODUCER_SOURCE.to_owned(),
            time: event.time(),
            subject: event.user_id().to_string(),
            data: serde_json::to_vec(&event.data()).unwrap(),
        }
    }

    #[test]
    fn an_event_reads_back_from_its_envelope() {
        let event = token_issued();
        assert_eq!(UserEvent::from_envelope(&envelope_of(&event)).unwrap(), event);
    }

    #[test]
    fn events_go_to_their_topics_with_versioned_types() {
        let event = token_issued();
        assert_eq!(event.topic(), Topic::IssuedToken);
        assert_eq!(event.event_type(), "user.token_issued.v1");
    }

    #[test]
    fn an_unknown_type_missing_field_or_foreign_subject_is_rejected() {
        let mut envelope = envelope_of(&token_issued());
        envelope.event_type = "user.deleted.v1".to_owned();
        assert!(matches!(
            UserEvent::from_envelope(&envelope),
            Err(EventError::UnknownType(_))
        ));

        let error = UserEvent::from_envelope(&envelope).unwrap_err().to_string();
        assert!(
            error.contains("handles user.created.v1, user.token_issued.v1"),
            "{error}"
        );

        let mut envelope = envelope_of(&token_issued());
        let mut data: serde_json::Value = serde_json::from_slice(&envelope.data).unwrap();
        data.as_object_mut().unwrap().remove("token_id");
        envelope.data = serde_json::to_vec(&data).unwrap();
        assert!(matches!(
            UserEvent::from_envelope(&envelope),
            Err(EventError::InvalidData { .. })
        ));

        let mut envelope = envelope_of(&token_issued());
        envelope.subject = Uuid::new_v4().to_string();
        assert!(matches!(
            UserEvent::from_envelope(&envelope),
            Err(EventError::SubjectMismatch { .. })
        ));
    }

    #[test]
    fn a_field_the_reader_does_not_know_is_ignored() {
        let event = token_issued();
        let mut envelope = envelope_of(&event);
        let mut data: serde_json::Value = serde_json::from_slice(&envelope.data).unwrap();
        data["added_in_a_later_release"] = "x".into();
        envelope.data = serde_json::to_vec(&data).unwrap();
        assert_eq!(UserEvent::from_envelope(&envelope).unwrap(), event);
    }

    #[test]
    fn event_data_carries_no_secret_fields() {
        let data = token_issued().data();
        let keys: Vec<_> = data.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["expires_at", "issued_at", "token_id", "user_id"]);
    }
}
