//! Thin typed calls of the public HTTP API against one node (`NodeApi`), and stateless
//! queries that fail over across several nodes (`Endpoints`).

use crate::credential::Credential;
use crate::error::{api_error, Error};
use crate::model::{
    CreateSessionRequest, DataAnswer, HeartbeatAnswer, PublishRequest, Published, PushSwitch,
    Scope, ServiceId, ServicesAnswer, SessionCreated, SubscribeRequest, Subscribed,
};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How HTTP calls are made: shared by every node of a client.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub token: Option<String>,
    /// A file holding the bearer token, read again when it changes (a projected
    /// ServiceAccount token); exclusive with `token`.
    pub token_file: Option<PathBuf>,
    /// Whole-request limit of every call except the event stream and blocking queries.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// PEM CA certificates that `https://` nodes are verified against, instead of the
    /// built-in web roots (a registry's own CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            token: None,
            token_file: None,
            ca_file: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl HttpSettings {
    /// A reqwest client for these settings; no client-wide timeout, since the event stream
    /// must stay open indefinitely (every other call sets its own).
    pub fn build_client(&self) -> Result<reqwest::Client, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tcp_keepalive(Duration::from_secs(30))
            // Idle pooled connections are dropped before a node closes them (it closes a
            // keep-alive connection idle for --http-header-timeout, 10 s by default), so a
            // request never goes out on a connection the node is closing at that moment.
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(path) = &self.ca_file {
            builder = builder.tls_built_in_root_certs(false);
            for ca in read_ca_file(path)? {
                builder = builder.add_root_certificate(ca);
            }
        }
        builder
            .build()
            .map_err(|err| Error::Config(format!("cannot build the HTTP client: {err}")))
    }
}

/// The CA certificates of a PEM file; at least one.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let pem = std::fs::read(path)
        .map_err(|err| Error::Config(format!("cannot read CA file {}: {err}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
        Error::Config(format!(
            "CA file {}: not PEM certificates: {err}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "CA file {}: holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Parses a node URL as users give it: `http://host:port[/prefix]`, or `host:port`.
pub fn parse_node_url(raw: &str) -> Result<Url, Error> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::Config("a node URL must not be empty".into()));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|err| Error::Config(format!("invalid node URL {raw:?}: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "invalid node URL {raw:?}: scheme must be http or https"
        )));
    }
    if url.host_str().is_none() || url.cannot_be_a_base() {
        return Err(Error::Config(format!("invalid node URL {raw:?}: no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Config(format!(
            "invalid node URL {raw:?}: must not have a query or fragment"
        )));
    }
    Ok(url)
}

/// The events of one open event stream; ends with an error when the connection breaks or
/// stays silent for longer than the idle limit.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

/// The public API of one node.
#[derive(Clone)]
pub struct NodeApi {
    http: reqwest::Client,
    base: Url,
    display: Arc<str>,
    credential: Credential,
    timeout: Duration,
}

impl std::fmt::Debug for NodeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApi")
            .field("url", &self.display)
            .finish()
    }
}

impl NodeApi {
    pub fn new(
        http: reqwest::Client,
        url: &str,
        settings: &HttpSettings,
    ) -> Result<NodeApi, Error> {
        let base = parse_node_url(url)?;
        Ok(NodeApi {
            http,
            display: base.as_str().trim_end_matches('/').into(),
            base,
            credential: Credential::new(settings.token.as_deref(), settings.token_file.as_deref())?,
            timeout: settings.request_timeout,
        })
    }

    /// The node's base URL as given (normalised).
    pub fn url(&self) -> &str {
        &self.display
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let builder = self.http.request(method, self.endpoint(segments));
        match self.credential.current() {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    fn transport_error(&self, err: reqwest::Error, timeout: Option<Duration>) -> Error {
        if err.is_timeout() {
            return Error::Timeout {
                url: self.display.to_string(),
                timeout_ms: timeout.unwrap_or(self.timeout).as_millis() as u64,
            };
        }
        Error::Transport {
            url: self.display.to_string(),
            message: error_chain(&err),
        }
    }

    /// Sends, and turns any non-2xx answer into the typed API error.
    async fn send(
        &self,
        builder: RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let builder = match timeout {
            Some(limit) => builder.timeout(limit),
            None => builder,
        };
        let response = builder
            .send()
            .await
            .map_err(|err| self.transport_error(err, timeout))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(api_error(&self.display, status, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        response: Response,
        timeout: Duration,
    ) -> Result<T, Error> {
        let body = response
            .bytes()
            .await
            .map_err(|err| self.transport_error(err, Some(timeout)))?;
        serde_json::from_slice(&body).map_err(|err| Error::Protocol {
            url: self.display.to_string(),
            message: format!("cannot decode the answer: {err}"),
        })
    }

    async fn call<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, Error> {
        let response = self.send(builder, Some(self.timeout)).await?;
        self.json(response, self.timeout).await
    }

    async fn call_no_content(&self, builder: RequestBuilder) -> Result<(), Error> {
        self.send(builder, Some(self.timeout)).await.map(drop)
    }

    pub async fn create_session(
        &self,
        client_id: Option<&str>,
        ttl_seconds: u64,
    ) -> Result<SessionCreated, Error> {
        let body = CreateSessionRequest {
            client_id,
            ttl_seconds,
        };
        self.call(
            self.request(Method::POST, &["api", "v1", "sessions"])
                .json(&body),
        )
        .await
    }

    /// A heartbeat, limited to `timeout` (shorter than other calls: a heartbeat that does
    /// not come back quickly is how a hung session node is noticed).
    pub async fn heartbeat(
        &self,
        session_id: &str,
        timeout: Duration,
    ) -> Result<HeartbeatAnswer, Error> {
        let timeout = timeout.min(self.timeout);
        let response = self
            .send(
                self.request(
                    Method::POST,
                    &["api", "v1", "sessions", session_id, "heartbeat"],
                ),
                Some(timeout),
            )
            .await?;
        self.json(response, timeout).await
    }

    pub async fn delete_session(&self, session_id: &str) -> Result<(), Error> {
        self.call_no_content(self.request(Method::DELETE, &["api", "v1", "sessions", session_id]))
            .await
    }

    /// Publishes or replaces; the flag is true when the publisher was new (201).
    pub async fn publish(
        &self,
        session_id: &str,
        service: &ServiceId,
        zone: Option<&str>,
        register_id: &str,
        data: &[String],
    ) -> Result<(Published, bool), Error> {
        let body = PublishRequest {
            service,
            zone,
            register_id,
            data,
        };
        let builder = self
            .request(
                Method::POST,
                &["api", "v1", "sessions", session_id, "publishers"],
            )
            .json(&body);
        let response = self.send(builder, Some(self.timeout)).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((self.json(response, self.timeout).await?, created))
    }

    pub async fn unpublish(&self, session_id: &str, register_id: &str) -> Result<(), Error> {
        self.call_no_content(self.request(
            Method::DELETE,
            &[
                "api",
                "v1",
                "sessions",
                session_id,
                "publishers",
                register_id,
            ],
        ))
        .await
    }

    pub async fn subscribe(
        &self,
        session_id: &str,
        service: &ServiceId,
        zone: Option<&str>,
        scope: Scope,
        register_id: &str,
    ) -> Result<Subscribed, Error> {
        self.subscribe_with(session_id, service, zone, scope, register_id, false)
            .await
    }

    /// [`subscribe`](Self::subscribe), asking for `event: delta` pushes when `delta`.
    pub async fn subscribe_with(
        &self,
        session_id: &str,
        service: &ServiceId,
        zone: Option<&str>,
        scope: Scope,
        register_id: &str,
        delta: bool,
    ) -> Result<Subscribed, Error> {
        let body = SubscribeRequest {
            service,
            zone,
            scope,
            register_id,
            delta,
        };
        self.call(
            self.request(
                Method::POST,
                &["api", "v1", "sessions", session_id, "subscribers"],
            )
            .json(&body),
        )
        .await
    }

    pub async fn unsubscribe(&self, session_id: &str, register_id: &str) -> Result<(), Error> {
        self.call_no_content(self.request(
            Method::DELETE,
            &[
                "api",
                "v1",
                "sessions",
                session_id,
                "subscribers",
                register_id,
            ],
        ))
        .await
    }

    /// Opens the session's event stream; returns once the node answered 200. The stream
    /// fails when no byte (event or `: ping` comment) arrives for `idle_timeout`.
    pub async fn open_events(
        &self,
        session_id: &str,
        idle_timeout: Duration,
    ) -> Result<EventStream, Error> {
        let builder = self
            .request(
                Method::GET,
                &["api", "v1", "sessions", session_id, "events"],
            )
            .header(reqwest::header::ACCEPT, "text/event-stream");
        // The answer head must come within the request timeout; the body may last forever.
        let response = tokio::time::timeout(self.timeout, self.send(builder, None))
            .await
            .map_err(|_| Error::Timeout {
                url: self.display.to_string(),
                timeout_ms: self.timeout.as_millis() as u64,
            })??;
        let url = self.display.clone();
        let idle_url = self.display.clone();
        let bytes = tokio_stream::StreamExt::timeout(response.bytes_stream(), idle_timeout).map(
            move |item| match item {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(err)) => Err(Error::Transport {
                    url: url.to_string(),
                    message: format!("event stream broke: {}", error_chain(&err)),
                }),
                Err(_) => Err(Error::Timeout {
                    url: idle_url.to_string(),
                    timeout_ms: idle_timeout.as_millis() as u64,
                }),
            },
        );
        let url = self.display.clone();
        let events = Box::pin(bytes).eventsource().map(move |item| {
            item.map_err(|err| match err {
                eventsource_stream::EventStreamError::Transport(inner) => inner,
                other => Error::Protocol {
                    url: url.to_string(),
                    message: format!("malformed event stream: {other}"),
                },
            })
        });
        Ok(Box::pin(events))
    }

    /// `GET /api/v1/data`; with `wait`, a blocking query that answers once the version
    /// exceeds the given index or the wait ends.
    pub async fn data(
        &self,
        service: &ServiceId,
        wait: Option<(u64, Duration)>,
    ) -> Result<DataAnswer, Error> {
        let mut query: Vec<(&str, String)> = vec![("dataId", service.data_id.clone())];
        if let Some(group) = &service.group {
            query.push(("group", group.clone()));
        }
        if let Some(instance_id) = &service.instance_id {
            query.push(("instanceId", instance_id.clone()));
        }
        let mut timeout = self.timeout;
        if let Some((index, wait)) = wait {
            query.push(("waitIndex", index.to_string()));
            query.push(("wait", wait_param(wait)));
            timeout += wait;
        }
        let builder = self
            .request(Method::GET, &["api", "v1", "data"])
            .query(&query);
        let response = self.send(builder, Some(timeout)).await?;
        self.json(response, timeout).await
    }

    pub async fn services(
        &self,
        prefix: Option<&str>,
        limit: Option<u64>,
    ) -> Result<ServicesAnswer, Error> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.call(
            self.request(Method::GET, &["api", "v1", "services"])
                .query(&query),
        )
        .await
    }

    /// `GET /api/v1/cluster`: free-form (API.md fixes only what it describes).
    pub async fn cluster(&self) -> Result<serde_json::Value, Error> {
        self.call(self.request(Method::GET, &["api", "v1", "cluster"]))
            .await
    }

    pub async fn push_switch(&self) -> Result<PushSwitch, Error> {
        self.call(self.request(Method::GET, &["api", "v1", "admin", "push"]))
            .await
    }

    pub async fn set_stop_push(&self, stop_push: bool) -> Result<PushSwitch, Error> {
        self.call(
            self.request(Method::PUT, &["api", "v1", "admin", "push"])
                .json(&serde_json::json!({ "stopPush": stop_push })),
        )
        .await
    }
}

/// A blocking query's `wait` as API.md writes it (`30s`), milliseconds when not whole.
fn wait_param(wait: Duration) -> String {
    let millis = wait.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// An error with its causes, which reqwest keeps in the source chain ("connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Several nodes serving the same registry: stateless calls go to the last node that
/// answered and move on to the next when a node is down.
pub struct Endpoints {
    nodes: Vec<NodeApi>,
    preferred: AtomicUsize,
}

impl Endpoints {
    pub fn new<S: AsRef<str>>(urls: &[S], settings: &HttpSettings) -> Result<Endpoints, Error> {
        if urls.is_empty() {
            return Err(Error::Config("at least one node URL is needed".into()));
        }
        let http = settings.build_client()?;
        let nodes = urls
            .iter()
            .map(|url| NodeApi::new(http.clone(), url.as_ref(), settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoints {
            nodes,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn nodes(&self) -> &[NodeApi] {
        &self.nodes
    }

    /// Runs `call` on one node after another, starting at the preferred one, until one
    /// answers with anything but a node failure.
    pub async fn first_answer<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(NodeApi) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for offset in 0..self.nodes.len() {
            let index = (start + offset) % self.nodes.len();
            match call(self.nodes[index].clone()).await {
                Err(err) if err.is_node_failure() => {
                    tracing::debug!(url = self.nodes[index].url(), error = %err, "node failed, trying the next");
                    last = Some(err);
                }
                answer => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return answer;
                }
            }
        }
        let last = last.unwrap_or(Error::Config("no node URL".into()));
        if self.nodes.len() == 1 {
            return Err(last);
        }
        Err(Error::NoNodeReachable {
            tried: self
                .nodes
                .iter()
                .map(NodeApi::url)
                .collect::<Vec<_>>()
                .join(", "),
            last: Box::new(last),
        })
    }

    pub async fn data(
        &self,
        service: &ServiceId,
        wait: Option<(u64, Duration)>,
    ) -> Result<DataAnswer, Error> {
        self.first_answer(|node| async move { node.data(service, wait).await })
            .await
    }

    pub async fn services(
        &self,
        prefix: Option<&str>,
        limit: Option<u64>,
    ) -> Result<ServicesAnswer, Error> {
        self.first_answer(|node| async move { node.services(prefix, limit).await })
            .await
    }

    pub async fn cluster(&self) -> Result<serde_json::Value, Error> {
        self.first_answer(|node| async move { node.cluster().await })
            .await
    }

    pub async fn push_switch(&self) -> Result<PushSwitch, Error> {
        self.first_answer(|node| async move { node.push_switch().await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str) -> NodeApi {
        NodeApi::new(reqwest::Client::new(), url, &HttpSettings::default()).unwrap()
    }

    #[test]
    fn node_urls_are_normalised() {
        assert_eq!(
            parse_node_url("127.0.0.1:9603").unwrap().as_str(),
            "http://127.0.0.1:9603/"
        );
        assert_eq!(
            parse_node_url(" https://reg.example/prefix ")
                .unwrap()
                .as_str(),
            "https://reg.example/prefix"
        );
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://h:1/?a=b",
            "http://h:99999",
        ] {
            assert!(
                matches!(parse_node_url(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoints_escape_ids_and_keep_a_path_prefix() {
        let api = node("http://127.0.0.1:9603");
        assert_eq!(
            api.endpoint(&["api", "v1", "sessions", "a/b c", "publishers", "r#1"])
                .as_str(),
            "http://127.0.0.1:9603/api/v1/sessions/a%2Fb%20c/publishers/r%231"
        );
        let api = node("http://proxy/registry/");
        assert_eq!(
            api.endpoint(&["healthz"]).as_str(),
            "http://proxy/registry/healthz"
        );
        assert_eq!(api.url(), "http://proxy/registry");
    }

    #[test]
    fn wait_is_written_in_seconds_when_whole() {
        assert_eq!(wait_param(Duration::from_secs(30)), "30s");
        assert_eq!(wait_param(Duration::from_millis(1500)), "1500ms");
        assert_eq!(wait_param(Duration::ZERO), "0s");
    }

    #[test]
    fn endpoints_need_a_url() {
        let none: [&str; 0] = [];
        assert!(matches!(
            Endpoints::new(&none, &HttpSettings::default()),
            Err(Error::Config(_))
        ));
        assert!(Endpoints::new(
            &["127.0.0.1:1", "http://127.0.0.2:1"],
            &HttpSettings::default()
        )
        .is_ok());
    }

    #[tokio::test]
    async fn unreachable_nodes_give_one_clear_error() {
        // A port that was just free: connecting to it is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = HttpSettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..HttpSettings::default()
        };
        let first = format!("127.0.0.1:{port}");
        let second = format!("127.0.0.1:{port}/x");
        let endpoints = Endpoints::new(&[first, second], &settings).unwrap();
        let err = endpoints.cluster().await.unwrap_err();
        match &err {
            Error::NoNodeReachable { tried, last } => {
                assert!(tried.contains(&format!("{port}/x")), "{tried}");
                assert!(
                    matches!(**last, Error::Transport { .. } | Error::Timeout { .. }),
                    "{last:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
    }
}
