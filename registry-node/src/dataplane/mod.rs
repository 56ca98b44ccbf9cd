//! The seam between the session layer and the data layer: the [`DataPlane`] trait the
//! session layer calls, in-process in standalone ([`local`]) and over the network when the
//! roles run in separate processes ([`remote`]), and the internal protocol both sides of the
//! network speak ([`wire`]).

pub mod cluster_view;
pub mod local;
pub mod remote;
pub mod wire;

pub use local::{LocalDataPlane, LocalDataPlaneConfig};
pub use remote::{RemoteConfig, RemoteDataPlane};

use crate::clock::Stamp;
use crate::model::{ChangeNotice, DatumSnapshot, Publisher, PublisherOp, ServiceSummary};
use cluster_view::DataLayerView;
use futures::future::BoxFuture;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// No membership yet, or the owners of a dataInfoId cannot be reached (API.md: 503).
    #[error("data layer unavailable: {0}")]
    Unavailable(String),
    /// A data node refused writes of these registerIds: each is held by another principal
    /// (nothing of those writes landed; the rest of the batch did).
    #[error("{message}")]
    Forbidden {
        register_ids: Vec<Arc<str>>,
        message: String,
    },
}

/// What `GET /api/v1/cluster` and `/readyz` show about the data layer as this node sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneStatus {
    pub epoch: u64,
    /// Data-node addresses in the ring.
    pub members: Vec<String>,
    /// True when this node can serve: membership known and owners reachable.
    pub ready: bool,
}

/// The data layer as the session layer uses it. Implementations: the in-process data
/// server (standalone) and a network client to remote data nodes (session role).
pub trait DataPlane: Send + Sync + 'static {
    /// Applies a batch of writes. Returns once the owning data node has accepted them, so
    /// that a following `fetch` from any session node sees them.
    fn apply(&self, ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>>;

    /// The current live publishers of a dataInfoId (version 0 and none when unknown).
    fn fetch(&self, data_info_id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>>;

    /// Services whose dataInfoId starts with `prefix`, sorted by dataInfoId, at most `limit`.
    fn services(
        &self,
        prefix: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>>;

    /// Registers a receiver of change notices; every real change of any datum is sent to
    /// every registered receiver (batched and retried when remote).
    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>);

    /// Membership epoch, members and readiness as this node sees them.
    fn status(&self) -> DataPlaneStatus;

    /// Every data node with its state, sync and ring share, and the session nodes they
    /// hold leases of: what the cluster view shows ([`cluster_view`]). A data plane that
    /// knows none of it reports no node.
    fn cluster_view(&self) -> BoxFuture<'_, DataLayerView> {
        Box::pin(std::future::ready(DataLayerView::default()))
    }

    /// Gives the data plane read access to the session layer's authoritative publishers, so
    /// that it can reconcile them with the data nodes (re-publish what they lost). The
    /// in-process data plane needs none of it.
    fn set_publisher_source(&self, _source: Arc<dyn PublisherSource>) {}

    /// The highest write stamp the data layer has reported (0 when it reports none): the
    /// session layer stamps its writes above it (see [`crate::clock`]).
    fn stamp_floor(&self) -> Stamp {
        Stamp::default()
    }
}

/// The session layer's own publishers: the source of truth the data layer is reconciled
/// with. Implemented by the session layer.
pub trait PublisherSource: Send + Sync + 'static {
    /// Every live publisher of this session node (each with `source` = this node's name).
    fn publishers(&self) -> Vec<Arc<Publisher>>;
}
