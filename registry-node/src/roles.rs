//! The one place that starts a role from its configuration: binds the listeners, builds the
//! layers, serves until shutdown. `standalone` is the session layer over the in-process data
//! layer; `session` the session layer over remote data nodes; `data` a data node. Every role
//! keeps its internal protocol on internal listeners behind the cluster token (`--data-addr`
//! for data, `--internal-addr` for session and standalone); the public listener serves the
//! API only (SECURITY.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::audit::Audit;
use crate::access::file::AccessFile;
use crate::access::token_review::{KubeReviewer, TokenReviews};
use crate::config::{Config, Role};
use crate::data::node::{DataNode, DataNodeConfig};
use crate::data::store::StoreConfig;
use crate::dataplane::{
    DataPlane, LocalDataPlane, LocalDataPlaneConfig, PublisherSource, RemoteConfig, RemoteDataPlane,
};
use crate::http::api::{self, AppState};
use crate::http::auth::Authenticator;
use crate::http::internal::{self, NodeEndpoints};
use crate::http::NodeInfo;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::model::Publisher;
use crate::server::{self, bind_listener, BackgroundServer, HttpSettings};
use crate::session::{SessionConfig, SessionLayer};
use crate::tls::{PeerTls, TlsSource};

/// How long a data node asked to stop keeps pushing its datums to their other owners.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

// === impl Running ===

/// A node of any role serving in the background.
pub enum Running {
    /// `standalone` or `session`: the public listener.
    Session(RunningNode),
    /// `data`: the data listener.
    Data(RunningDataNode),
}

/// Starts the role `config` asks for. A configuration whose credentials do not fit together
/// (`--token` equal to `--cluster-token`, an unreadable `--membership-key`) is refused.
pub async fn start(config: &Config) -> std::io::Result<Running> {
    config.check_credentials().map_err(invalid_input)?;
    if config.cluster_token().is_none() && config.role != Role::Standalone {
        tracing::warn!("no --cluster-token: anyone who reaches an internal listener can use the internal protocol (SECURITY.md)");
    }
    Ok(match config.role {
        Role::Standalone => Running::Session(start_standalone(config).await?),
        Role::Session => Running::Session(start_session_role(config).await?),
        Role::Data => Running::Data(start_data_role(config).await?),
    })
}

fn invalid_input(e: crate::config::ConfigError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

/// "a standalone node on 127.0.0.1:9603": what `config` starts, for messages.
pub fn describe(config: &Config) -> String {
    match config.role {
        Role::Standalone => format!("a standalone node on {}", config.http_addr),
        Role::Session => format!("a session node on {}", config.http_addr),
        Role::Data => format!("a data node on {}", config.data_addr),
    }
}

impl Running {
    /// The `listening` line of docs/INTERNAL.md.
    pub fn listening_line(&self) -> String {
        match self {
            Running::Session(n) => n.listening_line(),
            Running::Data(n) => n.listening_line(),
        }
    }

    /// A token that, when cancelled, shuts the node down (a data node drains first).
    pub fn shutdown_token(&self) -> CancellationToken {
        match self {
            Running::Session(n) => n.shutdown_token(),
            Running::Data(n) => n.shutdown_token(),
        }
    }

    /// Where it serves, for the log: `http` or `data`, and the address.
    pub fn serving(&self) -> (&'static str, SocketAddr) {
        match self {
            Running::Session(n) => ("http", n.http_addr),
            Running::Data(n) => ("data", n.data_addr),
        }
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        match self {
            Running::Session(n) => n.wait().await,
            Running::Data(n) => n.wait().await,
        }
    }
}

// === impl RunningNode ===

/// A node with the session layer and the public API (standalone or session role).
pub struct RunningNode {
    pub http_addr: SocketAddr,
    /// The internal listener: membership and status, behind the cluster token.
    pub internal_addr: SocketAddr,
    pub session: Arc<SessionLayer>,
    pub metrics: Arc<Metrics>,
    server: BackgroundServer,
    internal: BackgroundServer,
}

impl RunningNode {
    /// The `listening` line of docs/INTERNAL.md.
    pub fn listening_line(&self) -> String {
        server::listening_line_of(&[("http", self.http_addr), ("internal", self.internal_addr)])
    }

    /// A token that, when cancelled, shuts the node down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Stops accepting, closes event streams and blocking queries, and waits for the
    /// servers to finish.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.server.shutdown_token().cancel();
        self.wait().await
    }

    /// Waits until both servers stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        let (public, internal) = tokio::join!(self.server.wait(), self.internal.wait());
        public.and(internal)
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The node's name: `--node-name`, else the host name, else `fallback` (an address).
fn node_name(config: &Config, fallback: impl FnOnce() -> String) -> String {
    config
        .node_name
        .clone()
        .or_else(hostname)
        .unwrap_or_else(fallback)
}

/// `--token`, unless empty.
fn token_of(config: &Config) -> Option<String> {
    config.client_token().map(str::to_owned)
}

/// `--cluster-token`, unless empty.
fn cluster_token_of(config: &Config) -> Option<String> {
    config.cluster_token().map(str::to_owned)
}

/// The public listener's authentication: `--token`, the access file (watched until
/// `shutdown`; a node does not start on a bad one) and, with it, TokenReview of
/// ServiceAccount tokens when the node finds a Kubernetes configuration.
async fn authenticator(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<Authenticator> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let access = match &config.access_file {
        Some(path) => {
            let file =
                AccessFile::load(path).map_err(|e| invalid(format!("--access-file: {e}")))?;
            file.watch(shutdown);
            Some(file)
        }
        None => None,
    };
    let reviews = if access.is_some() && config.token_review {
        match KubeReviewer::infer().await {
            Ok(reviewer) => Some(Arc::new(TokenReviews::new(
                &config.token_review_audience,
                Arc::new(reviewer),
            ))),
            Err(e) => {
                tracing::warn!("ServiceAccount tokens will be refused: {e}");
                None
            }
        }
    } else {
        None
    };
    Ok(Authenticator::new(
        config.client_token(),
        access,
        reviews,
        Audit::new(metrics),
    ))
}

/// The internal side of a session layer: its listener, the routes it serves beside the
/// status, and the mutual TLS (`--internal-tls-*`) of the listener, loaded once for the
/// listener and the node's internal client alike, so both rotate together.
struct InternalSide {
    listener: TcpListener,
    routes: axum::Router,
    tls: Option<Arc<TlsSource>>,
}

/// Starts the session layer and the public API over `data`, serving on `listener`, and the
/// internal listener (status, plus the internal routes), behind the cluster token.
async fn start_session_layer(
    config: &Config,
    listener: TcpListener,
    internal: InternalSide,
    data: Arc<dyn DataPlane>,
    roles: Vec<&'static str>,
) -> std::io::Result<RunningNode> {
    let InternalSide {
        listener: internal,
        routes: internal_routes,
        tls: internal_tls,
    } = internal;
    let http_addr = listener.local_addr()?;
    let internal_addr = internal.local_addr()?;
    let public_tls = config.public_tls().map_err(invalid_input)?;
    let node_name = node_name(config, || http_addr.to_string());
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let session = SessionLayer::new(
        SessionConfig::from_config(config, &node_name),
        data.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    session.start();
    let auth = Arc::new(authenticator(config, metrics.clone(), shutdown.clone()).await?);
    let state = AppState {
        session: session.clone(),
        data,
        metrics: metrics.clone(),
        auth,
        info: Arc::new(NodeInfo {
            node_name,
            roles,
            http_addr: Some(http_addr.to_string()),
            data_addr: None,
            token: token_of(config),
            cluster_token: cluster_token_of(config),
        }),
    };
    let internal_app = internal::internal_listener(
        api::status_router(state.clone()).merge(internal_routes),
        config.cluster_token(),
    );
    let app = crate::http::console::router().merge(api::router(state));
    let internal = BackgroundServer::spawn_tls(
        internal,
        internal_app,
        HttpSettings::from_config(config),
        internal_tls,
        shutdown.clone(),
        shutdown.clone().cancelled_owned(),
    );
    let stop = shutdown.clone().cancelled_owned();
    let server = BackgroundServer::spawn_tls(
        listener,
        app,
        HttpSettings::from_config(config),
        public_tls,
        shutdown,
        stop,
    );
    Ok(RunningNode {
        http_addr,
        internal_addr,
        session,
        metrics,
        server,
        internal,
    })
}

/// `--role standalone`: the in-process data layer under the session layer.
pub async fn start_standalone(config: &Config) -> std::io::Result<RunningNode> {
    let listener = bind_listener(&config.http_addr, config.listen_backlog).await?;
    let internal = bind_listener(&config.internal_addr, config.listen_backlog).await?;
    let me = listener.local_addr()?.to_string();
    let data = LocalDataPlane::new(LocalDataPlaneConfig {
        members: vec![me],
        ..LocalDataPlaneConfig::default()
    });
    let internal = InternalSide {
        listener: internal,
        routes: axum::Router::new(),
        tls: config.internal_tls().map_err(invalid_input)?,
    };
    start_session_layer(config, listener, internal, data, config.role.names()).await
}

impl PublisherSource for SessionLayer {
    fn publishers(&self) -> Vec<Arc<Publisher>> {
        SessionLayer::publishers(self)
    }
}

/// `--role session`: the session layer and public API over remote data nodes.
pub async fn start_session_role(config: &Config) -> std::io::Result<RunningNode> {
    let listener = bind_listener(&config.http_addr, config.listen_backlog).await?;
    let internal = bind_listener(&config.internal_addr, config.listen_backlog).await?;
    let http_addr = listener.local_addr()?;
    let node_name = node_name(config, || http_addr.to_string());
    let mut config = config.clone();
    config.node_name = Some(node_name.clone());
    let membership = Membership::from_config(&config)?;
    let internal_tls = config.internal_tls().map_err(invalid_input)?;
    let plane = RemoteDataPlane::start(
        RemoteConfig {
            node_name: node_name.clone(),
            token: cluster_token_of(&config),
            session_lease: Duration::from_millis(config.session_lease_ms.max(1)),
            reconcile_interval: Duration::from_millis(config.reconcile_ms.max(10)),
            request_timeout: Duration::from_secs(5),
            reconcile_grace: Duration::from_millis(config.reconcile_ms.clamp(1_000, 5_000)),
            tls: PeerTls::new(internal_tls.clone()),
        },
        membership.clone(),
    );
    let endpoints = Arc::new(NodeEndpoints {
        info: NodeInfo {
            node_name,
            roles: vec!["session"],
            http_addr: Some(http_addr.to_string()),
            data_addr: None,
            token: token_of(&config),
            cluster_token: cluster_token_of(&config),
        },
        membership,
        data: None,
    });
    // The membership route beside the session layer's status on the internal listener.
    let membership_route = internal::membership_router(endpoints);
    let data: Arc<dyn DataPlane> = plane.clone();
    let internal = InternalSide {
        listener: internal,
        routes: membership_route,
        tls: internal_tls,
    };
    let running =
        start_session_layer(&config, listener, internal, data, config.role.names()).await?;
    plane.set_publisher_source(running.session.clone());
    Ok(running)
}

// === impl RunningDataNode ===

/// A data node serving in the background.
pub struct RunningDataNode {
    pub data_addr: SocketAddr,
    pub advertise_addr: String,
    pub node: Arc<DataNode>,
    /// Its shutdown token asks for a graceful stop: drain, then stop serving.
    server: BackgroundServer,
}

impl RunningDataNode {
    /// The `listening` line of docs/INTERNAL.md.
    pub fn listening_line(&self) -> String {
        server::listening_line("data", self.data_addr)
    }

    /// A token that, when cancelled, drains the node ([`DataNode::drain`]: session writes
    /// go to the next owner, every datum reaches its other owners) and then stops it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Waits until the server stops (after the shutdown token is cancelled and the drain).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.wait().await
    }
}

/// `--role data`: binds `--data-addr` and serves the data node.
pub async fn start_data_role(config: &Config) -> std::io::Result<RunningDataNode> {
    let internal_tls = config.internal_tls().map_err(invalid_input)?;
    if config.tls_cert.is_some() {
        tracing::warn!("--tls-cert/--tls-key are for the public listener, which a data node does not have; its data listener takes --internal-tls-*");
    }
    let listener = bind_listener(&config.data_addr, config.listen_backlog).await?;
    let data_addr = listener.local_addr()?;
    let advertise_addr = config
        .advertise_addr
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| data_addr.to_string());
    let node_name = node_name(config, || advertise_addr.clone());
    let membership = Membership::from_config(config)?;
    let node = DataNode::start(
        DataNodeConfig {
            advertise_addr: advertise_addr.clone(),
            session_lease: Duration::from_millis(config.session_lease_ms.max(1)),
            anti_entropy_interval: Duration::from_millis(config.anti_entropy_ms.max(10)),
            request_timeout: Duration::from_secs(5),
            token: cluster_token_of(config),
            store: StoreConfig::default(),
            change_log_capacity: 100_000,
            peer_dead_after: Duration::from_millis(config.session_lease_ms.max(1)),
            replication_queue: config.replication_queue,
            tls: PeerTls::new(internal_tls.clone()),
        },
        membership.clone(),
    );
    let endpoints = Arc::new(NodeEndpoints {
        info: NodeInfo {
            node_name,
            roles: vec!["data"],
            http_addr: None,
            data_addr: Some(advertise_addr.clone()),
            token: token_of(config),
            cluster_token: cluster_token_of(config),
        },
        membership,
        data: Some(node.clone()),
    });
    let app = internal::data_listener_router(node.clone(), endpoints);
    let shutdown = CancellationToken::new();
    let stop = {
        let (asked, node) = (shutdown.clone(), node.clone());
        async move {
            asked.cancelled().await;
            node.drain(DRAIN_DEADLINE).await;
        }
    };
    let server = BackgroundServer::spawn_tls(
        listener,
        app,
        HttpSettings::from_config(config),
        internal_tls,
        shutdown,
        stop,
    );
    Ok(RunningDataNode {
        data_addr,
        advertise_addr,
        node,
        server,
    })
}
