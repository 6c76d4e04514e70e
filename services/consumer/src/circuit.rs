//! Circuit breakers for the two dependencies a record's handling calls:
//! the consumer's database and the producer's `GET /users/{id}`.
//!
//! A dependency's breaker opens after `circuit_breaker.failure_threshold`
//! consecutive transient failures of calls to it, and stays open for
//! `open_min_secs`, doubling after each failed probe up to
//! `open_max_secs` (failsafe's `consecutive_failures` and `exponential`;
//! its jittered backoffs may draw 0 s, which would make the open time no
//! time at all). Then it is half-open: calls go through again, and
//! the first success closes it, the first failure opens it again.
//!
//! While a breaker is not closed, a failure of its dependency is the
//! outage's, not the record's: [`crate::delivery`] does not count it as a
//! try or a retry round. A record that needs the database waits for the
//! breaker; one that needs the producer is parked (or copied to the retry
//! topic again at the same round), so that the records behind it that do
//! not need the producer keep flowing. A record that fails while its dependency's
//! breaker is closed goes through the retry schedule as before. See
//! `docs/delivery.md`, "Outages".
//!
//! Each breaker's state is in the gauge `dependency_circuit_state
//! {dependency}` (0 closed, 1 half-open, 2 open), its openings in
//! `dependency_circuit_opened_total{dependency}`, its changes in the logs,
//! and its state in readiness' body.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use failsafe::backoff::{self, Exponential};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use service_common::configuration::ConfigurationError;
use service_common::metrics::Registry;
use tokio_util::sync::CancellationToken;

/// How often a record waiting for an open breaker asks whether it lets
/// calls through again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A dependency of a record's handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// The consumer's own PostgreSQL database: every record needs it.
    Database,
    /// The producer's `GET /users/{id}`: a token of a user the read model
    /// does not have needs it.
    Producer,
}

impl Dependency {
    /// Its name in metrics, logs and readiness: `database` or `producer`.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Producer => "producer",
        }
    }
}

/// `circuit_breaker.*`: when a dependency counts as down.
#[derive(Debug, Clone, Deserialize)]
pub struct CircuitBreakerSettings {
    /// Consecutive transient failures of calls to a dependency that open
    /// its breaker.
    pub failure_threshold: u32,
    /// How long a breaker first stays open before it lets a call through,
    /// in whole seconds (at least 1: failsafe's backoff counts in seconds).
    pub open_min_secs: u64,
    /// The longest it stays open after failed probes, in whole seconds.
    pub open_max_secs: u64,
}

impl CircuitBreakerSettings {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigurationError::Invalid`] when the threshold is 0, or the open
    /// times are below 1 s or in the wrong order.
    pub fn check(&self) -> Result<(), ConfigurationError> {
        if self.failure_threshold == 0 || self.open_min_secs == 0 || self.open_max_secs < self.open_min_secs {
            return Err(ConfigurationError::Invalid(format!(
                "circuit_breaker: failure_threshold ({}) must be at least 1, and \
                 1 <= open_min_secs ({}) <= open_max_secs ({})",
                self.failure_threshold, self.open_min_secs, self.open_max_secs
            )));
        }
        Ok(())
    }
}

/// The breakers of both dependencies. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct Breakers {
    database: Breaker,
    producer: Breaker,
    /// `open_max_secs`.
    longest_open: Duration,
}

impl Breakers {
    /// Closed breakers under `settings` (already [checked](CircuitBreakerSettings::check)),
    /// their metrics registered in `registry`.
    pub fn new(settings: &CircuitBreakerSettings, registry: &mut Registry) -> Self {
        let states = Family::<DependencyLabels, Gauge>::default();
        let opened = Family::<DependencyLabels, Counter>::default();
        registry.register(
            "dependency_circuit_state",
            "State of a dependency's circuit breaker: 0 closed, 1 half-open, 2 open",
            states.clone(),
        );
        registry.register(
            "dependency_circuit_opened",
            "Times a dependency's circuit breaker opened",
            opened.clone(),
        );
        let breaker = |dependency| Breaker::new(dependency, settings, &states, &opened);
        Self {
            database: breaker(Dependency::Database),
            producer: breaker(Dependency::Producer),
            longest_open: Duration::from_secs(settings.open_max_secs),
        }
    }

    /// The longest a breaker stays open before it lets calls through
    /// (`open_max_secs`).
    pub fn longest_open(&self) -> Duration {
        self.longest_open
    }

    /// The breaker of `dependency`.
    pub fn of(&self, dependency: Dependency) -> &Breaker {
        match dependency {
            Dependency::Database => &self.database,
            Dependency::Producer => &self.producer,
        }
    }

    /// Each dependency's state, for readiness: `[("database", "closed"),
    /// ("producer", "open")]`.
    pub fn states(&self) -> [(&'static str, &'static str); 2] {
        [&self.database, &self.producer].map(|breaker| (breaker.transitions.dependency.name(), breaker.state()))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

/// One dependency's breaker.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Exponential>, Transitions>,
    transitions: Transitions,
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

impl Breaker {
    fn new(
        dependency: Dependency,
        settings: &CircuitBreakerSettings,
        states: &Family<DependencyLabels, Gauge>,
        opened: &Family<DependencyLabels, Counter>,
    ) -> Self {
        let labels = DependencyLabels {
            dependency: dependency.name(),
        };
        let transitions = Transitions {
            dependency,
            state: Arc::new(AtomicU8::new(CLOSED)),
            gauge: states.get_or_create(&labels).clone(),
            opened: opened.get_or_create(&labels).clone(),
        };
        let backoff = backoff::exponential(
            Duration::from_secs(settings.open_min_secs),
            Duration::from_secs(settings.open_max_secs),
        );
        let policy = failure_policy::consecutive_failures(settings.failure_threshold, backoff);
        Self {
            machine: StateMachine::new(policy, transitions.clone()),
            transitions,
        }
    }

    /// Whether a call may go out now: `true` when closed or half-open, and
    /// when open past its open time (it turns half-open then).
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// Records a call that the dependency answered.
    pub fn succeeded(&self) {
        self.machine.on_success();
    }

    /// Records a call that failed transiently.
    pub fn failed(&self) {
        self.machine.on_error();
    }

    /// Whether the breaker is closed: the dependency's last calls did not
    /// fail `failure_threshold` times in a row. A failure recorded while it
    /// is not closed is the outage's, not the record's.
    pub fn is_closed(&self) -> bool {
        self.transitions.state.load(Ordering::Relaxed) == CLOSED
    }

    /// `closed`, `half_open` or `open`.
    pub fn state(&self) -> &'static str {
        match self.transitions.state.load(Ordering::Relaxed) {
            CLOSED => "closed",
            HALF_OPEN => "half_open",
            _ => "open",
        }
    }

    /// Waits until the breaker lets a call through; `false` when `cancel`
    /// is cancelled first.
    pub async fn wait(&self, cancel: &CancellationToken) -> bool {
        while !self.permits() {
            if cancel
                .run_until_cancelled(tokio::time::sleep(WAIT_POLL))
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }
}

/// Keeps a breaker's state where metrics, logs and readiness see it.
#[derive(Clone)]
struct Transitions {
    dependency: Dependency,
    state: Arc<AtomicU8>,
    gauge: Gauge,
    opened: Counter,
}

impl Transitions {
    /// Sets the state; returns the one before.
    fn set(&self, state: u8) -> u8 {
        self.gauge.set(i64::from(state));
        self.state.swap(state, Ordering::Relaxed)
    }
}

impl Instrument for Transitions {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.opened.inc();
        if self.set(OPEN) == CLOSED {
            tracing::warn!(
                dependency = self.dependency.name(),
                "circuit open: the dependency fails every call; records that need it wait, and their retries are not counted"
            );
        }
    }

    fn on_half_open(&self) {
        self.set(HALF_OPEN);
        tracing::info!(
            dependency = self.dependency.name(),
            "circuit half-open: trying the dependency again"
        );
    }

    fn on_closed(&self) {
        if self.set(CLOSED) != CLOSED {
            tracing::info!(
                dependency = self.dependency.name(),
                "circuit closed: the dependency answers again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> (Breaker, Registry) {
        let mut registry = Registry::default();
        let settings = CircuitBreakerSettings {
            failure_threshold: threshold,
            open_min_secs: 1,
            open_max_secs: 1,
        };
        let breakers = Breakers::new(&settings, &mut registry);
        (breakers.of(Dependency::Producer).clone(), registry)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let (breaker, _) = breaker(3);
        breaker.failed();
        breaker.failed();
        breaker.succeeded();
        breaker.failed();
        breaker.failed();
        assert!(breaker.is_closed(), "a success in between starts the count again");
        breaker.failed();
        assert_eq!(breaker.state(), "open");
        assert!(!breaker.permits());
    }

    #[tokio::test]
    async fn half_opens_after_its_open_time_and_closes_on_a_success() {
        let (breaker, _) = breaker(1);
        breaker.failed();
        assert_eq!(breaker.state(), "open");
        let waited = tokio::time::timeout(Duration::from_secs(3), breaker.wait(&CancellationToken::new()))
            .await
            .expect("half-open after its open time, 1 s");
        assert!(waited);
        assert_eq!(breaker.state(), "half_open");
        breaker.succeeded();
        assert!(breaker.is_closed());
    }

    #[test]
    fn settings_below_one_second_or_out_of_order_are_refused() {
        let settings = |threshold, min, max| CircuitBreakerSettings {
            failure_threshold: threshold,
            open_min_secs: min,
            open_max_secs: max,
        };
        assert!(settings(5, 1, 30).check().is_ok());
        assert!(settings(0, 1, 30).check().is_err());
        assert!(settings(5, 0, 30).check().is_err());
        assert!(settings(5, 10, 5).check().is_err());
    }
}
