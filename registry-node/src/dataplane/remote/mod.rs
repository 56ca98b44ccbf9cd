//! `RemoteDataPlane`: the data layer as a session node sees it when the data nodes are other processes.
//!
//! - **Writes** go to the primary owner of each dataInfoId under the newest membership;
//!   concurrent writes (and primary reads) to one data node are coalesced into one request
//!   by that node's lanes (see [`Lanes`]); when the primary cannot be reached, to the next
//!   owner (the backups then hold the write until anti-entropy brings it to the primary).
//! - **Reads** come from the primary. When it is unreachable, not yet synced under the
//!   current epoch (a ring change or a restart is in progress), or on another epoch, the
//!   other owners and the previous epoch's owners (and leaving nodes) are asked too and the
//!   answers merged by the publisher merge rules, so a migration never shows a falsely
//!   empty list. A data node on a newer epoch answers with its membership; this node
//!   adopts it and reads again under it (the old owner may have handed the datum over).
//! - **Change notices**: one long poll per data node (`changes`), which is also how this
//!   node renews its session lease there, and how it learns the data nodes' write clock
//!   (see [`crate::clock`]). Notices are deduplicated by version (every owner reports the
//!   same change) and passed to the watchers.
//! - **Reconciliation**: periodically, the session layer's own publishers (the source of
//!   truth, through [`PublisherSource`]) are compared per datum with what each primary
//!   holds of this node (digest, then diff); what is missing or older is re-published,
//!   publishers of this node the session no longer has are removed, and a publisher a
//!   newer owner took over is left to it.
//!
//! One file per job: [`lanes`] (coalescing per data node), [`writes`], [`reads`],
//! [`changes`] (polling) and [`reconcile`]; this file holds the plane's state and its
//! [`DataPlane`] implementation.

mod changes;
mod lanes;
mod reads;
mod reconcile;
mod statuses;
mod writes;

pub use reads::merge_snapshots;

use crate::clock::{Stamp, StampClock};
use crate::dataplane::cluster_view::DataLayerView;
use crate::dataplane::wire::*;
use crate::dataplane::{DataPlane, DataPlaneError, DataPlaneStatus, PublisherSource};
use crate::membership::Membership;
use crate::model::{
    ChangeNotice, DataInfoId, DatumSnapshot, PublisherOp, ServiceSummary, WriteOrder,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use lanes::{mark, Lanes};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Configuration of the session side of the data plane.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// This session node's name: its lease identity on the data nodes and the `source` of
    /// the publishers it writes.
    pub node_name: String,
    pub token: Option<String>,
    /// The data nodes' lease duration; polls renew well within it.
    pub session_lease: Duration,
    pub reconcile_interval: Duration,
    pub request_timeout: Duration,
    /// Publishers of this node that the data node holds but the session layer does not
    /// are removed by reconciliation only when written at least this long before the
    /// session layer's snapshot (a write may be in flight between the two).
    pub reconcile_grace: Duration,
    /// Mutual TLS towards the data nodes (`--internal-tls-*`); plain HTTP by default.
    pub tls: crate::tls::PeerTls,
}

impl RemoteConfig {
    pub fn new(node_name: String) -> RemoteConfig {
        RemoteConfig {
            node_name,
            token: None,
            session_lease: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            reconcile_grace: Duration::from_secs(5),
            tls: Default::default(),
        }
    }
}

/// See the module docs.
pub struct RemoteDataPlane {
    config: RemoteConfig,
    source_name: Arc<str>,
    membership: Arc<Membership>,
    http: crate::dataplane::wire::PeerClient,
    watchers: crate::data::store::Watchers,
    forwarded: Mutex<HashMap<DataInfoId, u64>>,
    reachable: Arc<Mutex<HashMap<String, Instant>>>,
    /// Per data node of the view: the queues that coalesce concurrent writes and reads.
    lanes: Mutex<HashMap<String, Arc<Lanes>>>,
    pollers: Mutex<HashSet<String>>,
    publishers: RwLock<Option<Arc<dyn PublisherSource>>>,
    cluster_view: statuses::ClusterViewCache,
    /// The highest write stamp the data nodes reported (see [`crate::clock`]).
    clock: Arc<StampClock>,
    /// This node's publishers that a newer owner took over (or removed since), by datum and
    /// registerId, with the order of the write that lost: reconciliation leaves them alone
    /// until the session layer writes them again.
    superseded: Mutex<HashMap<(DataInfoId, Arc<str>), WriteOrder>>,
}

impl RemoteDataPlane {
    /// Creates the data plane and starts its pollers and reconciler (inside a runtime).
    pub fn start(config: RemoteConfig, membership: Arc<Membership>) -> Arc<RemoteDataPlane> {
        let http = crate::dataplane::wire::client(config.request_timeout, &config.tls);
        let plane = Arc::new(RemoteDataPlane {
            source_name: config.node_name.as_str().into(),
            config,
            membership,
            http,
            watchers: RwLock::new(Vec::new()),
            forwarded: Mutex::new(HashMap::new()),
            reachable: Arc::new(Mutex::new(HashMap::new())),
            lanes: Mutex::new(HashMap::new()),
            pollers: Mutex::new(HashSet::new()),
            publishers: RwLock::new(None),
            cluster_view: Default::default(),
            clock: Arc::new(StampClock::new()),
            superseded: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Self::run_supervisor(Arc::downgrade(&plane)));
        tokio::spawn(Self::run_reconciler(Arc::downgrade(&plane)));
        plane
    }

    fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    fn mark(&self, node: &str, ok: bool) {
        mark(&self.reachable, node, ok);
    }

    fn is_reachable(&self, node: &str) -> bool {
        self.reachable
            .lock()
            .get(node)
            .is_some_and(|t| t.elapsed() < self.config.session_lease.max(Duration::from_secs(1)))
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        path: &str,
        body: &Req,
    ) -> Result<Resp, CallError> {
        let r = call(&self.http, self.token(), node, path, body).await;
        self.mark(node, r.is_ok());
        r
    }
}

impl DataPlane for RemoteDataPlane {
    fn apply(&self, ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        self.apply_ops(ops).boxed()
    }

    fn fetch(&self, data_info_id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        let id = data_info_id.to_owned();
        async move { self.fetch_one(&id).await }.boxed()
    }

    fn services(
        &self,
        prefix: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        let prefix = prefix.to_owned();
        async move { self.services_all(&prefix, limit).await }.boxed()
    }

    fn watch_changes(&self, tx: mpsc::Sender<Vec<ChangeNotice>>) {
        self.watchers.write().push(tx);
    }

    fn status(&self) -> DataPlaneStatus {
        let view = self.membership.view();
        let members = view.doc.members.clone();
        let reachable = members.iter().filter(|m| self.is_reachable(m)).count();
        let rf = view.replication_factor.min(members.len()).max(1);
        // Every datum has a reachable owner when at most rf-1 members are unreachable.
        let ready = view.epoch() > 0 && reachable > 0 && reachable + (rf - 1) >= members.len();
        DataPlaneStatus {
            epoch: view.epoch(),
            members,
            ready,
        }
    }

    fn cluster_view(&self) -> BoxFuture<'_, DataLayerView> {
        self.cluster_view_cached().boxed()
    }

    fn set_publisher_source(&self, source: Arc<dyn PublisherSource>) {
        *self.publishers.write() = Some(source);
    }

    fn stamp_floor(&self) -> Stamp {
        self.clock.highest()
    }
}
