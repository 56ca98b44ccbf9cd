//! Assembles a running node from its configuration: binds the listeners, builds the layers,
//! serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, NodeInfo};
use crate::config::Config;
use crate::dataplane::DataPlane;
use crate::metrics::Metrics;
use crate::server::{self, BackgroundServer};
use crate::session::{SessionConfig, SessionLayer};

/// A node serving in the background.
pub struct RunningNode {
    pub http_addr: SocketAddr,
    pub session: Arc<SessionLayer>,
    pub metrics: Arc<Metrics>,
    server: BackgroundServer,
}

impl RunningNode {
    /// The `listening` line of docs/INTERNAL.md.
    pub fn listening_line(&self) -> String {
        server::listening_line("http", self.http_addr)
    }

    /// A token that, when cancelled, shuts the node down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.server.shutdown_token()
    }

    /// Stops accepting, closes event streams and blocking queries, and waits for the
    /// server to finish.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.server.shutdown().await
    }

    /// Waits until the server stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server.wait().await
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The node's name: `--node-name`, else the host name, else `fallback` (an address).
pub(crate) fn node_name(config: &Config, fallback: impl FnOnce() -> String) -> String {
    config
        .node_name
        .clone()
        .or_else(hostname)
        .unwrap_or_else(fallback)
}

/// Starts the session layer and the public API over `data`, serving on `listener`.
pub async fn start_session_node(
    config: &Config,
    listener: TcpListener,
    data: Arc<dyn DataPlane>,
    metrics: Arc<Metrics>,
    data_addr: Option<String>,
) -> std::io::Result<RunningNode> {
    start_session_node_with(
        config,
        listener,
        data,
        metrics,
        data_addr,
        axum::Router::new(),
    )
    .await
}

/// [`start_session_node`] with extra routes (guarded by their own middleware) merged into
/// the public listener, e.g. the cluster's internal endpoints.
pub async fn start_session_node_with(
    config: &Config,
    listener: TcpListener,
    data: Arc<dyn DataPlane>,
    metrics: Arc<Metrics>,
    data_addr: Option<String>,
    extra_routes: axum::Router,
) -> std::io::Result<RunningNode> {
    let http_addr = listener.local_addr()?;
    let node_name = node_name(config, || http_addr.to_string());
    let shutdown = CancellationToken::new();
    let session = SessionLayer::new(
        SessionConfig::from_config(config, &node_name),
        data.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    session.start();
    let state = AppState {
        session: session.clone(),
        data,
        metrics: metrics.clone(),
        info: Arc::new(NodeInfo {
            node_name,
            roles: config.role.names(),
            http_addr: Some(http_addr.to_string()),
            data_addr,
            token: config.token.clone().filter(|t| !t.is_empty()),
        }),
    };
    let app = extra_routes
        .merge(crate::console::router())
        .merge(api::router(state));
    let stop = shutdown.clone().cancelled_owned();
    let server = BackgroundServer::spawn(listener, app, shutdown, stop);
    Ok(RunningNode {
        http_addr,
        session,
        metrics,
        server,
    })
}

/// A standalone node: the in-process data layer under the session layer.
pub async fn start_standalone(config: &Config) -> std::io::Result<RunningNode> {
    use crate::data::local::{LocalDataPlane, LocalDataPlaneConfig};
    let listener = TcpListener::bind(&config.http_addr).await?;
    let me = listener.local_addr()?.to_string();
    let metrics = Arc::new(Metrics::new());
    let data = LocalDataPlane::new(LocalDataPlaneConfig {
        members: vec![me],
        ..LocalDataPlaneConfig::default()
    });
    start_session_node(config, listener, data, metrics, None).await
}
