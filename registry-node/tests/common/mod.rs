//! Test kit: an in-process standalone node on 127.0.0.1:0, a small HTTP client, and an SSE
//! reader that collects pushes.
#![allow(dead_code)]

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use registry_node::config::Config;
use registry_node::roles::{start_standalone, RunningNode};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Starts a standalone node with short timings, adjusted by `f`.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> RunningNode {
    let mut cfg = Config::for_tests();
    cfg.push_delay_ms = 50;
    cfg.push_max_delay_ms = 300;
    cfg.ping_interval_ms = 300;
    cfg.version_scan_ms = 500;
    cfg.node_name = Some("test-node".into());
    f(&mut cfg);
    start_standalone(&cfg).await.expect("start node")
}

pub async fn start() -> RunningNode {
    start_with(|_| {}).await
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Client {
    pub fn new(node: &RunningNode) -> Client {
        Client {
            base: format!("http://{}", node.http_addr),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let bytes = res.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.raw(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.raw(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.raw(Method::DELETE, path, None).await
    }

    pub async fn session(&self, ttl: u64) -> String {
        let (s, v) = self
            .post("/api/v1/sessions", json!({"ttlSeconds": ttl}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["sessionId"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, session: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/sessions/{session}/publishers"), body)
            .await
    }

    pub async fn subscribe(&self, session: &str, body: Value) -> String {
        let (s, v) = self
            .post(&format!("/api/v1/sessions/{session}/subscribers"), body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["registerId"].as_str().unwrap().to_owned()
    }

    /// Opens the session's event stream; pushes arrive on the returned reader.
    pub async fn events(&self, session: &str) -> Events {
        let mut req = self
            .http
            .get(format!("{}/api/v1/sessions/{session}/events", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("events request");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = res.bytes_stream().eventsource();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { break };
                let data = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                if tx
                    .send(Push {
                        event: ev.event,
                        id: ev.id,
                        data,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Events { rx, task }
    }
}

#[derive(Debug, Clone)]
pub struct Push {
    pub event: String,
    pub id: String,
    pub data: Value,
}

pub struct Events {
    rx: mpsc::UnboundedReceiver<Push>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// The next push, or None at `timeout` or the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<Push> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first push that satisfies `pred`, skipping others; panics at `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Push) -> bool,
    ) -> Push {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(p) if pred(&p) => return p,
                Some(_) => continue,
                None => panic!("no matching push within {timeout:?}"),
            }
        }
    }

    /// Every push that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Push> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Some(p) = self
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            out.push(p);
        }
        out
    }

    /// Whether the stream ended (server closed it) within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn close(self) {
        self.task.abort();
    }
}

/// Polls `f` until it returns Some, panicking at `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn service(data_id: &str) -> String {
    format!("{data_id}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP")
}

/// The items of every zone of a push, sorted.
pub fn items(push: &Value) -> Vec<String> {
    let mut out: Vec<String> = push["zones"]
        .as_object()
        .map(|z| {
            z.values()
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
