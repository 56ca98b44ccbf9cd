//! Pushing: the push worker (change notices, debounce, version scan), the fetch of a datum
//! made ready to push, and its delivery on each subscriber's stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::{ChangeNotice, DataInfoId};

use super::debounce::Debouncer;
use super::outbox::Refused;
use super::prepared::PreparedDatum;

use super::*;

impl SessionLayer {
    // ----- push pipeline -----

    pub fn push_settings(&self) -> PushSettings {
        PushSettings {
            stop_push: self.stop_push.load(Ordering::Relaxed),
            push_delay_millis: self.push_delay_ms.load(Ordering::Relaxed),
        }
    }

    /// Changes the push switch and delay; lifting the stop brings every subscriber up to date.
    pub fn set_push_settings(
        &self,
        stop_push: Option<bool>,
        push_delay_ms: Option<u64>,
    ) -> PushSettings {
        if let Some(d) = push_delay_ms {
            self.push_delay_ms.store(d, Ordering::Relaxed);
        }
        if let Some(stop) = stop_push {
            let was = self.stop_push.swap(stop, Ordering::Relaxed);
            if was && !stop {
                tracing::info!("push resumed: bringing every subscriber up to date");
                let _ = self.triggers.send(Trigger::Scan);
            } else if !was && stop {
                tracing::warn!("push stopped");
            }
        }
        self.push_settings()
    }

    pub(super) async fn push_worker(
        self: Arc<Self>,
        notices: mpsc::Receiver<Vec<ChangeNotice>>,
        mut triggers: mpsc::UnboundedReceiver<Trigger>,
    ) {
        let mut notices = Some(notices);
        let mut debouncer = Debouncer::new();
        let mut scan = tokio::time::interval(self.cfg.version_scan_interval);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        scan.tick().await;
        let far = Duration::from_secs(3600);
        loop {
            let next_due = debouncer
                .next_due()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                batch = async {
                    match notices.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(batch) = batch else {
                        // The data plane stopped notifying; the version scan keeps pushes going.
                        tracing::warn!("change notices ended; relying on the version scan");
                        notices = None;
                        continue;
                    };
                    let now = std::time::Instant::now();
                    let delay = Duration::from_millis(self.push_delay_ms.load(Ordering::Relaxed));
                    for n in batch {
                        self.notify_waiters(&n);
                        if self.interest.read().contains_key(&n.data_info_id) {
                            self.push_versions.noticed(&n.data_info_id, n.version);
                            debouncer.notice(n.data_info_id, n.version, now, delay, self.cfg.push_max_delay);
                        }
                    }
                }
                trigger = triggers.recv() => {
                    if let Some(Trigger::Scan) = trigger {
                        self.spawn_scan();
                    }
                }
                _ = tokio::time::sleep_until(next_due) => {
                    let due = debouncer.take_due(std::time::Instant::now());
                    if self.stop_push.load(Ordering::Relaxed) {
                        // Lifting the switch runs a full scan; nothing is lost by dropping these.
                        continue;
                    }
                    for d in due {
                        let this = self.clone();
                        tokio::spawn(async move {
                            this.push_datum(&d.data_info_id, Some(d.first_at)).await;
                        });
                    }
                }
                _ = scan.tick() => {
                    if !self.stop_push.load(Ordering::Relaxed) {
                        self.spawn_scan();
                    }
                }
            }
        }
    }

    fn spawn_scan(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move { this.version_scan().await });
    }

    /// Fetches every subscribed datum and pushes to every subscriber that is behind.
    pub async fn version_scan(self: &Arc<Self>) {
        let ids: Vec<DataInfoId> = self.interest.read().keys().cloned().collect();
        {
            let interest = self.interest.read();
            self.push_versions.retain(|id| interest.contains_key(id));
        }
        {
            // Lock order as in `count_delta`: the counts, then the bases.
            let wanted = self.delta_interest.lock();
            self.diff_bases
                .lock()
                .retain(|id, _| wanted.contains_key(id));
        }
        self.forget_unused_renderings();
        futures::stream::iter(ids)
            .for_each_concurrent(16, |id| async move {
                self.push_datum_once(&id, None).await;
            })
            .await;
    }

    /// A read made ready to push, under the version subscribers are to see (see
    /// [`versions`]). Rendered once per version: while a stream or a delivery still holds
    /// the rendering of the same version and writes, that one is shared.
    fn prepare(&self, mut snapshot: crate::model::DatumSnapshot) -> Arc<PreparedDatum> {
        let writes = crate::dataplane::wire::write_set_hash(
            snapshot
                .publishers
                .iter()
                .map(|p| (&*p.register_id, p.order())),
        );
        snapshot.version =
            self.push_versions
                .version_for(&snapshot.data_info_id, snapshot.version, writes);
        let version = snapshot.version;
        if let Some(shared) = self
            .prepared
            .lock()
            .get(&snapshot.data_info_id)
            .filter(|e| e.version == version && e.writes == writes)
            .and_then(|e| e.datum.upgrade())
        {
            return shared;
        }
        let datum = self.render(&snapshot, writes).unwrap_or_else(|| {
            self.metrics.push_renders.inc();
            Arc::new(PreparedDatum::with_delta(&snapshot, writes, None))
        });
        let mut cache = self.prepared.lock();
        let newer_cached = cache
            .get(&snapshot.data_info_id)
            .is_some_and(|e| e.version > version && e.datum.strong_count() > 0);
        if !newer_cached {
            cache.insert(
                snapshot.data_info_id,
                PreparedEntry {
                    version,
                    writes,
                    datum: Arc::downgrade(&datum),
                },
            );
        }
        datum
    }

    /// Renders a read of a datum with delta subscribers (`None` for any other datum), with
    /// the delta from its last rendering; the read becomes the last rendering when it is
    /// newer (one per datum). A read of the last rendering's version and writes shares it.
    fn render(
        &self,
        snapshot: &crate::model::DatumSnapshot,
        writes: u64,
    ) -> Option<Arc<PreparedDatum>> {
        let id = &snapshot.data_info_id;
        if !self.delta_interest.lock().contains_key(id) {
            return None;
        }
        let last = self.diff_bases.lock().get(id).cloned();
        if let Some(last) = &last {
            if last.base.version == snapshot.version && last.base.writes == writes {
                return Some(last.datum.clone());
            }
        }
        self.metrics.push_renders.inc();
        let datum = Arc::new(PreparedDatum::with_delta(
            snapshot,
            writes,
            last.as_ref().map(|l| &l.base),
        ));
        let mut bases = self.diff_bases.lock();
        // (Should the last delta subscriber have gone meanwhile, the version scan drops it.)
        if bases
            .get(id)
            .is_none_or(|l| l.base.version < snapshot.version)
        {
            bases.insert(
                id.clone(),
                Arc::new(LastRendering {
                    base: delta::DiffBase {
                        version: snapshot.version,
                        writes,
                        publishers: snapshot.publishers.clone(),
                    },
                    datum: datum.clone(),
                }),
            );
        }
        Some(datum)
    }

    /// Forgets renderings nothing holds any more, and those of datums no one here
    /// subscribes to.
    fn forget_unused_renderings(&self) {
        let interest = self.interest.read();
        self.prepared
            .lock()
            .retain(|id, e| e.datum.strong_count() > 0 && interest.contains_key(id));
    }

    pub(super) async fn fetch_prepared(
        &self,
        data_info_id: &DataInfoId,
    ) -> Option<Arc<PreparedDatum>> {
        self.metrics.push_fetches.inc();
        match self.data.fetch(data_info_id).await {
            Ok(snapshot) => Some(self.prepare(snapshot)),
            Err(e) => {
                self.metrics.pushes_failed.inc();
                tracing::warn!(data_info_id = %data_info_id, error = %e, "fetch for push failed; the version scan retries");
                None
            }
        }
    }

    /// Fetches a datum once and pushes it to every subscriber of it on this node; retries
    /// with backoff while the fetch fails or a stream's buffer is full (the periodic version
    /// scan is the last resort).
    async fn push_datum(&self, data_info_id: &DataInfoId, changed_at: Option<std::time::Instant>) {
        const ATTEMPTS: u32 = 5;
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=ATTEMPTS {
            if self.push_datum_once(data_info_id, changed_at).await || attempt == ATTEMPTS {
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff *= 2;
        }
    }

    /// One fetch and fan-out; false when something should be retried.
    async fn push_datum_once(
        &self,
        data_info_id: &DataInfoId,
        changed_at: Option<std::time::Instant>,
    ) -> bool {
        let targets: Vec<(Arc<str>, Arc<Session>)> = match self.interest.read().get(data_info_id) {
            Some(m) => m.iter().map(|(r, s)| (r.clone(), s.clone())).collect(),
            None => return true,
        };
        let Some(prepared) = self.fetch_prepared(data_info_id).await else {
            return false;
        };
        let mut complete = true;
        for (rid, session) in targets {
            if self.deliver(&session, &rid, &prepared, changed_at) == Delivery::Dropped {
                complete = false;
            }
        }
        complete
    }

    /// A full push of every subscriber of one session (its stream just opened).
    pub(super) async fn push_session(&self, session: &Arc<Session>) {
        let mut by_id: HashMap<DataInfoId, Vec<Arc<str>>> = HashMap::new();
        for (rid, slot) in session.state.lock().subscribers.iter() {
            by_id
                .entry(slot.sub.data_info_id.clone())
                .or_default()
                .push(rid.clone());
        }
        for (id, rids) in by_id {
            if let Some(prepared) = self.fetch_prepared(&id).await {
                for rid in rids {
                    self.deliver(session, &rid, &prepared, None);
                }
            }
        }
    }

    /// Queues one push on a subscriber's stream if it is open and the datum is newer than
    /// what the subscriber has on it.
    pub(super) fn deliver(
        &self,
        session: &Session,
        register_id: &str,
        prepared: &Arc<PreparedDatum>,
        changed_at: Option<std::time::Instant>,
    ) -> Delivery {
        if self.stop_push.load(Ordering::Relaxed) {
            return Delivery::NoStream;
        }
        let now = Instant::now();
        let mut guard = session.state.lock();
        let st = &mut *guard;
        let Some(slot) = st.subscribers.get_mut(register_id) else {
            return Delivery::UpToDate;
        };
        let Some(stream) = st.stream.as_mut() else {
            return Delivery::NoStream;
        };
        if !slot.pushed.should_push(stream.gen, prepared.version) {
            return Delivery::UpToDate;
        }
        let only_zone = (slot.sub.scope == Scope::Zone).then_some(&*slot.sub.zone);
        // A delta only to a subscriber that holds its base on this very stream; any gap
        // (a refused push, a reopened stream, a version not diffed against) means full.
        let delta = match slot.holds {
            Some((gen, version, writes)) if slot.sub.delta && gen == stream.gen => {
                prepared.delta_frame(st.next_seq, register_id, only_zone, (version, writes))
            }
            _ => None,
        };
        let is_delta = delta.is_some();
        let frame = delta.unwrap_or_else(|| prepared.frame(st.next_seq, register_id, only_zone));
        match stream.outbox.try_push(frame) {
            Ok(()) => {
                st.next_seq += 1;
                slot.pushed.record(stream.gen, prepared.version);
                if slot.sub.delta {
                    slot.holds = Some((stream.gen, prepared.version, prepared.writes));
                }
                if is_delta {
                    self.metrics.delta_pushes_sent.inc();
                }
                stream.full_since = None;
                self.metrics.pushes_sent.inc();
                if let Some(t) = changed_at {
                    self.metrics
                        .publish_to_push_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                Delivery::Sent
            }
            Err(Refused::Full) => {
                // Not queued: this subscriber gets the newest state once there is room (the
                // retries of `push_datum`, the version scan), never a backlog.
                self.metrics.pushes_failed.inc();
                if stream.stalled(now, self.cfg.stream_stall, true) {
                    tracing::warn!(session = %session.id, "closing an event stream that took no push for --stream-stall-ms");
                    Self::close_stream(session, st, now);
                }
                Delivery::Dropped
            }
            Err(Refused::Closed) => {
                self.metrics.pushes_failed.inc();
                Delivery::Dropped
            }
        }
    }
}
