//! Failure tests: the services run as real processes against the real
//! broker and PostgreSQL, and each test breaks something for real (SIGKILL,
//! SIGTERM, a database that refuses connections, a producer that fails or
//! hangs, poison records, members joining and leaving the group). Each one
//! states the events it sent and asserts the exact final state.
//!
//! The broker outage test is in `tests/system/broker_outage.rs`.
//!
//! These tests run one at a time (see [`one_at_a_time`]): each loads the
//! broker with thousands of records and up to three group members, and on
//! two cores several such loads at once would turn the tests' time bounds
//! (a session timeout plus one rebalance) into a measure of the machine.

mod crashes;
mod dead_letters;
mod outages;
mod parked;
mod rebalances;
mod reruns;

/// Held for the whole of each test in this binary.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The value of `record`'s header `name` as text (empty when absent).
pub fn header_text<'r>(record: &'r kafka_service::Record, name: &str) -> &'r str {
    std::str::from_utf8(record.header(name).unwrap_or_default()).unwrap()
}
