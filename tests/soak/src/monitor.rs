//! Progress of every partition the consumer group reads, sampled once a
//! second from the group's committed offsets and the partitions' high
//! watermarks (`kafka_service::group_offsets`, as an operator's lag
//! check reads them). A partition *stalls* while it has records the group
//! has not committed (lag above 0) and its committed offset does not move.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_service::Topic;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::deployment::Deployment;

/// How often the offsets are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Stalls shorter than this are not kept (a commit every 200 ms, and the
/// retry topic's copies waiting until due, make short ones ordinary).
const KEPT_FROM: Duration = Duration::from_secs(2);

/// One partition without progress, from `from` to `to` (since the soak's
/// start).
#[derive(Debug, Clone)]
pub struct Stall {
    /// `topic[partition]`.
    pub partition: String,
    /// When it last made progress.
    pub from: Duration,
    /// When it made progress again (or the monitor stopped).
    pub to: Duration,
}

/// Samples until `stop`, then (after one last sample) returns every stall
/// of [`KEPT_FROM`] or more, the ones still open ended then.
pub fn start(world: &Deployment, started: Instant, stop: CancellationToken) -> JoinHandle<Vec<Stall>> {
    let kafka = world.context.kafka();
    let group = world.context.group_id.clone();
    let topics: Vec<String> = [Topic::NewUserCreated, Topic::IssuedToken, Topic::Retry]
        .iter()
        .map(|topic| kafka.topics.name(*topic).to_owned())
        .collect();
    tokio::spawn(async move {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        // Per partition: its committed offset, and when it last moved (or
        // had nothing to do).
        let mut last: HashMap<String, (Option<i64>, Duration)> = HashMap::new();
        let mut stalls = Vec::new();
        let mut done = false;
        loop {
            // One last sample once told to stop.
            if stop.is_cancelled() {
                done = true;
            }
            if let Ok(partitions) = kafka_service::group_offsets(&kafka, &group, &names).await {
                let now = started.elapsed();
                for offsets in partitions {
                    let name = format!("{}[{}]", offsets.topic, offsets.partition);
                    let (committed, since) = last.entry(name.clone()).or_insert((offsets.committed, now));
                    if offsets.lag() <= 0 || offsets.committed != *committed {
                        if now.saturating_sub(*since) >= KEPT_FROM {
                            stalls.push(Stall {
                                partition: name,
                                from: *since,
                                to: now,
                            });
                        }
                        *committed = offsets.committed;
                        *since = now;
                    }
                }
            }
            if done {
                break;
            }
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
        let now = started.elapsed();
        for (partition, (_, since)) in last {
            if now.saturating_sub(since) >= KEPT_FROM {
                stalls.push(Stall {
                    partition,
                    from: since,
                    to: now,
                });
            }
        }
        stalls
    })
}
