//! The `failover` workload (registry cluster only): SIGKILL a data node under continuous publishing, publish a membership without it, and time how long until every subscriber and every replica is whole again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant, MissedTickBehavior};

use crate::backend::{BackendKind, Client, Server, Update};
use crate::report::Record;
use crate::workloads::connect_subscribers;

/// How many client connections are set up at once (setup is not measured).
const CONNECT_PARALLELISM: usize = 32;
const LONG_TTL: Duration = Duration::from_secs(60);
/// How often the data nodes' replicas are checked while waiting for convergence.
const REPLICA_POLL: Duration = Duration::from_millis(200);
/// After convergence (or its deadline), how long the final check may wait for the
/// publishes acknowledged after the membership change to be everywhere.
const FINAL_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FailoverParams {
    /// Publishing clients, spread round robin over the session nodes.
    pub publishers: usize,
    /// Instances registered (and seen by every subscriber) before the load starts.
    pub registrations: usize,
    pub services: usize,
    /// Subscribers, spread round robin over the session nodes, subscriber `i` on service `i % services`.
    pub subscribers: usize,
    /// New registrations per second from `lead` before the kill until convergence.
    pub rate: f64,
    pub lead: Duration,
    /// From the kill to the new membership (what an operator's detection would take).
    pub membership_delay: Duration,
    /// Convergence not reached this long after the kill is reported as not reached.
    pub deadline: Duration,
    pub replication_factor: usize,
    /// The data node to kill (0-based, in start order).
    pub victim: usize,
}

/// The dataInfoId of a service registered with the default group and instanceId (API.md).
pub fn data_info_id(service: &str) -> String {
    format!("{service}#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP")
}

/// Tracks, for every subscriber, whether its latest pushed list holds every instance of a
/// target set, and since when; and counts pushes that dropped an instance the subscriber had
/// already seen (nothing is ever deregistered in this workload, so every such drop is a
/// falsely partial push). Times are offsets from the workload's origin.
#[derive(Debug)]
pub struct SubscriberConvergence {
    service_of: Vec<usize>,
    latest: Vec<Option<(Duration, HashSet<String>)>>,
    seen: Vec<HashSet<String>>,
    target: Option<Vec<HashSet<String>>>,
    complete_since: Vec<Option<Duration>>,
    /// Pushes that lacked an instance their subscriber had seen before.
    pub dropped_pushes: usize,
    /// The first few of them: when, which subscriber, how many seen instances it lacked, one of them.
    pub drop_examples: Vec<(Duration, usize, usize, String)>,
    pub pushes: usize,
}

/// How many dropped pushes are kept as examples.
const DROP_EXAMPLES: usize = 5;

impl SubscriberConvergence {
    pub fn new(service_of: Vec<usize>) -> Self {
        let n = service_of.len();
        Self {
            service_of,
            latest: vec![None; n],
            seen: vec![HashSet::new(); n],
            target: None,
            complete_since: vec![None; n],
            dropped_pushes: 0,
            drop_examples: Vec::new(),
            pushes: 0,
        }
    }

    fn complete(&self, sub: usize, list: &HashSet<String>) -> bool {
        match &self.target {
            Some(t) => t
                .get(self.service_of[sub])
                .is_none_or(|want| want.is_subset(list)),
            None => false,
        }
    }

    pub fn observe(&mut self, sub: usize, at: Duration, instances: Vec<String>) {
        if sub >= self.latest.len() {
            return;
        }
        self.pushes += 1;
        let list: HashSet<String> = instances.into_iter().collect();
        if !self.seen[sub].is_subset(&list) {
            self.dropped_pushes += 1;
            if self.drop_examples.len() < DROP_EXAMPLES {
                let mut lacking = self.seen[sub].difference(&list);
                let example = lacking.next().cloned().unwrap_or_default();
                self.drop_examples
                    .push((at, sub, 1 + lacking.count(), example));
            }
        }
        self.seen[sub].extend(list.iter().cloned());
        if self.complete(sub, &list) {
            self.complete_since[sub].get_or_insert(at);
        } else {
            self.complete_since[sub] = None;
        }
        self.latest[sub] = Some((at, list));
    }

    /// Sets the instances every subscriber must see, per service, and re-judges every
    /// subscriber on the list it holds now.
    pub fn set_target(&mut self, target: Vec<HashSet<String>>) {
        self.target = Some(target);
        for sub in 0..self.latest.len() {
            let judged = match &self.latest[sub] {
                Some((at, list)) if self.complete(sub, list) => Some(*at),
                _ => None,
            };
            self.complete_since[sub] = judged;
        }
    }

    /// When the last subscriber became (and stayed) complete, if every one is now.
    pub fn converged_at(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.complete_since
            .iter()
            .try_fold(Duration::ZERO, |acc, c| c.map(|c| acc.max(c)))
    }

    pub fn incomplete(&self) -> usize {
        self.complete_since.iter().filter(|c| c.is_none()).count()
    }
}

/// Instances of `target` (per service) held by fewer than `want` of the given nodes;
/// `held[node][service]` is what that node holds.
pub fn under_replicated(
    target: &[HashSet<String>],
    held: &[Vec<HashSet<String>>],
    want: usize,
) -> usize {
    target
        .iter()
        .enumerate()
        .map(|(svc, want_set)| {
            want_set
                .iter()
                .filter(|inst| {
                    held.iter()
                        .filter(|node| node.get(svc).is_some_and(|s| s.contains(*inst)))
                        .count()
                        < want
                })
                .count()
        })
        .sum()
}

/// Acknowledged registrations `(service, instance)`, in acknowledgement order.
#[derive(Default)]
struct Acked(std::sync::Mutex<Vec<(usize, String)>>);

impl Acked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, service: usize, instance: String) {
        self.lock().push((service, instance));
    }

    /// Everything acknowledged so far, grouped by service.
    fn snapshot(&self, services: usize) -> Vec<HashSet<String>> {
        let mut out = vec![HashSet::new(); services];
        for (s, i) in self.lock().iter() {
            if let Some(set) = out.get_mut(*s) {
                set.insert(i.clone());
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// What each running data node holds of the workload's services (`images`, the data
/// nodes' own local copies, docs: registry-node `data::protocol`).
async fn replica_holdings(
    http: &reqwest::Client,
    server: &Server,
    ids: &[String],
) -> Result<Vec<Vec<HashSet<String>>>> {
    let calls = server.data_urls().iter().map(|url| async move {
        let v: Value = http
            .post(format!("{url}/internal/v1/data/images"))
            .json(&json!({"ids": ids}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut held = vec![HashSet::new(); ids.len()];
        for image in v["images"]
            .as_array()
            .ok_or_else(|| anyhow!("{url}: no images in {v}"))?
        {
            let Some(svc) = ids
                .iter()
                .position(|id| Some(id.as_str()) == image["dataInfoId"].as_str())
            else {
                continue;
            };
            for p in image["publishers"].as_array().into_iter().flatten() {
                if let Some(rid) = p["registerId"].as_str() {
                    held[svc].insert(rid.to_string());
                }
            }
        }
        Ok::<_, anyhow::Error>(held)
    });
    futures::future::try_join_all(calls).await
}

/// What a session node's cluster-wide query answers for each service.
async fn session_view(
    http: &reqwest::Client,
    base: &str,
    services: &[String],
) -> Result<Vec<HashSet<String>>> {
    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let v: Value = http
            .get(format!("{base}/api/v1/data"))
            .query(&[("dataId", s)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        out.push(
            v["publishers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["registerId"].as_str().map(str::to_string))
                .collect(),
        );
    }
    Ok(out)
}

fn missing(target: &[HashSet<String>], have: &[HashSet<String>]) -> usize {
    target
        .iter()
        .enumerate()
        .map(|(s, want)| {
            have.get(s)
                .map_or(want.len(), |h| want.difference(h).count())
        })
        .sum()
}

pub async fn failover(server: &mut Server, p: &FailoverParams) -> Result<Record> {
    if server.kind != BackendKind::RegistryCluster {
        bail!("failover runs on registry-cluster only");
    }
    if p.services == 0 || p.publishers == 0 || p.subscribers == 0 {
        bail!("failover: services, publishers and subscribers must be > 0");
    }
    let survivors: Vec<String> = server
        .data_members()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != p.victim)
        .map(|(_, a)| a.clone())
        .collect();
    if survivors.len() == server.data_members().len() {
        bail!("failover: no data node {} to kill", p.victim);
    }
    let want_copies = p.replication_factor.min(survivors.len()).max(1);
    let services: Vec<String> = (0..p.services).map(|i| format!("fo-{i:03}")).collect();
    let ids: Vec<String> = services.iter().map(|s| data_info_id(s)).collect();
    let sessions = server.session_count();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let origin = Instant::now();
    let since = |t: Instant| t.saturating_duration_since(origin);

    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let subs = connect_subscribers(
        server,
        "fo-sub",
        p.subscribers,
        &tx,
        |i| i,
        |i| services[i % p.services].as_str(),
    )
    .await?;
    drop(tx);
    let mut tracker =
        SubscriberConvergence::new((0..p.subscribers).map(|i| i % p.services).collect());

    let clients: Vec<Arc<Client>> = stream::iter(0..p.publishers)
        .map(|c| {
            let srv = &*server;
            async move {
                srv.connect_at(c, &format!("fo-pub-{c}"), LONG_TTL, false)
                    .await
                    .map(Arc::new)
            }
        })
        .buffered(CONNECT_PARALLELISM)
        .try_collect()
        .await
        .context("setting up publishers")?;
    let acked = Arc::new(Acked::default());
    stream::iter(clients.iter().enumerate())
        .map(|(c, client)| {
            let (acked, services) = (acked.clone(), &services);
            async move {
                for i in (c..p.registrations).step_by(p.publishers) {
                    let (svc, name) = (i % p.services, format!("p{i:07}"));
                    client.register(&services[svc], &name).await?;
                    acked.push(svc, name);
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(p.publishers)
        .try_collect::<Vec<()>>()
        .await
        .context("initial registrations")?;

    // Steady state first: every subscriber has seen every initial registration.
    tracker.set_target(acked.snapshot(p.services));
    let end = Instant::now() + Duration::from_secs(60);
    while tracker.converged_at().is_none() {
        match timeout_at(end, rx.recv()).await {
            Ok(Some(u)) => tracker.observe(u.sub, since(u.at), u.instances),
            _ => bail!(
                "failover: {} subscribers never saw the initial {} registrations",
                tracker.incomplete(),
                p.registrations
            ),
        }
    }

    // Continuous publishing, spread over every publisher (so over both session nodes).
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let per_client = Duration::from_secs_f64(p.publishers as f64 / p.rate.max(0.1));
    let load: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let (client, acked, stop, errors, first_error, services) = (
                client.clone(),
                acked.clone(),
                stop.clone(),
                errors.clone(),
                first_error.clone(),
                services.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_client);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (svc, name) = ((c + k) % services.len(), format!("l{c:03}-{k:06}"));
                    k += 1;
                    match client.register(&services[svc], &name).await {
                        Ok(()) => acked.push(svc, name),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(format!("{e:#}"));
                        }
                    }
                }
            })
        })
        .collect();
    let lead_end = Instant::now() + p.lead;
    while let Ok(Some(u)) = timeout_at(lead_end, rx.recv()).await {
        tracker.observe(u.sub, since(u.at), u.instances);
    }
    let acked_before_kill = acked.len();

    let killed_at = Instant::now();
    let victim = server.kill_data_node(p.victim).await?;
    let kill_done = since(Instant::now()) - since(killed_at);
    let membership_at = killed_at + p.membership_delay;
    while let Ok(Some(u)) = timeout_at(membership_at, rx.recv()).await {
        tracker.observe(u.sub, since(u.at), u.instances);
    }
    sleep_until(membership_at).await;
    server
        .publish_membership(2, &survivors)
        .await
        .context("publishing the membership without the killed node")?;
    let posted_at = Instant::now();
    // Everything acknowledged up to the new membership must reach every subscriber and
    // every surviving replica; later publishes are checked at the end (lost or not).
    let target = acked.snapshot(p.services);
    while let Ok(u) = rx.try_recv() {
        tracker.observe(u.sub, since(u.at), u.instances);
    }
    tracker.set_target(target.clone());

    let deadline = killed_at + p.deadline;
    let mut replicas_at: Option<Instant> = None;
    let mut last_shortfall = None;
    let mut next_poll = Instant::now();
    let mut notes = Vec::new();
    let mut replica_errors = 0usize;
    while tracker.converged_at().is_none() || replicas_at.is_none() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if replicas_at.is_none() && now >= next_poll {
            match replica_holdings(&http, server, &ids).await {
                Ok(held) => {
                    let short = under_replicated(&target, &held, want_copies);
                    last_shortfall = Some(short);
                    if short == 0 {
                        replicas_at = Some(Instant::now());
                    }
                }
                Err(e) => {
                    if replica_errors == 0 {
                        notes.push(format!("replica check failed (retried): {e:#}"));
                    }
                    replica_errors += 1;
                }
            }
            next_poll = Instant::now() + REPLICA_POLL;
        }
        let wake = if replicas_at.is_none() {
            next_poll.min(deadline)
        } else {
            deadline
        };
        match timeout_at(wake, rx.recv()).await {
            Ok(Some(u)) => tracker.observe(u.sub, since(u.at), u.instances),
            Ok(None) => bail!("failover: every subscriber's event stream ended"),
            Err(_) => {}
        }
    }
    let subs_at = tracker.converged_at();
    let incomplete_at_deadline = tracker.incomplete();

    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let load_end = Instant::now();
    let acked_total = acked.len();
    let during = acked_total - acked_before_kill;

    // Final check: every acknowledged publisher (including those after the membership
    // change) in both session nodes' cluster-wide queries and on `want_copies` data nodes,
    // and in every subscriber's latest list.
    let all = acked.snapshot(p.services);
    tracker.set_target(all.clone());
    let final_end = Instant::now() + FINAL_WAIT;
    let (lost, short_end) = loop {
        while let Ok(u) = rx.try_recv() {
            tracker.observe(u.sub, since(u.at), u.instances);
        }
        let mut lost = 0;
        for base in server.session_urls() {
            lost = lost.max(missing(
                &all,
                &session_view(&http, base, &services)
                    .await
                    .unwrap_or_default(),
            ));
        }
        let short = replica_holdings(&http, server, &ids)
            .await
            .map(|h| under_replicated(&all, &h, want_copies))
            .unwrap_or(usize::MAX);
        if (lost == 0 && short == 0 && tracker.converged_at().is_some())
            || Instant::now() >= final_end
        {
            break (lost, short);
        }
        match timeout_at(Instant::now() + REPLICA_POLL, rx.recv()).await {
            Ok(Some(u)) => tracker.observe(u.sub, since(u.at), u.instances),
            Ok(None) => tokio::time::sleep(REPLICA_POLL).await,
            Err(_) => {}
        }
    };
    drop(subs);
    drop(clients);

    let mut r = Record::new(server.kind.name(), "failover");
    let secs = |t: Duration| t.as_secs_f64();
    r.metric("membership_after_s", secs(posted_at - killed_at));
    match subs_at {
        Some(at) => r.metric(
            "subs_converged_s",
            secs(at.saturating_sub(since(killed_at))),
        ),
        None => notes.push(format!(
            "{incomplete_at_deadline} subscribers still incomplete {:?} after the kill",
            p.deadline
        )),
    }
    match replicas_at {
        Some(at) => r.metric("replicas_converged_s", secs(at - killed_at)),
        None => notes.push(format!(
            "{} publishers still short of {want_copies} replicas {:?} after the kill",
            last_shortfall.map_or("?".into(), |s| s.to_string()),
            p.deadline
        )),
    }
    r.metric("publishers_lost", lost as f64);
    r.metric(
        "under_replicated_end",
        if short_end == usize::MAX {
            f64::NAN
        } else {
            short_end as f64
        },
    );
    r.metric("dropped_pushes", tracker.dropped_pushes as f64);
    r.metric("publishers_total", acked_total as f64);
    r.metric("publishes_during", during as f64);
    r.metric(
        "publish_rate_during",
        during as f64 / secs(load_end - killed_at).max(1e-3),
    );
    r.metric("publish_errors", errors.load(Ordering::Relaxed) as f64);
    if let Some(e) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        notes.push(format!("first publish error: {e}"));
    }
    for (at, sub, n, example) in &tracker.drop_examples {
        let t = at.as_secs_f64() - since(killed_at).as_secs_f64();
        notes.push(format!(
            "subscriber {sub} (session node {}) got a push {t:+.3} s from the kill lacking {n} instance(s) it had seen, e.g. {example}",
            sub % sessions
        ));
    }
    if tracker.incomplete() > 0 {
        notes.push(format!(
            "{} subscribers incomplete at the end",
            tracker.incomplete()
        ));
    }
    notes.push(format!(
        "killed {victim} (SIGKILL, reaped in {:.0} ms), membership epoch 2 with {} data nodes posted to every node; {} publishers, {} subscribers over {} services on {sessions} session nodes; replicas wanted {want_copies}",
        kill_done.as_secs_f64() * 1000.0,
        survivors.len(),
        p.publishers,
        p.subscribers,
        p.services
    ));
    r.notes = notes;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn converges_when_the_last_subscriber_holds_its_whole_target() {
        // Subscribers 0 and 2 on service 0, 1 on service 1.
        let mut t = SubscriberConvergence::new(vec![0, 1, 0]);
        t.observe(0, ms(10), v(&["a"]));
        t.observe(1, ms(20), v(&["x"]));
        assert_eq!(t.converged_at(), None, "no target yet");
        t.set_target(vec![set(&["a", "b"]), set(&["x"])]);
        assert_eq!(t.incomplete(), 2, "sub 0 lacks b, sub 2 has nothing");
        t.observe(0, ms(30), v(&["a", "b", "c"]));
        assert_eq!(t.converged_at(), None);
        t.observe(2, ms(40), v(&["b", "a"]));
        assert_eq!(t.converged_at(), Some(ms(40)));
        assert_eq!(t.dropped_pushes, 0);
    }

    #[test]
    fn complete_before_the_target_counts_from_that_push() {
        let mut t = SubscriberConvergence::new(vec![0]);
        t.observe(0, ms(5), v(&["a", "b"]));
        t.set_target(vec![set(&["a"])]);
        assert_eq!(t.converged_at(), Some(ms(5)));
    }

    #[test]
    fn a_partial_push_resets_convergence_and_counts_as_dropped() {
        let mut t = SubscriberConvergence::new(vec![0]);
        t.set_target(vec![set(&["a", "b"])]);
        t.observe(0, ms(10), v(&["a", "b"]));
        assert_eq!(t.converged_at(), Some(ms(10)));
        t.observe(0, ms(20), v(&["a"]));
        assert_eq!(t.converged_at(), None);
        assert_eq!(t.dropped_pushes, 1);
        assert_eq!(t.drop_examples, vec![(ms(20), 0, 1, "b".to_string())]);
        t.observe(0, ms(30), v(&["a", "b"]));
        t.observe(0, ms(40), v(&["a", "b", "c"]));
        assert_eq!(
            t.converged_at(),
            Some(ms(30)),
            "stays complete from the first push that made it so"
        );
        assert_eq!(t.dropped_pushes, 1);
        assert_eq!(t.pushes, 4);
    }

    #[test]
    fn unknown_subscribers_are_ignored() {
        let mut t = SubscriberConvergence::new(vec![0]);
        t.observe(7, ms(1), v(&["a"]));
        assert_eq!(t.pushes, 0);
    }

    #[test]
    fn counts_instances_short_of_their_replicas() {
        let target = vec![set(&["a", "b"]), set(&["x"])];
        let n1 = vec![set(&["a", "b"]), set(&["x"])];
        let n2 = vec![set(&["a"]), set(&[])];
        assert_eq!(
            under_replicated(&target, &[n1.clone(), n2.clone()], 2),
            2,
            "b and x are on one node only"
        );
        assert_eq!(under_replicated(&target, &[n1.clone(), n2], 1), 0);
        assert_eq!(under_replicated(&target, &[n1.clone(), n1.clone()], 2), 0);
        assert_eq!(
            under_replicated(&target, &[vec![set(&["a", "b"])]], 1),
            1,
            "a node without the service holds none of it"
        );
        assert_eq!(under_replicated(&target, &[], 1), 3);
    }

    #[test]
    fn missing_counts_per_service() {
        let target = vec![set(&["a", "b"]), set(&["x"])];
        assert_eq!(missing(&target, &[set(&["a", "b", "z"]), set(&["x"])]), 0);
        assert_eq!(missing(&target, &[set(&["a"])]), 2);
        assert_eq!(missing(&target, &[]), 3);
    }

    #[test]
    fn data_info_id_uses_the_api_defaults() {
        assert_eq!(
            data_info_id("svc"),
            "svc#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
        );
    }
}
