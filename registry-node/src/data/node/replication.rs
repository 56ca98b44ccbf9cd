//! Replication: the ops applied here are pushed (`install`) to each datum's other owners,
//! batched, as delta images: only the publishers and tombstones those ops carried, never
//! the whole datum (a full copy per change made replication cost grow with the datum's
//! size). Failures are left to anti-entropy.

use super::{DataNode, IMAGES_PER_CALL};
use crate::data::store::{DatumImage, TombstoneImage};
use crate::dataplane::wire::{self, call, EpochAnswer, InstallRequest};
use crate::model::{DataInfoId, PublisherOp};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

impl DataNode {
    pub(super) async fn run_replication(
        me: std::sync::Weak<DataNode>,
        mut rx: mpsc::Receiver<Vec<PublisherOp>>,
    ) {
        while let Some(mut ops) = rx.recv().await {
            // Let a burst accumulate into one push per owner.
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Ok(more) = rx.try_recv() {
                ops.extend(more);
            }
            let Some(node) = me.upgrade() else { return };
            let view = node.membership.view();
            let mut per_target: HashMap<String, Vec<DatumImage>> = HashMap::new();
            for image in delta_images(ops, |id| node.store.version(id)) {
                for t in view.owners(&image.data_info_id) {
                    if t != node.config.advertise_addr {
                        per_target
                            .entry(t.to_owned())
                            .or_default()
                            .push(image.clone());
                    }
                }
            }
            let doc = view.doc.clone();
            let calls = per_target.into_iter().map(|(target, images)| {
                let node = node.clone();
                let doc = doc.clone();
                async move {
                    for chunk in wire::batches(images, IMAGES_PER_CALL, wire::BATCH_BYTES, wire::image_bytes) {
                        let body = InstallRequest {
                            images: chunk,
                            membership: Some(doc.clone()),
                        };
                        if let Err(e) = call::<_, EpochAnswer>(&node.http, node.token(), &target, wire::INSTALL, &body).await {
                            tracing::debug!(%target, error = %e, "replication push failed; anti-entropy will repair");
                            return;
                        }
                    }
                }
            });
            futures::future::join_all(calls).await;
        }
    }
}

/// Groups ops into one delta image per datum: the publishers the puts carried and the
/// tombstones the removes left, at the datum's current version (`version_of`). Installing
/// the image (tombstones, then puts, each by the merge rules) on a replica has the same
/// effect as applying the ops in order there.
pub fn delta_images(ops: Vec<PublisherOp>, version_of: impl Fn(&str) -> u64) -> Vec<DatumImage> {
    let mut by_id: HashMap<DataInfoId, DatumImage> = HashMap::new();
    for op in ops {
        let image = by_id
            .entry(op.data_info_id().clone())
            .or_insert_with_key(|id| DatumImage {
                data_info_id: id.clone(),
                version: 0,
                publishers: Vec::new(),
                tombstones: Vec::new(),
            });
        match op {
            PublisherOp::Put { publisher } => image.publishers.push(publisher),
            PublisherOp::Remove {
                register_id,
                version,
                register_timestamp,
                register_seq,
                owner,
                ..
            } => image.tombstones.push(TombstoneImage {
                register_id,
                version,
                register_timestamp,
                register_seq,
                owner,
            }),
        }
    }
    let mut images: Vec<DatumImage> = by_id.into_values().collect();
    for image in &mut images {
        image.version = version_of(&image.data_info_id);
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::store::{DatumStore, StoreConfig};
    use crate::model::Publisher;
    use std::sync::Arc;

    const ID: &str = "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP";

    fn publ(rid: &str, version: u64, ts: u64, data: &str) -> Arc<Publisher> {
        Arc::new(Publisher {
            register_id: rid.into(),
            data_info_id: ID.into(),
            zone: "z".into(),
            data: vec![data.to_string()].into(),
            version,
            register_timestamp: ts,
            register_seq: 0,
            client_id: None,
            session_id: "s".into(),
            source: "session-a".into(),
            owner: 1,
            principal: None,
        })
    }

    fn put(p: Arc<Publisher>) -> PublisherOp {
        PublisherOp::Put { publisher: p }
    }

    fn remove(rid: &str, version: u64, ts: u64) -> PublisherOp {
        PublisherOp::Remove {
            data_info_id: ID.into(),
            register_id: rid.into(),
            version,
            register_timestamp: ts,
            register_seq: 0,
            source: "session-a".into(),
            owner: 1,
        }
    }

    fn live(store: &DatumStore) -> Vec<(String, u64, Vec<String>)> {
        let mut out: Vec<_> = store
            .fetch(ID)
            .publishers
            .iter()
            .map(|p| (p.register_id.to_string(), p.version, p.data.to_vec()))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_delta_image_on_a_replica_has_the_effect_of_the_ops_on_the_primary() {
        let primary = DatumStore::new(StoreConfig::default());
        let replica = DatumStore::new(StoreConfig::default());
        let base = vec![put(publ("r1", 1, 10, "a")), put(publ("r2", 1, 11, "b"))];
        primary.apply(base.clone()).await;
        replica
            .install(delta_images(base, |id| primary.version(id)))
            .await;
        assert_eq!(live(&primary), live(&replica));

        // Replace r1, remove r2, add and remove r3 in the same batch, add r4.
        let batch = vec![
            put(publ("r1", 2, 12, "a2")),
            remove("r2", 1, 11),
            put(publ("r3", 1, 13, "c")),
            remove("r3", 1, 13),
            put(publ("r4", 1, 14, "d")),
        ];
        primary.apply(batch.clone()).await;
        let images = delta_images(batch, |id| primary.version(id));
        assert_eq!(images.len(), 1);
        // Only what the ops carried: r2's publisher is not resent.
        assert_eq!(images[0].publishers.len(), 3);
        assert_eq!(images[0].tombstones.len(), 2);
        assert_eq!(images[0].version, primary.version(ID));
        replica.install(images).await;
        assert_eq!(
            live(&replica),
            vec![
                ("r1".to_string(), 2, vec!["a2".to_string()]),
                ("r4".to_string(), 1, vec!["d".to_string()]),
            ]
        );
        assert_eq!(live(&primary), live(&replica));
        assert_eq!(replica.version(ID), primary.version(ID));
        // A late, older copy of r2 does not come back on the replica (the tombstone holds).
        replica
            .install(delta_images(vec![put(publ("r2", 1, 11, "b"))], |_| 0))
            .await;
        assert_eq!(live(&primary), live(&replica));
    }
}
