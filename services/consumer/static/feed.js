// The live feed page: reads GET /events/stream with fetch (so the token
// travels in the Authorization header, never in a URL), parses the
// Server-Sent Events, shows each event as a table row, and reconnects with
// Last-Event-ID after a drop.
"use strict";

const statusOutput = document.getElementById("status");
const countOutput = document.getElementById("count");
const rows = document.getElementById("events");
let token = null;
let lastEventId = null;
let shown = 0;

function setStatus(text) {
  statusOutput.value = text;
  statusOutput.textContent = text;
}

function show(event) {
  const row = document.createElement("tr");
  row.dataset.eventId = event.event_id;
  row.dataset.userId = event.user_id;
  row.dataset.eventType = event.event_type;
  for (const text of [
    String(event.sequence),
    event.event_type,
    event.user_id,
    new Date(event.time).toISOString(),
    `${event.topic}[${event.partition}]@${event.offset}`,
  ]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  rows.prepend(row);
  shown += 1;
  countOutput.textContent = String(shown);
}

// One SSE frame: lines up to a blank line. Comments start with ":".
function handleFrame(frame) {
  let id = null;
  let data = "";
  for (const line of frame.split("\n")) {
    if (line.startsWith("id: ")) id = line.slice(4);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (id !== null) lastEventId = id;
  if (data) show(JSON.parse(data));
}

async function connect() {
  const headers = { Authorization: `Bearer ${token}` };
  if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
  setStatus("connecting");
  try {
    const response = await fetch("/events/stream", { headers, cache: "no-store" });
    if (response.status === 401) {
      setStatus("token refused");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    setStatus("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (error) {
    console.warn("feed:", error);
  }
  setStatus("reconnecting");
  setTimeout(connect, 2000);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  if (token) connect();
});

// /feed#token=<token>: the fragment never leaves the browser.
const fromFragment = new URLSearchParams(window.location.hash.slice(1)).get("token");
if (fromFragment) {
  history.replaceState(null, "", window.location.pathname);
  token = fromFragment;
  connect();
}
