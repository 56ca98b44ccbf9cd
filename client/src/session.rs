//! The background task that owns a client's session: opens it, keeps it alive (event
//! stream, heartbeats), fails over to another node when it is lost, and re-registers every
//! held publisher and subscriber under the same registerIds.

use crate::api::{EventStream, NodeApi};
use crate::backoff::Backoff;
use crate::error::{Error, ErrorCode};
use crate::model::{Published, Scope, ServiceId, Snapshot, Subscribed};
use crate::snapshot::{decode_event, MonotonicFilter, Verdict};
use eventsource_stream::Event;
use futures::StreamExt;
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
    /// A session is open on `url` and everything held is registered there (registrations
    /// the server refused, e.g. a conflict, are retried in the background).
    Connected { url: String, session_id: String },
    /// The client was closed.
    Closed,
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
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

pub(crate) enum Command {
    Publish {
        spec: PublisherSpec,
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
    /// `None`: a third of the TTL the server granted.
    pub heartbeat_interval: Option<Duration>,
    pub stream_idle_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub retry_interval: Duration,
    /// How long a publish/subscribe/update may wait for a session (for the error text).
    pub operation_timeout: Duration,
}

struct HeldPublisher {
    spec: PublisherSpec,
    /// False when the current session refused it (e.g. 409 while an old session of ours
    /// still holds the registerId); retried until accepted.
    registered: bool,
}

struct HeldSubscriber {
    spec: SubscriberSpec,
    snapshots: watch::Sender<Option<Snapshot>>,
    filter: MonotonicFilter,
    registered: bool,
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
        }
    }

    pub(crate) async fn run(mut self) {
        // A session we left because its node failed; deleted (best effort) once we have a
        // new one, so that its registerIds are free for the re-registration.
        let mut abandoned: Option<(NodeApi, String)> = None;
        while let Some((session, events)) = self.establish(&mut abandoned).await {
            let outcome = match self.register_all(&session).await {
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
                            // Fire and forget: the old node is probably down, and a live old
                            // session only delays re-registration (409, retried) until it expires.
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

    /// Registers everything held on a new session, with the same registerIds.
    async fn register_all(&mut self, session: &Session) -> Result<(), Lost> {
        let publisher_ids: Vec<String> = self.publishers.keys().cloned().collect();
        for register_id in publisher_ids {
            self.register_publisher(session, &register_id).await?;
        }
        let subscriber_ids: Vec<String> = self.subscribers.keys().cloned().collect();
        for register_id in subscriber_ids {
            self.register_subscriber(session, &register_id).await?;
        }
        Ok(())
    }

    async fn register_publisher(
        &mut self,
        session: &Session,
        register_id: &str,
    ) -> Result<(), Lost> {
        let Some(held) = self.publishers.get(register_id) else {
            return Ok(());
        };
        let spec = &held.spec;
        let result = session
            .node
            .publish(
                &session.id,
                &spec.service,
                spec.zone.as_deref(),
                &spec.register_id,
                &spec.data,
            )
            .await;
        let registered = match result {
            Ok(_) => true,
            Err(err) => {
                classify_loss(&err)?;
                tracing::warn!(register_id, error = %err, "publisher not re-registered, will retry");
                false
            }
        };
        if let Some(held) = self.publishers.get_mut(register_id) {
            held.registered = registered;
        }
        Ok(())
    }

    async fn register_subscriber(
        &mut self,
        session: &Session,
        register_id: &str,
    ) -> Result<(), Lost> {
        let Some(held) = self.subscribers.get(register_id) else {
            return Ok(());
        };
        let spec = &held.spec;
        let result = session
            .node
            .subscribe(
                &session.id,
                &spec.service,
                spec.zone.as_deref(),
                spec.scope,
                &spec.register_id,
            )
            .await;
        let registered = match result {
            Ok(_) => true,
            Err(err) => {
                classify_loss(&err)?;
                tracing::warn!(register_id, error = %err, "subscriber not re-registered, will retry");
                false
            }
        };
        if let Some(held) = self.subscribers.get_mut(register_id) {
            held.registered = registered;
        }
        Ok(())
    }

    fn has_unregistered(&self) -> bool {
        self.publishers.values().any(|held| !held.registered)
            || self.subscribers.values().any(|held| !held.registered)
    }

    async fn retry_unregistered(&mut self, session: &Session) -> Result<(), Lost> {
        let publishers: Vec<String> = self
            .publishers
            .iter()
            .filter(|(_, held)| !held.registered)
            .map(|(id, _)| id.clone())
            .collect();
        for register_id in publishers {
            self.register_publisher(session, &register_id).await?;
        }
        let subscribers: Vec<String> = self
            .subscribers
            .iter()
            .filter(|(_, held)| !held.registered)
            .map(|(id, _)| id.clone())
            .collect();
        for register_id in subscribers {
            self.register_subscriber(session, &register_id).await?;
        }
        Ok(())
    }

    /// Keeps one session alive until it is lost or the client closes.
    async fn serve(&mut self, session: &Session, events: EventStream) -> Lost {
        let (mut reader, mut stream) = spawn_reader(events);
        let mut stream_opened = Instant::now();
        while let Some(command) = self.pending.pop_front() {
            if let Some(lost) = self.handle(session, command).await {
                return lost;
            }
        }
        let heartbeat_every = self
            .settings
            .heartbeat_interval
            .unwrap_or(session.ttl / 3)
            .max(Duration::from_millis(200));
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.settings.retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                message = stream.recv() => match message {
                    Some(StreamMessage::Event(event)) => self.on_event(&event),
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
                            }
                            Err(lost) => return lost,
                        }
                    }
                    None => return Lost::Node,
                },
                _ = heartbeat.tick() => match session.node.heartbeat(&session.id).await {
                    Ok(_) => heartbeat_failures = 0,
                    Err(err) if err.is_not_found() => return Lost::Session,
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
                _ = retry.tick(), if self.has_unregistered() => {
                    if let Err(lost) = self.retry_unregistered(session).await {
                        return lost;
                    }
                }
            }
        }
    }

    /// After the stream ended: is the session still there, and can the stream reopen?
    async fn reopen(&mut self, session: &Session) -> Result<EventStream, Lost> {
        if let Err(err) = session.node.heartbeat(&session.id).await {
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

    fn on_event(&mut self, event: &Event) {
        let snapshot = match decode_event(event) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an undecodable push");
                return;
            }
        };
        let Some(held) = self.subscribers.get_mut(&snapshot.register_id) else {
            tracing::debug!(register_id = %snapshot.register_id, "push for a subscriber no longer held");
            return;
        };
        if snapshot.data_info_id != held.spec.service.data_info_id() {
            tracing::warn!(register_id = %snapshot.register_id, data_info_id = %snapshot.data_info_id, "push for another service, ignored");
            return;
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
                deadline,
                reply,
            } => {
                let result = session
                    .node
                    .publish(
                        &session.id,
                        &spec.service,
                        spec.zone.as_deref(),
                        &spec.register_id,
                        &spec.data,
                    )
                    .await;
                match result {
                    Ok((published, _)) => {
                        let register_id = spec.register_id.clone();
                        self.publishers.insert(
                            register_id.clone(),
                            HeldPublisher {
                                spec,
                                registered: true,
                            },
                        );
                        if reply.send(Ok(published)).is_err() {
                            // The caller gave up meanwhile and holds no handle: take it back.
                            self.publishers.remove(&register_id);
                            let _ = session.node.unpublish(&session.id, &register_id).await;
                        }
                        None
                    }
                    Err(err) => match classify_loss(&err) {
                        Err(lost) => {
                            self.pending.push_front(Command::Publish {
                                spec,
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
                            held.registered = true;
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
                deadline,
                reply,
            } => {
                let result = session
                    .node
                    .subscribe(
                        &session.id,
                        &spec.service,
                        spec.zone.as_deref(),
                        spec.scope,
                        &spec.register_id,
                    )
                    .await;
                match result {
                    Ok(subscribed) => {
                        let register_id = spec.register_id.clone();
                        self.subscribers.insert(
                            register_id.clone(),
                            HeldSubscriber {
                                spec,
                                snapshots,
                                filter: MonotonicFilter::new(),
                                registered: true,
                            },
                        );
                        if reply.send(Ok(subscribed)).is_err() {
                            self.subscribers.remove(&register_id);
                            let _ = session.node.unsubscribe(&session.id, &register_id).await;
                        }
                        None
                    }
                    Err(err) => match classify_loss(&err) {
                        Err(lost) => {
                            self.pending.push_front(Command::Subscribe {
                                spec,
                                snapshots,
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
}
