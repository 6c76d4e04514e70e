//! The consumer's live feed (`GET /events/stream`) over real HTTP, with
//! both services, the broker and PostgreSQL.

use std::time::Duration;

use e2e::sse::EventStream;
use e2e::{create_user, issue_token, TestContext};
use reqwest::{Client, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use service_common::auth::TokenKeys;

fn service_token() -> String {
    let keys = TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned())).unwrap();
    keys.service_token("feed-test").expose_secret().to_owned()
}

/// An open feed: frames as they arrive.
struct Feed(EventStream);

impl Feed {
    async fn open(client: &Client, consumer: &str, token: &str, last_event_id: Option<&str>) -> Response {
        let mut request = client.get(format!("{consumer}/events/stream")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.unwrap()
    }

    fn of(response: Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self(EventStream::new(response))
    }

    /// The next event frame's id and data, skipping comments; panics after
    /// 30 s.
    async fn next_event(&mut self) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(30), self.0.next_event())
            .await
            .expect("an event within 30 s")
            .expect("the stream stays open")
    }

    /// The next event about `user`, skipping others.
    async fn next_about(&mut self, user: uuid::Uuid) -> (String, Value) {
        loop {
            let (id, data) = self.next_event().await;
            if data["user_id"] == user.to_string() {
                return (id, data);
            }
        }
    }
}

#[tokio::test]
async fn applied_events_stream_live_filtered_by_token_and_resume_after_last_event_id() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let client = Client::new();
    let consumer_url = consumer.url();

    let anonymous = client
        .get(format!("{consumer_url}/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let bad = Feed::open(&client, &consumer_url, &service_token(), Some("yesterday")).await;
    assert_eq!(bad.status(), 400);

    // A service credential sees every user's events as they are applied.
    let mut everything = Feed::of(Feed::open(&client, &consumer_url, &service_token(), None).await);
    let ada = create_user(&client, &producer.url(), "ada").await;
    let (ada_created, data) = everything.next_about(ada.id).await;
    assert_eq!(data["event_type"], "user.created.v1");
    assert_eq!(data["topic"], context.topics.name(kafka_service::Topic::NewUserCreated));
    assert!(data["event_id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(data["offset"].as_i64().unwrap() >= 0 && data["partition"].as_i64().unwrap() >= 0);

    // A user token sees only its own user's events: Ada's stream skips Bob.
    let ada_token = issue_token(&client, &producer.url(), &ada.username).await;
    let (_, data) = everything.next_about(ada.id).await;
    assert_eq!(data["event_type"], "user.token_issued.v1");
    let mut adas = Feed::of(Feed::open(&client, &consumer_url, &ada_token, None).await);
    let bob = create_user(&client, &producer.url(), "bob").await;
    everything.next_about(bob.id).await;
    issue_token(&client, &producer.url(), &ada.username).await;
    let (_, data) = adas.next_event().await;
    assert_eq!(
        data["user_id"],
        ada.id.to_string(),
        "Bob's event, applied first, is not on Ada's stream"
    );
    assert_eq!(data["event_type"], "user.token_issued.v1");

    // Resume: events applied while disconnected are replayed from the read
    // model, after the last id the client saw.
    drop(everything);
    let carol = create_user(&client, &producer.url(), "carol").await;
    let mut resumed = Feed::of(Feed::open(&client, &consumer_url, &service_token(), Some(&ada_created)).await);
    let mut replayed = Vec::new();
    loop {
        let (id, data) = resumed.next_event().await;
        assert!(id.parse::<i64>().unwrap() > ada_created.parse::<i64>().unwrap());
        replayed.push(data["user_id"].as_str().unwrap().to_owned());
        if data["user_id"] == carol.id.to_string() {
            break;
        }
    }
    assert!(
        replayed.contains(&bob.id.to_string()),
        "Bob's creation was replayed too"
    );

    drop((adas, resumed));
    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
}
