//! Anti-entropy (every interval, and at once on a membership change): pull from every peer
//! the digest of the datums this node owns and fetch those where the peer is ahead (that
//! is also how a new owner obtains its datums from the previous owners, and how a node
//! restarted empty gets its data back from the backups); each round ends with a
//! [handover](super::handover). See the node's module docs for `synced` and deferral.

use super::{live_hash, DataNode, IMAGES_PER_CALL};
use crate::dataplane::wire::{
    self, call, CallError, DigestRequest, DigestResponse, ImagesRequest, ImagesResponse,
};
use crate::membership::ClusterView;
use crate::model::DataInfoId;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// In steady state (synced under the epoch in use), a datum that changed on the peer less
/// than this long ago is left to replication, which is about to deliver the same change;
/// pulling it would copy the whole datum on every round while writes keep coming.
const SETTLE_MS: u64 = 1_000;
/// ... but not for more than this many rounds in a row, so that a datum that never stops
/// changing is still repaired.
const MAX_DEFERRALS: u32 = 4;

/// Whether anti-entropy puts off pulling a datum that differs from a peer's copy, given
/// whether this node is synced, how long ago the datum changed on the peer (unknown from an
/// older node) and for how many rounds in a row the pull was already put off.
fn defer_pull(steady: bool, peer_age_ms: Option<u64>, rounds_deferred: u32) -> bool {
    steady && peer_age_ms.is_some_and(|a| a < SETTLE_MS) && rounds_deferred < MAX_DEFERRALS
}

impl DataNode {
    pub(super) async fn run_anti_entropy(me: std::sync::Weak<DataNode>) {
        let mut changes = match me.upgrade() {
            Some(n) => n.membership.subscribe(),
            None => return,
        };
        loop {
            let Some(node) = me.upgrade() else { return };
            node.round().await;
            let interval = node.config.anti_entropy_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = changes.changed() => { if r.is_err() { return } }
                _ = node.round_trigger.notified() => {}
            }
        }
    }

    /// One anti-entropy round: pull, then hand over.
    async fn round(self: &Arc<Self>) {
        let view = self.membership.view();
        let me = self.config.advertise_addr.as_str();
        if view.epoch() == 0 {
            return;
        }
        let required: Vec<String> = view.all_nodes().into_iter().filter(|n| n != me).collect();
        let mut peers = required.clone();
        if let Some((prev, _)) = &view.previous {
            for m in prev.members.iter().chain(prev.leaving.iter()) {
                if m != me && !peers.contains(m) {
                    peers.push(m.clone());
                }
            }
        }
        // A node still obtaining what it owns pulls every difference at once.
        let steady = self.synced_under(view.epoch());
        let pulls = peers.iter().map(|p| {
            let node = self.clone();
            let view = view.clone();
            let p = p.clone();
            async move {
                let r = node.pull_from(&p, &view, steady).await;
                if let Err(e) = &r {
                    tracing::debug!(peer = %p, error = %e, "anti-entropy pull failed");
                }
                (p, r.is_ok())
            }
        });
        let results = futures::future::join_all(pulls).await;
        let now = Instant::now();
        let all_ok = {
            let mut failing = self.failing_peers.lock();
            for (p, ok) in &results {
                if *ok {
                    failing.remove(p);
                } else {
                    failing.entry(p.clone()).or_insert(now);
                }
            }
            failing.retain(|p, _| peers.contains(p));
            let dead_after = self.config.peer_dead_after;
            required.iter().all(|r| {
                results.iter().any(|(p, ok)| p == r && *ok)
                    || failing
                        .get(r)
                        .is_some_and(|since| now.duration_since(*since) >= dead_after)
            })
        };
        // A node that reached none of its peers cannot tell whether they are down or it is
        // cut off: it no longer counts as synced (readers then merge every owner's answer
        // instead of trusting it) until a round reaches them again. Without this, a node
        // isolated for longer than `peer_dead_after` took every peer for dead, stayed
        // synced, and after the cut healed served what it held (its session leases had
        // run out meanwhile) as the whole truth.
        let isolated = !required.is_empty()
            && !results
                .iter()
                .any(|(p, ok)| *ok && required.iter().any(|r| r == p));
        if isolated {
            let was = self.synced_epoch.swap(0, Ordering::Relaxed);
            if was != 0 {
                tracing::warn!(
                    peers = required.len(),
                    "no peer answered anti-entropy: this node may be cut off, no longer synced"
                );
            }
        }
        let member = view.doc.members.iter().any(|m| m == me);
        if all_ok && member && !isolated {
            // Only the epoch this round ran under: a newer one adopted meanwhile stays
            // unsynced until its own round.
            let _ = self.synced_epoch.fetch_max(view.epoch(), Ordering::Relaxed);
        }
        let handed = self.hand_over(&view).await;
        if self.membership.epoch() == view.epoch() {
            self.handover_complete
                .store(!member && handed, Ordering::Relaxed);
        }
    }

    /// Fetches from `peer` the datums this node owns where the peer is ahead.
    async fn pull_from(
        &self,
        peer: &str,
        view: &ClusterView,
        steady: bool,
    ) -> Result<(), CallError> {
        let body = DigestRequest {
            for_node: self.config.advertise_addr.clone(),
            membership: Some(view.doc.clone()),
            leases: self.session_leases(),
        };
        let resp: DigestResponse =
            call(&self.http, self.token(), peer, wire::DIGEST, &body).await?;
        // A refused document is logged; the digest itself is still of use.
        let _ = self.gossip(Some(resp.membership));
        self.learn_leases(&resp.leases);
        let differing: Vec<(DataInfoId, Option<u64>)> = resp
            .entries
            .into_iter()
            .filter(|e| {
                let (version, hash) = self
                    .store
                    .with_datum(&e.id, |d| (d.version, live_hash(d)))
                    .unwrap_or((0, 0));
                // Whatever differs, whichever version is newer: a write that reached this
                // node before it pulled (a session re-publishing its own publishers) gives
                // it a newer version but not the other sessions' publishers.
                e.version > version || e.hash != hash
            })
            .map(|e| (e.id, e.age_ms))
            .collect();
        let wanted = {
            let mut deferred = self.deferred.lock();
            // Counts of this peer's datums that no longer differ are dropped.
            let before: HashMap<DataInfoId, u32> = deferred
                .extract_if(|(p, _), _| p == peer)
                .map(|((_, id), n)| (id, n))
                .collect();
            let mut wanted = Vec::with_capacity(differing.len());
            for (id, age_ms) in differing {
                let rounds = before.get(&id).copied().unwrap_or(0);
                if defer_pull(steady, age_ms, rounds) {
                    deferred.insert((peer.to_owned(), id), rounds + 1);
                } else {
                    wanted.push(id);
                }
            }
            wanted
        };
        for chunk in wanted.chunks(IMAGES_PER_CALL) {
            let body = ImagesRequest {
                ids: chunk.to_vec(),
            };
            let resp: ImagesResponse =
                call(&self.http, self.token(), peer, wire::IMAGES, &body).await?;
            self.install_images(resp.images).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_entropy_defers_only_fresh_changes_in_steady_state_and_not_forever() {
        // Not synced yet (joining, restarted, new epoch): every difference is pulled.
        assert!(!defer_pull(false, Some(0), 0));
        // Synced: a change younger than the settle window is left to replication...
        assert!(defer_pull(true, Some(SETTLE_MS - 1), 0));
        assert!(defer_pull(true, Some(0), MAX_DEFERRALS - 1));
        // ... but not a settled one, nor one put off for too many rounds, nor one whose
        // age the peer did not say.
        assert!(!defer_pull(true, Some(SETTLE_MS), 0));
        assert!(!defer_pull(true, Some(0), MAX_DEFERRALS));
        assert!(!defer_pull(true, None, 0));
    }
}
