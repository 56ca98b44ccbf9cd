//! Writes: each op goes to the primary owner of its dataInfoId under the newest membership,
//! through that node's lane; when the primary cannot be reached, to the next owner (owners
//! known to be unreachable from here are tried last).

use super::lanes::ApplyJob;
use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::dataplane::DataPlaneError;
use crate::model::PublisherOp;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::oneshot;

impl RemoteDataPlane {
    /// Sends `ops` to `node`, in one request with whatever else is queued for it.
    pub(super) async fn apply_on(&self, node: &str, ops: Vec<PublisherOp>) -> Result<(), String> {
        match self.lanes(node) {
            Some(lanes) => {
                let (done, rx) = oneshot::channel();
                if lanes.apply.send(ApplyJob { ops, done }).is_err() {
                    return Err("lane closed".into());
                }
                rx.await.unwrap_or_else(|_| Err("lane closed".into()))
            }
            None => {
                let body = ApplyRequest {
                    source: self.source_name.clone(),
                    ops,
                    membership: Some(self.membership.view().doc.clone()),
                };
                self.call::<_, EpochAnswer>(node, wire::APPLY, &body)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub(super) async fn apply_ops(&self, ops: Vec<PublisherOp>) -> Result<(), DataPlaneError> {
        let view = self.membership.view();
        if view.epoch() == 0 || view.ring.is_empty() {
            return Err(DataPlaneError::Unavailable(
                "no data-node membership yet".into(),
            ));
        }
        let mut groups: HashMap<Vec<String>, Vec<PublisherOp>> = HashMap::new();
        for op in ops {
            let mut owners: Vec<String> = view
                .owners(op.data_info_id())
                .into_iter()
                .map(str::to_owned)
                .collect();
            // Owners this node cannot reach right now go last (the order is otherwise
            // kept, primary first): while one data node is cut off from this session node,
            // writes of the datums it owns go straight to a backup, which replicates them
            // to it, instead of each waiting out a timeout first.
            owners.sort_by_key(|o| !self.is_reachable(o));
            groups.entry(owners).or_default().push(op);
        }
        let calls = groups.into_iter().map(|(owners, ops)| {
            async move {
                let mut last = String::new();
                // The primary first, then the backups.
                for owner in &owners {
                    let started = Instant::now();
                    match self.apply_on(owner, ops.clone()).await {
                        Ok(()) => {
                            tracing::debug!(%owner, took = ?started.elapsed(), "apply call");
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(DataPlaneError::Unavailable(format!(
                    "no owner accepted the write: {last}"
                )))
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }
}
