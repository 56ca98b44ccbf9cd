//! Workloads at a scale one process per subscriber cannot reach (issue 17):
//!
//! - `mass-subscribe`: many subscribers on ONE service (registry: sessions each holding
//!   several subscribers on one event stream; etcd: watchers multiplexed on watch streams
//!   over a bounded number of connections); one change must reach all of them.
//! - `mass-churn` (registry): many publishers across sessions, a share of the sessions end
//!   and come back within a window; change → push latency and the most pushes any
//!   subscriber got within one merge window (the registry merges changes per push delay).
//! - `bytes-per-change` (registry): a one-instance change to a large service, bytes on the
//!   wire per subscriber for a full push, a gzip-compressed stream and a delta push.
//!
//! The bench client stays bounded: tasks, not threads (tokio's worker pool), one event
//! stream (registry) or one watch stream (etcd) per group of subscribers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::backend::{BackendKind, Server, Update};
use crate::registry::RegistryClient;
use crate::report::Record;
use crate::stats::{median, summarize};
use testkit::sse::WireEvents;

/// Groups of subscribers set up at once (setup is not measured).
const SETUP_PARALLELISM: usize = 32;
/// etcd: gRPC connections the watch streams are spread over (an etcd client process uses
/// one; a bounded pool stands for a few client processes).
const ETCD_WATCH_CONNECTIONS: usize = 16;
const LONG_TTL: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The bench client's own `/proc/self/status` field (kB fields in bytes; `Threads` as is).
fn own_status(field: &str) -> f64 {
    let v = crate::servers::status_kib(std::process::id(), field).unwrap_or(0) as f64;
    if field == "Threads" {
        v
    } else {
        v * 1024.0
    }
}

/// What keeps a group of subscribers alive: dropped, they go.
enum Group {
    /// The session, its heartbeats and its event stream.
    Registry {
        _session: Box<RegistryClient>,
    },
    Etcd(JoinHandle<()>),
    /// One ZooKeeper session; each subscriber's child watch is re-armed by its own task.
    Zk {
        _session: Box<crate::zk::ZkClient>,
    },
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Group::Etcd(h) = self {
            h.abort();
        }
    }
}

/// Subscribers `0..sessions × per_session`, group `g` holding `g·per_session..`, subscriber
/// `i` on `service_of(i)`, their pushes on `tx`. Registry: one session and event stream per
/// group, round robin over the session nodes; etcd: one watch stream per group, round robin
/// over [`ETCD_WATCH_CONNECTIONS`] connections; ZooKeeper: one session (connection) per
/// group, each subscriber a child watch of its service's znode, re-armed after every change
/// (ZooKeeper's watches fire once).
async fn subscriber_groups(
    server: &Server,
    prefix: &str,
    sessions: usize,
    per_session: usize,
    service_of: &(dyn Fn(usize) -> String + Sync),
    tx: &mpsc::UnboundedSender<Update>,
) -> Result<Vec<Group>> {
    let etcd_conns = if server.kind == BackendKind::Etcd {
        let ep = &server.session_urls()[0];
        let mut conns = Vec::new();
        for _ in 0..ETCD_WATCH_CONNECTIONS.min(sessions.max(1)) {
            conns.push(crate::etcd::connect_plain(ep).await?);
        }
        conns
    } else {
        Vec::new()
    };
    let urls = server.session_urls();
    stream::iter(0..sessions)
        .map(|g| {
            let subs: Vec<(usize, String)> = (g * per_session..(g + 1) * per_session)
                .map(|i| (i, service_of(i)))
                .collect();
            let (tx, conns) = (tx.clone(), &etcd_conns);
            async move {
                match server.kind {
                    BackendKind::Registry | BackendKind::RegistryCluster => {
                        let mut c = RegistryClient::connect(
                            &urls[g % urls.len()],
                            &format!("{prefix}-{g}"),
                            LONG_TTL,
                            false,
                        )
                        .await?;
                        let refs: Vec<(usize, &str)> =
                            subs.iter().map(|(i, s)| (*i, s.as_str())).collect();
                        c.subscribe_many(&refs, tx).await?;
                        Ok(Group::Registry {
                            _session: Box::new(c),
                        })
                    }
                    BackendKind::Etcd => {
                        // One watch stream per group watches one prefix: a group's
                        // subscribers must share their service (mass-subscribe's do).
                        let service = &subs[0].1;
                        if subs.iter().any(|(_, s)| s != service) {
                            bail!("etcd: a group of watchers spans several services");
                        }
                        let ids: Vec<usize> = subs.iter().map(|(i, _)| *i).collect();
                        let h = crate::etcd::watch_many(&conns[g % conns.len()], service, &ids, tx)
                            .await?;
                        Ok(Group::Etcd(h))
                    }
                    BackendKind::Zookeeper => {
                        let mut c = crate::zk::ZkClient::connect(&urls[0], LONG_TTL, false).await?;
                        for (i, service) in &subs {
                            c.subscribe(service, *i, tx.clone()).await?;
                        }
                        Ok(Group::Zk {
                            _session: Box::new(c),
                        })
                    }
                }
            }
        })
        .buffer_unordered(SETUP_PARALLELISM)
        .try_collect()
        .await
        .context("setting up subscriber groups")
}

#[derive(Debug, Clone)]
pub struct MassSubscribeParams {
    /// Registry sessions (etcd watch streams).
    pub sessions: usize,
    /// Subscribers per session (watchers per watch stream).
    pub per_session: usize,
    /// Changes made, one after the other; each must reach every subscriber.
    pub rounds: usize,
    /// How long after a change's start a subscriber may take before it counts as a miss.
    pub deadline: Duration,
    pub push_delay_ms: u64,
}

/// `sessions × per_session` subscribers on one service; `rounds` times one new instance is
/// registered and every subscriber's first sight of it timed from the write's start. Server
/// RSS is read before the subscribers and after them. Returns the record and every latency
/// sample (ms) for the plot.
pub async fn mass_subscribe(
    server: &Server,
    p: &MassSubscribeParams,
) -> Result<(Record, Vec<f64>)> {
    let service = "mass".to_string();
    server
        .prepare_services(std::slice::from_ref(&service))
        .await?;
    let n = p.sessions * p.per_session;
    if n == 0 {
        bail!("mass-subscribe: no subscribers");
    }
    let writer = server.connect_at(0, "ms-writer", LONG_TTL, false).await?;
    writer.register(&service, "m-initial").await?;
    let rss_before = server.memory_bytes("VmRSS");
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let setup = Instant::now();
    let groups = subscriber_groups(
        server,
        "ms",
        p.sessions,
        p.per_session,
        &|_| service.clone(),
        &tx,
    )
    .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    drop(tx);
    while rx.try_recv().is_ok() {}
    let rss_after = server.memory_bytes("VmRSS");
    let (client_rss, client_threads) = (own_status("VmRSS"), own_status("Threads"));

    let mut latencies = Vec::with_capacity(n * p.rounds);
    let mut misses = 0usize;
    let mut round_all_seen = Vec::new();
    for round in 0..p.rounds {
        let instance = format!("m-{round:03}");
        let started = Instant::now();
        writer.register(&service, &instance).await?;
        let end = started + p.deadline;
        let mut seen = vec![false; n];
        let mut remaining = n;
        let mut last = Duration::ZERO;
        while remaining > 0 {
            match timeout_at(end, rx.recv()).await {
                Ok(Some(u)) => {
                    if u.sub < n && !seen[u.sub] && u.instances.contains(&instance) {
                        seen[u.sub] = true;
                        remaining -= 1;
                        let l = u.at.saturating_duration_since(started);
                        last = last.max(l);
                        latencies.push(ms(l));
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        misses += remaining;
        if remaining == 0 {
            round_all_seen.push(ms(last));
        }
    }
    let client_peak = own_status("VmHWM");
    drop(groups);
    let mut r = Record::new(server.kind.name(), "mass-subscribe");
    r.metric("subscribers", n as f64);
    r.metric("sessions", p.sessions as f64);
    r.metric("push_delay_ms", p.push_delay_ms as f64);
    if let Some(s) = summarize(&mut latencies) {
        r.metric("p50_ms", s.p50);
        r.metric("p99_ms", s.p99);
        r.metric("max_ms", s.max);
    }
    r.metric("misses", misses as f64);
    r.metric("setup_s", setup_s);
    r.metric("rss_before_mib", rss_before as f64 / MIB);
    r.metric("rss_after_mib", rss_after as f64 / MIB);
    r.metric(
        "rss_bytes_per_sub",
        rss_after.saturating_sub(rss_before) as f64 / n as f64,
    );
    r.metric("client_rss_mib", client_rss / MIB);
    r.metric("client_peak_rss_mib", client_peak / MIB);
    r.metric("client_threads", client_threads);
    r.notes.push(match server.kind {
        BackendKind::Etcd => format!(
            "{n} watchers: {} watch streams of {} over {} connections",
            p.sessions,
            p.per_session,
            ETCD_WATCH_CONNECTIONS.min(p.sessions)
        ),
        BackendKind::Zookeeper => format!(
            "{n} child watches: {} sessions (connections) of {}, each watch re-armed by a getChildren after it fires",
            p.sessions, p.per_session
        ),
        _ => format!(
            "{n} subscribers: {} sessions of {}, one event stream each",
            p.sessions, p.per_session
        ),
    });
    // Sorted by `summarize`: the plot takes them in any order.
    Ok((r, latencies))
}

/// The most of `times` (ascending) that fall within any half-open window `[t, t + window)`:
/// with pushes merged per push delay, a subscriber gets at most about one per window.
pub fn max_in_window(times: &[Duration], window: Duration) -> usize {
    // A zero window: the pushes at one instant.
    let inside = |d: Duration| {
        if window.is_zero() {
            d.is_zero()
        } else {
            d < window
        }
    };
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while lo < hi && !inside(times[hi].saturating_sub(times[lo])) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[derive(Debug, Clone)]
pub struct MassChurnParams {
    pub publishers: usize,
    pub publisher_sessions: usize,
    pub subscribers: usize,
    pub per_session: usize,
    pub services: usize,
    /// Share of the publisher sessions that end and come back.
    pub churn_share: f64,
    /// Every churned session ends and is back within this window.
    pub window: Duration,
    /// The merge window pushes are counted in (the registry's push delay).
    pub push_delay: Duration,
}

/// One change of the churn: a session's publishers went (`gone`) or came back.
struct Change {
    at: Instant,
    service: usize,
    gone: bool,
    instances: Arc<Vec<String>>,
}

/// The publishers of publisher session `k`: all in service `k % services`.
fn churn_instances(k: usize, per: usize) -> Vec<String> {
    (0..per).map(|j| format!("k{k:05}-{j:04}")).collect()
}

async fn publish_all(c: &RegistryClient, service: &str, instances: &[String]) -> Result<()> {
    for chunk in instances.chunks(500) {
        let regs: Vec<(&str, String)> = chunk.iter().map(|i| (service, i.clone())).collect();
        c.register_batch(&regs).await?;
    }
    Ok(())
}

/// Registry only. `publishers` over `publisher_sessions` (session `k`'s all in service
/// `k % services`), `subscribers` in sessions of `per_session` (subscriber `i` on service
/// `i % services`). Then `churn_share` of the publisher sessions end (their publishers go at
/// once) and come back (a new session re-registers the same publishers) within `window`:
/// session `c` of `m` ends at `c·window/(2m)` and is back `window/2` later. Measured: from
/// each change's request to each affected subscriber's first push that shows it, and the
/// most pushes one subscriber got within one push delay.
///
/// Returns the record and every change → push sample (ms) for the plot.
pub async fn mass_churn(server: &Server, p: &MassChurnParams) -> Result<(Record, Vec<f64>)> {
    if !server.kind.is_registry() {
        bail!("mass-churn runs on the registry only");
    }
    if p.publisher_sessions == 0 || p.services == 0 || p.per_session == 0 {
        bail!("mass-churn: sessions, services and subscribers per session must be at least 1");
    }
    let urls = server.session_urls().to_vec();
    let per = p.publishers / p.publisher_sessions;
    let services: Vec<String> = (0..p.services).map(|s| format!("churn-{s:03}")).collect();
    let setup = Instant::now();
    let publishers: Vec<RegistryClient> = stream::iter(0..p.publisher_sessions)
        .map(|k| {
            let (urls, services) = (&urls, &services);
            async move {
                let c = RegistryClient::connect(
                    &urls[k % urls.len()],
                    &format!("mc-pub-{k}"),
                    LONG_TTL,
                    true,
                )
                .await?;
                publish_all(&c, &services[k % services.len()], &churn_instances(k, per)).await?;
                Ok::<_, anyhow::Error>(c)
            }
        })
        .buffered(SETUP_PARALLELISM)
        .try_collect()
        .await
        .context("registering the publishers")?;
    let per_service: Vec<usize> = (0..p.services)
        .map(|s| {
            (0..p.publisher_sessions)
                .filter(|k| k % p.services == s)
                .count()
                * per
        })
        .collect();
    let sub_sessions = p.subscribers.div_ceil(p.per_session);
    let n = sub_sessions * p.per_session;
    let service_of = |i: usize| i % p.services;
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let groups = subscriber_groups(
        server,
        "mc-sub",
        sub_sessions,
        p.per_session,
        &|i| services[service_of(i)].clone(),
        &tx,
    )
    .await?;
    drop(tx);
    // Every subscriber complete before the churn starts.
    let mut complete = vec![false; n];
    let mut incomplete = n;
    let end = Instant::now() + Duration::from_secs(120);
    while incomplete > 0 {
        match timeout_at(end, rx.recv()).await {
            Ok(Some(u)) if u.sub < n => {
                let full = u.instances.len() == per_service[service_of(u.sub)];
                if full != complete[u.sub] {
                    complete[u.sub] = full;
                    if full {
                        incomplete -= 1
                    } else {
                        incomplete += 1
                    }
                }
            }
            Ok(Some(_)) => {}
            _ => bail!("mass-churn: {incomplete} of {n} subscribers never saw every publisher"),
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    while rx.try_recv().is_ok() {}
    let mut subs_of_service = vec![0usize; p.services];
    for i in 0..n {
        subs_of_service[service_of(i)] += 1;
    }

    let m = ((p.churn_share.clamp(0.0, 1.0) * p.publisher_sessions as f64).round() as usize)
        .min(p.publisher_sessions);
    let changes: Arc<Mutex<Vec<Change>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut publishers: Vec<Option<RegistryClient>> = publishers.into_iter().map(Some).collect();
    let drivers: Vec<JoinHandle<Result<RegistryClient>>> = (0..m)
        .map(|c| {
            let k = c * p.publisher_sessions / m.max(1);
            let client = publishers[k].take().expect("each session churns once");
            let service = k % p.services;
            let name = services[service].clone();
            let url = urls[k % urls.len()].clone();
            let instances = Arc::new(churn_instances(k, per));
            let changes = changes.clone();
            let half = p.window / 2;
            let ends_at = start + half.mul_f64(c as f64 / m as f64);
            tokio::spawn(async move {
                // The churn's schedule, not a wait for a condition.
                sleep_until(ends_at).await;
                let record = |gone| {
                    changes.lock().unwrap().push(Change {
                        at: Instant::now(),
                        service,
                        gone,
                        instances: instances.clone(),
                    })
                };
                record(true);
                client.end().await?;
                sleep_until(ends_at + half).await;
                let back =
                    RegistryClient::connect(&url, &format!("mc-back-{k}"), LONG_TTL, true).await?;
                record(false);
                publish_all(&back, &name, &instances).await?;
                Ok(back)
            })
        })
        .collect();
    let mut drivers = std::pin::pin!(futures::future::try_join_all(drivers));
    let mut driver_done = false;
    let deadline = start + p.window + p.push_delay + Duration::from_secs(60);
    // Per subscriber: push times since the start, the next change to look at, and the
    // changes it has not seen yet.
    let mut pushes: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut next_change = vec![0usize; n];
    let mut pending: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut latencies = Vec::new();
    let mut driver_error = None;
    // Deliveries due so far: every subscriber of a changed service sees each change once.
    let deliveries_expected = || -> usize {
        changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| subs_of_service[c.service])
            .sum()
    };
    let mut returned: Vec<RegistryClient> = Vec::new();
    loop {
        let expected = deliveries_expected();
        if driver_done && latencies.len() >= expected {
            break;
        }
        tokio::select! {
            u = rx.recv() => {
                let Some(u) = u else { break };
                if u.sub >= n || u.at < start {
                    continue;
                }
                let i = u.sub;
                pushes[i].push(u.at - start);
                let changes = changes.lock().unwrap();
                for (c, ch) in changes.iter().enumerate().skip(next_change[i]) {
                    if ch.service == service_of(i) {
                        pending[i].push(c);
                    }
                }
                next_change[i] = changes.len();
                if pending[i].is_empty() {
                    continue;
                }
                let have: HashSet<&str> = u.instances.iter().map(String::as_str).collect();
                pending[i].retain(|&c| {
                    let ch = &changes[c];
                    if u.at < ch.at {
                        return true;
                    }
                    let shows = if ch.gone {
                        ch.instances.iter().all(|x| !have.contains(x.as_str()))
                    } else {
                        ch.instances.iter().all(|x| have.contains(x.as_str()))
                    };
                    if shows {
                        latencies.push(ms(u.at - ch.at));
                    }
                    !shows
                });
            }
            done = &mut drivers, if !driver_done => {
                driver_done = true;
                match done.map_err(anyhow::Error::from).and_then(|r| r.into_iter().collect::<Result<Vec<_>>>()) {
                    Ok(back) => returned = back,
                    Err(e) => driver_error = Some(format!("{e:#}")),
                }
            }
            _ = sleep_until(deadline) => break,
        }
    }
    let expected = deliveries_expected();
    drop(groups);
    drop(publishers);
    drop(returned);
    let window_max = pushes
        .iter()
        .map(|t| max_in_window(t, p.push_delay))
        .max()
        .unwrap_or(0);
    let total_pushes: usize = pushes.iter().map(Vec::len).sum();
    let mut r = Record::new(server.kind.name(), "mass-churn");
    r.metric("publishers", (per * p.publisher_sessions) as f64);
    r.metric("subscribers", n as f64);
    r.metric("churned_sessions", m as f64);
    r.metric("changes", changes.lock().unwrap().len() as f64);
    r.metric("push_delay_ms", ms(p.push_delay));
    if let Some(s) = summarize(&mut latencies) {
        r.metric("p50_ms", s.p50);
        r.metric("p99_ms", s.p99);
        r.metric("max_ms", s.max);
    }
    r.metric("misses", expected.saturating_sub(latencies.len()) as f64);
    if p.push_delay.is_zero() {
        r.notes
            .push("push delay 0: no merge window, pushes per window not counted".into());
    } else {
        r.metric("max_pushes_per_window", window_max as f64);
    }
    r.metric("pushes_per_sub", total_pushes as f64 / n as f64);
    r.metric("setup_s", setup_s);
    r.metric("client_peak_rss_mib", own_status("VmHWM") / MIB);
    if let Some(e) = driver_error {
        r.notes.push(format!("churn driver: {e}"));
    }
    r.notes.push(format!(
        "{} publishers in {} sessions over {} services, {n} subscribers in sessions of {}; {m} sessions end and come back within {:?}",
        per * p.publisher_sessions,
        p.publisher_sessions,
        p.services,
        p.per_session,
        p.window
    ));
    // Sorted by `summarize`: the plot takes them in any order.
    Ok((r, latencies))
}

#[derive(Debug, Clone)]
pub struct BytesParams {
    pub instances: usize,
    pub rounds: usize,
}

/// A session's event stream read raw (gunzipped when `gzip`), `: ping` comments skipped.
async fn wire_events(url: &str, gzip: bool) -> Result<WireEvents> {
    let mut req = reqwest::Client::builder().no_proxy().build()?.get(url);
    if gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("event stream: HTTP {}", resp.status());
    }
    let compressed = resp.headers().get("content-encoding").is_some();
    if compressed != gzip {
        bail!("asked for gzip: {gzip}, got a compressed stream: {compressed}");
    }
    Ok(WireEvents::reading(resp.bytes_stream(), gzip))
}

fn item_count(push: &Value) -> usize {
    push["zones"]
        .as_object()
        .map(|z| z.values().filter_map(Value::as_array).map(Vec::len).sum())
        .unwrap_or(0)
}

/// Registry only. A service of `instances` instances, three subscribers on streams of their
/// own: a full one, a full one on a gzip stream (`Accept-Encoding: gzip`), a delta one
/// (`"delta": true`). `rounds` times one instance is replaced; the bytes read off each
/// stream for that change are recorded (the median over the rounds is reported).
pub async fn bytes_per_change(server: &Server, p: &BytesParams) -> Result<Record> {
    if !server.kind.is_registry() {
        bail!("bytes-per-change runs on the registry only");
    }
    let base = server.session_urls()[0].clone();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let session = |name: &str| {
        let (http, base) = (&http, &base);
        let body = json!({"clientId": name, "ttlSeconds": 120});
        async move {
            let v: Value = http
                .post(format!("{base}/api/v1/sessions"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            v["sessionId"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no sessionId in {v}"))
        }
    };
    let address = |i: usize, round: usize| format!("10.{}.{}.{}:8080", round, i / 250, i % 250);
    let service = "bytes.svc";
    let publisher = session("bytes-pub").await?;
    let publish = |publishers: Vec<Value>| {
        let (http, base, publisher) = (&http, &base, &publisher);
        async move {
            http.post(format!(
                "{base}/api/v1/sessions/{publisher}/publishers:batch"
            ))
            .json(&json!({ "publishers": publishers }))
            .send()
            .await?
            .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }
    };
    for chunk in (0..p.instances).collect::<Vec<_>>().chunks(1000) {
        publish(
            chunk
                .iter()
                .map(|&i| json!({"dataId": service, "registerId": format!("p{i:05}"), "data": [address(i, 0)]}))
                .collect(),
        )
        .await?;
    }
    let mut streams = Vec::new();
    for (rid, delta, gzip) in [
        ("full", false, false),
        ("gzip", false, true),
        ("delta", true, false),
    ] {
        let sid = session(&format!("bytes-{rid}")).await?;
        http.post(format!("{base}/api/v1/sessions/{sid}/subscribers"))
            .json(&json!({"dataId": service, "registerId": rid, "delta": delta}))
            .send()
            .await?
            .error_for_status()?;
        let mut events = wire_events(&format!("{base}/api/v1/sessions/{sid}/events"), gzip).await?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match timeout_at(end, events.recv()).await {
                Ok(Some(e))
                    if e.data["registerId"] == rid && item_count(&e.data) == p.instances =>
                {
                    break
                }
                Ok(Some(_)) => {}
                _ => bail!(
                    "{rid}: no full push of {} instances within 30 s",
                    p.instances
                ),
            }
        }
        streams.push((rid, events));
    }
    let mut costs: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut notes = Vec::new();
    for round in 1..=p.rounds.max(1) {
        let i = (round * 1000 + 7) % p.instances.max(1);
        publish(vec![json!({"dataId": service, "registerId": format!("p{i:05}"), "data": [address(i, round)]})]).await?;
        let want = address(i, round);
        for (rid, events) in &mut streams {
            let end = Instant::now() + Duration::from_secs(30);
            // The bytes of every event for this subscriber until one shows the change.
            let mut bytes = 0usize;
            loop {
                let e = match timeout_at(end, events.recv()).await {
                    Ok(Some(e)) => e,
                    _ => bail!("{rid}: round {round}: the change did not arrive within 30 s"),
                };
                bytes += e.wire;
                if e.data["registerId"] != *rid {
                    continue;
                }
                let shows = match e.event.as_str() {
                    "delta" => e.data["added"].to_string().contains(&want),
                    _ => e.data["zones"].to_string().contains(&want),
                };
                if *rid == "delta" && e.event != "delta" && notes.is_empty() {
                    notes.push(format!(
                        "round {round}: the delta subscriber got a full push"
                    ));
                }
                if shows {
                    break;
                }
            }
            costs.entry(*rid).or_default().push(bytes as f64);
        }
    }
    let mut r = Record::new(server.kind.name(), "bytes-per-change");
    r.metric("instances", p.instances as f64);
    for (rid, key) in [
        ("full", "full_push_bytes"),
        ("gzip", "gzip_push_bytes"),
        ("delta", "delta_push_bytes"),
    ] {
        if let Some(v) = costs.get(rid).and_then(|v| median(v)) {
            r.metric(key, v);
        }
    }
    r.notes = notes;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: &[u64]) -> Vec<Duration> {
        ms.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn pushes_per_window_counts_the_busiest_window() {
        let w = Duration::from_millis(200);
        assert_eq!(max_in_window(&[], w), 0);
        assert_eq!(max_in_window(&at(&[5]), w), 1);
        // Spaced by the window or more: one per window.
        assert_eq!(max_in_window(&at(&[0, 200, 400, 1000]), w), 1);
        // Two within 200 ms, then three within 200 ms.
        assert_eq!(max_in_window(&at(&[0, 150, 1000, 1050, 1199, 1400]), w), 3);
        // The window is half-open: 199 ms apart is inside, 200 apart is not.
        assert_eq!(max_in_window(&at(&[0, 199]), w), 2);
        assert_eq!(max_in_window(&at(&[0, 200]), w), 1);
        // A zero window counts pushes at the same instant.
        assert_eq!(max_in_window(&at(&[3, 3, 3, 4]), Duration::ZERO), 3);
    }

    #[test]
    fn churned_sessions_publish_distinct_instances() {
        let a = churn_instances(3, 4);
        assert_eq!(
            a,
            ["k00003-0000", "k00003-0001", "k00003-0002", "k00003-0003"]
        );
        assert!(churn_instances(4, 4).iter().all(|x| !a.contains(x)));
    }
}
