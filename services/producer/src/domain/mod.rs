//! Request data parsed into domain types. Parse, don't validate: a value of
//! these types is valid by construction.
//!
//! Rules:
//! - username: 3 to 32 characters, ASCII letters, digits, `_`, `-`, `.`;
//!   unique regardless of case;
//! - email: an address `email_address` accepts (RFC 5322 `addr-spec`), at
//!   most 254 characters (RFC 5321 path limit); unique regardless of case;
//! - password: 8 to 128 characters (OWASP Authentication Cheat Sheet: at
//!   least 8; the upper bound caps hashing cost).

use secrecy::SecretString;

/// A rule a field broke, for a `422` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// The request field.
    pub field: &'static str,
    /// The rule, in words.
    pub rule: &'static str,
}

/// A valid username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Parses a username.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] when the length or a character breaks the rules.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !(3..=32).contains(&raw.len()) {
            return Err(ValidationError {
                field: "username",
                rule: "must be 3 to 32 characters",
            });
        }
        if !raw.chars().all(valid_char) {
            return Err(ValidationError {
                field: "username",
                rule: "may contain only letters, digits, `_`, `-` and `.`",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The username.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an email address.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] when it is not an address or is too long.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.len() > 254 {
            return Err(ValidationError {
                field: "email",
                rule: "must be at most 254 characters",
            });
        }
        if !email_address::EmailAddress::is_valid(raw) {
            return Err(ValidationError {
                field: "email",
                rule: "must be an email address",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the rules; a secret.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// Parses a password.
    ///
    /// # Errors
    ///
    /// [`ValidationError`] when it is shorter than 8 or longer than 128
    /// characters.
    pub fn parse(raw: SecretString) -> Result<Self, ValidationError> {
        use secrecy::ExposeSecret;
        if !(8..=128).contains(&raw.expose_secret().chars().count()) {
            return Err(ValidationError {
                field: "password",
                rule: "must be 8 to 128 characters",
            });
        }
        Ok(Self(raw))
    }

    /// The password.
    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

/// A valid `POST /users` request.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Its username.
    pub username: Username,
    /// Its email address.
    pub email: Email,
    /// Its password.
    pub password: Password,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_length_and_character_rules() {
        assert!(Username::parse("ada.lovelace_1").is_ok());
        for bad in ["ab", &"a".repeat(33), "has space", "semi;colon", "ünï"] {
            assert_eq!(Username::parse(bad).unwrap_err().field, "username", "{bad:?}");
        }
    }

    #[test]
    fn emails_must_be_addresses_of_bounded_length() {
        assert!(Email::parse("ada@example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            &format!("{}@example.com", "a".repeat(250)),
        ] {
            assert_eq!(Email::parse(bad).unwrap_err().field, "email", "{bad:?}");
        }
    }

    #[test]
    fn passwords_must_be_8_to_128_characters() {
        let parse = |s: &str| Password::parse(SecretString::from(s.to_owned()));
        assert!(parse("eight ch").is_ok());
        assert!(parse(&"p".repeat(128)).is_ok());
        assert!(parse("seven c").is_err());
        assert!(parse(&"p".repeat(129)).is_err());
    }
}
