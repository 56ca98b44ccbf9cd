//! Reading a session's Server-Sent-Events stream: [`stream`] turns a response into events,
//! [`Events`] reads them in the background for tests that wait for pushes with deadlines;
//! [`WireEvents`] reads a raw (possibly gzip) stream and tells what each event cost.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Error;

/// One event of the stream: `push` (data is the push document) or another kind.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub id: String,
    /// The data parsed as JSON (`Null` when it is not JSON).
    pub data: Value,
}

/// The events of an SSE response, until it ends or breaks.
pub fn stream(response: reqwest::Response) -> impl Stream<Item = Event> + Send {
    events_of(response.bytes_stream())
}

/// The events of any SSE byte stream (a response body, or a session layer's stream read
/// in-process), until it ends or breaks.
pub fn events_of<S, B, E>(bytes: S) -> impl Stream<Item = Event> + Send
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    E: Send,
{
    bytes
        .eventsource()
        .take_while(|e| std::future::ready(e.is_ok()))
        .filter_map(|e| {
            std::future::ready(e.ok().map(|e| Event {
                data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
                event: e.event,
                id: e.id,
            }))
        })
}

/// Sends `request` (a `GET …/events`) and checks that it answers `200 text/event-stream`.
pub async fn open(request: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
    let response = request
        .send()
        .await
        .map_err(|e| Error::Stream(e.to_string()))?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .cloned();
    if !response.status().is_success() {
        return Err(Error::Stream(format!("HTTP {}", response.status())));
    }
    if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some("text/event-stream") {
        return Err(Error::Stream(format!(
            "content-type {content_type:?}, not text/event-stream"
        )));
    }
    Ok(response)
}

/// A stream read in the background; events wait in a queue until asked for.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Opens the stream (see [`open`]); panics when it does not open.
    pub async fn open(request: reqwest::RequestBuilder) -> Events {
        let response = open(request)
            .await
            .unwrap_or_else(|e| panic!("event stream: {e}"));
        Events::reading(response)
    }

    /// Reads `response` in the background.
    pub fn reading(response: reqwest::Response) -> Events {
        Events::reading_bytes(response.bytes_stream())
    }

    /// Reads an SSE byte stream in the background (see [`events_of`]).
    pub fn reading_bytes<S, B, E>(bytes: S) -> Events
    where
        S: Stream<Item = Result<B, E>> + Send + 'static,
        B: AsRef<[u8]>,
        E: Send,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events_of(bytes));
            while let Some(event) = events.next().await {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Events { rx, task }
    }

    /// The next event, or `None` at `timeout` or the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first event that satisfies `pred`, skipping others; panics at `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(e) if pred(&e) => return e,
                Some(_) => continue,
                None => panic!("no matching event within {timeout:?}"),
            }
        }
    }

    /// Every event that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Event> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(e) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            out.push(e);
        }
        out
    }

    /// Whether the stream ended (the server closed it) within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Stops reading and closes the connection.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One event as it came off the wire, with what it cost there (see [`WireEvents`]).
#[derive(Debug, Clone)]
pub struct WireEvent {
    pub event: String,
    /// The data parsed as JSON (`Null` when it is not JSON).
    pub data: Value,
    /// The event's bytes as sent (before any compression), blank line included.
    pub bytes: usize,
    /// Bytes read from the socket since the previous event (compressed bytes on a gzip
    /// stream, `:` comments before it included): its cost on the wire.
    pub wire: usize,
}

/// A raw event stream read in the background, gunzipped first when it is gzip-encoded, so
/// that each event comes with its size as sent and its cost on the wire. `:` comments are
/// skipped. The stream ends at the end of the body, a read error, a broken gzip stream or
/// an event that is not UTF-8.
pub struct WireEvents {
    rx: mpsc::UnboundedReceiver<WireEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl WireEvents {
    pub fn reading<S, B, E>(body: S, gzip: bool) -> WireEvents
    where
        S: Stream<Item = Result<B, E>> + Send + 'static,
        B: AsRef<[u8]>,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use std::io::Write as _;
            let mut body = std::pin::pin!(body);
            let mut decoder = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
            let (mut plain, mut wire) = (Vec::new(), 0usize);
            while let Some(Ok(chunk)) = body.next().await {
                let chunk = chunk.as_ref();
                wire += chunk.len();
                match &mut decoder {
                    Some(d) => {
                        if d.write_all(chunk).and_then(|_| d.flush()).is_err() {
                            return;
                        }
                        plain.append(d.get_mut());
                    }
                    None => plain.extend_from_slice(chunk),
                }
                while let Some(end) = plain.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = plain.drain(..end + 2).collect();
                    let Ok(text) = String::from_utf8(block) else {
                        return;
                    };
                    if text.starts_with(':') {
                        continue;
                    }
                    let field = |name: &str| {
                        text.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let event = WireEvent {
                        event: field("event: "),
                        data: serde_json::from_str(&field("data: ")).unwrap_or(Value::Null),
                        bytes: text.len(),
                        wire: std::mem::take(&mut wire),
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        WireEvents { rx, task }
    }

    /// The next event; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<WireEvent> {
        self.rx.recv().await
    }
}

impl Drop for WireEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The data items of every zone of a push (or of a query answer's `zones`), sorted.
pub fn items(push: &Value) -> Vec<String> {
    let mut out: Vec<String> = push["zones"]
        .as_object()
        .into_iter()
        .flat_map(|zones| zones.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// The dataInfoId of `data_id` in the default instance and group.
pub fn data_info_id(data_id: &str) -> String {
    format!("{data_id}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_of_every_zone_sorted() {
        let push = json!({"zones": {"b": ["z:1", "a:1"], "a": ["m:1"], "odd": 3}});
        assert_eq!(items(&push), ["a:1", "m:1", "z:1"]);
        assert!(items(&json!({})).is_empty());
    }

    #[tokio::test]
    async fn reads_events_until_the_stream_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
            let body = "event: push\nid: 1\ndata: {\"version\":1}\n\n: ping\n\nevent: push\nid: 2\ndata: {\"version\":2}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(body.as_bytes()).await.unwrap();
        });
        let mut events = Events::open(reqwest::Client::new().get(url)).await;
        let second = events
            .wait_for(Duration::from_secs(10), |e| e.data["version"] == 2)
            .await;
        assert_eq!((second.event.as_str(), second.id.as_str()), ("push", "2"));
        assert!(events.closed_within(Duration::from_secs(10)).await);
    }
}
