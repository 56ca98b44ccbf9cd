//! Sessions: create, heartbeat, expiry (the reaper), removal with their publishers, and the
//! event stream of a session.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::model::PublisherOp;

use super::outbox;
use super::stream::{self, StreamGuard};

use super::*;

impl SessionLayer {
    /// A new session with no principal (no authentication).
    pub fn create_session(
        &self,
        client_id: Option<String>,
        ttl_seconds: u64,
    ) -> Result<Arc<Session>, SessionError> {
        self.create_session_as(client_id, ttl_seconds, None)
    }

    /// A new session of `principal`; refused when the node holds [`Limits::max_sessions`]
    /// already.
    pub fn create_session_as(
        &self,
        client_id: Option<String>,
        ttl_seconds: u64,
        principal: Option<Arc<str>>,
    ) -> Result<Arc<Session>, SessionError> {
        let ttl = Duration::from_secs(ttl_seconds);
        let session = Arc::new(Session {
            id: new_id().into(),
            owner: rand::random::<u64>().max(1),
            principal,
            client_id: client_id.map(Into::into),
            ttl,
            state: Mutex::new(SessionState {
                closed: false,
                expires_at: Instant::now() + ttl,
                stream: None,
                stream_gen: 0,
                next_seq: 1,
                publishers: HashSet::new(),
                subscribers: HashMap::new(),
            }),
        });
        let count = {
            let mut sessions = self.sessions.write();
            let max = self.cfg.limits.max_sessions;
            if sessions.len() >= max {
                return Err(SessionError::ResourceExhausted(format!(
                    "this node holds its maximum of {max} sessions (--max-sessions); retry later or on another node"
                )));
            }
            sessions.insert(session.id.clone(), session.clone());
            sessions.len()
        };
        self.metrics.sessions.set(count as i64);
        tracing::debug!(session = %session.id, ttl_seconds, "session created");
        Ok(session)
    }

    /// `Err(Forbidden)` when the session `id` exists and was created by another principal
    /// than `principal` (an unknown session is left to the call itself: `404`).
    pub fn check_session_principal(
        &self,
        id: &str,
        principal: Option<&Arc<str>>,
    ) -> Result<(), SessionError> {
        match self.sessions.read().get(id) {
            Some(s) if s.principal.as_ref() != principal => Err(SessionError::Forbidden(format!(
                "session {id:?} belongs to another principal"
            ))),
            _ => Ok(()),
        }
    }

    /// The live session with this id; an expired one is removed on the way.
    pub async fn live_session(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        let session = self.sessions.read().get(id).cloned();
        let not_found = || SessionError::NotFound(format!("session {id:?} not found or expired"));
        let session = session.ok_or_else(not_found)?;
        let live = {
            let st = session.state.lock();
            session.is_live(&st, Instant::now())
        };
        if !live {
            self.remove_session(&session.id).await;
            return Err(not_found());
        }
        Ok(session)
    }

    pub async fn heartbeat(&self, id: &str) -> Result<Heartbeat, SessionError> {
        let session = self.live_session(id).await?;
        let mut st = session.state.lock();
        st.expires_at = Instant::now() + session.ttl;
        Ok(Heartbeat {
            session_id: session.id.clone(),
            ttl_seconds: session.ttl.as_secs(),
            expires_in_ms: session.ttl.as_millis() as u64,
        })
    }

    /// Ends a session: its stream closes, its subscribers go, its publishers are removed
    /// from the data layer. False when no such session existed.
    pub async fn remove_session(&self, id: &str) -> bool {
        let Some(session) = self.sessions.write().remove(id) else {
            return false;
        };
        let mut removals = Vec::new();
        {
            let mut st = session.state.lock();
            st.closed = true;
            if let Some(stream) = st.stream.take() {
                stream.cancel.cancel();
            }
            let pubs = std::mem::take(&mut st.publishers);
            let subs = std::mem::take(&mut st.subscribers);
            let mut index = self.publishers.lock();
            for rid in pubs {
                if let Some(p) = index.remove(&rid) {
                    self.account_datum_bytes(Some(&p), None);
                    removals.push(self.remove_op(&p));
                }
            }
            drop(index);
            let mut sub_index = self.subscribers.lock();
            let mut interest = self.interest.write();
            for (rid, slot) in subs {
                sub_index.remove(&rid);
                self.count_delta(&slot.sub.data_info_id, slot.sub.delta, false);
                if let Some(m) = interest.get_mut(&slot.sub.data_info_id) {
                    m.remove(&rid);
                    if m.is_empty() {
                        interest.remove(&slot.sub.data_info_id);
                    }
                }
            }
        }
        self.update_gauges();
        tracing::debug!(session = %id, publishers = removals.len(), "session removed");
        if !removals.is_empty() {
            if let Err(e) = self.data.apply(removals.clone()).await {
                tracing::warn!(session = %id, error = %e, "removing a session's publishers failed; retrying");
                self.retry_apply(removals);
            }
        }
        true
    }

    /// Sends `ops` again until the data layer takes them (see [`repair`]).
    pub(super) fn retry_apply(&self, ops: Vec<PublisherOp>) {
        self.repairs.push(ops);
    }

    pub(super) async fn reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.reap_interval);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let expired: Vec<Arc<str>> = self
                .sessions
                .read()
                .values()
                .filter(|s| !s.is_live(&s.state.lock(), now))
                .map(|s| s.id.clone())
                .collect();
            for id in expired {
                tracing::info!(session = %id, "session expired");
                self.remove_session(&id).await;
            }
            self.close_stalled_streams(now);
        }
    }

    /// Closes every stream whose pushes have been refused for `stream_stall` while its
    /// reader took nothing (see [`outbox`](super::outbox)).
    fn close_stalled_streams(&self, now: Instant) {
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in sessions {
            let mut st = s.state.lock();
            let Some(t) = st.stream.as_mut() else {
                continue;
            };
            if t.stalled(now, self.cfg.stream_stall, false) {
                tracing::warn!(session = %s.id, "closing an event stream that took no push for --stream-stall-ms");
                Self::close_stream(&s, &mut st, now);
            }
        }
    }

    pub(super) fn close_stream(session: &Session, st: &mut SessionState, now: Instant) {
        if let Some(t) = st.stream.take() {
            t.cancel.cancel();
            st.expires_at = now + session.ttl;
        }
    }

    /// Opens the session's event stream (replacing an open one) and queues a full push of
    /// every subscriber of the session.
    pub async fn open_stream(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<
        impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send,
        SessionError,
    > {
        let session = self.live_session(id).await?;
        let (tx, rx) = outbox::outbox(self.cfg.stream_buffer, self.cfg.stream_buffer_bytes);
        let cancel = self.shutdown.child_token();
        let gen = {
            let mut st = session.state.lock();
            if st.closed {
                return Err(SessionError::NotFound(format!(
                    "session {id:?} not found or expired"
                )));
            }
            if let Some(old) = st.stream.take() {
                old.cancel.cancel();
            }
            st.stream_gen += 1;
            let gen = st.stream_gen;
            st.stream = Some(StreamTx {
                gen,
                outbox: tx,
                cancel: cancel.clone(),
                full_since: None,
            });
            gen
        };
        self.metrics.open_streams.inc();
        let weak = Arc::downgrade(&session);
        let metrics = self.metrics.clone();
        let guard = StreamGuard(Some(Box::new(move || {
            metrics.open_streams.dec();
            if let Some(session) = weak.upgrade() {
                let mut st = session.state.lock();
                if st.stream.as_ref().is_some_and(|t| t.gen == gen) {
                    Self::close_stream(&session, &mut st, Instant::now());
                }
            }
        })));
        if !self.stop_push.load(Ordering::Relaxed) {
            let this = self.clone();
            let session = session.clone();
            tokio::spawn(async move { this.push_session(&session).await });
        }
        Ok(stream::event_stream(
            rx,
            self.cfg.ping_interval,
            cancel,
            guard,
        ))
    }

    /// Whether the session has an open event stream; None for an unknown session.
    pub fn stream_open(&self, session_id: &str) -> Option<bool> {
        let session = self.sessions.read().get(session_id).cloned()?;
        let open = session.state.lock().stream.is_some();
        Some(open)
    }
}
