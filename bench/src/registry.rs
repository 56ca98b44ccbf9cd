//! Registry backend client: one session per client over the public HTTP API, pushes over SSE.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Update;

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    session: String,
    /// The write path: one kept-alive HTTP/1.1 connection driven by hyper directly, with the
    /// paths prebuilt. reqwest cost ~21 µs of CPU per request, as much as the server, on the
    /// same 2 cores; this client is what a lean production client would use. `None` for a
    /// client that only subscribes (it opens no write connection).
    writer: Option<tokio::sync::Mutex<Writer>>,
    background: Vec<JoinHandle<()>>,
}

struct Writer {
    send: SendRequest<Full<Bytes>>,
    authority: String,
    host: HeaderValue,
    publish_path: String,
    batch_path: String,
}

impl Writer {
    async fn connect(base: &str, session: &str) -> Result<(Writer, JoinHandle<()>)> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("not an http:// URL: {base}"))?;
        let (send, driver) = Self::open(authority).await?;
        let writer = Writer {
            send,
            authority: authority.to_owned(),
            host: HeaderValue::from_str(authority)?,
            publish_path: format!("/api/v1/sessions/{session}/publishers"),
            batch_path: format!("/api/v1/sessions/{session}/publishers:batch"),
        };
        Ok((writer, driver))
    }

    /// One HTTP/1.1 connection to `authority` and the task that drives it (it ends when
    /// the connection closes or its sender is dropped).
    async fn open(authority: &str) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>)> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((send, driver))
    }

    async fn post(&mut self, batch: bool, body: Vec<u8>) -> Result<()> {
        // A kept-alive connection left idle for long is closed by the server (the
        // registry's header-read and idle timeouts): open another, as a pooled client would.
        if self.send.is_closed() {
            let (send, _driver) = Self::open(&self.authority).await?;
            self.send = send;
        }
        let path = if batch {
            &self.batch_path
        } else {
            &self.publish_path
        };
        let req = Request::post(path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

/// The HTTP client every session of the process shares for its heartbeats, subscriptions
/// and event streams (one connection pool): building one per session cost each a TLS
/// configuration it never uses, which at 10,000 sessions was most of the bench client's
/// memory. Event streams still get a connection each (the pool opens one per stream).
fn shared_http() -> Result<reqwest::Client> {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = HTTP.get() {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder().no_proxy().build()?;
    Ok(HTTP.get_or_init(|| c).clone())
}

impl RegistryClient {
    /// Opens a session kept alive by heartbeats every third of its TTL, with a write
    /// connection when `writer` (a client that only subscribes needs none).
    pub async fn connect(base: &str, client_id: &str, ttl: Duration, writer: bool) -> Result<Self> {
        let http = shared_http()?;
        let ttl_s = ttl.as_secs().clamp(5, 600);
        let resp = http
            .post(format!("{base}/api/v1/sessions"))
            .json(&json!({"clientId": client_id, "ttlSeconds": ttl_s}))
            .send()
            .await?;
        let body = ok_json(resp).await.context("creating session")?;
        let session = body["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {body}"))?
            .to_string();
        let hb_url = format!("{base}/api/v1/sessions/{session}/heartbeat");
        let hb_http = http.clone();
        let heartbeat = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(ttl_s) / 3);
            every.tick().await;
            loop {
                every.tick().await;
                let _ = hb_http.post(&hb_url).send().await;
            }
        });
        let mut background = vec![heartbeat];
        let writer = if writer {
            let (writer, driver) = Writer::connect(base, &session).await?;
            background.push(driver);
            Some(tokio::sync::Mutex::new(writer))
        } else {
            None
        };
        Ok(Self {
            http,
            base: base.to_string(),
            session,
            writer,
            background,
        })
    }

    async fn post(&self, batch: bool, body: Vec<u8>) -> Result<()> {
        match &self.writer {
            Some(w) => w.lock().await.post(batch, body).await,
            None => bail!("a subscriber-only client has no write connection"),
        }
    }

    /// Ends the session (`DELETE …/sessions/{id}`): its publishers go at once.
    pub async fn end(self) -> Result<()> {
        let resp = self
            .http
            .delete(format!("{}/api/v1/sessions/{}", self.base, self.session))
            .send()
            .await?;
        ok_json(resp).await.context("ending session").map(drop)
    }

    pub async fn register(&self, service: &str, instance: &str) -> Result<()> {
        let body = serde_json::to_vec(
            &json!({"dataId": service, "registerId": instance, "data": [instance]}),
        )?;
        self.post(false, body).await
    }

    /// Registers several instances in one request (`publishers:batch`, all or nothing).
    pub async fn register_batch(&self, regs: &[(&str, String)]) -> Result<()> {
        let publishers: Vec<Value> = regs
            .iter()
            .map(|(service, instance)| json!({"dataId": service, "registerId": instance, "data": [instance]}))
            .collect();
        let body = serde_json::to_vec(&json!({ "publishers": publishers }))?;
        self.post(true, body).await
    }

    /// Opens the session's event stream, registers a subscriber, and returns once its first
    /// push has arrived. Every push after that is forwarded as an [`Update`].
    pub async fn subscribe(
        &mut self,
        service: &str,
        sub: usize,
        tx: mpsc::UnboundedSender<Update>,
    ) -> Result<()> {
        self.subscribe_many(&[(sub, service)], tx).await
    }

    /// Opens one event stream for the session, registers a subscriber `sub-{i}` for every
    /// `(i, service)` on it, and returns once each has had its first push. Every push is
    /// forwarded as an [`Update`] tagged with its subscriber's `i`.
    pub async fn subscribe_many(
        &mut self,
        subs: &[(usize, &str)],
        tx: mpsc::UnboundedSender<Update>,
    ) -> Result<()> {
        if subs.is_empty() {
            return Ok(());
        }
        let resp = testkit::sse::open(self.http.get(format!(
            "{}/api/v1/sessions/{}/events",
            self.base, self.session
        )))
        .await?;
        let ids: HashMap<String, usize> =
            subs.iter().map(|&(i, _)| (format!("sub-{i}"), i)).collect();
        let (first_tx, first_rx) = oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut waiting: std::collections::HashSet<usize> = ids.values().copied().collect();
            let mut events = std::pin::pin!(testkit::sse::stream(resp));
            while let Some(event) = events.next().await {
                if event.event != "push" {
                    continue;
                }
                let at = Instant::now();
                let push = event.data;
                let Some(&sub) = push["registerId"].as_str().and_then(|r| ids.get(r)) else {
                    continue;
                };
                let instances = testkit::sse::items(&push);
                if waiting.remove(&sub) && waiting.is_empty() {
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                }
                if tx.send(Update { sub, at, instances }).is_err() {
                    break;
                }
            }
        });
        self.background.push(reader);
        for &(i, service) in subs {
            let resp = self
                .http
                .post(format!(
                    "{}/api/v1/sessions/{}/subscribers",
                    self.base, self.session
                ))
                .json(&json!({"dataId": service, "registerId": format!("sub-{i}")}))
                .send()
                .await?;
            ok_json(resp).await.context("registering subscriber")?;
        }
        tokio::time::timeout(Duration::from_secs(30), first_rx)
            .await
            .map_err(|_| anyhow!("not every subscriber had its first push within 30 s"))?
            .map_err(|_| anyhow!("event stream ended before the first pushes"))
    }

    /// Stops heartbeats and drops the connections without ending the session, as a crashed
    /// client would: the session expires after its TTL.
    pub fn vanish(self) {
        for t in &self.background {
            t.abort();
        }
    }
}

impl Drop for RegistryClient {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

async fn ok_json(resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {text}");
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}
