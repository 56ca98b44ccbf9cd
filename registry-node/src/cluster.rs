//! Starts the distributed roles: a data node (`--role data`) and a session node over remote data nodes (`--role session`).

use crate::config::Config;
use crate::data::node::{DataNode, DataNodeConfig};
use crate::data::remote::{RemoteConfig, RemoteDataPlane};
use crate::data::store::StoreConfig;
use crate::dataplane::{DataPlane, PublisherSource};
use crate::internal::{self, NodeInfo};
use crate::membership::{Membership, MembershipDoc};
use crate::metrics::Metrics;
use crate::model::Publisher;
use crate::node::{node_name, RunningNode};
use crate::server::{self, BackgroundServer};
use crate::session::SessionLayer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often `--members-file` is re-read.
const MEMBERS_FILE_POLL: Duration = Duration::from_millis(500);

impl PublisherSource for SessionLayer {
    fn publishers(&self) -> Vec<Arc<Publisher>> {
        SessionLayer::publishers(self)
    }
}

fn token_of(config: &Config) -> Option<String> {
    config.token.clone().filter(|t| !t.is_empty())
}

/// The membership from `--members` (epoch 1) and `--members-file` (watched).
pub fn membership_from_config(config: &Config) -> std::io::Result<Arc<Membership>> {
    let membership = Membership::new(config.replication_factor, config.virtual_nodes);
    if !config.members.is_empty() {
        let doc = MembershipDoc::from_static(&config.members);
        if !doc.members.is_empty() {
            membership.offer(doc).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--members: {e}"))
            })?;
        }
    }
    if let Some(path) = &config.members_file {
        membership.watch_file(path.clone(), MEMBERS_FILE_POLL);
    }
    Ok(membership)
}

/// A data node serving in the background.
pub struct RunningDataNode {
    pub data_addr: SocketAddr,
    pub advertise_addr: String,
    pub node: Arc<DataNode>,
    /// Its shutdown token asks for a graceful stop: drain, then stop serving.
    server: BackgroundServer,
}

/// How long a data node asked to stop keeps pushing its datums to their other owners.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

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
    let listener = TcpListener::bind(&config.data_addr).await?;
    let data_addr = listener.local_addr()?;
    let advertise_addr = config
        .advertise_addr
        .clone()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| data_addr.to_string());
    let node_name = node_name(config, || advertise_addr.clone());
    let membership = membership_from_config(config)?;
    let node = DataNode::start(
        DataNodeConfig {
            advertise_addr: advertise_addr.clone(),
            session_lease: Duration::from_millis(config.session_lease_ms.max(1)),
            anti_entropy_interval: Duration::from_millis(config.anti_entropy_ms.max(10)),
            request_timeout: Duration::from_secs(5),
            token: token_of(config),
            store: StoreConfig::default(),
            change_log_capacity: 100_000,
            peer_dead_after: Duration::from_millis(config.session_lease_ms.max(1)),
        },
        membership.clone(),
    );
    let info = Arc::new(NodeInfo {
        node_name,
        roles: vec!["data"],
        membership,
        data_addr: Some(advertise_addr.clone()),
        http_addr: None,
        data: Some(node.clone()),
    });
    let app = internal::data_listener_router(node.clone(), info, token_of(config));
    let shutdown = CancellationToken::new();
    let stop = {
        let (asked, node) = (shutdown.clone(), node.clone());
        async move {
            asked.cancelled().await;
            node.drain(DRAIN_DEADLINE).await;
        }
    };
    let server = BackgroundServer::spawn(listener, app, shutdown, stop);
    Ok(RunningDataNode {
        data_addr,
        advertise_addr,
        node,
        server,
    })
}

/// `--role session`: the session layer and public API over remote data nodes.
pub async fn start_session_role(config: &Config) -> std::io::Result<RunningNode> {
    let listener = TcpListener::bind(&config.http_addr).await?;
    let http_addr = listener.local_addr()?;
    let node_name = node_name(config, || http_addr.to_string());
    let mut config = config.clone();
    config.node_name = Some(node_name.clone());
    let membership = membership_from_config(&config)?;
    let plane = RemoteDataPlane::start(
        RemoteConfig {
            node_name: node_name.clone(),
            token: token_of(&config),
            session_lease: Duration::from_millis(config.session_lease_ms.max(1)),
            reconcile_interval: Duration::from_millis(config.reconcile_ms.max(10)),
            request_timeout: Duration::from_secs(5),
            reconcile_grace: Duration::from_millis(config.reconcile_ms.clamp(1_000, 5_000)),
        },
        membership.clone(),
    );
    let info = Arc::new(NodeInfo {
        node_name,
        roles: vec!["session"],
        membership,
        data_addr: None,
        http_addr: Some(http_addr.to_string()),
        data: None,
    });
    // Only the membership route: the public router serves its own `/internal/v1/status`.
    let extra = axum::Router::new()
        .route(
            "/internal/v1/membership",
            axum::routing::post(internal::post_membership),
        )
        .with_state(info)
        .layer(axum::middleware::from_fn_with_state(
            token_of(&config).map(|t| Arc::<str>::from(t.as_str())),
            internal::require_token,
        ));
    let metrics = Arc::new(Metrics::new());
    let data: Arc<dyn DataPlane> = plane.clone();
    let running =
        crate::node::start_session_node_with(&config, listener, data, metrics, None, extra).await?;
    plane.set_publisher_source(running.session.clone());
    Ok(running)
}
