//! Reconciliation: periodically, the session layer's own publishers (the source of truth)
//! are compared per datum with what each primary holds of this node (digest, then diff);
//! what is missing or older is re-published, what the session no longer has is removed,
//! and a publisher a newer owner took over (the data node lists other owners' writes of a
//! mismatched datum) is left to that owner: re-publishing the older write would only lose.

use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::dataplane::DataPlaneError;
use crate::model::{now_millis, DataInfoId, Publisher, PublisherOp, WriteOrder};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl RemoteDataPlane {
    pub(super) async fn run_reconciler(me: std::sync::Weak<RemoteDataPlane>) {
        loop {
            let interval = match me.upgrade() {
                Some(p) => p.config.reconcile_interval,
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(plane) = me.upgrade() else { return };
            if let Err(e) = plane.reconcile_once().await {
                tracing::debug!(error = %e, "reconciliation incomplete");
            }
        }
    }

    /// One reconciliation pass (see the module docs). Returns how many ops it applied.
    pub async fn reconcile_once(&self) -> Result<usize, DataPlaneError> {
        let Some(source) = self.publishers.read().clone() else {
            return Ok(0);
        };
        let view = self.membership.view();
        if view.epoch() == 0 {
            return Ok(0);
        }
        let snapshot_at = now_millis();
        let mut mine: HashMap<DataInfoId, Vec<Arc<Publisher>>> = HashMap::new();
        for p in source.publishers() {
            mine.entry(p.data_info_id.clone()).or_default().push(p);
        }
        self.leave_out_superseded(&mut mine);
        // Ask each datum's primary, or its first reachable owner while the primary is down.
        let mut per_node: HashMap<String, (Vec<ReconcileDatum>, bool)> = HashMap::new();
        for m in &view.doc.members {
            per_node.insert(m.clone(), (Vec::new(), true));
        }
        for (id, pubs) in &mine {
            let owners = view.owners(id);
            let Some(primary) = owners.first() else {
                continue;
            };
            let target = if self.is_reachable(primary) {
                primary
            } else {
                owners
                    .iter()
                    .find(|o| self.is_reachable(o))
                    .unwrap_or(primary)
            };
            let hash = write_set_hash(pubs.iter().map(|p| (&*p.register_id, p.order())));
            per_node
                .entry((*target).to_owned())
                .or_insert_with(|| (Vec::new(), true))
                .0
                .push(ReconcileDatum {
                    id: id.clone(),
                    hash,
                });
        }
        let calls = per_node.into_iter().map(|(node, (datums, complete))| {
            let body = ReconcileRequest {
                source: self.source_name.clone(),
                datums,
                complete,
                membership: Some(view.doc.clone()),
            };
            async move {
                (
                    node.clone(),
                    self.call::<_, ReconcileResponse>(&node, wire::RECONCILE, &body)
                        .await,
                )
            }
        });
        let answers = futures::future::join_all(calls).await;
        let grace = self.config.reconcile_grace.as_millis() as u64;
        let mut ops = Vec::new();
        let mut failed = 0;
        for (node, answer) in answers {
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%node, error = %e, "reconcile call failed");
                    failed += 1;
                    continue;
                }
            };
            for m in resp.mismatched {
                let have: HashMap<&str, &WriteKey> =
                    m.have.iter().map(|w| (&*w.register_id, w)).collect();
                let mut newer: HashMap<&str, WriteOrder> = HashMap::new();
                for w in &m.newer {
                    let o = newer.entry(&*w.register_id).or_default();
                    *o = (*o).max(w.order());
                }
                let empty = Vec::new();
                let pubs = mine.get(&m.id).unwrap_or(&empty);
                for p in pubs {
                    let behind = match have.get(&*p.register_id) {
                        None => true,
                        Some(w) => w.order() < p.order(),
                    };
                    if !behind {
                        continue;
                    }
                    if let Some(o) = newer.get(&*p.register_id) {
                        if *o > p.order() && o.owner != p.owner {
                            // Another session took this registerId over after this one
                            // last wrote it: re-publishing the older write would only lose.
                            tracing::info!(data_info_id = %m.id, register_id = %p.register_id, "publisher taken over by a newer owner; no longer reconciled here");
                            self.superseded
                                .lock()
                                .insert((m.id.clone(), p.register_id.clone()), p.order());
                            continue;
                        }
                    }
                    ops.push(PublisherOp::Put {
                        publisher: p.clone(),
                    });
                }
                let listed: HashSet<&str> = pubs.iter().map(|p| &*p.register_id).collect();
                for w in &m.have {
                    if !listed.contains(&*w.register_id)
                        && w.register_timestamp.saturating_add(grace) < snapshot_at
                    {
                        ops.push(PublisherOp::Remove {
                            data_info_id: m.id.clone(),
                            register_id: w.register_id.clone(),
                            version: w.version,
                            register_timestamp: w.register_timestamp,
                            register_seq: w.register_seq,
                            source: self.source_name.clone(),
                            owner: w.owner,
                        });
                    }
                }
            }
        }
        let n = ops.len();
        if n > 0 {
            tracing::info!(
                ops = n,
                "reconciliation re-publishes what the data nodes lack"
            );
            self.apply_ops(ops).await?;
        }
        if failed > 0 {
            return Err(DataPlaneError::Unavailable(format!(
                "{failed} data node(s) did not answer reconciliation"
            )));
        }
        Ok(n)
    }

    /// Leaves out of `mine` the publishers known to be superseded by a newer owner, and
    /// forgets those the session layer has written again (or dropped) since.
    fn leave_out_superseded(&self, mine: &mut HashMap<DataInfoId, Vec<Arc<Publisher>>>) {
        let mut superseded = self.superseded.lock();
        if superseded.is_empty() {
            return;
        }
        let current: HashMap<(&DataInfoId, &str), WriteOrder> = mine
            .iter()
            .flat_map(|(id, pubs)| pubs.iter().map(move |p| ((id, &*p.register_id), p.order())))
            .collect();
        superseded.retain(|(id, rid), order| current.get(&(id, &**rid)) == Some(order));
        for (id, pubs) in mine.iter_mut() {
            pubs.retain(|p| {
                superseded.get(&(id.clone(), p.register_id.clone())) != Some(&p.order())
            });
        }
        mine.retain(|_, pubs| !pubs.is_empty());
    }
}
