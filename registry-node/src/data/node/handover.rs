//! Handover and drain. Handover: datums this node holds but no longer owns are pushed to
//! their owners and dropped once every owner accepted them. Drain (on SIGTERM): session
//! writes are refused, writes already accepted finish, then every datum held here is
//! pushed to its other owners until they all accepted it.

use super::{DataNode, IMAGES_PER_CALL};
use crate::data::store::DatumImage;
use crate::dataplane::wire::{self, call, EpochAnswer, InstallRequest};
use crate::membership::{ClusterView, MembershipDoc};
use crate::model::DataInfoId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl DataNode {
    /// Pushes datums this node does not own to their owners and drops those every owner
    /// accepted. Returns true when nothing is left to hand over.
    pub(super) async fn hand_over(self: &Arc<Self>, view: &ClusterView) -> bool {
        let me = self.config.advertise_addr.as_str();
        // A round that started under an older epoch must not hand over (and drop) by its
        // stale ring: what it would drop may be exactly what this node owns now.
        if view.ring.is_empty() || self.membership.epoch() != view.epoch() {
            return false;
        }
        let mut per_owner: HashMap<String, Vec<DataInfoId>> = HashMap::new();
        let mut versions: HashMap<DataInfoId, u64> = HashMap::new();
        self.store.for_each_datum(|id, d| {
            let owners = view.owners(id);
            if owners.contains(&me) {
                return;
            }
            versions.insert(id.clone(), d.version);
            for o in owners {
                per_owner.entry(o.to_owned()).or_default().push(id.clone());
            }
        });
        if versions.is_empty() {
            return true;
        }
        let failed: HashSet<DataInfoId> = self
            .push_images(per_owner, &view.doc)
            .await
            .into_values()
            .flatten()
            .collect();
        // Drop what every owner accepted, unless a write arrived meanwhile (it is handed
        // over next round) or a newer membership was adopted meanwhile (checked under the
        // store's lock: a peer's install carrying a newer epoch is adopted before it is
        // applied, so an image installed for the new ring is never dropped by the old one).
        let epoch = view.epoch();
        let membership = &self.membership;
        self.store.retain(|id, d| {
            if membership.epoch() != epoch {
                return true;
            }
            match versions.get(id) {
                Some(v) => failed.contains(id) || d.version != *v,
                None => true,
            }
        });
        if !failed.is_empty() {
            tracing::info!(
                pending = failed.len(),
                "handover incomplete; retrying next round"
            );
        }
        failed.is_empty()
    }

    /// Installs the current image of each listed datum on its owner. Returns, per owner,
    /// the datums it did not accept.
    async fn push_images(
        self: &Arc<Self>,
        per_owner: HashMap<String, Vec<DataInfoId>>,
        doc: &MembershipDoc,
    ) -> HashMap<String, Vec<DataInfoId>> {
        let calls = per_owner.into_iter().map(|(owner, ids)| {
            let node = self.clone();
            let doc = doc.clone();
            async move {
                let mut failed: Vec<DataInfoId> = Vec::new();
                for chunk in ids.chunks(IMAGES_PER_CALL) {
                    let images: Vec<DatumImage> =
                        chunk.iter().filter_map(|id| node.store.image(id)).collect();
                    for images in wire::batches(
                        images,
                        IMAGES_PER_CALL,
                        wire::BATCH_BYTES,
                        wire::image_bytes,
                    ) {
                        let ids: Vec<DataInfoId> =
                            images.iter().map(|i| i.data_info_id.clone()).collect();
                        let body = InstallRequest {
                            images,
                            membership: Some(doc.clone()),
                        };
                        if let Err(e) = call::<_, EpochAnswer>(
                            &node.http,
                            node.token(),
                            &owner,
                            wire::INSTALL,
                            &body,
                        )
                        .await
                        {
                            tracing::debug!(%owner, error = %e, "push of datums failed");
                            failed.extend(ids);
                        }
                    }
                }
                (owner, failed)
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|(_, failed)| !failed.is_empty())
            .collect()
    }

    /// Graceful stop: refuses session writes from now on (they fail over to the next
    /// owner), waits for the writes already accepted, then pushes every datum held here to
    /// its other owners under the current membership, retrying until each accepted or
    /// `within` runs out. True when everything was accepted.
    pub async fn drain(self: &Arc<Self>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.draining.store(true, Ordering::SeqCst);
        while self.applying.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let me = self.config.advertise_addr.clone();
        let mut pending: Option<HashMap<String, Vec<DataInfoId>>> = None;
        loop {
            let view = self.membership.view();
            let per_owner = match pending.take() {
                Some(p) => p,
                None => {
                    let mut per_owner: HashMap<String, Vec<DataInfoId>> = HashMap::new();
                    self.store.for_each_datum(|id, _| {
                        for o in view.owners(id) {
                            if o != me {
                                per_owner.entry(o.to_owned()).or_default().push(id.clone());
                            }
                        }
                    });
                    per_owner
                }
            };
            let datums: usize = per_owner.values().map(Vec::len).sum();
            let failed = self.push_images(per_owner, &view.doc).await;
            if failed.is_empty() {
                tracing::info!(
                    pushes = datums,
                    "drained: every datum is with its other owners"
                );
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    owners = failed.len(),
                    "drain deadline: some owners did not accept their datums"
                );
                return false;
            }
            pending = Some(failed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
