//! The background task that owns a client's session: opens it, keeps it alive (event
//! stream, heartbeats), fails over to another node when it is lost, and re-registers every
//! held publisher and subscriber under the same registerIds.

use crate::api::{EventStream, NodeApi};
use crate::backoff::Backoff;
use crate::error::{Error, ErrorCode};
use crate::model::{Published, Scope, ServiceId, Snapshot, Subscribed};
use crate::snapshot::{apply_delta, decode_push, MonotonicFilter, Push, Verdict};
use eventsource_stream::Event;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where the client's session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// No session: opening one, or waiting to retry.
    Connecting,
    /// A session is open on `url` and everything held was offered to it; each publisher's
    /// and subscriber's own [`Registration`] says whether the node took it.
    Connected { url: String, session_id: String },
    /// The client was closed.
    Closed,
}

/// Where one publisher or subscriber stands with the registry (see
/// `Publisher::registration` and `Subscription::registration`).
#[derive(Debug, Clone)]
pub enum Registration {
    /// The current session holds it.
    Registered,
    /// The current session does not hold it yet: no session is open, or it is being
    /// registered again on a new one, or the node refused it for a reason that retrying
    /// may cure (503, or its registerId still held by an old session of this client). The
    /// client retries it, with backoff.
    Pending,
    /// A node refused to take it back after a session loss or failover, for a reason that
    /// retrying the same request cannot cure: 409 `conflict` (another session holds the
    /// registerId, or uses it for another service) or another 4xx such as 400
    /// `invalid_argument`. The client no longer retries it, on this session or later ones;
    /// a publisher can be offered again with `Publisher::update`, a subscription must be
    /// dropped (and made again if wanted).
    Refused(Error),
}

impl Registration {
    pub fn is_registered(&self) -> bool {
        matches!(self, Registration::Registered)
    }

    /// The refusal, when the registry refused it for good.
    pub fn refusal(&self) -> Option<&Error> {
        match self {
            Registration::Refused(err) => Some(err),
            _ => None,
        }
    }

    fn same_as(&self, other: &Registration) -> bool {
        match (self, other) {
            (Registration::Registered, Registration::Registered)
            | (Registration::Pending, Registration::Pending) => true,
            (Registration::Refused(a), Registration::Refused(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// Sets a held entry's registration, waking its handle only on a change.
fn set_registration(tx: &watch::Sender<Registration>, state: Registration) {
    tx.send_if_modified(|current| {
        if current.same_as(&state) {
            false
        } else {
            *current = state;
            true
        }
    });
}

/// True when a node's refusal of a (re-)registration cannot be cured by sending the same
/// request again. 401 is left out: it concerns the client's token, not this entry, and the
/// session itself fails with it; 404 means the session is lost; 408/429 ask for a retry.
fn refused_for_good(err: &Error) -> bool {
    matches!(err, Error::Api { status, .. }
        if (400..500).contains(status) && !matches!(status, 401 | 404 | 408 | 429))
}

fn is_pending<T: Held>(held: &T) -> bool {
    matches!(*held.registration().borrow(), Registration::Pending)
}

fn mark_pending_of<'a, T: Held + 'a>(held: impl Iterator<Item = &'a T>) {
    for held in held {
        if held.registration().borrow().is_registered() {
            set_registration(held.registration(), Registration::Pending);
        }
    }
}

/// A publisher as the client holds it (and re-registers it after failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSpec {
    pub service: ServiceId,
    pub zone: Option<String>,
    pub register_id: String,
    pub data: Vec<String>,
}

/// A subscriber as the client holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberSpec {
    pub service: ServiceId,
    pub zone: Option<String>,
    pub scope: Scope,
    pub register_id: String,
    /// Asks the node for `event: delta` pushes, applied to the held snapshot here.
    pub delta: bool,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

pub(crate) enum Command {
    Publish {
        spec: PublisherSpec,
        registration: watch::Sender<Registration>,
        deadline: Instant,
        reply: Reply<Published>,
    },
    Update {
        register_id: String,
        data: Vec<String>,
        deadline: Instant,
        reply: Reply<Published>,
    },
    Unpublish {
        register_id: String,
        reply: Option<Reply<()>>,
    },
    Subscribe {
        spec: SubscriberSpec,
        snapshots: watch::Sender<Option<Snapshot>>,
        registration: watch::Sender<Registration>,
        deadline: Instant,
        reply: Reply<Subscribed>,
    },
    Unsubscribe {
        register_id: String,
        reply: Option<Reply<()>>,
    },
    Close {
        reply: Option<oneshot::Sender<()>>,
    },
}

impl Command {
    /// When a command waiting for a session is given up.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Command::Publish { deadline, .. }
            | Command::Update { deadline, .. }
            | Command::Subscribe { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    fn caller_gone(&self) -> bool {
        match self {
            Command::Publish { reply, .. } | Command::Update { reply, .. } => reply.is_closed(),
            Command::Subscribe { reply, .. } => reply.is_closed(),
            _ => false,
        }
    }

    fn fail(self, err: Error) {
        match self {
            Command::Publish { reply, .. } | Command::Update { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Subscribe { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Command::Unpublish { reply, .. } | Command::Unsubscribe { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(err));
                }
            }
            Command::Close { reply } => {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// Timing of the session task.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub client_id: Option<String>,
    pub ttl_seconds: u64,
    /// `None`: the default interval, or a third of the TTL the server granted if shorter.
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub retry_interval: Duration,
    /// How long a publish/subscribe/update may wait for a session (for the error text).
    pub operation_timeout: Duration,
}

struct HeldPublisher {
    spec: PublisherSpec,
    /// Pending ones are retried on the open session; refused ones are left alone.
    registration: watch::Sender<Registration>,
}

struct HeldSubscriber {
    spec: SubscriberSpec,
    snapshots: watch::Sender<Option<Snapshot>>,
    filter: MonotonicFilter,
    registration: watch::Sender<Registration>,
    /// The full state the open stream has given this subscriber (its last push, or a
    /// delta applied to it): what a delta applies to. Cleared when a stream (re)opens.
    holds: Option<Snapshot>,
}

/// What the session task does alike for held publishers and subscribers: register them on
/// a session, take them back, and find them among the task's entries.
trait Held: Sized + Send + Sync {
    /// The node's answer to a registration, handed to the caller of publish/subscribe.
    type Answer: Send;
    const KIND: &'static str;

    fn register_id(&self) -> &str;
    fn registration(&self) -> &watch::Sender<Registration>;
    fn register<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Self::Answer, Error>>;
    fn unregister<'a>(
        session: &'a Session,
        register_id: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn entries(task: &SessionTask) -> &BTreeMap<String, Self>;
    fn entries_mut(task: &mut SessionTask) -> &mut BTreeMap<String, Self>;
}

impl Held for HeldPublisher {
    type Answer = Published;
    const KIND: &'static str = "publisher";

    fn register_id(&self) -> &str {
        &self.spec.register_id
    }

    fn registration(&self) -> &watch::Sender<Registration> {
        &self.registration
    }

    fn register<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Published, Error>> {
        let spec = &self.spec;
        session
            .node
            .publish(
                &session.id,
                &spec.service,
                spec.zone.as_deref(),
                &spec.register_id,
                &spec.data,
            )
            .map(|result| result.map(|(published, _)| published))
            .boxed()
    }

    fn unregister<'a>(
        session: &'a Session,
        register_id: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        session.node.unpublish(&session.id, register_id).boxed()
    }

    fn entries(task: &SessionTask) -> &BTreeMap<String, Self> {
        &task.publishers
    }

    fn entries_mut(task: &mut SessionTask) -> &mut BTreeMap<String, Self> {
        &mut task.publishers
    }
}

impl Held for HeldSubscriber {
    type Answer = Subscribed;
    const KIND: &'static str = "subscriber";

    fn register_id(&self) -> &str {
        &self.spec.register_id
    }

    fn registration(&self) -> &watch::Sender<Registration> {
        &self.registration
    }

    fn register<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<Subscribed, Error>> {
        let spec = &self.spec;
        session
            .node
            .subscribe_with(
                &session.id,
                &spec.service,
                spec.zone.as_deref(),
                spec.scope,
                &spec.register_id,
                spec.delta,
            )
            .boxed()
    }

    fn unregister<'a>(
        session: &'a Session,
        register_id: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        session.node.unsubscribe(&session.id, register_id).boxed()
    }

    fn entries(task: &SessionTask) -> &BTreeMap<String, Self> {
        &task.subscribers
    }

    fn entries_mut(task: &mut SessionTask) -> &mut BTreeMap<String, Self> {
        &mut task.subscribers
    }
}

struct Session {
    node: NodeApi,
    id: String,
    ttl: Duration,
    opened: Instant,
}

/// Why serving a session stopped.
enum Lost {
    /// The node forgot the session (404): open a new one, same node first.
    Session,
    /// The node is unreachable or failing: open a new session elsewhere.
    Node,
    /// The client is closing.
    Closed,
}

enum StreamMessage {
    Event(Event),
    Ended(String),
}

/// Aborts the stream reader when the session it belongs to is left.
struct StreamReader(JoinHandle<()>);

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session lasting this long proves the node healthy: the reconnect backoff starts over.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Abandoned sessions remembered (to clear their registerIds on a conflict); older ones
/// have long expired on any node that kept its promises.
const MAX_STALE_SESSIONS: usize = 8;

pub(crate) struct SessionTask {
    settings: SessionSettings,
    nodes: Vec<NodeApi>,
    current: usize,
    publishers: BTreeMap<String, HeldPublisher>,
    subscribers: BTreeMap<String, HeldSubscriber>,
    pending: VecDeque<Command>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<ConnectionState>,
    backoff: Backoff,
    rng: StdRng,
    closing: Option<Option<oneshot::Sender<()>>>,
    last_error: Option<String>,
    /// The last refusal of a session that retrying cannot cure (401, 400): waiting commands
    /// fail with it at once instead of at their deadline.
    refusal: Option<Error>,
    /// Sessions of this client left because their node failed; see `forget_stale_sessions`.
    stale: Vec<(NodeApi, String)>,
}

impl SessionTask {
    pub(crate) fn new(
        settings: SessionSettings,
        nodes: Vec<NodeApi>,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<ConnectionState>,
    ) -> SessionTask {
        SessionTask {
            backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
            settings,
            nodes,
            current: 0,
            publishers: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            pending: VecDeque::new(),
            commands,
            state,
            rng: StdRng::from_os_rng(),
            closing: None,
            last_error: None,
            refusal: None,
            stale: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // A session we left because its node failed; deleted (best effort) once we have a
        // new one, so that its registerIds are free for the re-registration.
        let mut abandoned: Option<(NodeApi, String)> = None;
        while let Some((session, events)) = self.establish(&mut abandoned).await {
            let outcome = match self.register_pending(&session).await {
                Ok(()) => {
                    self.state.send_replace(ConnectionState::Connected {
                        url: session.node.url().to_owned(),
                        session_id: session.id.clone(),
                    });
                    tracing::info!(url = session.node.url(), session = %session.id, "session open");
                    self.serve(&session, events).await
                }
                Err(lost) => lost,
            };
            self.mark_pending();
            self.state.send_replace(ConnectionState::Connecting);
            match outcome {
                Lost::Closed => {
                    if let Err(err) = session.node.delete_session(&session.id).await {
                        tracing::debug!(error = %err, "could not delete the session on close");
                    }
                    break;
                }
                Lost::Session => {
                    tracing::warn!(url = session.node.url(), session = %session.id, "session lost, opening a new one");
                }
                Lost::Node => {
                    tracing::warn!(url = session.node.url(), session = %session.id, "node lost, failing over");
                    abandoned = Some((session.node.clone(), session.id.clone()));
                    self.remember_stale(session.node.clone(), session.id.clone());
                    self.current = (self.current + 1) % self.nodes.len();
                }
            }
            if session.opened.elapsed() >= HEALTHY_SESSION {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay(&mut self.rng);
            if !self.wait_offline(delay).await {
                break;
            }
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.state.send_replace(ConnectionState::Closed);
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            self.pending.push_back(command);
        }
        for command in self.pending.drain(..) {
            command.fail(Error::Closed);
        }
        if let Some(Some(reply)) = self.closing.take() {
            let _ = reply.send(());
        }
    }

    /// Opens a session and its event stream on the first node that can, round after
    /// round with backoff; `None` when the client closes meanwhile.
    async fn establish(
        &mut self,
        abandoned: &mut Option<(NodeApi, String)>,
    ) -> Option<(Session, EventStream)> {
        loop {
            if self.closing.is_some() {
                return None;
            }
            for offset in 0..self.nodes.len() {
                let index = (self.current + offset) % self.nodes.len();
                let node = self.nodes[index].clone();
                match self.open_session(&node).await {
                    Ok((session, events)) => {
                        self.current = index;
                        if let Some((old_node, old_id)) = abandoned.take() {
                            // Fire and forget: the old node is probably down; should the old
                            // session live on, a conflict on re-registration deletes it then.
                            tokio::spawn(async move {
                                let _ = old_node.delete_session(&old_id).await;
                            });
                        }
                        self.last_error = None;
                        self.refusal = None;
                        return Some((session, events));
                    }
                    Err(err) => {
                        tracing::warn!(url = node.url(), error = %err, "cannot open a session");
                        self.last_error = Some(err.to_string());
                        if !err.is_retryable() {
                            self.refusal = Some(err);
                        }
                    }
                }
                if !self.drain_offline() {
                    return None;
                }
            }
            let delay = self.backoff.next_delay(&mut self.rng);
            if !self.wait_offline(delay).await {
                return None;
            }
        }
    }

    async fn open_session(&self, node: &NodeApi) -> Result<(Session, EventStream), Error> {
        let created = node
            .create_session(
                self.settings.client_id.as_deref(),
                self.settings.ttl_seconds,
            )
            .await?;
        match node
            .open_events(&created.session_id, self.settings.stream_idle_timeout)
            .await
        {
            Ok(events) => Ok((
                Session {
                    node: node.clone(),
                    id: created.session_id,
                    ttl: Duration::from_secs(created.ttl_seconds.max(1)),
                    opened: Instant::now(),
                },
                events,
            )),
            Err(err) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let _ = node.delete_session(&created.session_id).await;
                });
                Err(err)
            }
        }
    }

    /// Takes the commands that arrived while no session is open, without waiting.
    /// False when the client is closing.
    fn drain_offline(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            if !self.offline(command) {
                return false;
            }
        }
        self.expire_pending();
        true
    }

    /// Waits `delay` while handling commands as no session is open. False when closing.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.expire_pending();
            if self.closing.is_some() {
                return false;
            }
            let wake = self
                .pending
                .iter()
                .filter_map(Command::deadline)
                .min()
                .map_or(until, |deadline| deadline.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= until {
                        return true;
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if !self.offline(command) {
                            return false;
                        }
                    }
                    None => {
                        self.closing = Some(None);
                        return false;
                    }
                },
            }
        }
    }

    /// A command while no session is open: removals are local, the rest waits.
    fn offline(&mut self, command: Command) -> bool {
        match command {
            Command::Unpublish { register_id, reply } => {
                let answer = match self.publishers.remove(&register_id) {
                    Some(_) => Ok(()),
                    None => Err(Error::NotHeld { register_id }),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
            }
            Command::Unsubscribe { register_id, reply } => {
                self.subscribers.remove(&register_id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Close { reply } => {
                self.closing = Some(reply);
                return false;
            }
            waiting => self.pending.push_back(waiting),
        }
        true
    }

    /// Answers the waiting commands whose caller gave up or whose deadline passed.
    fn expire_pending(&mut self) {
        if let Some(refusal) = &self.refusal {
            for command in self.pending.drain(..) {
                command.fail(refusal.clone());
            }
        }
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for command in self.pending.drain(..) {
            if command.caller_gone() {
                continue;
            }
            match command.deadline() {
                Some(deadline) if deadline <= now => {
                    let message = match &self.last_error {
                        Some(err) => format!("no session could be opened; last error: {err}"),
                        None => "no session could be opened".to_owned(),
                    };
                    command.fail(Error::OperationTimeout {
                        timeout_ms: self.settings.operation_timeout.as_millis() as u64,
                        message,
                    })
                }
                _ => kept.push_back(command),
            }
        }
        self.pending = kept;
    }

    /// Registers everything held and pending (all but the refused) on a session, with the
    /// same registerIds: on a new session, and again with backoff while some stay pending.
    async fn register_pending(&mut self, session: &Session) -> Result<(), Lost> {
        self.register_pending_of::<HeldPublisher>(session).await?;
        self.register_pending_of::<HeldSubscriber>(session).await
    }

    async fn register_pending_of<T: Held>(&mut self, session: &Session) -> Result<(), Lost> {
        let register_ids: Vec<String> = T::entries(self)
            .iter()
            .filter(|(_, held)| is_pending(*held))
            .map(|(register_id, _)| register_id.clone())
            .collect();
        for register_id in register_ids {
            self.reregister::<T>(session, &register_id).await?;
        }
        Ok(())
    }

    /// Registers one held entry again and records the outcome in its registration.
    async fn reregister<T: Held>(
        &mut self,
        session: &Session,
        register_id: &str,
    ) -> Result<(), Lost> {
        let Some(held) = T::entries(self).get(register_id) else {
            return Ok(());
        };
        let mut result = held.register(session).await.map(drop);
        let conflict = matches!(&result, Err(err) if err.code() == Some(&ErrorCode::Conflict));
        // The registerId may still be held by a session this client abandoned on this node
        // (it failed us, but lives until its TTL): that conflict is ours to clear.
        if conflict && self.forget_stale_sessions(session).await {
            let Some(held) = T::entries(self).get(register_id) else {
                return Ok(());
            };
            result = held.register(session).await.map(drop);
        }
        let state = match result {
            Ok(()) => Registration::Registered,
            Err(err) => {
                classify_loss(&err)?;
                if refused_for_good(&err) {
                    tracing::error!(kind = T::KIND, register_id, error = %err, "re-registration refused, no longer retried");
                    Registration::Refused(err)
                } else {
                    tracing::warn!(kind = T::KIND, register_id, error = %err, "not re-registered, will retry");
                    Registration::Pending
                }
            }
        };
        if let Some(held) = T::entries(self).get(register_id) {
            set_registration(held.registration(), state);
        }
        Ok(())
    }

    /// Deletes the sessions this client abandoned on `session`'s node. True when there was
    /// one and none is left there, so that a conflicting registration is worth one more try.
    async fn forget_stale_sessions(&mut self, session: &Session) -> bool {
        let mut found = false;
        let mut all_gone = true;
        let mut kept = Vec::with_capacity(self.stale.len());
        for (node, session_id) in std::mem::take(&mut self.stale) {
            if node.url() != session.node.url() || session_id == session.id {
                kept.push((node, session_id));
                continue;
            }
            found = true;
            match node.delete_session(&session_id).await {
                Ok(()) => {}
                Err(err) if err.is_not_found() => {}
                Err(err) => {
                    tracing::debug!(url = node.url(), session = %session_id, error = %err, "cannot delete an abandoned session");
                    all_gone = false;
                    kept.push((node, session_id));
                }
            }
        }
        self.stale = kept;
        found && all_gone
    }

    /// Remembers a session left because its node failed us; it may live on there until
    /// its TTL, holding registerIds this client needs.
    fn remember_stale(&mut self, node: NodeApi, session_id: String) {
        if self.stale.len() >= MAX_STALE_SESSIONS {
            self.stale.remove(0);
        }
        self.stale.push((node, session_id));
    }

    /// Once a session is left, nothing held is registered any more (the refused stay so).
    fn mark_pending(&self) {
        mark_pending_of(self.publishers.values());
        mark_pending_of(self.subscribers.values());
    }

    fn has_pending(&self) -> bool {
        self.publishers.values().any(is_pending) || self.subscribers.values().any(is_pending)
    }

    /// Registers a new entry for a caller waiting on `reply`, holds it once the node took
    /// it, and hands it to `requeue` (to wait for the next session) when the session or
    /// node turns out lost.
    async fn register_new<T: Held>(
        &mut self,
        session: &Session,
        held: T,
        reply: Reply<T::Answer>,
        requeue: impl FnOnce(T, Reply<T::Answer>) -> Command,
    ) -> Option<Lost> {
        let result = held.register(session).await;
        match result {
            Ok(answer) => {
                let register_id = held.register_id().to_owned();
                set_registration(held.registration(), Registration::Registered);
                T::entries_mut(self).insert(register_id.clone(), held);
                if reply.send(Ok(answer)).is_err() {
                    // The caller gave up meanwhile and holds no handle: take it back.
                    T::entries_mut(self).remove(&register_id);
                    let _ = T::unregister(session, &register_id).await;
                }
                None
            }
            Err(err) => match classify_loss(&err) {
                Err(lost) => {
                    self.pending.push_front(requeue(held, reply));
                    Some(lost)
                }
                Ok(()) => {
                    let _ = reply.send(Err(err));
                    None
                }
            },
        }
    }

    /// Keeps one session alive until it is lost or the client closes.
    async fn serve(&mut self, session: &Session, events: EventStream) -> Lost {
        let (mut reader, mut stream) = spawn_reader(events);
        let mut stream_opened = Instant::now();
        self.forget_held_states();
        while let Some(command) = self.pending.pop_front() {
            if let Some(lost) = self.handle(session, command).await {
                return lost;
            }
        }
        let heartbeat_every = self
            .settings
            .heartbeat_interval
            .unwrap_or((session.ttl / 3).min(crate::client::DEFAULT_HEARTBEAT_INTERVAL))
            .max(Duration::from_millis(200));
        let heartbeat_timeout = self.settings.heartbeat_timeout;
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retry_every = self.settings.retry_interval;
        let mut retry_backoff =
            Backoff::new(retry_every, self.settings.backoff_max.max(retry_every));
        let mut next_retry = Instant::now() + retry_backoff.next_delay(&mut self.rng);
        let mut heartbeat_failures = 0u32;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if let Some(lost) = self.handle(session, command).await {
                            return lost;
                        }
                    }
                    None => {
                        self.closing = Some(None);
                        return Lost::Closed;
                    }
                },
                message = stream.recv() => match message.map(|m| match m {
                    // A delta that does not apply: only a full push mends that subscriber,
                    // and a reopened stream brings one to every subscriber.
                    StreamMessage::Event(event) if self.on_event(&event) => {
                        StreamMessage::Ended("a delta push did not apply to the held state".into())
                    }
                    m => m,
                }) {
                    Some(StreamMessage::Event(_)) => {}
                    Some(StreamMessage::Ended(reason)) => {
                        tracing::info!(url = session.node.url(), %reason, "event stream ended, reopening");
                        // A server that closes every stream at once must not be hammered.
                        if stream_opened.elapsed() < Duration::from_secs(1) {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        match self.reopen(session).await {
                            Ok(events) => {
                                drop(reader);
                                (reader, stream) = spawn_reader(events);
                                stream_opened = Instant::now();
                                self.forget_held_states();
                            }
                            Err(lost) => return lost,
                        }
                    }
                    None => return Lost::Node,
                },
                _ = heartbeat.tick() => match session.node.heartbeat(&session.id, heartbeat_timeout).await {
                    Ok(_) => heartbeat_failures = 0,
                    Err(err) if err.is_not_found() => return Lost::Session,
                    // The node says it cannot reach its data layer: its data nodes are
                    // about to drop our publishers (their session lease runs out), so move
                    // now and re-publish through another node while they are still listed.
                    Err(err) if err.code() == Some(&ErrorCode::Unavailable) => {
                        tracing::warn!(url = session.node.url(), error = %err, "session node cut off from its data layer; failing over");
                        return Lost::Node;
                    }
                    Err(err) => {
                        heartbeat_failures += 1;
                        tracing::warn!(url = session.node.url(), error = %err, heartbeat_failures, "heartbeat failed");
                        // One failure may be a blip while the stream still holds the
                        // session; two in a row mean the node is not serving us.
                        if heartbeat_failures >= 2 {
                            return Lost::Node;
                        }
                    }
                },
                _ = tokio::time::sleep_until(next_retry), if self.has_pending() => {
                    if let Err(lost) = self.register_pending(session).await {
                        return lost;
                    }
                    if !self.has_pending() {
                        retry_backoff.reset();
                    }
                    next_retry = Instant::now() + retry_backoff.next_delay(&mut self.rng);
                }
            }
        }
    }

    /// After the stream ended: is the session still there, and can the stream reopen?
    async fn reopen(&mut self, session: &Session) -> Result<EventStream, Lost> {
        if let Err(err) = session
            .node
            .heartbeat(&session.id, self.settings.heartbeat_timeout)
            .await
        {
            classify_loss(&err)?;
            return Err(Lost::Node);
        }
        match session
            .node
            .open_events(&session.id, self.settings.stream_idle_timeout)
            .await
        {
            Ok(events) => Ok(events),
            Err(err) => {
                classify_loss(&err)?;
                Err(Lost::Node)
            }
        }
    }

    /// States held from a stream that is gone: no delta applies to them any more.
    fn forget_held_states(&mut self) {
        for held in self.subscribers.values_mut() {
            held.holds = None;
        }
    }

    /// Handles one event; true when it was a delta that did not apply to what its
    /// subscriber holds (the stream is then reopened for a full push).
    fn on_event(&mut self, event: &Event) -> bool {
        let push = match decode_push(event) {
            Ok(Some(push)) => push,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an undecodable push");
                return false;
            }
        };
        let Some(held) = self.subscribers.get_mut(push.register_id()) else {
            tracing::debug!(register_id = %push.register_id(), "push for a subscriber no longer held");
            return false;
        };
        if push.data_info_id() != held.spec.service.data_info_id() {
            tracing::warn!(register_id = %push.register_id(), data_info_id = %push.data_info_id(), "push for another service, ignored");
            return false;
        }
        let snapshot = match push {
            Push::Full(snapshot) => snapshot,
            Push::Delta(delta) => {
                match held
                    .holds
                    .as_ref()
                    .and_then(|base| apply_delta(base, &delta))
                {
                    Some(snapshot) => snapshot,
                    None => {
                        tracing::warn!(register_id = %delta.register_id, base_version = delta.base_version, held = ?held.holds.as_ref().map(|s| s.version), "a delta push does not apply to the held state; reopening the stream for a full push");
                        held.holds = None;
                        return true;
                    }
                }
            }
        };
        if held.spec.delta {
            held.holds = Some(snapshot.clone());
        }
        match held.filter.offer(snapshot.version) {
            Verdict::Deliver => {
                held.snapshots.send_replace(Some(snapshot));
            }
            Verdict::Repeat => {}
            Verdict::Stale => {
                tracing::debug!(register_id = %snapshot.register_id, version = snapshot.version, "older push dropped");
            }
        }
        false
    }

    /// Handles a command on an open session; `Some` when doing so showed the session or
    /// node lost (the command then waits for the next session).
    async fn handle(&mut self, session: &Session, command: Command) -> Option<Lost> {
        if command.caller_gone() {
            return None;
        }
        match command {
            Command::Publish {
                spec,
                registration,
                deadline,
                reply,
            } => {
                let held = HeldPublisher { spec, registration };
                self.register_new(session, held, reply, move |held, reply| Command::Publish {
                    spec: held.spec,
                    registration: held.registration,
                    deadline,
                    reply,
                })
                .await
            }
            Command::Update {
                register_id,
                data,
                deadline,
                reply,
            } => {
                let Some(held) = self.publishers.get(&register_id) else {
                    let _ = reply.send(Err(Error::NotHeld { register_id }));
                    return None;
                };
                let spec = &held.spec;
                let result = session
                    .node
                    .publish(
                        &session.id,
                        &spec.service,
                        spec.zone.as_deref(),
                        &register_id,
                        &data,
                    )
                    .await;
                match result {
                    Ok((published, _)) => {
                        if let Some(held) = self.publishers.get_mut(&register_id) {
                            held.spec.data = data;
                            set_registration(&held.registration, Registration::Registered);
                        }
                        let _ = reply.send(Ok(published));
                        None
                    }
                    Err(err) => match classify_loss(&err) {
                        Err(lost) => {
                            self.pending.push_front(Command::Update {
                                register_id,
                                data,
                                deadline,
                                reply,
                            });
                            Some(lost)
                        }
                        Ok(()) => {
                            let _ = reply.send(Err(err));
                            None
                        }
                    },
                }
            }
            Command::Unpublish { register_id, reply } => {
                if self.publishers.remove(&register_id).is_none() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::NotHeld { register_id }));
                    }
                    return None;
                }
                let result = session.node.unpublish(&session.id, &register_id).await;
                let (answer, lost) = match result {
                    Ok(()) => (Ok(()), None),
                    // Gone already, or the session is gone (and its publishers with it).
                    Err(err) if err.is_not_found() => (Ok(()), None),
                    // No longer held, so the next session will not have it; this one is
                    // abandoned (and deleted when possible).
                    Err(err) if err.is_node_failure() => (Ok(()), Some(Lost::Node)),
                    Err(err) => (Err(err), None),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(answer);
                }
                lost
            }
            Command::Subscribe {
                spec,
                snapshots,
                registration,
                deadline,
                reply,
            } => {
                let held = HeldSubscriber {
                    spec,
                    snapshots,
                    filter: MonotonicFilter::new(),
                    registration,
                    holds: None,
                };
                self.register_new(session, held, reply, move |held, reply| {
                    Command::Subscribe {
                        spec: held.spec,
                        snapshots: held.snapshots,
                        registration: held.registration,
                        deadline,
                        reply,
                    }
                })
                .await
            }
            Command::Unsubscribe { register_id, reply } => {
                if self.subscribers.remove(&register_id).is_some() {
                    // Best effort: pushes for a subscriber no longer held are ignored, and
                    // the heartbeat notices a lost session by itself.
                    if let Err(err) = session.node.unsubscribe(&session.id, &register_id).await {
                        tracing::debug!(register_id, error = %err, "unsubscribe failed");
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                None
            }
            Command::Close { reply } => {
                self.closing = Some(reply);
                Some(Lost::Closed)
            }
        }
    }
}

/// `Err` when an error means the session (404) or the node is lost; `Ok` when it is about
/// the request itself. A 503 (the node cannot reach its data layer) is the request's: the
/// session is fine, and another session node would most likely answer the same.
fn classify_loss(err: &Error) -> Result<(), Lost> {
    if err.is_not_found() {
        Err(Lost::Session)
    } else if err.is_node_failure() && err.code() != Some(&ErrorCode::Unavailable) {
        Err(Lost::Node)
    } else {
        Ok(())
    }
}

fn spawn_reader(mut events: EventStream) -> (StreamReader, mpsc::Receiver<StreamMessage>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let message = match events.next().await {
                Some(Ok(event)) => StreamMessage::Event(event),
                Some(Err(err)) => StreamMessage::Ended(err.to_string()),
                None => StreamMessage::Ended("closed by the server".to_owned()),
            };
            let ended = matches!(message, StreamMessage::Ended(_));
            if tx.send(message).await.is_err() || ended {
                return;
            }
        }
    });
    (StreamReader(task), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: ErrorCode) -> Error {
        Error::Api {
            url: "http://n".into(),
            status,
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn errors_are_classified_as_session_node_or_request_failures() {
        assert!(matches!(
            classify_loss(&api(404, ErrorCode::NotFound)),
            Err(Lost::Session)
        ));
        for err in [
            Error::Transport {
                url: "u".into(),
                message: "refused".into(),
            },
            Error::Timeout {
                url: "u".into(),
                timeout_ms: 1,
            },
            Error::Protocol {
                url: "u".into(),
                message: "not json".into(),
            },
            api(500, ErrorCode::Other("http_500".into())),
            api(502, ErrorCode::Other("http_502".into())),
        ] {
            assert!(matches!(classify_loss(&err), Err(Lost::Node)), "{err}");
        }
        for err in [
            api(400, ErrorCode::InvalidArgument),
            api(401, ErrorCode::Unauthorized),
            api(409, ErrorCode::Conflict),
            api(413, ErrorCode::PayloadTooLarge),
            api(503, ErrorCode::Unavailable),
        ] {
            assert!(classify_loss(&err).is_ok(), "{err}");
        }
    }

    #[test]
    fn only_refusals_that_retrying_cannot_cure_are_final() {
        for err in [
            api(400, ErrorCode::InvalidArgument),
            api(409, ErrorCode::Conflict),
            api(413, ErrorCode::PayloadTooLarge),
            api(422, ErrorCode::Other("http_422".into())),
        ] {
            assert!(refused_for_good(&err), "{err}");
        }
        for err in [
            api(401, ErrorCode::Unauthorized),
            api(404, ErrorCode::NotFound),
            api(429, ErrorCode::Other("http_429".into())),
            api(503, ErrorCode::Unavailable),
            api(500, ErrorCode::Other("http_500".into())),
            Error::Timeout {
                url: "u".into(),
                timeout_ms: 1,
            },
        ] {
            assert!(!refused_for_good(&err), "{err}");
        }
    }

    #[test]
    fn a_registration_wakes_its_watchers_only_when_it_changes() {
        let (tx, mut rx) = watch::channel(Registration::Pending);
        rx.borrow_and_update();
        set_registration(&tx, Registration::Pending);
        assert!(!rx.has_changed().unwrap());
        set_registration(&tx, Registration::Registered);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().is_registered());
        set_registration(&tx, Registration::Refused(api(409, ErrorCode::Conflict)));
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update().refusal().and_then(Error::code),
            Some(&ErrorCode::Conflict)
        );
        set_registration(&tx, Registration::Refused(api(409, ErrorCode::Conflict)));
        assert!(!rx.has_changed().unwrap());
    }
}
