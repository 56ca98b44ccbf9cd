//! The workloads, identical for every backend: register, fanout, churn, scale.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::backend::{Client, Server, Update};
use crate::report::Record;
use crate::servers::poll_until;
use crate::stats::{median, summarize};

/// How many client connections are set up at once (setup is not measured).
const CONNECT_PARALLELISM: usize = 32;
/// TTL of clients that are not meant to vanish.
const LONG_TTL: Duration = Duration::from_secs(60);

const MIB: f64 = 1024.0 * 1024.0;

fn own_cpu() -> f64 {
    crate::servers::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn connect_many(
    server: &Server,
    prefix: &str,
    n: usize,
    ttl: Duration,
    detached: bool,
) -> Result<Vec<Client>> {
    stream::iter(0..n)
        .map(|i| async move {
            server
                .connect(&format!("{prefix}-{i}"), ttl, detached)
                .await
        })
        .buffered(CONNECT_PARALLELISM)
        .try_collect()
        .await
}

/// Connects `n` long-lived subscribers named `{prefix}-{i}`: subscriber `i` on the endpoint
/// `place(i)` names, subscribed to `service_of(i)`, its pushes tagged `i` on `tx`.
pub async fn connect_subscribers<'s>(
    server: &Server,
    prefix: &str,
    n: usize,
    tx: &mpsc::UnboundedSender<Update>,
    place: impl Fn(usize) -> usize,
    service_of: impl Fn(usize) -> &'s str,
) -> Result<Vec<Client>> {
    stream::iter(0..n)
        .map(|i| {
            let (tx, at, service) = (tx.clone(), place(i), service_of(i));
            async move {
                let mut c = server
                    .connect_reader_at(at, &format!("{prefix}-{i}"), LONG_TTL)
                    .await?;
                c.subscribe(service, i, tx).await?;
                Ok::<_, anyhow::Error>(c)
            }
        })
        .buffered(CONNECT_PARALLELISM)
        .try_collect()
        .await
        .context("setting up subscribers")
}

#[derive(Debug, Clone)]
pub struct RegisterParams {
    pub clients: usize,
    pub registrations: usize,
    pub services: usize,
    /// Registrations per request: 1 is the `register` workload, more is `register-batch`.
    pub batch: usize,
}

/// `clients` concurrent clients, each registering its share one request at a time, round robin
/// over `services`. Measures throughput and per-request latency.
pub async fn register(server: &Server, p: &RegisterParams) -> Result<Record> {
    let services: Arc<Vec<String>> =
        Arc::new((0..p.services).map(|i| format!("reg-{i:03}")).collect());
    server.prepare_services(&services).await?;
    let clients = connect_many(server, "reg", p.clients, LONG_TTL, false).await?;
    let (server_cpu0, own_cpu0) = (server.cpu_seconds(), own_cpu());
    let start = Instant::now();
    let total = p.registrations;
    let n_clients = clients.len();
    let batch = p.batch.max(1);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let services = services.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(total / n_clients + 1);
                let mut errors = 0usize;
                let mut first_error = None;
                let mine: Vec<usize> = (c..total).step_by(n_clients).collect();
                for chunk in mine.chunks(batch) {
                    let t = Instant::now();
                    let outcome = if batch == 1 {
                        let i = chunk[0];
                        client
                            .register(&services[i % services.len()], &format!("r{i:07}"))
                            .await
                    } else {
                        let regs: Vec<(&str, String)> = chunk
                            .iter()
                            .map(|&i| (services[i % services.len()].as_str(), format!("r{i:07}")))
                            .collect();
                        client.register_batch(&regs).await
                    };
                    match outcome {
                        // A batch's latency counts once per registration it carried.
                        Ok(()) => lat.extend(std::iter::repeat_n(ms(t.elapsed()), chunk.len())),
                        Err(e) => {
                            errors += chunk.len();
                            first_error.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
                (client, lat, errors, first_error)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    let mut notes = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (client, l, e, first) = t.await?;
        lat.extend(l);
        errors += e;
        if let Some(f) = first {
            if notes.is_empty() {
                notes.push(format!("first error: {f}"));
            }
        }
        keep.push(client);
    }
    let wall = start.elapsed();
    let (server_cpu, own_cpu) = (server.cpu_seconds() - server_cpu0, own_cpu() - own_cpu0);
    drop(keep);
    let ok = lat.len();
    let s = summarize(&mut lat)
        .ok_or_else(|| anyhow!("no registration succeeded; {}", notes.join("; ")))?;
    let workload = if batch == 1 {
        "register"
    } else {
        "register-batch"
    };
    let mut r = Record::new(server.kind.name(), workload);
    r.metric("regs_per_s", ok as f64 / wall.as_secs_f64());
    r.metric("p50_ms", s.p50);
    r.metric("p99_ms", s.p99);
    r.metric("errors", errors as f64);
    if batch > 1 {
        r.metric("batch_size", batch as f64);
    }
    if ok > 0 {
        // Where the 2 cores went: the server's and the benchmark client's CPU per registration.
        r.metric("server_cpu_us_per_reg", server_cpu * 1e6 / ok as f64);
        r.metric("client_cpu_us_per_reg", own_cpu * 1e6 / ok as f64);
    }
    r.notes = notes;
    Ok(r)
}

#[derive(Debug, Clone)]
pub struct FanoutParams {
    pub subscribers: usize,
    pub rounds: usize,
    /// How long after the acknowledged write a subscriber may take before it counts as a miss.
    pub deadline: Duration,
    /// With several session nodes (registry cluster): the share of subscribers placed on
    /// session nodes other than the writer's, so that their pushes cross nodes.
    pub cross_share: f64,
    /// The rounds are run this many times over on the same subscribers; the p99 reported is
    /// the median of the repeats' p99s (one run's p99 is noisy on a shared machine).
    pub repeats: usize,
    /// The workload's name in the report: `fanout`, or `fanout-<subscribers>` when a run
    /// measures several subscriber counts.
    pub label: String,
}

/// The session node (endpoint index) of fan-out subscriber `i` of `subscribers`: the writer
/// is on node 0; the first `round(cross_share × subscribers)` subscribers go round robin to
/// the other nodes, the rest to node 0. With one node everything is on node 0.
pub fn fanout_session(i: usize, subscribers: usize, sessions: usize, cross_share: f64) -> usize {
    if sessions <= 1 {
        return 0;
    }
    let cross = (cross_share.clamp(0.0, 1.0) * subscribers as f64).round() as usize;
    if i < cross {
        1 + i % (sessions - 1)
    } else {
        0
    }
}

/// `subscribers` subscribers on one service; each round one writer registers one new instance
/// and every subscriber's first sight of it is timed from the write's acknowledgement.
/// Returns the record and every latency sample (ms) for the plot.
pub async fn fanout(server: &Server, p: &FanoutParams) -> Result<(Record, Vec<f64>)> {
    let service = "fanout".to_string();
    server
        .prepare_services(std::slice::from_ref(&service))
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let sessions = server.session_count();
    let cross: Vec<bool> = (0..p.subscribers)
        .map(|i| fanout_session(i, p.subscribers, sessions, p.cross_share) != 0)
        .collect();
    let subs = connect_subscribers(
        server,
        "fan-sub",
        p.subscribers,
        &tx,
        |i| fanout_session(i, p.subscribers, sessions, p.cross_share),
        |_| service.as_str(),
    )
    .await?;
    drop(tx);
    while rx.try_recv().is_ok() {}
    let writer = server.connect_at(0, "fan-writer", LONG_TTL, false).await?;
    let repeats = p.repeats.max(1);
    let mut latencies = Vec::with_capacity(p.subscribers * p.rounds * repeats);
    let mut from_start = Vec::with_capacity(p.subscribers * p.rounds * repeats);
    let (mut cross_lat, mut same_lat) = (Vec::new(), Vec::new());
    let mut cross_misses = 0usize;
    let mut misses = 0usize;
    // Per repeat: the p99 from the acknowledgement and from the write's start.
    let (mut repeat_p99, mut repeat_start_p99) = (Vec::new(), Vec::new());
    for repeat in 0..repeats {
        let (mut acked_lat, mut start_lat) = (Vec::new(), Vec::new());
        for round in 0..p.rounds {
            let instance = format!("f{repeat:02}-{round:03}");
            let started = Instant::now();
            writer.register(&service, &instance).await?;
            let acked = Instant::now();
            let mut seen = vec![false; p.subscribers];
            let mut remaining = p.subscribers;
            let end = acked + p.deadline;
            while remaining > 0 {
                match timeout_at(end, rx.recv()).await {
                    Ok(Some(u)) => {
                        if u.sub < seen.len() && !seen[u.sub] && u.instances.contains(&instance) {
                            seen[u.sub] = true;
                            remaining -= 1;
                            // With no push delay a push may beat the acknowledgement: 0 ms
                            // from it, and the write's start is the honest origin.
                            let l = ms(u.at.saturating_duration_since(acked));
                            acked_lat.push(l);
                            start_lat.push(ms(u.at.saturating_duration_since(started)));
                            if cross[u.sub] {
                                cross_lat.push(l)
                            } else {
                                same_lat.push(l)
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            misses += remaining;
            cross_misses += (0..p.subscribers).filter(|&i| cross[i] && !seen[i]).count();
        }
        latencies.extend_from_slice(&acked_lat);
        from_start.extend_from_slice(&start_lat);
        if let Some(s) = summarize(&mut acked_lat) {
            repeat_p99.push(s.p99);
        }
        if let Some(s) = summarize(&mut start_lat) {
            repeat_start_p99.push(s.p99);
        }
    }
    drop(subs);
    let mut sorted = latencies.clone();
    let mut r = Record::new(server.kind.name(), &p.label);
    r.metric("subscribers", p.subscribers as f64);
    if let Some(s) = summarize(&mut sorted) {
        r.metric("p50_ms", s.p50);
        // One run: its p99; repeats: the median of theirs.
        r.metric("p99_ms", median(&repeat_p99).unwrap_or(s.p99));
        r.metric("max_ms", s.max);
    }
    if let Some(s) = summarize(&mut from_start) {
        r.metric("start_p50_ms", s.p50);
        r.metric("start_p99_ms", median(&repeat_start_p99).unwrap_or(s.p99));
        r.metric("start_max_ms", s.max);
    }
    if repeats > 1 {
        r.metric("repeats", repeats as f64);
        let lo = repeat_start_p99
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = repeat_start_p99
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() {
            r.metric("start_p99_lo_ms", lo);
            r.metric("start_p99_hi_ms", hi);
        }
    }
    r.metric("misses", misses as f64);
    r.metric("deliveries", latencies.len() as f64);
    if sessions > 1 {
        // Pushes to subscribers on another session node than the writer's went session →
        // data → change notice → the other session → fetch → push: reported on their own.
        let n_cross = cross.iter().filter(|c| **c).count();
        r.metric("cross_subscribers", n_cross as f64);
        if let Some(s) = summarize(&mut cross_lat) {
            r.metric("cross_p50_ms", s.p50);
            r.metric("cross_p99_ms", s.p99);
            r.metric("cross_max_ms", s.max);
        }
        r.metric("cross_misses", cross_misses as f64);
        if let Some(s) = summarize(&mut same_lat) {
            r.metric("same_p99_ms", s.p99);
        }
    }
    Ok((r, latencies))
}

#[derive(Debug, Clone)]
pub struct ChurnParams {
    pub clients: usize,
    pub registrations: usize,
    pub vanish: usize,
    pub ttl: Duration,
}

/// `clients` clients register `registrations` instances of one service; then `vanish` of them
/// disappear without deregistering. Measures how long until a subscriber no longer sees any of
/// their instances, and checks the survivors' instances are all still there.
pub async fn churn(server: &Server, p: &ChurnParams) -> Result<Record> {
    if p.vanish > p.clients || p.clients == 0 {
        bail!(
            "churn: vanish ({}) must be at most clients ({}) and clients > 0",
            p.vanish,
            p.clients
        );
    }
    let service = "churn".to_string();
    server
        .prepare_services(std::slice::from_ref(&service))
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let mut sub = server.connect("churn-sub", LONG_TTL, false).await?;
    sub.subscribe(&service, 0, tx).await?;
    let clients = connect_many(server, "churn", p.clients, p.ttl, true).await?;
    let per = p.registrations / p.clients;
    let names = |c: usize| (0..per).map(move |j| format!("c{c:03}-{j:05}"));
    stream::iter(clients.iter().enumerate())
        .map(|(c, client)| {
            let service = &service;
            async move {
                for name in names(c) {
                    client.register(service, &name).await?;
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(p.clients)
        .try_collect::<Vec<()>>()
        .await?;
    let total = per * p.clients;
    let gone: HashSet<String> = (0..p.vanish).flat_map(names).collect();
    let survivors: HashSet<String> = (p.vanish..p.clients).flat_map(names).collect();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match timeout_at(end, rx.recv()).await {
            Ok(Some(u)) if u.instances.len() >= total => break,
            Ok(Some(_)) => {}
            _ => bail!("churn: the subscriber never saw all {total} registrations"),
        }
    }
    let mut clients = clients;
    let vanishing: Vec<Client> = clients.drain(..p.vanish).collect();
    let t0 = Instant::now();
    for c in vanishing {
        c.vanish();
    }
    let end = t0 + p.ttl + Duration::from_secs(60);
    let mut first_gone = None;
    let (all_gone, last) = loop {
        match timeout_at(end, rx.recv()).await {
            Ok(Some(u)) => {
                let present = u.instances.iter().filter(|i| gone.contains(*i)).count();
                if present < gone.len() && first_gone.is_none() {
                    first_gone = Some(u.at.saturating_duration_since(t0));
                }
                if present == 0 {
                    break (u.at.saturating_duration_since(t0), u.instances);
                }
            }
            _ => bail!(
                "churn: vanished clients' instances still visible {:?} after they vanished",
                end - t0
            ),
        }
    };
    let kept: HashSet<&String> = last.iter().collect();
    let lost = survivors.iter().filter(|s| !kept.contains(s)).count();
    drop(clients);
    drop(sub);
    let mut r = Record::new(server.kind.name(), "churn");
    r.metric("ttl_s", p.ttl.as_secs_f64());
    r.metric("gone_after_s", all_gone.as_secs_f64());
    if let Some(f) = first_gone {
        r.metric("first_gone_s", f.as_secs_f64());
    }
    r.metric("survivors_lost", lost as f64);
    Ok(r)
}

/// Registrations one session of the scale workload carries before its writer moves on to
/// the next (the registry's default `--max-publishers-per-session`).
const SCALE_SESSION_PUBLISHERS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct ScaleParams {
    pub count: usize,
    pub clients: usize,
    pub services: usize,
    pub deadline: Duration,
    pub replication_factor: usize,
}

/// Registers `count` instances on a fresh server and measures resident memory per registration.
pub async fn scale(server: &Server, p: &ScaleParams) -> Result<Record> {
    let services: Arc<Vec<String>> = Arc::new(
        (0..p.services.max(1))
            .map(|i| format!("scale-{i:04}"))
            .collect(),
    );
    server.prepare_services(&services).await?;
    let base = server.memory_bytes("VmRSS");
    let base_data = server.data_node_memory_bytes("VmRSS");
    // `p.clients` writers in parallel; each moves to a new session of its own after
    // SCALE_SESSION_PUBLISHERS registrations, as many processes would hold the publishers
    // (a registry session holds at most 10,000 by default, `--max-publishers-per-session`).
    let n_clients = p.clients.max(1);
    let count = p.count;
    let per_client = count.div_ceil(n_clients);
    let sessions_per_client = per_client.div_ceil(SCALE_SESSION_PUBLISHERS).max(1);
    let mut sessions = connect_many(
        server,
        "scale",
        n_clients * sessions_per_client,
        LONG_TTL,
        false,
    )
    .await?
    .into_iter();
    let start = Instant::now();
    let end = start + p.deadline;
    let tasks: Vec<_> = (0..n_clients)
        .map(|c| {
            let own: Vec<Client> = sessions.by_ref().take(sessions_per_client).collect();
            let services = services.clone();
            tokio::spawn(async move {
                let mut done = 0usize;
                let mut err = None;
                for (k, i) in (c..count).step_by(n_clients).enumerate() {
                    if Instant::now() >= end {
                        break;
                    }
                    let client = &own[k / SCALE_SESSION_PUBLISHERS];
                    match client
                        .register(&services[i % services.len()], &format!("s{i:08}"))
                        .await
                    {
                        Ok(()) => done += 1,
                        Err(e) => {
                            err = Some(format!("{e:#}"));
                            break;
                        }
                    }
                }
                (own, done, err)
            })
        })
        .collect();
    let mut done = 0;
    let mut keep = Vec::new();
    let mut notes = Vec::new();
    for t in tasks {
        let (own, d, err) = t.await?;
        done += d;
        keep.extend(own);
        if let Some(e) = err {
            if notes.is_empty() {
                notes.push(format!("stopped on error: {e}"));
            }
        }
    }
    let wall = start.elapsed();
    let replicas = if server.has_data_nodes() {
        p.replication_factor.min(3)
    } else {
        1
    };
    if server.has_data_nodes() {
        let want = (done * replicas) as u64;
        let waited = poll_until("replication", Duration::from_secs(120), || async {
            let have = server.data_publisher_copies().await?;
            if have >= want {
                Ok(())
            } else {
                Err(anyhow!("{have} of {want} publisher copies on data nodes"))
            }
        })
        .await;
        if let Err(e) = waited {
            notes.push(format!("{e:#}"));
        }
    }
    let rss = server.memory_bytes("VmRSS");
    let rss_data = server.data_node_memory_bytes("VmRSS");
    let mut r = Record::new(server.kind.name(), &format!("scale-{}", p.count));
    if done < p.count {
        notes.push(format!(
            "did not finish: {done} of {} registrations within {:?}",
            p.count, p.deadline
        ));
    }
    r.metric("registrations", done as f64);
    r.metric("regs_per_s", done as f64 / wall.as_secs_f64());
    r.metric("rss_mib", rss as f64 / MIB);
    if done > 0 {
        let per_reg = rss.saturating_sub(base) as f64 / done as f64;
        r.metric("bytes_per_reg", per_reg);
        let per_replica = if server.has_data_nodes() {
            rss_data.saturating_sub(base_data) as f64 / (done * replicas) as f64
        } else {
            per_reg
        };
        r.metric("bytes_per_replica", per_replica);
    }
    drop(keep);
    r.notes = notes;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_places_the_cross_share_off_the_writers_node() {
        let at = |n, sessions, share| {
            (0..n)
                .map(|i| fanout_session(i, n, sessions, share))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(4, 1, 0.5), vec![0, 0, 0, 0]);
        assert_eq!(at(4, 2, 0.5), vec![1, 1, 0, 0]);
        assert_eq!(at(4, 2, 1.0), vec![1, 1, 1, 1]);
        assert_eq!(at(4, 2, 0.0), vec![0, 0, 0, 0]);
        assert_eq!(at(6, 3, 0.5), vec![1, 2, 1, 0, 0, 0]);
        let half = at(1000, 2, 0.5);
        assert_eq!(half.iter().filter(|s| **s == 1).count(), 500);
        assert_eq!(at(2, 2, 7.0), vec![1, 1], "share is clamped to 1");
    }
}
