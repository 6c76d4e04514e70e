//! The outbox's gauges, measured by every producer instance on its own
//! schedule, whether or not its relay leads.
//!
//! They are what an operator alerts on when events stop reaching Kafka, so
//! they must move in exactly those cases: a broker outage, a partition that
//! cannot be written, no relay elected. Measured inside the relay's reads,
//! as they once were, they stood still in all three, and on a standby they
//! stayed 0.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use service_common::metrics::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often each instance measures the gauges: one cheap query (the
/// partial index on pending rows serves it), well within a scrape interval.
pub const MEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// How long one measurement may take before it is given up, when the
/// database's statement deadline does not bound it.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbox's gauges:
///
/// - `outbox_pending_rows`: rows neither published nor set aside;
/// - `outbox_oldest_pending_age_seconds`: age of the oldest of them, by its
///   event time (0 when none);
/// - `outbox_failing_rows`: pending rows whose publishing failed at least
///   once (each holds back its key's later rows);
/// - `outbox_oldest_failing_age_seconds`: age of the oldest of those (0 when
///   none).
///
/// Every instance measures them every [`MEASURE_INTERVAL`]
/// ([`run`](Self::run)).
/// While the database does not answer, the counts stay as last measured and
/// the ages keep growing from the rows last seen oldest: no row can be
/// marked published meanwhile. (What is published is counted by the
/// [`EventProducer`](kafka_service::EventProducer) itself.)
pub struct OutboxGauges {
    /// Where the outbox is.
    pool: PgPool,
    /// How long one measurement may take
    /// ([`DatabaseSettings::statement_deadline`], else 10 s).
    ///
    /// [`DatabaseSettings::statement_deadline`]: service_common::configuration::DatabaseSettings::statement_deadline
    deadline: Duration,
    pending: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    failing: Gauge,
    oldest_failing_age: Gauge<f64, AtomicU64>,
}

/// One measurement: the counts, and the event times of the oldest rows.
#[derive(sqlx::FromRow)]
struct Measured {
    pending: i64,
    oldest: Option<DateTime<Utc>>,
    failing: i64,
    oldest_failing: Option<DateTime<Utc>>,
}

impl OutboxGauges {
    /// The gauges of `pool`'s outbox, registered in `registry`; a
    /// measurement may take up to `deadline` (10 s when `None`).
    pub fn new(pool: PgPool, deadline: Option<Duration>, registry: &mut Registry) -> Self {
        let gauges = Self {
            pool,
            deadline: deadline.unwrap_or(MEASURE_TIMEOUT),
            pending: Gauge::default(),
            oldest_age: Gauge::default(),
            failing: Gauge::default(),
            oldest_failing_age: Gauge::default(),
        };
        registry.register(
            "outbox_pending_rows",
            "Outbox rows not yet published",
            gauges.pending.clone(),
        );
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row not yet published",
            gauges.oldest_age.clone(),
        );
        registry.register(
            "outbox_failing_rows",
            "Outbox rows not yet published whose publishing failed; each holds back its key",
            gauges.failing.clone(),
        );
        registry.register(
            "outbox_oldest_failing_age_seconds",
            "Age of the oldest outbox row whose publishing failed",
            gauges.oldest_failing_age.clone(),
        );
        gauges
    }

    /// Sets the ages of `measured`'s oldest rows as of now.
    fn set_ages(&self, measured: &Measured) {
        let age = |at: Option<DateTime<Utc>>| at.map_or(0.0, |at| (Utc::now() - at).as_seconds_f64().max(0.0));
        self.oldest_age.set(age(measured.oldest));
        self.oldest_failing_age.set(age(measured.oldest_failing));
    }

    /// Measures the gauges every [`MEASURE_INTERVAL`] until `shutdown`.
    /// When a measurement fails or outlasts the deadline, the counts stay
    /// and the ages grow from the last one; the first failure of an outage
    /// is logged at `warn`, the recovery at `info`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(MEASURE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Measured> = None;
        let mut failing = false;
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let query = sqlx::query_as::<_, Measured>(
                "SELECT count(*) AS pending, min(occurred_at) AS oldest, \
                        count(*) FILTER (WHERE attempts > 0) AS failing, \
                        min(occurred_at) FILTER (WHERE attempts > 0) AS oldest_failing \
                 FROM outbox WHERE published_at IS NULL AND set_aside_at IS NULL",
            )
            .fetch_one(&self.pool);
            let measured = match tokio::time::timeout(self.deadline, query).await {
                Ok(Ok(measured)) => Ok(measured),
                Ok(Err(error)) => Err(format!("{error:#}")),
                Err(_) => Err("no answer within the statement deadline".to_owned()),
            };
            match measured {
                Ok(measured) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("outbox gauges measured again");
                    }
                    tracing::debug!(
                        pending = measured.pending,
                        failing = measured.failing,
                        "outbox pending rows measured"
                    );
                    self.pending.set(measured.pending);
                    self.failing.set(measured.failing);
                    self.set_ages(&measured);
                    last = Some(measured);
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            error,
                            "could not measure the outbox gauges; their ages grow from the last measurement"
                        );
                    }
                    if let Some(last) = &last {
                        self.set_ages(last);
                    }
                }
            }
        }
    }
}
