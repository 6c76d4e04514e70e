//! Password hashing with argon2id.
//!
//! Parameters: the `argon2` crate's defaults, Argon2id v19 with m = 19 MiB,
//! t = 2, p = 1, the first configuration OWASP's Password Storage Cheat
//! Sheet recommends. Hashing takes tens of milliseconds of CPU, so it runs
//! on the blocking thread pool, never on an async worker.
//!
//! At most one hash per CPU core runs at a time; further requests wait
//! their turn. Hashing is CPU-bound, so more at once would not finish
//! sooner, and each one holds 19 MiB, so this also bounds the memory that
//! a burst of logins takes to cores × 19 MiB.

use std::sync::OnceLock;

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

/// Hashes `password` into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
///
/// # Errors
///
/// Only if the blocking pool is gone or argon2 rejects its own parameters.
pub async fn hash(password: SecretString) -> anyhow::Result<String> {
    let _turn = turn().await;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
    })
    .await
    .context("password hashing task failed")?
}

/// Whether `password` matches `stored_hash`. With no stored hash (unknown
/// user) it verifies against a fixed dummy hash and returns `false`, so an
/// unknown username costs the same time as a wrong password.
///
/// # Errors
///
/// When a stored hash is not a valid PHC string.
pub async fn verify(password: SecretString, stored_hash: Option<String>) -> anyhow::Result<bool> {
    let _turn = turn().await;
    tokio::task::spawn_blocking(move || {
        let known = stored_hash.is_some();
        let stored = stored_hash.as_deref().unwrap_or_else(|| dummy_hash());
        let parsed = PasswordHash::new(stored).map_err(|e| anyhow::anyhow!("stored password hash is invalid: {e}"))?;
        let matches = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        Ok(known && matches)
    })
    .await
    .context("password verification task failed")?
}

/// Waits until fewer hashes than CPU cores are running.
async fn turn() -> tokio::sync::SemaphorePermit<'static> {
    static CORES: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let cores = CORES.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    });
    cores.acquire().await.expect("the semaphore is never closed")
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"dummy password", &salt)
            .expect("argon2 hashes")
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash(secret("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(secret("correct horse"), Some(hash.clone())).await.unwrap());
        assert!(!verify(secret("wrong horse"), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        assert!(!verify(secret("dummy password"), None).await.unwrap());
    }
}
