//! The measurements, and the figures they produce, by concern:
//!
//! - [`figures`]: what a run measured, and its markdown;
//! - [`process`]: CPU seconds and resident memory of the services, from
//!   /proc;
//! - [`raw`]: the baseline, rdkafka alone;
//! - [`system`]: both services, through the outbox and over HTTP.

mod figures;
mod process;
mod raw;
mod system;

pub use figures::{Figures, Samples};
pub use raw::{raw_client, Tuning};
pub use system::{
    argon2_floor, drain, http_api, http_latency, latency_sweep, outbox_latency_with_stages, pipeline, relay_drain,
    scaling, Progress, ProgressSample, System,
};
