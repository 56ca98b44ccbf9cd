//! The session layer: client sessions, the authoritative copy of their publishers, their
//! subscribers, and the push pipeline that keeps every subscriber's stream up to date.
//!
//! Free of HTTP: the HTTP edge (`crate::http`) parses requests into the types below and maps
//! [`SessionError`] to the API's errors. One file per job: [`sessions`] (create, heartbeat,
//! expiry, event streams), [`publishers`] (the authoritative copy, written through to the
//! data layer), [`interests`] (subscribers and blocking queries), [`pushing`] (change
//! notices, debounce, version scan, delivery); [`prepared`], [`delta`], [`debounce`],
//! [`outbox`] and [`stream`] are the pure parts of pushing.

pub mod debounce;
pub mod delta;
mod interests;
pub mod outbox;
pub mod prepared;
mod publishers;
mod pushing;
pub mod repair;
mod sessions;
pub mod stream;
pub mod versions;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{Stamp, StampClock};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::metrics::Metrics;
use crate::model::{DataInfoId, Publisher, ServiceKey};
use debounce::PushedVersion;

pub use registry_types::PushSettings;

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
    /// Frames and bytes one stream's outbox holds at most (see [`outbox`]).
    pub stream_buffer: usize,
    pub stream_buffer_bytes: usize,
    pub stream_stall: Duration,
    /// Event streams compressed at once at most (the HTTP edge compresses on request).
    pub max_compressed_streams: usize,
    /// How often expired sessions are looked for.
    pub reap_interval: Duration,
    pub limits: Limits,
}

/// What one node holds at most; a call that would pass a limit is refused with
/// [`SessionError::ResourceExhausted`] and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_publishers_per_session: usize,
    pub max_subscribers_per_session: usize,
    pub max_blocking_queries: usize,
    /// Bytes of data items of one dataInfoId across this node's publishers.
    pub max_datum_bytes: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Limits {
            max_sessions: c.max_sessions,
            max_publishers_per_session: c.max_publishers_per_session,
            max_subscribers_per_session: c.max_subscribers_per_session,
            max_blocking_queries: c.max_blocking_queries,
            max_datum_bytes: c.max_datum_bytes,
        }
    }
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
            stream_buffer_bytes: c.stream_buffer_bytes,
            max_compressed_streams: c.max_compressed_streams,
            stream_stall: Duration::from_millis(c.stream_stall_ms),
            reap_interval: Duration::from_millis(250),
            limits: Limits::from_config(c),
        }
    }
}

/// Who a subscriber wants data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Zone,
    DataCenter,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Zone => "zone",
            Scope::DataCenter => "dataCenter",
            Scope::Global => "global",
        }
    }
}

/// A publish as the session layer takes it (parsed and validated at the HTTP edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub key: ServiceKey,
    pub zone: String,
    pub register_id: Option<String>,
    pub data: Vec<String>,
}

/// A subscription as the session layer takes it (parsed and validated at the HTTP edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub key: ServiceKey,
    pub zone: String,
    pub scope: Scope,
    pub register_id: Option<String>,
    /// Wants `event: delta` pushes (see [`delta`]).
    pub delta: bool,
}

/// Why the session layer refused a call; the HTTP edge maps each to its API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No such live session, publisher or subscriber.
    #[error("{0}")]
    NotFound(String),
    /// A registerId is taken by another session or another dataInfoId.
    #[error("{0}")]
    Conflict(String),
    /// The data layer refused or could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A limit of the node ([`Limits`]) would be passed; the message names it.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The session belongs to another principal, or a registerId is held by another
    /// principal.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl From<DataPlaneError> for SessionError {
    fn from(e: DataPlaneError) -> Self {
        match e {
            DataPlaneError::Forbidden { message, .. } => SessionError::Forbidden(message),
            e => SessionError::Unavailable(e.to_string()),
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
    /// Gets `event: delta` pushes where it holds the base (see [`delta`]).
    pub delta: bool,
}

struct SubscriberSlot {
    sub: Arc<Subscriber>,
    pushed: PushedVersion,
    /// For a delta subscriber: the stream generation, version and writes of the last push
    /// queued to it (full or delta), i.e. the state it holds on that stream; `None` after it
    /// registers, so that its next push is full.
    holds: Option<(u64, u64, u64)>,
}

struct StreamTx {
    gen: u64,
    outbox: outbox::Outbox,
    cancel: CancellationToken,
    /// Since when pushes are refused for want of room, and the reader's progress then
    /// ([`outbox::Outbox::taken`]): a stream that takes nothing for `stream_stall` is closed.
    full_since: Option<(Instant, u64)>,
}

impl StreamTx {
    /// The stall rule: whether pushes have been refused for `stall` while the reader took
    /// nothing. `refused_now` says whether a push was just refused (it starts the count, and
    /// starts it again after progress); the periodic scan passes `false`, so that progress
    /// only ends the count.
    fn stalled(&mut self, now: Instant, stall: Duration, refused_now: bool) -> bool {
        let taken = self.outbox.taken();
        let Some((since, taken_then)) = self.full_since.or(refused_now.then_some((now, taken)))
        else {
            return false;
        };
        if taken != taken_then {
            self.full_since = refused_now.then_some((now, taken));
            return false;
        }
        self.full_since = Some((since, taken_then));
        now.duration_since(since) >= stall
    }
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
    /// The owner token of this session's publishers on the data nodes: random, never the
    /// sessionId (see `Publisher::owner`).
    pub owner: u64,
    /// The principal that created the session ([`crate::access::Principal::owner_key`]):
    /// only it may use the session, and its publishers record it.
    pub principal: Option<Arc<str>>,
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

enum Trigger {
    /// Fetch every subscribed datum and push to whoever is behind.
    Scan,
}

/// A rendered datum that may still be in use: its version and writes, and the datum.
struct PreparedEntry {
    version: u64,
    writes: u64,
    datum: std::sync::Weak<prepared::PreparedDatum>,
}

/// The last rendering of a datum with delta subscribers, held once per datum: the next
/// version is diffed against its state, and later reads of the same version share it (so
/// that a read after its frames are gone renders no copy without the delta).
struct LastRendering {
    base: delta::DiffBase,
    datum: Arc<prepared::PreparedDatum>,
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
    /// Bytes of data items per dataInfoId across this node's publishers (for
    /// [`Limits::max_datum_bytes`]); a dataInfoId with no publisher here is absent.
    datum_bytes: Mutex<HashMap<DataInfoId, usize>>,
    /// Blocking queries open now (for [`Limits::max_blocking_queries`]).
    blocking_queries: AtomicUsize,
    stop_push: AtomicBool,
    push_delay_ms: AtomicU64,
    /// Write stamps (see [`crate::clock`]).
    clock: StampClock,
    /// Writes the data layer did not confirm, sent again.
    repairs: Arc<repair::Repairs>,
    /// Versions pushes carry (see [`versions`]).
    push_versions: versions::PushVersions,
    /// The newest datum rendered for push, per dataInfoId, while any stream or delivery
    /// holds it: a read of the same version and writes shares it instead of rendering again.
    prepared: Mutex<HashMap<DataInfoId, PreparedEntry>>,
    /// Delta subscribers per dataInfoId; only these datums keep a [`LastRendering`].
    delta_interest: Mutex<HashMap<DataInfoId, usize>>,
    /// The last rendering of each datum in `delta_interest`, to diff the next against.
    diff_bases: Mutex<HashMap<DataInfoId, Arc<LastRendering>>>,
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
            datum_bytes: Mutex::default(),
            blocking_queries: AtomicUsize::new(0),
            clock: StampClock::new(),
            repairs: Arc::default(),
            push_versions: versions::PushVersions::default(),
            prepared: Mutex::default(),
            delta_interest: Mutex::default(),
            diff_bases: Mutex::default(),
            triggers,
            triggers_rx: Mutex::new(Some(triggers_rx)),
            shutdown,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
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
        tokio::spawn(
            self.repairs
                .clone()
                .run(self.data.clone(), self.shutdown.clone()),
        );
    }

    /// The stamp of a write accepted now: a millisecond since the epoch and a counter within
    /// it, strictly increasing across calls on this node (two writes of one registerId never share one), and above
    /// every stamp the data layer reported, so that a session taking a registerId over
    /// writes after the session it takes it from (see [`crate::clock`]).
    fn next_timestamp(&self) -> Stamp {
        self.clock.observe(self.data.stamp_floor());
        self.clock.next()
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

    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.sessions.read().len(),
            self.publishers.lock().len(),
            self.subscribers.lock().len(),
        )
    }
}
