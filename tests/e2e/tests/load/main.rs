//! A bounded load run against both services as real processes, on
//! loopback: for `LOAD_SECONDS` (default 60) seconds, 16 clients create
//! users, log in, read users from both services, and mix in hostile
//! requests (malformed JSON, unknown fields, wrong passwords past the login
//! limit, no token, another user's token).
//!
//! It asserts correctness under load, not speed:
//! - every answer is one the request calls for (no 5xx, no unexpected 4xx;
//!   `429` only where the login limit applies);
//! - each service's resident memory stays flat: at the end it is within
//!   32 MiB of where it stood after the first quarter (allocator
//!   high-water marks settle early; a leak grows with requests);
//! - every accepted request's event is applied exactly once: the read
//!   model holds every created user with as many tokens as were issued,
//!   and `processed_events` holds exactly that many events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::load::processed_count;
use e2e::process::ServiceProcess;
use e2e::{eventually, TestContext, PASSWORD};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const CLIENTS: usize = 16;
/// Most growth of a service's resident memory from the first quarter of the
/// run to its end.
const MAX_RSS_GROWTH_KIB: u64 = 32 * 1024;

#[derive(Default)]
struct Tally {
    /// Answers by (request kind, status).
    answers: HashMap<(&'static str, u16), u64>,
    /// Answers a request of that kind must never get.
    unexpected: Vec<String>,
    /// Users created, with the tokens issued to each.
    users: HashMap<Uuid, i64>,
}

impl Tally {
    fn record(&mut self, kind: &'static str, status: StatusCode, allowed: &[u16]) {
        *self.answers.entry((kind, status.as_u16())).or_default() += 1;
        if !allowed.contains(&status.as_u16()) && self.unexpected.len() < 20 {
            self.unexpected.push(format!("{kind}: {status}"));
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the service is running");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

async fn client_loop(
    client: Client,
    producer: String,
    consumer: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    seed: usize,
) {
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let username = format!("load-{seed}-{round}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let created = client
            .post(format!("{producer}/users"))
            .json(&json!({ "username": username, "email": format!("{username}@example.com"), "password": PASSWORD }))
            .send()
            .await
            .expect("producer reachable");
        let status = created.status();
        tally.lock().unwrap().record("create user", status, &[201]);
        if status != StatusCode::CREATED {
            continue;
        }
        let id: Uuid = created.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        tally.lock().unwrap().users.insert(id, 0);

        // Two logins per user: both well within the per-username limit.
        let mut token = String::new();
        for _ in 0..2 {
            let login = client
                .post(format!("{producer}/auth/token"))
                .json(&json!({ "username": username, "password": PASSWORD }))
                .send()
                .await
                .unwrap();
            let status = login.status();
            tally.lock().unwrap().record("log in", status, &[200]);
            if status == StatusCode::OK {
                token = login.json::<Value>().await.unwrap()["access_token"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                *tally.lock().unwrap().users.get_mut(&id).unwrap() += 1;
            }
        }

        // The consumer answers from its read model, or asks the producer.
        for (service, kind) in [
            (&producer, "read own user (producer)"),
            (&consumer, "read user (consumer)"),
        ] {
            let read = client
                .get(format!("{service}/users/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            tally.lock().unwrap().record(kind, read.status(), &[200]);
        }

        // Hostile requests, one kind per round.
        let (kind, request, allowed): (&'static str, _, &[u16]) = match round % 5 {
            0 => (
                "malformed JSON",
                client
                    .post(format!("{producer}/users"))
                    .header("content-type", "application/json")
                    .body("{\"username\": "),
                &[400],
            ),
            1 => (
                "unknown field",
                client
                    .post(format!("{producer}/auth/token"))
                    .json(&json!({ "username": username, "password": PASSWORD, "admin": true })),
                &[400],
            ),
            2 => (
                // This client's own address: 429 once the per-address limit
                // (set high for the run) or the username's is reached.
                "wrong password",
                client
                    .post(format!("{producer}/auth/token"))
                    .json(&json!({ "username": username, "password": "not the password" })),
                &[401, 429],
            ),
            3 => ("no token", client.get(format!("{consumer}/users/{id}")), &[401]),
            _ => (
                "another user's token",
                client
                    .get(format!("{producer}/users/{}", Uuid::new_v4()))
                    .bearer_auth(&token),
                &[403],
            ),
        };
        let status = request.send().await.unwrap().status();
        tally.lock().unwrap().record(kind, status, allowed);
    }
}

#[tokio::test]
async fn a_minute_of_mixed_load_leaves_no_errors_flat_memory_and_every_event_applied_once() {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let context = TestContext::new();
    let producer: ServiceProcess = context
        .start_producer_process_with(&[
            ("APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE", "100000"),
            ("APP_LOGIN_LIMIT__PER_USERNAME_PER_MINUTE", "5"),
        ])
        .await;
    let consumer = context.start_consumer_process(&producer.url(), &[]).await;
    let client = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            tokio::spawn(client_loop(
                client.clone(),
                producer.url(),
                consumer.url(),
                Arc::clone(&stop),
                Arc::clone(&tally),
                seed,
            ))
        })
        .collect();

    let started = Instant::now();
    let quarter = Duration::from_secs(seconds) / 4;
    tokio::time::sleep(quarter).await;
    let rss_early = (rss_kib(producer.pid()), rss_kib(consumer.pid()));
    let mut rss_peak = rss_early;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = (
            rss_peak.0.max(rss_kib(producer.pid())),
            rss_peak.1.max(rss_kib(consumer.pid())),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client task panicked");
    }
    let rss_end = (rss_kib(producer.pid()), rss_kib(consumer.pid()));

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let mut answers: Vec<_> = tally.answers.iter().collect();
    answers.sort();
    println!("load: {seconds} s, {CLIENTS} clients; answers (request, status) → count:");
    for ((kind, status), count) in &answers {
        println!("  {kind:<28} {status} {count:>6}");
    }
    println!(
        "load: resident memory KiB (after {} s / peak / end): producer {} / {} / {}, consumer {} / {} / {}",
        quarter.as_secs(),
        rss_early.0,
        rss_peak.0,
        rss_end.0,
        rss_early.1,
        rss_peak.1,
        rss_end.1
    );
    assert!(
        tally.unexpected.is_empty(),
        "unexpected answers: {:?}",
        tally.unexpected
    );
    let users = tally.users.len() as i64;
    let tokens: i64 = tally.users.values().sum();
    assert!(users > 0, "the run created users");
    for (service, early, end) in [
        ("producer", rss_early.0, rss_end.0),
        ("consumer", rss_early.1, rss_end.1),
    ] {
        assert!(
            end <= early + MAX_RSS_GROWTH_KIB,
            "{service}: resident memory grew from {early} KiB to {end} KiB"
        );
    }

    // Exactly once: every accepted event applied, none twice.
    let pool = context.consumer_pool().await;
    let expected = users + tokens;
    eventually(Duration::from_secs(120), "every accepted event applied", || async {
        (processed_count(&pool).await >= expected).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        processed_count(&pool).await,
        expected,
        "{users} users + {tokens} tokens"
    );
    let counts = e2e::read_model_token_counts(&pool).await;
    assert_eq!(counts.len() as i64, users);
    for (id, issued) in &tally.users {
        assert_eq!(counts.get(id), Some(issued), "tokens of user {id}");
    }
    println!("load: {users} users and {tokens} tokens accepted; each applied once");

    consumer.kill().await;
    producer.kill().await;
    pool.close().await;
    context.drop_databases().await;
}
