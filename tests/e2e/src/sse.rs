//! Reading the consumer's live feed (`GET /events/stream`, Server-Sent
//! Events), for the feed tests and the benchmark.

use futures::stream::BoxStream;
use futures::StreamExt;

/// The event frames of an open `text/event-stream` response.
pub struct EventStream {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl EventStream {
    /// Reads `response`'s body as it arrives.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event frame's `id` and `data` (as JSON), skipping comments
    /// and frames without both; `None` when the stream ends or breaks.
    pub async fn next_event(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(value).ok();
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return Some((id, data));
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
