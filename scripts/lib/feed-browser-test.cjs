// Opens the consumer's /feed page in headless Chromium with a token in the
// URL fragment, waits until it is live, creates a user through the
// producer's API, and waits for that user's row to appear on the page.
// Prints {"user_id", "row"} and exits 0, or exits 1 saying what did not
// happen. Run by tests/e2e/tests/browser.rs:
//   node scripts/lib/feed-browser-test.cjs CONSUMER_URL PRODUCER_URL TOKEN CHROMIUM
const { chromium } = require("playwright-core");

async function main() {
  const [consumer, producer, token, executablePath] = process.argv.slice(2);
  // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
  const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error: ${message.text()}`);
    });
    await page.goto(`${consumer}/feed#token=${encodeURIComponent(token)}`);
    await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, {
      timeout: 30000,
    });
    if (page.url().includes("token")) throw new Error(`the token stayed in the address: ${page.url()}`);

    const username = `browser-${Date.now()}`;
    const created = await fetch(`${producer}/users`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, email: `${username}@example.com`, password: "correct horse battery" }),
    });
    if (created.status !== 201) throw new Error(`POST /users answered ${created.status}`);
    const user = await created.json();

    const selector = `tr[data-user-id="${user.id}"][data-event-type="user.created.v1"]`;
    await page.waitForSelector(selector, { timeout: 30000 });
    const row = (await page.textContent(selector)).trim();
    if (problems.length > 0) throw new Error(problems.join("; "));
    console.log(JSON.stringify({ user_id: user.id, row }));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(`feed-browser-test: ${error.stack || error}`);
  process.exit(1);
});
