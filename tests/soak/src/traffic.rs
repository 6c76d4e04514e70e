//! Steady HTTP traffic: every [`ROUND_INTERVAL`] a round creates a user
//! and logs them in twice, on one producer, the next round on the other.
//! Each request waits for the one before it, so a user's events are
//! committed in the order they were accepted. Every 2xx is recorded; a
//! request that fails (refused, timed out, 5xx) is counted and not
//! retried. The loop stops when told to, after the round under way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often a round starts (when the one before took less).
const ROUND_INTERVAL: Duration = Duration::from_millis(250);

/// How long one request may take: a paused producer answers nothing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the traffic was told.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Each user created (`201`), with the tokens issued to them (`200`),
    /// in the order the users were created.
    pub users: Vec<(Uuid, u32)>,
    /// Requests that failed, by what went wrong (`refused`, `timed out`,
    /// or the status code).
    pub failed: BTreeMap<String, u64>,
}

impl Accepted {
    /// Every 2xx: one per user and one per token.
    pub fn requests(&self) -> u64 {
        self.users.iter().map(|(_, tokens)| 1 + u64::from(*tokens)).sum()
    }

    fn failed(&mut self, error: &Failure) {
        *self.failed.entry(error.0.clone()).or_default() += 1;
    }
}

struct Failure(String);

impl From<reqwest::Error> for Failure {
    fn from(error: reqwest::Error) -> Self {
        Self(if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            "refused".to_owned()
        } else {
            "broken connection".to_owned()
        })
    }
}

/// Starts the traffic against `producers`; the task returns what was
/// accepted once `stop` is cancelled.
pub fn start(producers: Vec<String>, stop: CancellationToken) -> JoinHandle<Accepted> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("an HTTP client");
        let mut accepted = Accepted::default();
        let mut ticks = tokio::time::interval(ROUND_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0;
        while stop.run_until_cancelled(ticks.tick()).await.is_some() {
            let producer = &producers[round % producers.len()];
            round += 1;
            let username = format!("soak-{}", &Uuid::new_v4().simple().to_string()[..12]);
            let id = match create_user(&client, producer, &username).await {
                Ok(id) => id,
                Err(error) => {
                    accepted.failed(&error);
                    continue;
                }
            };
            accepted.users.push((id, 0));
            for _ in 0..2 {
                match issue_token(&client, producer, &username).await {
                    Ok(()) => accepted.users.last_mut().expect("this user").1 += 1,
                    Err(error) => accepted.failed(&error),
                }
            }
        }
        accepted
    })
}

async fn create_user(client: &reqwest::Client, producer: &str, username: &str) -> Result<Uuid, Failure> {
    let response = client
        .post(format!("{producer}/users"))
        .json(&json!({ "username": username, "email": format!("{username}@example.com"), "password": e2e::PASSWORD }))
        .send()
        .await?;
    if response.status() != 201 {
        return Err(Failure(response.status().as_u16().to_string()));
    }
    let body: Value = response.json().await?;
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Failure("201 without a user id".to_owned()))
}

async fn issue_token(client: &reqwest::Client, producer: &str, username: &str) -> Result<(), Failure> {
    let response = client
        .post(format!("{producer}/auth/token"))
        .json(&json!({ "username": username, "password": e2e::PASSWORD }))
        .send()
        .await?;
    if response.status() != 200 {
        return Err(Failure(response.status().as_u16().to_string()));
    }
    // The whole body, so that a 200 is a 200 the client saw through.
    response.bytes().await?;
    Ok(())
}
