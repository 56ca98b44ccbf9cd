//! The user-facing client: configuration, publishing (with handles to update or remove)
//! and subscribing (a watchable stream of snapshots).

use crate::api::{parse_node_url, Endpoints, HttpSettings, NodeApi};
use crate::error::Error;
use crate::model::{Published, Scope, ServiceId, Snapshot};
use crate::session::{
    Command, ConnectionState, PublisherSpec, Registration, SessionSettings, SessionTask,
    SubscriberSpec,
};
use futures::Stream;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Heartbeat interval unless configured (or a third of the session TTL when shorter).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Limit of one heartbeat unless configured.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a client needs to know; `ClientConfig::new(urls)` then adjust.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Session-node URLs (`http://host:port` or `host:port`); tried in order on failover.
    pub urls: Vec<String>,
    pub token: Option<String>,
    /// A file holding the bearer token, read again when it changes (a Kubernetes projected
    /// ServiceAccount token rotates); exclusive with `token`.
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA certificates for `https://` nodes (instead of the built-in web roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Sent as the session's `clientId` (shown in `GET /api/v1/data`).
    pub client_id: Option<String>,
    /// Requested session TTL, 5..=600 s (API.md).
    pub session_ttl: Duration,
    /// `None`: [`DEFAULT_HEARTBEAT_INTERVAL`], or a third of the TTL the server granted
    /// when that is shorter.
    pub heartbeat_interval: Option<Duration>,
    /// Limit of one heartbeat. Two heartbeats in a row that fail (or one `503`: the node
    /// cannot reach its data layer) make the client fail over to the next URL and
    /// re-publish there. With the defaults that is within about 6 s of a session node
    /// hanging or being cut off, inside the data nodes' 10 s session lease, so the
    /// client's publishers stay listed throughout.
    pub heartbeat_timeout: Duration,
    /// Limit of each HTTP call (not the event stream).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long `publish`, `update` and `subscribe` wait for a session before failing.
    pub operation_timeout: Duration,
    /// The event stream counts as dead after this long without a byte; the server pings
    /// at least every 15 s.
    pub stream_idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// First delay before registrations a session could not take yet (e.g. 503) are
    /// retried; it doubles (with jitter) up to `backoff_max`. Permanent refusals are not
    /// retried (see [`Registration::Refused`]).
    pub retry_interval: Duration,
}

impl ClientConfig {
    pub fn new<I, S>(urls: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            token: None,
            token_file: None,
            ca_file: None,
            client_id: None,
            session_ttl: Duration::from_secs(30),
            heartbeat_interval: None,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(45),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            retry_interval: Duration::from_secs(2),
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(token.into());
        self
    }

    /// Sends the token held in this file, read again when it changes.
    pub fn token_file(mut self, path: impl Into<std::path::PathBuf>) -> ClientConfig {
        self.token_file = Some(path.into());
        self
    }

    /// Verifies `https://` nodes against the CA certificates of this PEM file.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> ClientConfig {
        self.ca_file = Some(path.into());
        self
    }

    pub fn client_id(mut self, client_id: impl Into<String>) -> ClientConfig {
        self.client_id = Some(client_id.into());
        self
    }

    pub fn session_ttl(mut self, ttl: Duration) -> ClientConfig {
        self.session_ttl = ttl;
        self
    }

    pub fn operation_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.operation_timeout = timeout;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.request_timeout = timeout;
        self
    }

    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.urls.is_empty() {
            return Err(Error::Config("at least one node URL is needed".into()));
        }
        for url in &self.urls {
            parse_node_url(url)?;
        }
        let ttl = self.session_ttl.as_secs();
        if !(5..=600).contains(&ttl) || self.session_ttl.subsec_nanos() != 0 {
            return Err(Error::Config(format!(
                "session TTL must be a whole number of seconds in 5..=600, not {:?}",
                self.session_ttl
            )));
        }
        for (name, value) in [
            ("request timeout", self.request_timeout),
            ("heartbeat timeout", self.heartbeat_timeout),
            ("connect timeout", self.connect_timeout),
            ("operation timeout", self.operation_timeout),
            ("stream idle timeout", self.stream_idle_timeout),
            ("retry interval", self.retry_interval),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("the {name} must not be zero")));
            }
        }
        if self
            .heartbeat_interval
            .is_some_and(|every| every >= self.session_ttl)
        {
            return Err(Error::Config(
                "the heartbeat interval must be shorter than the session TTL".into(),
            ));
        }
        Ok(())
    }
}

/// A registerId unique enough that two clients never pick the same (128 random bits).
pub fn new_register_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// What to publish: service, data, and optionally zone and a chosen registerId.
#[derive(Debug, Clone)]
pub struct Publication {
    pub service: ServiceId,
    pub data: Vec<String>,
    pub zone: Option<String>,
    pub register_id: Option<String>,
}

impl Publication {
    pub fn new<I, S>(service: impl Into<ServiceId>, data: I) -> Publication
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Publication {
            service: service.into(),
            data: data.into_iter().map(Into::into).collect(),
            zone: None,
            register_id: None,
        }
    }

    pub fn zone(mut self, zone: impl Into<String>) -> Publication {
        self.zone = Some(zone.into());
        self
    }

    pub fn register_id(mut self, register_id: impl Into<String>) -> Publication {
        self.register_id = Some(register_id.into());
        self
    }
}

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct Interest {
    pub service: ServiceId,
    pub zone: Option<String>,
    pub scope: Scope,
    pub register_id: Option<String>,
    /// Asks for delta pushes (README, "Delta pushes"): after a full push, the node sends
    /// only what changed, and the client applies it, so that the subscription still yields
    /// full snapshots (each zone the same multiset of items as a full push; order within a
    /// zone may differ). Off by default.
    pub delta: bool,
}

impl Interest {
    pub fn new(service: impl Into<ServiceId>) -> Interest {
        Interest {
            service: service.into(),
            zone: None,
            scope: Scope::default(),
            register_id: None,
            delta: false,
        }
    }

    pub fn delta(mut self, delta: bool) -> Interest {
        self.delta = delta;
        self
    }

    pub fn zone(mut self, zone: impl Into<String>) -> Interest {
        self.zone = Some(zone.into());
        self
    }

    pub fn scope(mut self, scope: Scope) -> Interest {
        self.scope = scope;
        self
    }

    pub fn register_id(mut self, register_id: impl Into<String>) -> Interest {
        self.register_id = Some(register_id.into());
        self
    }
}

impl From<&str> for ServiceId {
    fn from(data_id: &str) -> ServiceId {
        ServiceId::new(data_id)
    }
}

impl From<String> for ServiceId {
    fn from(data_id: String) -> ServiceId {
        ServiceId::new(data_id)
    }
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    endpoints: Endpoints,
    config: ClientConfig,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Ends the session (its publishers disappear) when the last client clone goes.
        let _ = self.commands.send(Command::Close { reply: None });
    }
}

/// A registry client: one session, kept alive and moved to another node when lost, with
/// every publisher and subscriber re-registered under its registerId. Cheap to clone; the
/// session ends when the last clone is dropped or `close` is called.
#[derive(Clone)]
pub struct RegistryClient {
    shared: Arc<Shared>,
}

impl RegistryClient {
    /// Starts the client's session task; must run inside a tokio runtime. Does not wait for
    /// a session (see `wait_connected`).
    pub fn new(config: ClientConfig) -> Result<RegistryClient, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("RegistryClient::new must be called inside a tokio runtime".into())
        })?;
        let settings = config.http_settings();
        let endpoints = Endpoints::new(&config.urls, &settings)?;
        let nodes: Vec<NodeApi> = endpoints.nodes().to_vec();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let task = SessionTask::new(
            SessionSettings {
                client_id: config.client_id.clone(),
                ttl_seconds: config.session_ttl.as_secs(),
                heartbeat_interval: config.heartbeat_interval,
                heartbeat_timeout: config.heartbeat_timeout,
                stream_idle_timeout: config.stream_idle_timeout,
                backoff_initial: config.backoff_initial,
                backoff_max: config.backoff_max,
                retry_interval: config.retry_interval,
                operation_timeout: config.operation_timeout,
            },
            nodes,
            command_rx,
            state_tx,
        );
        runtime.spawn(task.run());
        Ok(RegistryClient {
            shared: Arc::new(Shared {
                commands,
                state,
                endpoints,
                config,
            }),
        })
    }

    /// Stateless queries (`data`, `services`, `cluster`, push switch) with failover.
    pub fn endpoints(&self) -> &Endpoints {
        &self.shared.endpoints
    }

    /// Follows the session's state (connected where, or reconnecting).
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// `(node URL, sessionId)` of the open session, if any.
    pub fn session(&self) -> Option<(String, String)> {
        match &*self.shared.state.borrow() {
            ConnectionState::Connected { url, session_id } => {
                Some((url.clone(), session_id.clone()))
            }
            _ => None,
        }
    }

    /// Waits until a session is open and everything held is registered on it.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(String, String), Error> {
        let mut state = self.shared.state.clone();
        let outcome = tokio::time::timeout(timeout, async {
            match state
                .wait_for(|state| !matches!(state, ConnectionState::Connecting))
                .await
            {
                Ok(state) => match &*state {
                    ConnectionState::Connected { url, session_id } => {
                        Ok((url.clone(), session_id.clone()))
                    }
                    _ => Err(Error::Closed),
                },
                Err(_) => Err(Error::Closed),
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(Error::OperationTimeout {
                timeout_ms: timeout.as_millis() as u64,
                message: "no session opened".into(),
            })
        })
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.shared
            .commands
            .send(command)
            .map_err(|_| Error::Closed)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.config.operation_timeout
    }

    /// Publishes `data` under a registerId this client keeps across failovers. Returns once
    /// a node accepted it; on error nothing is held. Dropping the handle does not remove
    /// the publisher (it lives as long as the client); call `Publisher::remove`.
    pub async fn publish(&self, publication: Publication) -> Result<Publisher, Error> {
        let register_id = publication.register_id.unwrap_or_else(new_register_id);
        let spec = PublisherSpec {
            service: publication.service,
            zone: publication.zone,
            register_id: register_id.clone(),
            data: publication.data,
        };
        let (registration, registration_rx) = watch::channel(Registration::Pending);
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish {
            spec,
            registration,
            deadline: self.deadline(),
            reply,
        })?;
        let published = self.await_reply(answer).await?;
        Ok(Publisher {
            commands: self.shared.commands.clone(),
            operation_timeout: self.shared.config.operation_timeout,
            register_id,
            last: published,
            wait_limit: self.wait_limit(),
            registration: registration_rx,
        })
    }

    /// Removes a publisher this client holds, by registerId.
    pub async fn unpublish(&self, register_id: &str) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Unpublish {
            register_id: register_id.to_owned(),
            reply: Some(reply),
        })?;
        self.await_reply(answer).await
    }

    /// Subscribes; the returned subscription yields snapshots whose version only rises,
    /// and keeps the last one while no node is reachable. Dropping it unsubscribes.
    pub async fn subscribe(&self, interest: Interest) -> Result<Subscription, Error> {
        let register_id = interest.register_id.unwrap_or_else(new_register_id);
        let data_info_id = interest.service.data_info_id();
        let spec = SubscriberSpec {
            service: interest.service,
            zone: interest.zone,
            scope: interest.scope,
            register_id: register_id.clone(),
            delta: interest.delta,
        };
        let (snapshots, receiver) = watch::channel(None);
        let (reply, answer) = oneshot::channel();
        let (registration, registration_rx) = watch::channel(Registration::Pending);
        self.send(Command::Subscribe {
            spec,
            snapshots,
            registration,
            deadline: self.deadline(),
            reply,
        })?;
        self.await_reply(answer).await?;
        Ok(Subscription {
            commands: self.shared.commands.clone(),
            register_id,
            data_info_id,
            receiver,
            registration: registration_rx,
        })
    }

    /// Ends the session (its publishers disappear from the registry) and stops the client.
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Close { reply: Some(reply) })
            .is_ok()
        {
            let _ = tokio::time::timeout(self.wait_limit(), done).await;
        }
    }

    /// The session task answers within the operation timeout plus one request; this is a
    /// safety net against a stuck task, not the expected path.
    fn wait_limit(&self) -> Duration {
        let config = &self.shared.config;
        config.operation_timeout + config.request_timeout * 2 + Duration::from_secs(1)
    }

    async fn await_reply<T>(
        &self,
        answer: oneshot::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        await_reply(answer, self.wait_limit()).await
    }
}

async fn await_reply<T>(
    answer: oneshot::Receiver<Result<T, Error>>,
    limit: Duration,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::OperationTimeout {
            timeout_ms: limit.as_millis() as u64,
            message: "the client's session task did not answer".into(),
        }),
    }
}

/// A publisher held by a client.
#[derive(Debug)]
pub struct Publisher {
    commands: mpsc::UnboundedSender<Command>,
    operation_timeout: Duration,
    wait_limit: Duration,
    register_id: String,
    last: Published,
    registration: watch::Receiver<Registration>,
}

impl Publisher {
    pub fn register_id(&self) -> &str {
        &self.register_id
    }

    pub fn data_info_id(&self) -> &str {
        &self.last.data_info_id
    }

    /// The server's answer to the last accepted publish or update.
    pub fn last_published(&self) -> &Published {
        &self.last
    }

    /// Whether the current session holds the publisher: registered, pending (no session,
    /// or being re-registered after a session loss or failover), or refused for good on
    /// re-registration (then no longer retried; `update` offers it again).
    pub fn registration(&self) -> Registration {
        self.registration.borrow().clone()
    }

    /// Follows the publisher's registration (`tokio::sync::watch`), e.g. to learn that a
    /// node refused to take it back: `wait_for(|r| r.refusal().is_some())`.
    pub fn watch_registration(&self) -> watch::Receiver<Registration> {
        self.registration.clone()
    }

    /// Replaces the data. On error the previous data stays published. On a refused
    /// publisher this is a new attempt: once a node accepts it, it is registered (and
    /// re-registered after failover) again.
    pub async fn update<I, S>(&mut self, data: I) -> Result<Published, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Update {
                register_id: self.register_id.clone(),
                data: data.into_iter().map(Into::into).collect(),
                deadline: Instant::now() + self.operation_timeout,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        let published = await_reply(answer, self.wait_limit).await?;
        self.last = published.clone();
        Ok(published)
    }

    /// Removes the publisher from the registry and from what the client re-registers.
    pub async fn remove(self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Unpublish {
                register_id: self.register_id.clone(),
                reply: Some(reply),
            })
            .map_err(|_| Error::Closed)?;
        await_reply(answer, self.wait_limit).await
    }
}

/// A subscription: the latest snapshot of a service, versions never going backwards.
pub struct Subscription {
    commands: mpsc::UnboundedSender<Command>,
    register_id: String,
    data_info_id: String,
    receiver: watch::Receiver<Option<Snapshot>>,
    registration: watch::Receiver<Registration>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("register_id", &self.register_id)
            .field("data_info_id", &self.data_info_id)
            .finish()
    }
}

impl Subscription {
    pub fn register_id(&self) -> &str {
        &self.register_id
    }

    pub fn data_info_id(&self) -> &str {
        &self.data_info_id
    }

    /// The last snapshot received (kept while no node is reachable); `None` before the first.
    pub fn latest(&self) -> Option<Snapshot> {
        self.receiver.borrow().clone()
    }

    /// Whether the current session holds the subscriber: registered, pending (no session,
    /// or being re-registered after a session loss or failover), or refused for good on
    /// re-registration (then no longer retried, and no snapshot will come).
    pub fn registration(&self) -> Registration {
        self.registration.borrow().clone()
    }

    /// Follows the subscriber's registration (`tokio::sync::watch`).
    pub fn watch_registration(&self) -> watch::Receiver<Registration> {
        self.registration.clone()
    }

    /// Waits for a snapshot newer than the last one this subscription returned. Snapshots
    /// are full states, so one that arrives while the caller is busy replaces an older
    /// unread one. `None` once the client is closed, or once a node refused the subscriber
    /// for good (`registration()` says why).
    pub async fn next(&mut self) -> Option<Snapshot> {
        let mut registration = self.registration.clone();
        loop {
            tokio::select! {
                biased;
                changed = self.receiver.changed() => {
                    changed.ok()?;
                    if let Some(snapshot) = self.receiver.borrow_and_update().clone() {
                        return Some(snapshot);
                    }
                }
                () = refused(&mut registration) => return None,
            }
        }
    }

    /// Waits, up to `timeout`, for a snapshot that satisfies `accept` (the latest one
    /// counts); `None` on timeout, when the client is closed, or when a node refused the
    /// subscriber for good.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut accept: impl FnMut(&Snapshot) -> bool,
    ) -> Option<Snapshot> {
        let mut registration = self.registration.clone();
        let wait = async {
            tokio::select! {
                biased;
                snapshot = self
                    .receiver
                    .wait_for(|snapshot| snapshot.as_ref().is_some_and(&mut accept)) => {
                    snapshot.ok().and_then(|snapshot| snapshot.clone())
                }
                () = refused(&mut registration) => None,
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// A receiver of the snapshots, for use beside this handle (`tokio::sync::watch`).
    pub fn watch(&self) -> watch::Receiver<Option<Snapshot>> {
        self.receiver.clone()
    }

    /// The snapshots as a `Stream`; the subscription ends when the stream is dropped.
    pub fn into_stream(self) -> impl Stream<Item = Snapshot> + Send {
        futures::stream::unfold(self, |mut subscription| async move {
            let snapshot = subscription.next().await?;
            Some((snapshot, subscription))
        })
    }

    /// Calls `callback` with every new snapshot, on a task of the current runtime, until
    /// the returned guard is dropped (which unsubscribes).
    pub fn on_snapshot<F>(mut self, mut callback: F) -> CallbackGuard
    where
        F: FnMut(Snapshot) + Send + 'static,
    {
        let task = tokio::spawn(async move {
            while let Some(snapshot) = self.next().await {
                callback(snapshot);
            }
        });
        CallbackGuard(task)
    }

    /// Unsubscribes and waits for the node to confirm (best effort).
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let register_id = std::mem::take(&mut self.register_id);
        self.commands
            .send(Command::Unsubscribe {
                register_id,
                reply: Some(reply),
            })
            .map_err(|_| Error::Closed)?;
        answer.await.unwrap_or(Err(Error::Closed))
    }
}

/// Resolves once the registration is refused; never when its sender is gone (the client
/// closed: the snapshot channel ends then too).
async fn refused(registration: &mut watch::Receiver<Registration>) {
    if registration
        .wait_for(|state| state.refusal().is_some())
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// Keeps a callback subscription (`Subscription::on_snapshot`) alive.
#[derive(Debug)]
pub struct CallbackGuard(tokio::task::JoinHandle<()>);

impl Drop for CallbackGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.register_id.is_empty() {
            let _ = self.commands.send(Command::Unsubscribe {
                register_id: std::mem::take(&mut self.register_id),
                reply: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(ClientConfig::new(["127.0.0.1:9603"]).validate().is_ok());
        let none: [&str; 0] = [];
        assert!(matches!(
            ClientConfig::new(none).validate(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ClientConfig::new(["ftp://x"]).validate(),
            Err(Error::Config(_))
        ));
        for ttl in [
            Duration::from_secs(4),
            Duration::from_secs(601),
            Duration::from_millis(5500),
        ] {
            let err = ClientConfig::new(["h:1"])
                .session_ttl(ttl)
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains("TTL"), "{err}");
        }
        let mut config = ClientConfig::new(["h:1"]).session_ttl(Duration::from_secs(6));
        config.heartbeat_interval = Some(Duration::from_secs(6));
        assert!(config.validate().is_err());
        assert!(ClientConfig::new(["h:1"])
            .operation_timeout(Duration::ZERO)
            .validate()
            .is_err());
    }

    #[test]
    fn register_ids_are_distinct_and_valid() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_register_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())));
    }

    #[test]
    fn new_needs_a_runtime() {
        let err = RegistryClient::new(ClientConfig::new(["127.0.0.1:1"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn publish_without_any_node_fails_within_the_operation_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = RegistryClient::new(
            ClientConfig::new([format!("127.0.0.1:{port}")])
                .operation_timeout(Duration::from_millis(600)),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = client
            .publish(Publication::new("echo", ["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::OperationTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("cannot reach"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(client.session(), None);
        client.close().await;
    }
}
