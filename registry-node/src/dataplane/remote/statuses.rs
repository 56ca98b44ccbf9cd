//! The cluster view from a session node: every data node's `/internal/v1/status`, asked
//! concurrently with a short timeout and built into a [`DataLayerView`]. One round at a
//! time, reused for a second, so callers of `GET /api/v1/cluster` cannot multiply the
//! requests the data nodes get.

use super::RemoteDataPlane;
use crate::dataplane::cluster_view::{self, DataLayerView};
use registry_types::NodeStatus;
use std::time::{Duration, Instant};

/// How long one round of statuses is reused.
const REUSE_FOR: Duration = Duration::from_secs(1);
/// A data node that does not answer its status within this is shown unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// The last round, behind the lock that makes rounds one at a time.
pub(super) type ClusterViewCache = tokio::sync::Mutex<Option<(Instant, DataLayerView)>>;

impl RemoteDataPlane {
    pub(super) async fn cluster_view_cached(&self) -> DataLayerView {
        let mut cache = self.cluster_view.lock().await;
        if let Some((at, view)) = cache.as_ref() {
            if at.elapsed() < REUSE_FOR {
                return view.clone();
            }
        }
        let view = self.membership.view();
        let nodes = view.all_nodes();
        let answers = futures::future::join_all(nodes.iter().map(|n| self.node_status(n))).await;
        let statuses: Vec<(String, Option<NodeStatus>)> = nodes.into_iter().zip(answers).collect();
        let built = cluster_view::build(&view, &statuses);
        *cache = Some((Instant::now(), built.clone()));
        built
    }

    async fn node_status(&self, node: &str) -> Option<NodeStatus> {
        let mut req = self
            .http
            .get(self.http.url(node, "/internal/v1/status"))
            .timeout(STATUS_TIMEOUT);
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.ok()?.error_for_status().ok()?;
        resp.json::<NodeStatus>().await.ok()
    }
}
