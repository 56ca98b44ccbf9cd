//! Writes: each op goes to the primary owner of its dataInfoId under the newest membership,
//! through that node's lane; when the primary cannot be reached, to the next owner (owners
//! known to be unreachable from here are tried last).

use super::lanes::{outcome_for, ApplyFailure, ApplyJob};
use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::dataplane::DataPlaneError;
use crate::model::PublisherOp;
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::oneshot;

impl RemoteDataPlane {
    /// Sends `ops` to `node`, in one request with whatever else is queued for it.
    pub(super) async fn apply_on(
        &self,
        node: &str,
        ops: Vec<PublisherOp>,
    ) -> Result<(), ApplyFailure> {
        match self.lanes(node) {
            Some(lanes) => {
                let (done, rx) = oneshot::channel();
                if lanes.apply.send(ApplyJob { ops, done }).is_err() {
                    return Err("lane closed".to_owned().into());
                }
                rx.await
                    .unwrap_or_else(|_| Err("lane closed".to_owned().into()))
            }
            None => {
                let body = ApplyRequest {
                    source: self.source_name.clone(),
                    ops,
                    membership: Some(self.membership.view().doc.clone()),
                };
                let answer = self
                    .call::<_, ApplyAnswer>(node, wire::APPLY, &body)
                    .await
                    .map_err(|e| ApplyFailure::Failed(e.to_string()))?;
                outcome_for(&body.ops, &answer)
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
                        Err(ApplyFailure::Refused(refused)) => {
                            return Err(refused_error(&refused));
                        }
                        Err(ApplyFailure::Failed(e)) => last = e,
                    }
                }
                Err(DataPlaneError::Unavailable(format!(
                    "no owner accepted the write: {last}"
                )))
            }
        });
        // A refusal wins over other failures: the session layer must know which writes
        // did not land (it repairs the others, whose outcome is unknown).
        let mut refused: Option<DataPlaneError> = None;
        let mut failed = None;
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(()) => {}
                Err(DataPlaneError::Forbidden {
                    register_ids,
                    message,
                }) => match &mut refused {
                    Some(DataPlaneError::Forbidden {
                        register_ids: all, ..
                    }) => all.extend(register_ids),
                    _ => {
                        refused = Some(DataPlaneError::Forbidden {
                            register_ids,
                            message,
                        })
                    }
                },
                Err(e) => failed = Some(e),
            }
        }
        match refused.or(failed) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The error of writes a data node refused: `403` at the edge, naming the registerIds.
fn refused_error(refused: &[wire::RefusedWrite]) -> DataPlaneError {
    let ids: Vec<&str> = refused.iter().map(|r| &*r.register_id).collect();
    DataPlaneError::Forbidden {
        register_ids: refused.iter().map(|r| r.register_id.clone()).collect(),
        message: format!(
            "registerId {} is held by another principal; only it can take the registerId over",
            ids.iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
