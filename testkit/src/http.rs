//! A small JSON client of the public API for tests: every call answers `(status, body)`, so
//! that a test can check refusals as closely as successes.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sse::Events;

#[derive(Clone)]
pub struct Client {
    /// `http://HOST:PORT`
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Client {
    /// A client of the node listening on `addr` (`HOST:PORT`).
    pub fn new(addr: impl std::fmt::Display) -> Client {
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                // Dropped before the node closes them (it closes keep-alive connections
                // idle for --http-header-timeout, 10 s), so no request goes out on a
                // connection the node is closing.
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            token: None,
        }
    }

    /// A client of `base` (`http(s)://HOST:PORT`) over `http`: for HTTPS, or a node reached
    /// by a name the client resolves itself.
    pub fn over(base: impl Into<String>, http: reqwest::Client) -> Client {
        Client {
            base: base.into(),
            http,
            token: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` on every request.
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Any request; the body is JSON when it parses, else a string (`Null` when empty).
    /// Panics when the request fails (no connection, a reset): see [`Client::try_raw`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        self.try_raw(method, path, body).await.expect("request")
    }

    /// [`Client::raw`] that returns a failed request instead of panicking: for a check
    /// inside `eventually` that a node may not answer yet.
    pub async fn try_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, value))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.raw(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.raw(Method::GET, path, None).await
    }

    /// [`Client::get`] that returns a failed request instead of panicking.
    pub async fn try_get(&self, path: &str) -> Result<(StatusCode, Value), reqwest::Error> {
        self.try_raw(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.raw(Method::DELETE, path, None).await
    }

    /// Creates a session with `ttl` seconds; panics unless it is created.
    pub async fn session(&self, ttl: u64) -> String {
        let (s, v) = self
            .post("/api/v1/sessions", json!({"ttlSeconds": ttl}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["sessionId"].as_str().expect("sessionId").to_owned()
    }

    pub async fn publish(&self, session: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/sessions/{session}/publishers"), body)
            .await
    }

    /// Registers a subscriber; panics unless it is created. Returns its registerId.
    pub async fn subscribe(&self, session: &str, body: Value) -> String {
        let (s, v) = self
            .post(&format!("/api/v1/sessions/{session}/subscribers"), body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["registerId"].as_str().expect("registerId").to_owned()
    }

    /// Opens the session's event stream; pushes arrive on the returned reader.
    pub async fn events(&self, session: &str) -> Events {
        Events::open(self.request(Method::GET, &format!("/api/v1/sessions/{session}/events"))).await
    }
}
