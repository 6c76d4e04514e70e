//! The consumer's live feed page in a real browser: headless Chromium
//! (driven by playwright-core, `scripts/lib/feed-browser-test.cjs`) opens
//! `/feed` with a service credential, a user is created through the
//! producer's API, and its row appears on the page. `scripts/browser.sh`
//! (run by `scripts/test.sh`) installs the browser and playwright-core.

use std::path::Path;
use std::process::Command;

use e2e::TestContext;
use secrecy::{ExposeSecret, SecretString};
use service_common::auth::TokenKeys;

fn browser() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(root.join("scripts/browser.sh"))
        .output()
        .expect("scripts/browser.sh runs");
    assert!(
        output.status.success(),
        "scripts/browser.sh could not provide a browser: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_created_user_appears_live_on_the_feed_page() {
    let chromium = browser();
    let context = TestContext::new();
    let producer = context.spawn_producer().await;
    let consumer = context.spawn_consumer(&producer.url()).await;
    let keys = TokenKeys::new(&SecretString::from(e2e::JWT_SECRET.to_owned())).unwrap();
    let token = keys.service_token("browser-test");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    let run = tokio::process::Command::new("node")
        .arg(root.join("scripts/lib/feed-browser-test.cjs"))
        .args([
            consumer.url(),
            producer.url(),
            token.expose_secret().to_owned(),
            chromium,
        ])
        .env("NODE_PATH", root.join(".run/browser/node_modules"))
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the page did not show the new user: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
    let user_id = shown["user_id"].as_str().unwrap();
    let row = shown["row"].as_str().unwrap();
    assert!(row.contains(user_id) && row.contains("user.created.v1"), "row: {row}");

    consumer.stop().await.unwrap();
    producer.stop().await.unwrap();
    context.drop_databases().await;
}
