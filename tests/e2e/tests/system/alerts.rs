//! The alerting rules (`deploy/prometheus/alerts.yml`) name only metrics
//! the services expose: an alert on a misspelt or renamed metric never
//! fires, and no rule check sees that. `promtool` checks the rules'
//! syntax and behaviour (scripts/validate.sh); this checks their names
//! against both services' `/metrics` after an event went through.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use e2e::{create_user, eventually, issue_token, TestContext};
use kafka_service::Topic;
use reqwest::Client;
use yaml_rust2::YamlLoader;

/// PromQL's functions with an underscore in their names that the rules
/// use. (Recording rules' names have colons; Prometheus's own `up` has no
/// underscore.)
const FUNCTIONS: [&str; 1] = ["histogram_quantile"];

#[tokio::test]
async fn every_metric_the_alerts_name_is_exposed_by_a_service() {
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let client = Client::new();
    let user = create_user(&client, &producer.url(), "alerted").await;
    issue_token(&client, &producer.url(), &user.username).await;
    let pool = context.consumer_pool().await;
    eventually(Duration::from_secs(30), "both events applied", || async {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        (applied == 2).then_some(())
    })
    .await;
    // Gauges measured on a schedule (parked records every 10 s, lag every
    // 5 s) appear once measured.
    let exposed = eventually(Duration::from_secs(30), "every named metric exposed", || async {
        let mut exposed = BTreeSet::new();
        for service in [&producer.url(), &consumer.url()] {
            exposed.extend(sample_names(&e2e::metrics::scrape(&client, service).await));
        }
        named_in_alerts().is_subset(&exposed).then_some(exposed)
    })
    .await;
    // Each applied event was measured once, under its topic, and was
    // applied within the test's time.
    let text = e2e::metrics::scrape(&client, &consumer.url()).await;
    let kafka = context.kafka();
    for topic in [Topic::NewUserCreated, Topic::IssuedToken] {
        let name = kafka.topics.name(topic);
        let of_topic = |metric: &str| {
            e2e::metrics::samples(&text, metric)
                .into_iter()
                .find(|(labels, _)| labels.get("topic").map(String::as_str) == Some(name))
                .map(|(_, value)| value)
        };
        assert_eq!(of_topic("event_freshness_seconds_count"), Some(1.0), "{name}");
        let seconds = of_topic("event_freshness_seconds_sum").unwrap();
        assert!(seconds > 0.0 && seconds < 30.0, "{name}: {seconds} s");
    }
    let named = named_in_alerts();
    assert!(
        named.len() == 12 && named.contains("event_freshness_seconds_bucket"),
        "the expressions were read: {named:?}"
    );
    assert!(
        named.is_subset(&exposed),
        "not exposed: {:?}",
        named.difference(&exposed)
    );
}

/// The sample names in an OpenMetrics text (`name{…} value` or
/// `name value`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every metric name in the rules' expressions: identifiers outside label
/// matchers, strings, grouping clauses and range selectors, less PromQL's
/// functions and keywords.
fn named_in_alerts() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules = YamlLoader::load_from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    for group in rules[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            names.extend(identifiers(rule["expr"].as_str().unwrap()));
        }
    }
    names
        .into_iter()
        .filter(|name| name.contains('_') && !name.contains(':') && !FUNCTIONS.contains(&name.as_str()))
        .collect()
}

/// The identifiers of a PromQL expression outside `{…}`, `[…]`, quotes and
/// `by (…)` / `on (…)`, numbers left out.
fn identifiers(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut depth_braces = 0;
    let mut depth_brackets = 0;
    let mut grouping = false;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let inside = depth_braces > 0 || depth_brackets > 0 || grouping;
        if !inside && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            let word = std::mem::take(&mut current);
            if word == "by" || word == "on" || word == "without" {
                grouping = true;
            } else if !word.chars().next().unwrap().is_ascii_digit() {
                names.push(word);
            }
        }
        match c {
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => depth_brackets += 1,
            ']' => depth_brackets -= 1,
            ')' if grouping => grouping = false,
            '"' if depth_braces == 0 => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    if !current.is_empty() {
        names.push(current);
    }
    names
}
