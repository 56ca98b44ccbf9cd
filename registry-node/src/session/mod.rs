//! The session layer: client sessions, the authoritative copy of their publishers, their
//! subscribers, and the push pipeline that keeps every subscriber's stream up to date.

pub mod debounce;
pub mod push;
pub mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::error::ApiError;
use crate::api::validate::{PublishRequest, Scope, SubscribeRequest};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::metrics::Metrics;
use crate::model::{now_millis, ChangeNotice, DataInfoId, DatumSnapshot, Publisher, PublisherOp};
use debounce::{Debouncer, PushedVersion};
use push::{sse_push_frame, PreparedDatum};
use stream::StreamGuard;

/// Settings of the session layer.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This node's name: the `source` of its publishers on data nodes.
    pub node_name: String,
    pub push_delay: Duration,
    pub push_max_delay: Duration,
    pub stop_push: bool,
    pub ping_interval: Duration,
    pub version_scan_interval: Duration,
    pub stream_buffer: usize,
    pub stream_stall: Duration,
    /// How often expired sessions are looked for.
    pub reap_interval: Duration,
}

impl SessionConfig {
    pub fn from_config(c: &crate::config::Config, node_name: &str) -> Self {
        SessionConfig {
            node_name: node_name.to_owned(),
            push_delay: c.push_delay(),
            push_max_delay: c.push_max_delay(),
            stop_push: c.stop_push,
            ping_interval: Duration::from_millis(c.ping_interval_ms),
            version_scan_interval: Duration::from_millis(c.version_scan_ms.max(100)),
            stream_buffer: c.stream_buffer.max(1),
            stream_stall: Duration::from_millis(c.stream_stall_ms),
            reap_interval: Duration::from_millis(250),
        }
    }
}

/// A subscriber's interest, as registered.
#[derive(Debug)]
pub struct Subscriber {
    pub register_id: Arc<str>,
    pub data_info_id: DataInfoId,
    pub zone: Arc<str>,
    pub scope: Scope,
}

struct SubscriberSlot {
    sub: Arc<Subscriber>,
    pushed: PushedVersion,
}

struct StreamTx {
    gen: u64,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    full_since: Option<Instant>,
}

struct SessionState {
    closed: bool,
    /// When the session expires if no stream is open.
    expires_at: Instant,
    stream: Option<StreamTx>,
    stream_gen: u64,
    next_seq: u64,
    publishers: HashSet<Arc<str>>,
    subscribers: HashMap<Arc<str>, SubscriberSlot>,
}

/// One client session.
pub struct Session {
    pub id: Arc<str>,
    pub client_id: Option<Arc<str>>,
    pub ttl: Duration,
    state: Mutex<SessionState>,
}

impl Session {
    fn is_live(&self, st: &SessionState, now: Instant) -> bool {
        !st.closed && (st.stream.is_some() || now < st.expires_at)
    }
}

/// What happened to one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    UpToDate,
    NoStream,
    Dropped,
}

/// Answer of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    pub created: bool,
    pub publisher: Arc<Publisher>,
}

/// Answer of a heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub session_id: Arc<str>,
    pub ttl_seconds: u64,
    pub expires_in_ms: u64,
}

/// Push switch as `/api/v1/admin/push` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushSettings {
    pub stop_push: bool,
    pub push_delay_ms: u64,
}

enum Trigger {
    /// Fetch every subscribed datum and push to whoever is behind.
    Scan,
}

/// A subscriber and the session it belongs to.
type SubscriberEntry = (Arc<Session>, Arc<Subscriber>);
/// The subscribers of one dataInfoId: registerId → session.
type SubscribersOf = HashMap<Arc<str>, Arc<Session>>;

/// Distinct zone names shared between publishers; beyond this many, names are not interned
/// (so that clients inventing zones cannot grow the table without bound).
const MAX_INTERNED_ZONES: usize = 4096;

/// The session layer of one node.
pub struct SessionLayer {
    cfg: SessionConfig,
    node_name: Arc<str>,
    data: Arc<dyn DataPlane>,
    metrics: Arc<Metrics>,
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Every publisher of every session on this node, by registerId: the authoritative copy.
    publishers: Mutex<HashMap<Arc<str>, Arc<Publisher>>>,
    /// Every subscriber by registerId, with its session.
    subscribers: Mutex<HashMap<Arc<str>, SubscriberEntry>>,
    /// Subscribers by dataInfoId: registerId → session.
    interest: RwLock<HashMap<DataInfoId, SubscribersOf>>,
    /// Blocking queries waiting for a dataInfoId to pass a version.
    waiters: Mutex<HashMap<DataInfoId, watch::Sender<u64>>>,
    zones: Mutex<HashSet<Arc<str>>>,
    stop_push: AtomicBool,
    push_delay_ms: AtomicU64,
    last_timestamp: AtomicU64,
    triggers: mpsc::UnboundedSender<Trigger>,
    triggers_rx: Mutex<Option<mpsc::UnboundedReceiver<Trigger>>>,
    shutdown: CancellationToken,
}

fn new_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

impl SessionLayer {
    pub fn new(
        cfg: SessionConfig,
        data: Arc<dyn DataPlane>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (triggers, triggers_rx) = mpsc::unbounded_channel();
        Arc::new(SessionLayer {
            node_name: cfg.node_name.as_str().into(),
            stop_push: AtomicBool::new(cfg.stop_push),
            push_delay_ms: AtomicU64::new(cfg.push_delay.as_millis() as u64),
            cfg,
            data,
            metrics,
            sessions: RwLock::default(),
            publishers: Mutex::default(),
            subscribers: Mutex::default(),
            interest: RwLock::default(),
            waiters: Mutex::default(),
            zones: Mutex::default(),
            last_timestamp: AtomicU64::new(0),
            triggers,
            triggers_rx: Mutex::new(Some(triggers_rx)),
            shutdown,
        })
    }

    pub fn data_plane(&self) -> &Arc<dyn DataPlane> {
        &self.data
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Starts the background tasks: push worker (change notices, debounce, version scan)
    /// and the session reaper. Call once.
    pub fn start(self: &Arc<Self>) {
        let (tx, rx) = mpsc::channel(4096);
        self.data.watch_changes(tx);
        let triggers = self.triggers_rx.lock().take();
        if let Some(triggers) = triggers {
            tokio::spawn(self.clone().push_worker(rx, triggers));
        }
        tokio::spawn(self.clone().reaper());
    }

    /// Milliseconds since the epoch, strictly increasing across calls on this node, so
    /// that two writes of one registerId never share a register timestamp.
    fn next_timestamp(&self) -> u64 {
        let now = now_millis();
        let mut prev = self.last_timestamp.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last_timestamp.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    fn intern_zone(&self, zone: &str) -> Arc<str> {
        let mut zones = self.zones.lock();
        if let Some(z) = zones.get(zone) {
            return z.clone();
        }
        let z: Arc<str> = zone.into();
        if zones.len() < MAX_INTERNED_ZONES {
            zones.insert(z.clone());
        }
        z
    }

    fn update_gauges(&self) {
        self.metrics.sessions.set(self.sessions.read().len() as i64);
        self.metrics
            .publishers
            .set(self.publishers.lock().len() as i64);
        self.metrics
            .subscribers
            .set(self.subscribers.lock().len() as i64);
    }

    // ----- sessions -----

    pub fn create_session(&self, client_id: Option<String>, ttl_seconds: u64) -> Arc<Session> {
        let ttl = Duration::from_secs(ttl_seconds);
        let session = Arc::new(Session {
            id: new_id().into(),
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
        self.sessions
            .write()
            .insert(session.id.clone(), session.clone());
        self.metrics.sessions.set(self.sessions.read().len() as i64);
        tracing::debug!(session = %session.id, ttl_seconds, "session created");
        session
    }

    /// The live session with this id; an expired one is removed on the way.
    pub async fn live_session(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        let session = self.sessions.read().get(id).cloned();
        let not_found = || ApiError::NotFound(format!("session {id:?} not found or expired"));
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

    pub async fn heartbeat(&self, id: &str) -> Result<Heartbeat, ApiError> {
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
                    removals.push(self.remove_op(&p));
                }
            }
            drop(index);
            let mut sub_index = self.subscribers.lock();
            let mut interest = self.interest.write();
            for (rid, slot) in subs {
                sub_index.remove(&rid);
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

    fn remove_op(&self, p: &Publisher) -> PublisherOp {
        PublisherOp::Remove {
            data_info_id: p.data_info_id.clone(),
            register_id: p.register_id.clone(),
            version: p.version,
            register_timestamp: self.next_timestamp(),
            source: self.node_name.clone(),
        }
    }

    /// Keeps trying a write the data layer refused, with backoff, until it succeeds or the
    /// node shuts down.
    fn retry_apply(&self, ops: Vec<PublisherOp>) {
        let data = self.data.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match data.apply(ops.clone()).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "retrying a removal"),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    }

    async fn reaper(self: Arc<Self>) {
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

    fn close_stalled_streams(&self, now: Instant) {
        let sessions: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        for s in sessions {
            let mut st = s.state.lock();
            let stalled = st
                .stream
                .as_ref()
                .and_then(|t| t.full_since)
                .is_some_and(|since| {
                    now.duration_since(since) >= self.cfg.stream_stall && {
                        // Still full?
                        st.stream.as_ref().is_some_and(|t| t.tx.capacity() == 0)
                    }
                });
            if stalled {
                tracing::warn!(session = %s.id, "closing an event stream whose buffer stayed full");
                Self::close_stream(&s, &mut st, now);
            } else if let Some(t) = st.stream.as_mut() {
                if t.tx.capacity() > 0 {
                    t.full_since = None;
                }
            }
        }
    }

    fn close_stream(session: &Session, st: &mut SessionState, now: Instant) {
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
    ) -> Result<impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send, ApiError>
    {
        let session = self.live_session(id).await?;
        let (tx, rx) = mpsc::channel(self.cfg.stream_buffer);
        let cancel = self.shutdown.child_token();
        let gen = {
            let mut st = session.state.lock();
            if st.closed {
                return Err(ApiError::NotFound(format!(
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
                tx,
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

    // ----- publishers -----

    pub async fn publish(
        &self,
        session_id: &str,
        req: PublishRequest,
    ) -> Result<Published, ApiError> {
        let mut done = self.publish_many(session_id, vec![req]).await?;
        done.pop()
            .ok_or_else(|| ApiError::Internal("a publish produced no answer".into()))
    }

    /// Publishes several publishers of one session as one unit: every entry is checked
    /// before any is applied (a conflict anywhere changes nothing), and the data layer gets
    /// them in one batch. The answers are in the order of `reqs`.
    pub async fn publish_many(
        &self,
        session_id: &str,
        reqs: Vec<PublishRequest>,
    ) -> Result<Vec<Published>, ApiError> {
        let session = self.live_session(session_id).await?;
        // (new publisher, what it replaced)
        let mut written: Vec<(Arc<Publisher>, Option<Arc<Publisher>>)> =
            Vec::with_capacity(reqs.len());
        {
            let mut st = session.state.lock();
            if st.closed {
                return Err(ApiError::NotFound(format!(
                    "session {session_id:?} not found or expired"
                )));
            }
            let mut index = self.publishers.lock();
            // Check everything first so that a rejected batch leaves no trace.
            let mut planned = Vec::with_capacity(reqs.len());
            for req in reqs {
                let data_info_id = req.key.data_info_id();
                let register_id: Arc<str> = req.register_id.unwrap_or_else(new_id).into();
                let previous = index.get(&register_id).cloned();
                match &previous {
                    Some(p) if p.session_id != session.id => {
                        return Err(ApiError::Conflict(format!(
                            "registerId {register_id:?} is used by another session"
                        )))
                    }
                    Some(p) if p.data_info_id != data_info_id => {
                        return Err(ApiError::Conflict(format!(
                            "registerId {register_id:?} is already used for dataInfoId {:?}",
                            p.data_info_id
                        )))
                    }
                    _ => {}
                }
                planned.push((register_id, data_info_id, req.zone, req.data, previous));
            }
            for (register_id, data_info_id, zone, data, previous) in planned {
                let publisher = Arc::new(Publisher {
                    register_id: register_id.clone(),
                    data_info_id: previous
                        .as_ref()
                        .map(|p| p.data_info_id.clone())
                        .unwrap_or(data_info_id),
                    zone: self.intern_zone(&zone),
                    data: data.into(),
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                    register_timestamp: self.next_timestamp(),
                    client_id: session.client_id.clone(),
                    session_id: session.id.clone(),
                    source: self.node_name.clone(),
                });
                index.insert(register_id.clone(), publisher.clone());
                st.publishers.insert(register_id);
                written.push((publisher, previous));
            }
        }
        self.metrics
            .publishers
            .set(self.publishers.lock().len() as i64);
        let ops = written
            .iter()
            .map(|(publisher, _)| PublisherOp::Put {
                publisher: publisher.clone(),
            })
            .collect();
        if let Err(e) = self.data.apply(ops).await {
            // Undo, unless a newer write of the same registerId came in meanwhile.
            let mut st = session.state.lock();
            let mut index = self.publishers.lock();
            for (publisher, previous) in written {
                let register_id = &publisher.register_id;
                if index
                    .get(register_id)
                    .is_some_and(|p| Arc::ptr_eq(p, &publisher))
                {
                    match previous {
                        Some(prev) => {
                            index.insert(register_id.clone(), prev);
                        }
                        None => {
                            index.remove(register_id);
                            st.publishers.remove(register_id);
                        }
                    }
                }
            }
            drop(index);
            drop(st);
            self.update_gauges();
            return Err(e.into());
        }
        Ok(written
            .into_iter()
            .map(|(publisher, previous)| Published {
                created: previous.is_none(),
                publisher,
            })
            .collect())
    }

    pub async fn unpublish(&self, session_id: &str, register_id: &str) -> Result<(), ApiError> {
        let session = self.live_session(session_id).await?;
        let not_found = || {
            ApiError::NotFound(format!(
                "session has no publisher with registerId {register_id:?}"
            ))
        };
        let removed = {
            let mut st = session.state.lock();
            if !st.publishers.remove(register_id) {
                return Err(not_found());
            }
            let mut index = self.publishers.lock();
            match index.get(register_id) {
                Some(p) if p.session_id == session.id => index.remove(register_id),
                _ => None,
            }
        };
        let Some(removed) = removed else {
            return Err(not_found());
        };
        self.metrics
            .publishers
            .set(self.publishers.lock().len() as i64);
        if let Err(e) = self.data.apply(vec![self.remove_op(&removed)]).await {
            let mut st = session.state.lock();
            let mut index = self.publishers.lock();
            if !st.closed && !index.contains_key(register_id) {
                index.insert(removed.register_id.clone(), removed.clone());
                st.publishers.insert(removed.register_id.clone());
            }
            drop(index);
            drop(st);
            self.update_gauges();
            return Err(e.into());
        }
        Ok(())
    }

    /// Every publisher this node holds (the authoritative copy, for reconciliation).
    pub fn publishers(&self) -> Vec<Arc<Publisher>> {
        self.publishers.lock().values().cloned().collect()
    }

    /// Calls `f` on every publisher this node holds, without copying the set.
    pub fn for_each_publisher(&self, mut f: impl FnMut(&Arc<Publisher>)) {
        for p in self.publishers.lock().values() {
            f(p);
        }
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.lock().len()
    }

    // ----- subscribers -----

    pub async fn subscribe(
        self: &Arc<Self>,
        session_id: &str,
        req: SubscribeRequest,
    ) -> Result<Arc<Subscriber>, ApiError> {
        let session = self.live_session(session_id).await?;
        let data_info_id = req.key.data_info_id();
        let register_id: Arc<str> = req.register_id.unwrap_or_else(new_id).into();
        let sub = Arc::new(Subscriber {
            register_id: register_id.clone(),
            data_info_id: data_info_id.clone(),
            zone: self.intern_zone(&req.zone),
            scope: req.scope,
        });
        {
            let mut st = session.state.lock();
            if st.closed {
                return Err(ApiError::NotFound(format!(
                    "session {session_id:?} not found or expired"
                )));
            }
            let mut index = self.subscribers.lock();
            match index.get(&register_id) {
                Some((s, _)) if s.id != session.id => {
                    return Err(ApiError::Conflict(format!(
                        "registerId {register_id:?} is used by another session"
                    )))
                }
                Some((_, existing)) if existing.data_info_id != data_info_id => {
                    return Err(ApiError::Conflict(format!(
                        "registerId {register_id:?} is already used for dataInfoId {:?}",
                        existing.data_info_id
                    )))
                }
                _ => {}
            }
            index.insert(register_id.clone(), (session.clone(), sub.clone()));
            let pushed = st
                .subscribers
                .get(&register_id)
                .map(|s| s.pushed)
                .unwrap_or_default();
            st.subscribers.insert(
                register_id.clone(),
                SubscriberSlot {
                    sub: sub.clone(),
                    pushed,
                },
            );
            self.interest
                .write()
                .entry(data_info_id.clone())
                .or_default()
                .insert(register_id.clone(), session.clone());
        }
        self.metrics
            .subscribers
            .set(self.subscribers.lock().len() as i64);
        if !self.stop_push.load(Ordering::Relaxed) {
            let this = self.clone();
            tokio::spawn(async move {
                if let Some(prepared) = this.fetch_prepared(&data_info_id).await {
                    this.deliver(&session, &register_id, &prepared, None);
                }
            });
        }
        Ok(sub)
    }

    pub async fn unsubscribe(&self, session_id: &str, register_id: &str) -> Result<(), ApiError> {
        let session = self.live_session(session_id).await?;
        let mut st = session.state.lock();
        let Some(slot) = st.subscribers.remove(register_id) else {
            return Err(ApiError::NotFound(format!(
                "session has no subscriber with registerId {register_id:?}"
            )));
        };
        self.subscribers.lock().remove(register_id);
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

    /// Whether the session has an open event stream; None for an unknown session.
    pub fn stream_open(&self, session_id: &str) -> Option<bool> {
        let session = self.sessions.read().get(session_id).cloned()?;
        let open = session.state.lock().stream.is_some();
        Some(open)
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.sessions.read().len(),
            self.publishers.lock().len(),
            self.subscribers.lock().len(),
        )
    }

    // ----- queries -----

    /// The datum once its version passes `index`, or the current one at `deadline`.
    pub async fn wait_for_version(
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

    // ----- push pipeline -----

    pub fn push_settings(&self) -> PushSettings {
        PushSettings {
            stop_push: self.stop_push.load(Ordering::Relaxed),
            push_delay_ms: self.push_delay_ms.load(Ordering::Relaxed),
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

    async fn push_worker(
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

    fn notify_waiters(&self, n: &ChangeNotice) {
        let mut waiters = self.waiters.lock();
        if let Some(tx) = waiters.get(&n.data_info_id) {
            if tx.send(n.version).is_err() {
                waiters.remove(&n.data_info_id);
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
        futures::stream::iter(ids)
            .for_each_concurrent(16, |id| async move {
                self.push_datum_once(&id, None).await;
            })
            .await;
    }

    async fn fetch_prepared(&self, data_info_id: &DataInfoId) -> Option<PreparedDatum> {
        self.metrics.push_fetches.inc();
        match self.data.fetch(data_info_id).await {
            Ok(snapshot) => Some(PreparedDatum::new(&snapshot)),
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
    async fn push_session(&self, session: &Arc<Session>) {
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
    fn deliver(
        &self,
        session: &Session,
        register_id: &str,
        prepared: &PreparedDatum,
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
        let frame = sse_push_frame(st.next_seq, &prepared.json_for(register_id, only_zone));
        match stream.tx.try_send(frame) {
            Ok(()) => {
                st.next_seq += 1;
                slot.pushed.record(stream.gen, prepared.version);
                stream.full_since = None;
                self.metrics.pushes_sent.inc();
                if let Some(t) = changed_at {
                    self.metrics
                        .publish_to_push_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                Delivery::Sent
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.pushes_failed.inc();
                let since = *stream.full_since.get_or_insert(now);
                if now.duration_since(since) >= self.cfg.stream_stall {
                    tracing::warn!(session = %session.id, "closing an event stream whose buffer stayed full");
                    Self::close_stream(session, st, now);
                }
                Delivery::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.pushes_failed.inc();
                Delivery::Dropped
            }
        }
    }
}
