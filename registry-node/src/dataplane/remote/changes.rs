//! Change polling: one long poll (`changes`) per data node of the view, which also renews
//! this node's session lease there; notices are deduplicated by version and passed on.

use super::RemoteDataPlane;
use crate::dataplane::wire::{self, *};
use crate::model::ChangeNotice;
use std::sync::Arc;
use std::time::Duration;

impl RemoteDataPlane {
    /// Keeps one poller per data node of the current view.
    pub(super) async fn run_supervisor(me: std::sync::Weak<RemoteDataPlane>) {
        let mut changes = match me.upgrade() {
            Some(p) => p.membership.subscribe(),
            None => return,
        };
        loop {
            {
                let Some(plane) = me.upgrade() else { return };
                let view = plane.membership.view();
                for node in view.all_nodes() {
                    if plane.pollers.lock().insert(node.clone()) {
                        tokio::spawn(Self::run_poller(Arc::downgrade(&plane), node));
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    pub(super) async fn run_poller(me: std::sync::Weak<RemoteDataPlane>, node: String) {
        let mut after: Option<u64> = None;
        let mut incarnation: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(plane) = me.upgrade() else { return };
            let view = plane.membership.view();
            if !view.all_nodes().contains(&node) {
                plane.pollers.lock().remove(&node);
                plane.lanes.lock().remove(&node);
                return;
            }
            let wait = (plane.config.session_lease / 5).min(Duration::from_secs(5));
            let body = ChangesRequest {
                source: plane.source_name.clone(),
                after,
                wait_ms: wait.as_millis() as u64,
                incarnation,
                membership: Some(view.doc.clone()),
            };
            let http = plane.http.clone();
            let token = plane.config.token.clone();
            // A poll that is not answered shortly after its wait marks the node unreachable
            // (writes and reads then go to the other owners first, and a session node that
            // reaches no data node tells its clients to fail over): a silent partition is
            // noticed within a few seconds, not only after a full request timeout.
            let timeout = wait + plane.config.request_timeout.min(Duration::from_secs(2));
            drop(view);
            drop(plane);
            let r: Result<ChangesResponse, _> = call_with_timeout(
                &http,
                token.as_deref(),
                &node,
                wire::CHANGES,
                &body,
                Some(timeout),
            )
            .await;
            let Some(plane) = me.upgrade() else { return };
            plane.mark(&node, r.is_ok());
            match r {
                Ok(resp) => {
                    backoff = Duration::from_millis(100);
                    if incarnation.is_some() && incarnation != Some(resp.incarnation) {
                        tracing::info!(%node, "data node restarted");
                    }
                    incarnation = Some(resp.incarnation);
                    after = Some(resp.seq);
                    plane.clock.observe(resp.clock_stamp());
                    if !resp.notices.is_empty() {
                        plane.forward(resp.notices);
                    }
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "change poll failed");
                    drop(plane);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Passes on notices newer than what was already passed on for their dataInfoId, and
    /// older ones (see below); drops repeats of a version.
    pub(super) fn forward(&self, notices: Vec<ChangeNotice>) {
        let fresh: Vec<ChangeNotice> = {
            let mut seen = self.forwarded.lock();
            notices
                .into_iter()
                .filter(|n| {
                    let v = seen.entry(n.data_info_id.clone()).or_insert(0);
                    if n.version > *v {
                        *v = n.version;
                        true
                    } else {
                        // The same version again is another owner reporting the same change.
                        // A lower one is passed on: usually a late notice (harmless: the
                        // push reads the datum again), but it is also how a fresh owner
                        // whose versions run behind announces a real change (see
                        // `session::versions`).
                        n.version < *v
                    }
                })
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        crate::data::store::notify(&self.watchers, fresh);
    }
}
