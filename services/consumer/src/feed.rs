//! The live feed: every event the consumer applies, pushed to connected
//! clients (`GET /events/stream`, Server-Sent Events).
//!
//! Applying never waits for a client: [`Feed::publish`] puts the event on
//! a `tokio::sync::broadcast` ring of [`Feed::CAPACITY`] events that each
//! client reads at its own pace. A client that falls a whole ring behind
//! is dropped (its stream ends); it reconnects with `Last-Event-ID` and
//! catches up from `processed_events`, which holds every applied event in
//! `sequence` order.
//!
//! Each event's SSE id is its `sequence`. Sequences are assigned when an
//! event is applied, and partitions commit concurrently, so the live feed
//! can deliver 12 before 11. A resume replays `sequence > Last-Event-ID`;
//! an event with a lower sequence that committed after the client's last
//! one is then not replayed. Clients that must see every event reconnect
//! with the lowest id they may have missed, and drop repeats by `event_id`.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// One applied event, as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct FeedEvent {
    /// Order of application (the SSE id; `processed_events.sequence`).
    pub sequence: i64,
    /// `ce_type`, e.g. `user.created.v1` (the SSE event name).
    pub event_type: String,
    /// The user it is about.
    pub user_id: Uuid,
    /// `ce_id`.
    pub event_id: Uuid,
    /// `ce_time`: when it happened.
    pub time: DateTime<Utc>,
    /// The topic it was first consumed from.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// The broadcast side of the feed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    sender: broadcast::Sender<FeedEvent>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new(Self::CAPACITY)
    }
}

impl Feed {
    /// Events a client may fall behind before it is dropped.
    pub const CAPACITY: usize = 1024;

    /// A feed whose clients may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    /// Offers `event` to every connected client; never waits.
    pub fn publish(&self, event: FeedEvent) {
        // An error only means nobody is connected.
        let _ = self.sender.send(event);
    }

    /// A new client's receiver: events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.sender.subscribe()
    }
}

/// Applied events with `sequence > after`, oldest first, at most `limit`,
/// only `user`'s when given.
///
/// # Errors
///
/// The database error.
pub async fn replay(pool: &PgPool, after: i64, user: Option<Uuid>, limit: i64) -> Result<Vec<FeedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, event_type, subject::uuid AS user_id, event_id, \
                COALESCE(event_time, processed_at) AS time, topic, \"partition\", \"offset\" \
         FROM processed_events \
         WHERE sequence > $1 AND ($2::text IS NULL OR subject = $2) AND subject IS NOT NULL \
         ORDER BY sequence LIMIT $3",
    )
    .bind(after)
    .bind(user.map(|id| id.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Events replayed per database query.
const REPLAY_PAGE: i64 = 500;

/// How often an idle stream sends a comment, so proxies and load balancers
/// (the ALB's idle timeout is 60 s) keep the connection open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// One client's stream of SSE frames: the replay after `after` (when
/// resuming), then live events, with heartbeats, until `closed` is
/// cancelled, the client falls behind, or the database fails during replay.
/// Only `user`'s events when given. Subscribe `live` before calling, so
/// that events applied during the replay wait in it (those the replay also
/// found are sent once).
pub fn stream(
    pool: PgPool,
    live: broadcast::Receiver<FeedEvent>,
    user: Option<Uuid>,
    after: Option<i64>,
    closed: CancellationToken,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let client = Client::new(pool, live, user, after, closed);
    futures::stream::unfold(client, |mut client| async move {
        let frame = client.next_frame().await?;
        Some((Ok(frame), client))
    })
}

/// A client's stream in progress: what it has replayed, and the frames
/// ready for it.
struct Client {
    pool: PgPool,
    live: broadcast::Receiver<FeedEvent>,
    /// Only this user's events, when set.
    user: Option<Uuid>,
    /// `Some(last replayed)` while replaying.
    replay_after: Option<i64>,
    /// Sequences the replay sent, so the live part does not repeat them.
    replayed: HashSet<i64>,
    heartbeat: tokio::time::Interval,
    /// Cancelled at shutdown: the stream ends.
    closed: CancellationToken,
    /// Frames ready to send, in order.
    frames: VecDeque<Bytes>,
    /// No frame is added any more; the stream ends once `frames` is empty.
    done: bool,
}

impl Client {
    fn new(
        pool: PgPool,
        live: broadcast::Receiver<FeedEvent>,
        user: Option<Uuid>,
        after: Option<i64>,
        closed: CancellationToken,
    ) -> Self {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        Self {
            pool,
            live,
            user,
            replay_after: after,
            replayed: HashSet::new(),
            heartbeat,
            closed,
            // Reconnect after 2 s (the SSE `retry` field), then announce.
            frames: VecDeque::from([Bytes::from_static(b"retry: 2000\n: connected\n\n")]),
            done: false,
        }
    }

    /// The next frame, or `None` once the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            match self.replay_after {
                Some(after) => self.replay_page(after).await,
                None => self.wait_live().await,
            }
        }
    }

    /// Replays the next page of events after `after`; a short page ends the
    /// replay, a database error the stream.
    async fn replay_page(&mut self, after: i64) {
        match replay(&self.pool, after, self.user, REPLAY_PAGE).await {
            Ok(events) => {
                self.replay_after =
                    (events.len() as i64 == REPLAY_PAGE).then(|| events.last().map_or(after, |e| e.sequence));
                for event in events {
                    self.replayed.insert(event.sequence);
                    self.frames.push_back(frame(&event));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "feed: replay failed; closing the stream");
                self.done = true;
            }
        }
    }

    /// Waits for a live event (queued unless the replay sent it or it is
    /// another user's), a heartbeat, or the end: shutdown, or the client
    /// falling a whole ring behind.
    async fn wait_live(&mut self) {
        tokio::select! {
            () = self.closed.cancelled() => self.done = true,
            _ = self.heartbeat.tick() => self.frames.push_back(Bytes::from_static(b": heartbeat\n\n")),
            received = self.live.recv() => match received {
                Ok(event) => {
                    let wanted = self.user.is_none_or(|user| user == event.user_id);
                    if wanted && !self.replayed.remove(&event.sequence) {
                        self.frames.push_back(frame(&event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "feed: a client fell behind and is dropped; it may resume");
                    self.done = true;
                }
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            },
        }
    }
}

/// `id:`, `event:` and `data:` lines of one event.
fn frame(event: &FeedEvent) -> Bytes {
    let data = serde_json::to_string(event).expect("a feed event serializes");
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.sequence, event.event_type
    ))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn event(sequence: i64, user_id: Uuid) -> FeedEvent {
        FeedEvent {
            sequence,
            event_type: "user.created.v1".to_owned(),
            user_id,
            event_id: Uuid::new_v4(),
            time: Utc::now(),
            topic: "new-user-created".to_owned(),
            partition: 3,
            offset: sequence,
        }
    }

    fn lazy_pool() -> PgPool {
        // Never queried: these streams do not replay.
        PgPool::connect_lazy("postgres://unused@127.0.0.1:1/unused").unwrap()
    }

    fn text(frame: Result<Bytes, actix_web::Error>) -> String {
        String::from_utf8(frame.unwrap().to_vec()).unwrap()
    }

    #[test]
    fn publishing_never_waits_for_clients_that_do_not_read() {
        let feed = Feed::new(8);
        let _idle = feed.subscribe();
        for sequence in 0..100_000 {
            feed.publish(event(sequence, Uuid::nil()));
        }
    }

    #[tokio::test]
    async fn a_client_sees_live_events_as_frames_and_only_its_own_user() {
        let feed = Feed::new(8);
        let mine = Uuid::new_v4();
        let closed = CancellationToken::new();
        let stream = stream(lazy_pool(), feed.subscribe(), Some(mine), None, closed.clone());
        let mut stream = Box::pin(stream);
        assert!(text(stream.next().await.unwrap()).starts_with("retry: 2000"));
        feed.publish(event(1, Uuid::new_v4()));
        feed.publish(event(2, mine));
        let frame = text(stream.next().await.unwrap());
        assert!(frame.starts_with("id: 2\nevent: user.created.v1\ndata: {"), "{frame}");
        assert!(frame.contains(&mine.to_string()) && frame.ends_with("\n\n"));
        closed.cancel();
        assert!(stream.next().await.is_none(), "the stream ends at shutdown");
    }

    #[tokio::test]
    async fn a_client_that_falls_a_whole_ring_behind_is_dropped() {
        let feed = Feed::new(4);
        let mut stream = Box::pin(stream(
            lazy_pool(),
            feed.subscribe(),
            None,
            None,
            CancellationToken::new(),
        ));
        assert!(text(stream.next().await.unwrap()).starts_with("retry:"));
        for sequence in 1..=10 {
            feed.publish(event(sequence, Uuid::nil()));
        }
        assert!(stream.next().await.is_none(), "dropped instead of slowing the feed");
    }
}
