//! Reads: from the primary when it is synced under the current epoch, else the merge of
//! every owner's and the previous owners' answers by the publisher merge rules; a data
//! node on a newer epoch hands its membership back and the read is retried under it.

use super::lanes::FetchJob;
use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::dataplane::DataPlaneError;
use crate::membership::ClusterView;
use crate::model::{DataInfoId, DatumSnapshot, Publisher, ServiceSummary};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Outcome of a read under one view.
pub(super) enum Fetched {
    Done(Result<DatumSnapshot, DataPlaneError>),
    /// A data node is on a newer epoch: this document.
    NewerEpoch(crate::membership::MembershipDoc),
}

impl Fetched {
    fn into_result(self) -> Result<DatumSnapshot, DataPlaneError> {
        match self {
            Fetched::Done(r) => r,
            Fetched::NewerEpoch(_) => Err(DataPlaneError::Unavailable(
                "the data nodes' membership keeps changing".into(),
            )),
        }
    }
}

impl RemoteDataPlane {
    pub(super) async fn fetch_from(
        &self,
        node: &str,
        id: &DataInfoId,
        view: &ClusterView,
    ) -> Result<FetchResponse, CallError> {
        let body = FetchRequest {
            ids: vec![id.clone()],
            membership: Some(view.doc.clone()),
        };
        let r: Result<FetchResponse, CallError> = self.call(node, wire::FETCH, &body).await;
        if let Ok(resp) = &r {
            self.clock.observe(resp.clock_stamp());
        }
        r
    }

    /// [`Self::fetch_from`] through the node's lane: concurrent reads of several datums
    /// from one primary go out as one request.
    pub(super) async fn fetch_primary(
        &self,
        node: &str,
        id: &DataInfoId,
        view: &ClusterView,
    ) -> Result<FetchResponse, String> {
        match self.lanes(node) {
            Some(lanes) => {
                let (done, rx) = oneshot::channel();
                if lanes
                    .fetch
                    .send(FetchJob {
                        id: id.clone(),
                        done,
                    })
                    .is_err()
                {
                    return Err("lane closed".into());
                }
                rx.await.unwrap_or_else(|_| Err("lane closed".into()))
            }
            None => self
                .fetch_from(node, id, view)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub(super) async fn fetch_one(
        &self,
        data_info_id: &str,
    ) -> Result<DatumSnapshot, DataPlaneError> {
        let id: DataInfoId = data_info_id.into();
        // A data node on a newer epoch hands its membership back; adopt it and ask again
        // under it (bounded: epochs only grow, and each retry needs a newer one).
        for _ in 0..4 {
            let view = self.membership.view();
            if view.epoch() == 0 || view.ring.is_empty() {
                return Err(DataPlaneError::Unavailable(
                    "no data-node membership yet".into(),
                ));
            }
            match self.fetch_under(&id, &view).await {
                Fetched::Done(r) => return r,
                Fetched::NewerEpoch(doc) => {
                    if let Err(e) = self.membership.offer(doc) {
                        tracing::warn!(error = %e, "ignored a malformed membership from a data node");
                        return self
                            .fetch_merged(&id, &view, Vec::new())
                            .await
                            .into_result();
                    }
                }
            }
        }
        let view = self.membership.view();
        self.fetch_merged(&id, &view, Vec::new())
            .await
            .into_result()
    }

    /// Reads `id` under `view`: the primary's answer when it is synced under this epoch,
    /// else the merge of every owner's (see [`Self::fetch_merged`]).
    pub(super) async fn fetch_under(&self, id: &DataInfoId, view: &ClusterView) -> Fetched {
        let owners = view.owners(id);
        let mut answers: Vec<DatumSnapshot> = Vec::new();
        // A primary known to be unreachable from here, while another owner is reachable, is
        // not waited for: the merged read of the reachable owners answers at once.
        let primary = owners
            .first()
            .filter(|p| self.is_reachable(p) || !owners.iter().any(|o| self.is_reachable(o)));
        if let Some(primary) = primary {
            if let Ok(mut resp) = self.fetch_primary(primary, id, view).await {
                if let Some(doc) = resp.membership.take() {
                    if doc.epoch > view.epoch() {
                        return Fetched::NewerEpoch(doc);
                    }
                }
                let trusted = resp.synced && resp.epoch == view.epoch();
                tracing::trace!(%id, %primary, epoch = view.epoch(), node_epoch = resp.epoch, trusted, "read from the primary");
                if let Some(snap) = resp.datums.pop() {
                    if trusted {
                        return Fetched::Done(Ok(snap));
                    }
                    answers.push(snap);
                }
            }
        }
        self.fetch_merged(id, view, answers).await
    }

    /// The primary is unreachable or still syncing: merge what the previous epoch's owners
    /// and then every current owner hold. In that order because a previous owner drops a
    /// datum only after every new owner accepted it: a datum missed at the previous owner
    /// (dropped) is then found at the current owners, asked afterwards.
    pub(super) async fn fetch_merged(
        &self,
        id: &DataInfoId,
        view: &ClusterView,
        mut answers: Vec<DatumSnapshot>,
    ) -> Fetched {
        let owners = view.owners(id);
        let previous: Vec<&str> = view
            .previous_owners(id)
            .into_iter()
            .chain(
                view.previous
                    .as_ref()
                    .map(|(d, _)| d.leaving.iter().map(String::as_str).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .chain(view.doc.leaving.iter().map(String::as_str))
            .filter(|o| !owners.contains(o))
            .collect();
        let mut reached = !answers.is_empty();
        // Of the current owners, only those reachable from here are asked when there are
        // any (a cut-off owner would hold every read for a timeout; the others hold what
        // it holds, and it gets what they take by replication and anti-entropy).
        let owners = if owners.iter().any(|o| self.is_reachable(o)) {
            owners
                .into_iter()
                .filter(|o| self.is_reachable(o))
                .collect()
        } else {
            owners
        };
        for phase in [previous, owners] {
            let calls = phase.iter().map(|o| self.fetch_from(o, id, view));
            for r in futures::future::join_all(calls).await.into_iter().flatten() {
                if let Some(doc) = r.membership.filter(|d| d.epoch > view.epoch()) {
                    return Fetched::NewerEpoch(doc);
                }
                reached = true;
                answers.extend(r.datums);
            }
        }
        if !reached {
            return Fetched::Done(Err(DataPlaneError::Unavailable(format!(
                "no owner of {id} could be reached"
            ))));
        }
        let merged = merge_snapshots(id.clone(), answers);
        tracing::trace!(%id, epoch = view.epoch(), publishers = merged.publishers.len(), "merged read");
        Fetched::Done(Ok(merged))
    }

    pub(super) async fn services_all(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<ServiceSummary>, DataPlaneError> {
        let view = self.membership.view();
        if view.epoch() == 0 {
            return Err(DataPlaneError::Unavailable(
                "no data-node membership yet".into(),
            ));
        }
        let body = ServicesRequest {
            prefix: prefix.to_owned(),
            limit,
        };
        let nodes = view.all_nodes();
        let calls = nodes
            .iter()
            .map(|n| self.call::<_, ServicesResponse>(n, wire::SERVICES, &body));
        let mut merged: HashMap<DataInfoId, usize> = HashMap::new();
        let mut any = false;
        for r in futures::future::join_all(calls).await.into_iter().flatten() {
            any = true;
            for s in r.services {
                let c = merged.entry(s.data_info_id).or_default();
                *c = (*c).max(s.publisher_count);
            }
        }
        if !any {
            return Err(DataPlaneError::Unavailable(
                "no data node could be reached".into(),
            ));
        }
        let mut out: Vec<ServiceSummary> = merged
            .into_iter()
            .map(|(data_info_id, publisher_count)| ServiceSummary {
                data_info_id,
                publisher_count,
            })
            .collect();
        out.sort_unstable_by(|a, b| a.data_info_id.cmp(&b.data_info_id));
        out.truncate(limit);
        Ok(out)
    }
}

/// Merges answers from several owners: per registerId the newest write ([`WriteOrder`])
/// wins; the version is the greatest seen.
pub fn merge_snapshots(id: DataInfoId, answers: Vec<DatumSnapshot>) -> DatumSnapshot {
    let mut version = 0;
    let mut by_rid: HashMap<Arc<str>, Arc<Publisher>> = HashMap::new();
    for snap in answers {
        version = version.max(snap.version);
        for p in snap.publishers {
            match by_rid.get(&p.register_id) {
                Some(cur) if cur.order() >= p.order() => {}
                _ => {
                    by_rid.insert(p.register_id.clone(), p);
                }
            }
        }
    }
    let mut publishers: Vec<Arc<Publisher>> = by_rid.into_values().collect();
    publishers.sort_unstable_by(|a, b| a.register_id.cmp(&b.register_id));
    DatumSnapshot {
        data_info_id: id,
        version,
        publishers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rid: &str, version: u64, ts: u64) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: "x#@#i#@#g".into(),
            zone: "z".into(),
            data: vec![format!("{rid}-{version}")].into(),
            version,
            register_timestamp: ts,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: "n".into(),
            owner: 0,
            principal: None,
        })
    }

    #[test]
    fn merged_snapshot_is_the_union_with_newest_writes() {
        let id: DataInfoId = "x#@#i#@#g".into();
        let a = DatumSnapshot {
            data_info_id: id.clone(),
            version: 10,
            publishers: vec![p("r1", 1, 1), p("r2", 2, 6)],
        };
        let b = DatumSnapshot {
            data_info_id: id.clone(),
            version: 7,
            publishers: vec![p("r2", 1, 5), p("r3", 1, 1)],
        };
        let m = merge_snapshots(id, vec![a, b]);
        assert_eq!(m.version, 10);
        let got: Vec<(String, u64)> = m
            .publishers
            .iter()
            .map(|p| (p.register_id.to_string(), p.version))
            .collect();
        assert_eq!(got, [("r1".into(), 1), ("r2".into(), 2), ("r3".into(), 1)]);
    }

    #[test]
    fn a_merged_read_shows_the_new_owner_whatever_the_versions() {
        let id: DataInfoId = "x#@#i#@#g".into();
        let mut old = (*p("r1", 7, 100)).clone();
        old.owner = 1;
        let mut new = (*p("r1", 1, 200)).clone();
        new.owner = 2;
        for answers in [
            vec![vec![Arc::new(old.clone())], vec![Arc::new(new.clone())]],
            vec![vec![Arc::new(new.clone())], vec![Arc::new(old.clone())]],
        ] {
            let snaps = answers
                .into_iter()
                .map(|publishers| DatumSnapshot {
                    data_info_id: id.clone(),
                    version: 1,
                    publishers,
                })
                .collect();
            let m = merge_snapshots(id.clone(), snaps);
            assert_eq!(m.publishers.len(), 1);
            assert_eq!(m.publishers[0].owner, 2);
        }
    }
}
