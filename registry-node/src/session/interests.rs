//! Interests: subscribers by registerId and by dataInfoId, and blocking queries waiting for
//! a dataInfoId to pass a version.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::dataplane::DataPlaneError;
use crate::model::{ChangeNotice, DataInfoId, DatumSnapshot};

use super::*;

impl SessionLayer {
    pub async fn subscribe(
        self: &Arc<Self>,
        session_id: &str,
        req: SubscribeRequest,
    ) -> Result<Arc<Subscriber>, SessionError> {
        let session = self.live_session(session_id).await?;
        let data_info_id = req.key.data_info_id();
        let register_id: Arc<str> = req.register_id.unwrap_or_else(new_id).into();
        let sub = Arc::new(Subscriber {
            register_id: register_id.clone(),
            data_info_id: data_info_id.clone(),
            zone: self.intern_zone(&req.zone),
            scope: req.scope,
            delta: req.delta,
        });
        let streaming = {
            let mut st = session.state.lock();
            if st.closed {
                return Err(SessionError::NotFound(format!(
                    "session {session_id:?} not found or expired"
                )));
            }
            let mut index = self.subscribers.lock();
            match index.get(&register_id) {
                Some((s, _)) if s.id != session.id => {
                    return Err(SessionError::Conflict(format!(
                        "registerId {register_id:?} is used by another session"
                    )))
                }
                Some((_, existing)) if existing.data_info_id != data_info_id => {
                    return Err(SessionError::Conflict(format!(
                        "registerId {register_id:?} is already used for dataInfoId {:?}",
                        existing.data_info_id
                    )))
                }
                _ => {}
            }
            let max = self.cfg.limits.max_subscribers_per_session;
            if !st.subscribers.contains_key(&register_id) && st.subscribers.len() >= max {
                return Err(SessionError::ResourceExhausted(format!(
                    "a session holds at most {max} subscribers (--max-subscribers-per-session)"
                )));
            }
            index.insert(register_id.clone(), (session.clone(), sub.clone()));
            let old = st.subscribers.get(&register_id);
            let pushed = old.map(|s| s.pushed).unwrap_or_default();
            let was_delta = old.is_some_and(|s| s.sub.delta);
            self.count_delta(&data_info_id, was_delta, sub.delta);
            st.subscribers.insert(
                register_id.clone(),
                SubscriberSlot {
                    sub: sub.clone(),
                    pushed,
                    holds: None,
                },
            );
            self.interest
                .write()
                .entry(data_info_id.clone())
                .or_default()
                .insert(register_id.clone(), session.clone());
            // Without a stream, the full push when one opens brings this subscriber too.
            st.stream.is_some()
        };
        self.metrics
            .subscribers
            .set(self.subscribers.lock().len() as i64);
        if streaming && !self.stop_push.load(Ordering::Relaxed) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Some(prepared) = this.fetch_prepared(&data_info_id).await {
                    this.deliver(&session, &register_id, &prepared, None);
                }
            });
        }
        Ok(sub)
    }

    /// Counts a subscriber of `id` that wanted deltas (`was`) and wants them now (`now`).
    /// A datum with no delta subscriber left keeps no diff base.
    pub(super) fn count_delta(&self, id: &DataInfoId, was: bool, now: bool) {
        if was == now {
            return;
        }
        let mut counts = self.delta_interest.lock();
        if now {
            *counts.entry(id.clone()).or_default() += 1;
            return;
        }
        if let Some(n) = counts.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(id);
                self.diff_bases.lock().remove(id);
            }
        }
    }

    pub async fn unsubscribe(
        &self,
        session_id: &str,
        register_id: &str,
    ) -> Result<(), SessionError> {
        let session = self.live_session(session_id).await?;
        let mut st = session.state.lock();
        let Some(slot) = st.subscribers.remove(register_id) else {
            return Err(SessionError::NotFound(format!(
                "session has no subscriber with registerId {register_id:?}"
            )));
        };
        self.subscribers.lock().remove(register_id);
        self.count_delta(&slot.sub.data_info_id, slot.sub.delta, false);
        let mut interest = self.interest.write();
        if let Some(m) = interest.get_mut(&slot.sub.data_info_id) {
            m.remove(register_id);
            if m.is_empty() {
                interest.remove(&slot.sub.data_info_id);
            }
        }
        drop(interest);
        drop(st);
        self.metrics
            .subscribers
            .set(self.subscribers.lock().len() as i64);
        Ok(())
    }

    /// Subscribers on this node per dataInfoId.
    pub fn subscriber_count(&self, data_info_id: &str) -> usize {
        self.interest
            .read()
            .get(data_info_id)
            .map_or(0, HashMap::len)
    }

    // ----- queries -----

    /// The datum once its version passes `index`, or the current one at `deadline`.
    /// Refused when [`Limits::max_blocking_queries`] are waiting already.
    pub async fn wait_for_version(
        &self,
        data_info_id: &DataInfoId,
        index: u64,
        deadline: Instant,
    ) -> Result<DatumSnapshot, SessionError> {
        let max = self.cfg.limits.max_blocking_queries;
        let open = self.blocking_queries.fetch_add(1, Ordering::AcqRel);
        let _slot = BlockingQuerySlot(self);
        self.metrics.blocking_queries.set(open as i64 + 1);
        if open >= max {
            return Err(SessionError::ResourceExhausted(format!(
                "this node has its maximum of {max} blocking queries open (--max-blocking-queries); retry later"
            )));
        }
        Ok(self
            .wait_for_version_unbounded(data_info_id, index, deadline)
            .await?)
    }

    async fn wait_for_version_unbounded(
        &self,
        data_info_id: &DataInfoId,
        index: u64,
        deadline: Instant,
    ) -> Result<DatumSnapshot, DataPlaneError> {
        let mut rx = {
            let mut waiters = self.waiters.lock();
            waiters
                .entry(data_info_id.clone())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        let result = loop {
            let snapshot = match self.data.fetch(data_info_id).await {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            if snapshot.version > index
                || Instant::now() >= deadline
                || self.shutdown.is_cancelled()
            {
                break Ok(snapshot);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {}
            }
        };
        drop(rx);
        let mut waiters = self.waiters.lock();
        if waiters
            .get(data_info_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            waiters.remove(data_info_id);
        }
        result
    }

    pub(super) fn notify_waiters(&self, n: &ChangeNotice) {
        let mut waiters = self.waiters.lock();
        if let Some(tx) = waiters.get(&n.data_info_id) {
            if tx.send(n.version).is_err() {
                waiters.remove(&n.data_info_id);
            }
        }
    }
}

/// One open blocking query, counted while it lives.
struct BlockingQuerySlot<'a>(&'a SessionLayer);

impl Drop for BlockingQuerySlot<'_> {
    fn drop(&mut self) {
        let open = self.0.blocking_queries.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.metrics.blocking_queries.set(open as i64);
    }
}
