//! Throttling of `POST /auth/token`: attempts per client address and per
//! username, each a token bucket (GCRA, the `governor` crate).
//!
//! A bucket of `n` attempts per minute allows a burst of `n`, then one more
//! every `60/n` seconds. Every attempt counts, successful or not, and is
//! counted before the password is checked, so a throttled guess costs no
//! argon2 time. The per-username bucket stops guessing one account's
//! password from many addresses; the per-address bucket stops one address
//! from spraying many accounts (OWASP Authentication Cheat Sheet, "Protect
//! against automated attacks").
//!
//! Buckets live in this process's memory: with several tasks, a client's
//! effective limit is `n` times the number of tasks it reaches.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// `login_limit.*`
#[derive(Debug, Clone, Deserialize)]
pub struct LoginLimitSettings {
    /// Attempts per minute from one client address.
    pub per_address_per_minute: NonZeroU32,
    /// Attempts per minute for one username (case-insensitive), from
    /// anywhere.
    pub per_username_per_minute: NonZeroU32,
    /// Take the client address from the last `X-Forwarded-For` entry, the
    /// one the load balancer appended, instead of the TCP peer. Only behind
    /// a load balancer that sets it (AWS ALB does); otherwise any client
    /// could pick its own address.
    pub trust_x_forwarded_for: bool,
}

/// Which bucket ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The client address's.
    Address,
    /// The username's.
    Username,
}

/// Refusal of an attempt: which bucket is empty and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The empty bucket.
    pub by: Exhausted,
    /// Until the bucket has room again.
    pub retry_after: Duration,
}

/// The two buckets.
pub struct LoginLimiter {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_username: DefaultKeyedRateLimiter<String>,
    trust_x_forwarded_for: bool,
    checks: AtomicU64,
}

/// Every this many checks, buckets that are full again are forgotten, so
/// memory follows the clients of the last minute, not all clients ever.
const PRUNE_EVERY: u64 = 1024;

impl LoginLimiter {
    /// Limiters with the configured quotas.
    pub fn new(settings: &LoginLimitSettings) -> Self {
        Self {
            by_address: RateLimiter::keyed(Quota::per_minute(settings.per_address_per_minute)),
            by_username: RateLimiter::keyed(Quota::per_minute(settings.per_username_per_minute)),
            trust_x_forwarded_for: settings.trust_x_forwarded_for,
            checks: AtomicU64::new(0),
        }
    }

    /// The client's address: the TCP peer, or with `trust_x_forwarded_for`
    /// the last `X-Forwarded-For` entry. `None` when there is none (a test
    /// request without a peer).
    pub fn client_address(&self, request: &HttpRequest) -> Option<IpAddr> {
        if self.trust_x_forwarded_for {
            let forwarded = request
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .last()
                .and_then(|entry| entry.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        request.peer_addr().map(|peer| peer.ip())
    }

    /// Counts one attempt from `address` for `username`.
    ///
    /// # Errors
    ///
    /// [`Throttled`] when either bucket is empty, with the wait until it is
    /// not (rounded up to whole seconds by the caller for `Retry-After`).
    pub fn check(&self, address: Option<IpAddr>, username: &str) -> Result<(), Throttled> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.by_address.retain_recent();
            self.by_username.retain_recent();
        }
        let now = DefaultClock::default().now();
        if let Some(address) = address {
            self.by_address.check_key(&address).map_err(|not_until| Throttled {
                by: Exhausted::Address,
                retry_after: not_until.wait_time_from(now),
            })?;
        }
        self.by_username
            .check_key(&username.to_lowercase())
            .map_err(|not_until| Throttled {
                by: Exhausted::Username,
                retry_after: not_until.wait_time_from(now),
            })
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn limiter(per_address: u32, per_username: u32, trust: bool) -> LoginLimiter {
        LoginLimiter::new(&LoginLimitSettings {
            per_address_per_minute: NonZeroU32::new(per_address).unwrap(),
            per_username_per_minute: NonZeroU32::new(per_username).unwrap(),
            trust_x_forwarded_for: trust,
        })
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_username_is_throttled_from_any_address_and_regardless_of_case() {
        let limiter = limiter(100, 2, false);
        assert!(limiter.check(ip("10.0.0.1"), "alice").is_ok());
        assert!(limiter.check(ip("10.0.0.2"), "Alice").is_ok());
        let throttled = limiter.check(ip("10.0.0.3"), "ALICE").unwrap_err();
        assert_eq!(throttled.by, Exhausted::Username);
        // Two per minute: the next one in about 30 s.
        assert!(
            throttled.retry_after > Duration::from_secs(25) && throttled.retry_after <= Duration::from_secs(30),
            "{:?}",
            throttled.retry_after
        );
        assert!(
            limiter.check(ip("10.0.0.3"), "bob").is_ok(),
            "other users are not affected"
        );
    }

    #[test]
    fn an_address_is_throttled_across_usernames() {
        let limiter = limiter(3, 100, false);
        for name in ["a", "b", "c"] {
            assert!(limiter.check(ip("192.0.2.7"), name).is_ok());
        }
        assert_eq!(limiter.check(ip("192.0.2.7"), "d").unwrap_err().by, Exhausted::Address);
        assert!(
            limiter.check(ip("192.0.2.8"), "d").is_ok(),
            "other addresses are not affected"
        );
    }

    #[test]
    fn x_forwarded_for_counts_only_when_trusted_and_then_its_last_entry() {
        let request = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 203.0.113.9"))
            .to_http_request();
        assert_eq!(limiter(1, 1, true).client_address(&request), ip("203.0.113.9"));
        assert_eq!(limiter(1, 1, false).client_address(&request), ip("127.0.0.1"));
    }
}
