//! Session leases: a session node (publisher `source`) that neither polls nor writes for
//! the lease duration loses its publishers here (no tombstones: if it comes back, its
//! reconciliation re-publishes). Sources first seen in replicated data get a fresh lease,
//! and data of an expired source arriving from peers is left out.

use super::DataNode;
use crate::data::store::DatumImage;
use registry_types::SessionLease;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl DataNode {
    /// The session nodes holding a lease here, by name, with the time since each renewal.
    pub fn session_leases(&self) -> Vec<SessionLease> {
        let now = Instant::now();
        let mut out: Vec<SessionLease> = self
            .leases
            .lock()
            .iter()
            .map(|(name, renewed)| SessionLease {
                name: name.to_string(),
                renewed_ms_ago: now.duration_since(*renewed).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(super) fn renew(&self, source: &Arc<str>) {
        let mut leases = self.leases.lock();
        if leases.insert(source.clone(), Instant::now()).is_none() {
            self.expired.lock().remove(source);
        }
    }

    pub(super) async fn run_leases(me: std::sync::Weak<DataNode>) {
        loop {
            let (lease, tick) = {
                let Some(node) = me.upgrade() else { return };
                let lease = node.config.session_lease;
                (lease, (lease / 5).max(Duration::from_millis(20)))
            };
            tokio::time::sleep(tick).await;
            let Some(node) = me.upgrade() else { return };
            let now = Instant::now();
            let expired: Vec<Arc<str>> = {
                let mut leases = node.leases.lock();
                let expired: Vec<Arc<str>> = leases
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) > lease)
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in &expired {
                    leases.remove(s);
                }
                expired
            };
            {
                let mut marks = node.expired.lock();
                marks.retain(|_, t| now.duration_since(*t) < lease * 10);
                for s in &expired {
                    marks.insert(s.clone(), now);
                }
            }
            for source in expired {
                let n = node.store.remove_source(&source).await;
                tracing::info!(%source, dropped = n, "session lease expired");
            }
        }
    }

    /// Sources of installed data start a lease if they have none here, so that data of a
    /// dead session node that arrives by replication still expires.
    pub(super) fn grant_leases(&self, images: &[DatumImage]) {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        for image in images {
            for p in &image.publishers {
                leases.entry(p.source.clone()).or_insert(now);
            }
        }
    }

    /// Merges images from peers. Publishers of a session node whose lease expired here
    /// (and which has not renewed since) are left out: replicas expire a dead session node
    /// at slightly different times, and without this a replica that has not expired it yet
    /// would hand its publishers back to one that already has (merging images only adds).
    pub(super) async fn install_images(&self, mut images: Vec<DatumImage>) {
        {
            let marks = self.expired.lock();
            if !marks.is_empty() {
                for image in &mut images {
                    image.publishers.retain(|p| !marks.contains_key(&p.source));
                }
            }
        }
        self.grant_leases(&images);
        for image in &images {
            for p in &image.publishers {
                self.clock.observe(p.register_timestamp);
            }
        }
        self.store.install(images).await;
    }
}
