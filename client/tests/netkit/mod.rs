//! Test kit for partitions: a registry cluster whose every node runs in a network namespace
//! of its own, on a private bridge, so that a test can cut any two nodes apart (iptables
//! inside a node's namespace) and heal them again. Everything is created by the kit and
//! removed when the cluster is dropped, also when a test fails.
//!
//! Layout: one "hub" namespace holds the bridge (10.77.0.254/24); each node namespace has
//! one veth on it (`eth0`, 10.77.0.x). The test's own HTTP calls and its client processes
//! run in the hub (the test thread enters it with `setns`), so cuts between nodes never
//! cut the test off from a node. Data nodes are 10.77.0.1.. (port 9622), session nodes
//! 10.77.0.101.. (port 9603). Nodes run with the binary's default timings (session lease,
//! anti-entropy, reconciliation), which is what the partition rules are about.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const DATA_PORT: u16 = 9622;
pub const HTTP_PORT: u16 = 9603;
/// Namespaces of this kit start with this (a leftover of a killed run is removed by the
/// next run once its process is gone).
const NS_PREFIX: &str = "regpart";

// === impl preconditions ===

pub use testkit::netns::can_run;
use testkit::netns::{ip, iptables_in};

// === impl Net ===

/// The namespaces and the bridge; removed on drop.
pub struct Net {
    tag: String,
    hub: String,
    hosts: Vec<String>,
}

impl Net {
    fn new() -> Net {
        testkit::netns::remove_leftovers(NS_PREFIX);
        let tag = format!(
            "{NS_PREFIX}{}x{}",
            std::process::id(),
            rand::random::<u16>()
        );
        let hub = format!("{tag}-hub");
        ip(&["netns", "add", &hub]);
        let net = Net {
            tag,
            hub,
            hosts: Vec::new(),
        };
        ip(&["-n", &net.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &net.hub,
            "addr",
            "add",
            "10.77.0.254/24",
            "dev",
            "br0",
        ]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        net
    }

    /// A namespace for one node with `addr` (10.77.0.x) on the bridge.
    fn add_host(&mut self, name: &str, addr: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let veth = format!("v{}", self.hosts.len());
        ip(&[
            "-n", &self.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &self.hub, "link", "set", &veth, "master", "br0"]);
        ip(&["-n", &self.hub, "link", "set", &veth, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    /// Moves the calling thread (and the runtime and processes it starts) into the hub.
    fn enter_hub(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.hub)).expect("hub netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the hub");
    }

    fn iptables(ns: &str, args: &[&str]) {
        iptables_in(ns, args);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

// === impl Proc ===

/// A process in one namespace (a [`testkit::Process`] started through `ip netns exec`, so
/// that its pid is the node's own): SIGKILLed when dropped, its log printed when the test
/// fails.
pub struct Proc {
    pub name: String,
    pub ns: String,
    /// 10.77.0.x
    pub ip: String,
    /// ip:port
    pub addr: String,
    process: testkit::Process,
}

impl Proc {
    fn spawn(
        name: &str,
        ns: &str,
        ip: &str,
        addr: &str,
        program: &std::path::Path,
        args: &[String],
        node: bool,
    ) -> Proc {
        let mut spawn = testkit::Spawn::new(name, "ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("REGISTRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if node {
            spawn = spawn.listening(Duration::from_secs(60));
        }
        let process = spawn
            .start()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            ns: ns.into(),
            ip: ip.into(),
            addr: addr.into(),
            process,
        }
    }

    /// SIGSTOP: the process hangs (its sockets stay open, nothing is answered).
    pub fn stop(&self) {
        self.process.pause();
    }

    /// SIGCONT after [`Proc::stop`].
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Whether it is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.process.exited().is_none() && self.process.is_running()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

// === impl Cluster ===

/// Data nodes, session nodes and client processes, each in its own namespace; the test
/// thread is in the hub. Fields drop in order: processes first, then the namespaces.
pub struct Cluster {
    pub data: Vec<Proc>,
    pub sessions: Vec<Proc>,
    pub clients: Vec<Proc>,
    pub http: reqwest::Client,
    /// Cuts in force: (namespace, rule) pairs to delete on heal.
    cuts: Mutex<Vec<(String, Vec<String>)>>,
    net: Net,
    /// The members file and logs; removed when the cluster drops.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n_data` data nodes (replication factor 3, epoch 1 with all of them) and
    /// `n_sessions` session nodes, and waits until every session node is ready. Must be
    /// called on the thread that runs the test's runtime, before that runtime starts:
    /// see [`run`].
    pub async fn start(n_data: usize, n_sessions: usize) -> Cluster {
        let mut net = Net::new();
        net.enter_hub();
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<String> = (0..n_data)
            .map(|i| format!("10.77.0.{}:{DATA_PORT}", 1 + i))
            .collect();
        let members_file = dir.path().join("members.json");
        std::fs::write(
            &members_file,
            serde_json::json!({"epoch": 1, "members": members, "leaving": []}).to_string(),
        )
        .expect("members file");
        let members_file = members_file.display().to_string();
        let bin = testkit::binary::REGISTRY_NODE.path();
        let mut data = Vec::new();
        for (i, addr) in members.iter().enumerate() {
            let ip = format!("10.77.0.{}", 1 + i);
            let ns = net.add_host(&format!("d{i}"), &ip);
            let args: Vec<String> = [
                "--role",
                "data",
                "--data-addr",
                addr,
                "--node-name",
                &format!("data-{i}"),
                "--members-file",
                &members_file,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            data.push(Proc::spawn(
                &format!("data-{i}"),
                &ns,
                &ip,
                addr,
                &bin,
                &args,
                true,
            ));
        }
        let mut sessions = Vec::new();
        for i in 0..n_sessions {
            let ip = format!("10.77.0.{}", 101 + i);
            let addr = format!("{ip}:{HTTP_PORT}");
            let ns = net.add_host(&format!("s{i}"), &ip);
            let args: Vec<String> = [
                "--role",
                "session",
                "--http-addr",
                &addr,
                "--node-name",
                &format!("session-{i}"),
                "--members-file",
                &members_file,
                "--push-delay-ms",
                "50",
                "--push-max-delay-ms",
                "300",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            sessions.push(Proc::spawn(
                &format!("session-{i}"),
                &ns,
                &ip,
                &addr,
                &bin,
                &args,
                true,
            ));
        }
        let http = reqwest::Client::builder()
            // Dropped before the node closes them (it closes keep-alive connections idle
            // for --http-header-timeout, 10 s), so no request goes out on a closing one.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client");
        let c = Cluster {
            data,
            sessions,
            clients: Vec::new(),
            http,
            cuts: Mutex::new(Vec::new()),
            net,
            _dir: dir,
        };
        for i in 0..n_sessions {
            let url = format!("{}/readyz", c.session_url(i));
            let http = c.http.clone();
            eventually(
                &format!("session node {i} ready"),
                Duration::from_secs(60),
                || {
                    let http = http.clone();
                    let url = url.clone();
                    async move {
                        let ok = http.get(&url).send().await.ok()?.status().is_success();
                        ok.then_some(())
                    }
                },
            )
            .await;
        }
        c
    }

    pub fn session_url(&self, i: usize) -> String {
        format!("http://{}", self.sessions[i].addr)
    }

    pub fn data_url(&self, i: usize) -> String {
        format!("http://{}", self.data[i].addr)
    }

    /// Starts `registryctl` with `args` in the hub (where clients live); its output goes
    /// to a log in the cluster's directory.
    pub fn start_client(&mut self, name: &str, args: &[String]) -> usize {
        let ns = self.net.hub.clone();
        let bin = testkit::binary::REGISTRYCTL.path();
        self.clients
            .push(Proc::spawn(name, &ns, "10.77.0.254", "", &bin, args, false));
        self.clients.len() - 1
    }

    fn add_rules(&self, ns: &str, rules: Vec<Vec<String>>) {
        for rule in rules {
            let mut add = vec!["-A".to_string()];
            add.extend(rule.iter().cloned());
            Net::iptables(ns, &add.iter().map(String::as_str).collect::<Vec<_>>());
            self.cuts.lock().push((ns.to_owned(), rule));
        }
    }

    /// Cuts `a` and `b` apart, both ways (rules in `a`'s namespace).
    pub fn cut(&self, a: &Proc, b: &Proc) {
        let rules = vec![
            vec![
                "INPUT".into(),
                "-s".into(),
                b.ip.clone(),
                "-j".into(),
                "DROP".into(),
            ],
            vec![
                "OUTPUT".into(),
                "-d".into(),
                b.ip.clone(),
                "-j".into(),
                "DROP".into(),
            ],
        ];
        self.add_rules(&a.ns, rules);
    }

    /// Drops what `from` sends to `to` (packets only that way: `to` still reaches `from`,
    /// but gets no answer).
    pub fn drop_answers(&self, to: &Proc, from: &Proc) {
        let rules = vec![vec![
            "INPUT".into(),
            "-s".into(),
            from.ip.clone(),
            "-j".into(),
            "DROP".into(),
        ]];
        self.add_rules(&to.ns, rules);
    }

    /// Cuts `p` off from everyone (the test included).
    pub fn isolate(&self, p: &Proc) {
        let rules = vec![
            vec![
                "INPUT".into(),
                "-i".into(),
                "eth0".into(),
                "-j".into(),
                "DROP".into(),
            ],
            vec![
                "OUTPUT".into(),
                "-o".into(),
                "eth0".into(),
                "-j".into(),
                "DROP".into(),
            ],
        ];
        self.add_rules(&p.ns, rules);
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let cuts = std::mem::take(&mut *self.cuts.lock());
        for (ns, rule) in cuts {
            let mut del = vec!["-D".to_string()];
            del.extend(rule);
            Net::iptables(&ns, &del.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    // --- the public API, as raw HTTP ---

    pub async fn create_session(&self, node: usize) -> String {
        let r: serde_json::Value = self
            .http
            .post(format!("{}/api/v1/sessions", self.session_url(node)))
            .json(&serde_json::json!({"ttlSeconds": 30}))
            .send()
            .await
            .expect("create session")
            .json()
            .await
            .expect("session answer");
        r["sessionId"].as_str().expect("sessionId").to_owned()
    }

    /// Publishes; `Ok` on 2xx, else the status (or the transport error) as text.
    pub async fn publish(
        &self,
        node: usize,
        sid: &str,
        data_id: &str,
        register_id: &str,
        data: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let r = self
            .http
            .post(format!(
                "{}/api/v1/sessions/{sid}/publishers",
                self.session_url(node)
            ))
            .timeout(timeout)
            .json(
                &serde_json::json!({"dataId": data_id, "registerId": register_id, "data": [data]}),
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ))
        }
    }

    pub async fn unpublish(&self, node: usize, sid: &str, register_id: &str) -> bool {
        self.http
            .delete(format!(
                "{}/api/v1/sessions/{sid}/publishers/{register_id}",
                self.session_url(node)
            ))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    pub async fn delete_session(&self, node: usize, sid: &str) -> bool {
        self.http
            .delete(format!("{}/api/v1/sessions/{sid}", self.session_url(node)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// registerId → data items of one service as session node `node` answers, `None` on
    /// any error.
    pub async fn query(&self, node: usize, data_id: &str) -> Option<BTreeMap<String, Vec<String>>> {
        query_at(
            &self.http,
            &self.session_url(node),
            data_id,
            Duration::from_secs(5),
        )
        .await
    }

    /// A data node's `/internal/v1/status` (publisherCount, synced, ...).
    pub async fn data_status(&self, i: usize) -> Option<serde_json::Value> {
        self.http
            .get(format!("{}/internal/v1/status", self.data_url(i)))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Keeps a session alive with an open event stream (read and discarded) until the
    /// returned task is aborted.
    pub fn hold_stream(&self, node: usize, sid: &str) -> tokio::task::JoinHandle<()> {
        let url = format!("{}/api/v1/sessions/{sid}/events", self.session_url(node));
        let http = reqwest::Client::builder()
            // Dropped before the node closes them (it closes keep-alive connections idle
            // for --http-header-timeout, 10 s), so no request goes out on a closing one.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .expect("client");
        tokio::spawn(async move {
            loop {
                if let Ok(mut r) = http.get(&url).send().await {
                    while let Ok(Some(_)) = r.chunk().await {}
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

pub async fn query_at(
    http: &reqwest::Client,
    base: &str,
    data_id: &str,
    timeout: Duration,
) -> Option<BTreeMap<String, Vec<String>>> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/data"))
        .query(&[("dataId", data_id)])
        .timeout(timeout)
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success())?
        .json()
        .await
        .ok()?;
    Some(testkit::cluster::publisher_set(&v["publishers"]))
}

/// Runs a partition test: a thread of its own (it enters the hub namespace, which only
/// that thread and what it starts see) with a runtime for `body`.
pub fn run<F, Fut>(name: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    if !can_run(name) {
        return;
    }
    let t = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        })
        .expect("test thread");
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

pub use testkit::eventually;

// === impl Watch ===

/// A publisher the test expects, with when it became (or stops being) expected.
#[derive(Debug, Clone)]
struct Expected {
    data: Vec<String>,
    /// Must be listed from this time plus [`SETTLE`] on.
    since: Instant,
    /// Acknowledged removed at this time: must be gone from this plus [`SETTLE`] on.
    removed: Option<Instant>,
    /// Its presence is not checked until this time (an outcome the test does not know).
    unsure_until: Option<Instant>,
}

impl Expected {
    /// Its presence is not checked at `at`.
    fn unsure(&self, at: Instant) -> bool {
        self.unsure_until.is_some_and(|u| at < u)
    }

    /// It must be listed by an answer taken between `from` and `to`.
    fn must_list(&self, from: Instant, to: Instant) -> bool {
        !self.unsure(from) && self.since + SETTLE <= from && self.removed.is_none_or(|r| r > to)
    }

    /// It must be gone from an answer taken at `at`.
    fn must_not_list(&self, at: Instant) -> bool {
        !self.unsure(at) && self.removed.is_some_and(|r| r + SETTLE <= at)
    }
}

/// How long after an acknowledged write the query answers may still lag (API.md promises
/// 1 s; issue 19 allows 2 s during a partition).
pub const SETTLE: Duration = Duration::from_secs(2);
/// The longest a live publisher may be missing from a session node's answers.
pub const MAX_MISSING: Duration = Duration::from_millis(2_500);
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Model {
    /// service → registerId → expectation
    services: BTreeMap<String, BTreeMap<String, Expected>>,
    /// Session nodes whose answers are not checked for now.
    unchecked: BTreeSet<usize>,
}

/// What the sampler found.
#[derive(Default, Debug)]
struct Findings {
    /// (node, service, registerId) → since when it is missing (an open gap).
    open: HashMap<(usize, String, String), Instant>,
    /// The longest closed or open gap: (duration, node, service, registerId, from).
    worst: Option<(Duration, usize, String, String, Duration)>,
    /// Publishers listed that should not be (removed, or never published).
    ghosts: Vec<String>,
    samples: usize,
    pushes: usize,
    errors: BTreeMap<usize, usize>,
}

/// Session node `n`'s pushes are view `PUSH_VIEW + n` in [`Findings`] (its queries: `n`).
const PUSH_VIEW: usize = 100;

fn view_name(view: usize) -> String {
    if view >= PUSH_VIEW {
        format!("the pushes of session-{}", view - PUSH_VIEW)
    } else {
        format!("session-{view}'s answers")
    }
}

/// The exact publisher sets every session node answers, sampled every 500 ms against what
/// the test expects: gaps of live publishers, and ghosts.
#[derive(Clone)]
pub struct Watch {
    model: Arc<Mutex<Model>>,
    findings: Arc<Mutex<Findings>>,
    started: Instant,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            model: Default::default(),
            findings: Default::default(),
            started: Instant::now(),
        }
    }

    /// Expects `rid` with `data` in `service` from now (plus [`SETTLE`]).
    pub fn add(&self, service: &str, rid: &str, data: &str) {
        self.model
            .lock()
            .services
            .entry(service.into())
            .or_default()
            .insert(
                rid.into(),
                Expected {
                    data: vec![data.into()],
                    since: Instant::now(),
                    removed: None,
                    unsure_until: None,
                },
            );
    }

    /// A publish of `rid` is about to be sent: it may show from now on (a push can beat
    /// the acknowledgement), and is expected once [`Watch::add`] records the ack.
    pub fn pending(&self, service: &str, rid: &str, data: &str) {
        let far = Instant::now() + Duration::from_secs(3600);
        self.model
            .lock()
            .services
            .entry(service.into())
            .or_default()
            .entry(rid.into())
            .or_insert(Expected {
                data: vec![data.into()],
                since: Instant::now(),
                removed: None,
                unsure_until: Some(far),
            });
    }

    /// `rid` was acknowledged removed now.
    pub fn remove(&self, service: &str, rid: &str) {
        if let Some(e) = self
            .model
            .lock()
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(rid))
        {
            e.removed = Some(Instant::now());
        }
        self.close_gaps(|_, s, r| s == service && r == rid);
    }

    /// Ends the open gaps `which` selects (view, service, registerId) at now: the
    /// publisher stops being expected (removed, excused), so a view that got no answer
    /// since must not keep its gap open.
    fn close_gaps(&self, which: impl Fn(usize, &str, &str) -> bool) {
        let now = Instant::now();
        let mut f = self.findings.lock();
        let closed: Vec<_> = f.open.extract_if(|(v, s, r), _| which(*v, s, r)).collect();
        for ((view, svc, rid), from) in closed {
            let at = from.duration_since(self.started);
            note_gap(&mut f, now.duration_since(from), view, &svc, &rid, at);
        }
    }

    /// A write whose outcome is unknown: `rid` may or may not be listed until `until`;
    /// from then on it must be absent (the client was told it failed).
    pub fn unsure_absent(&self, service: &str, rid: &str, data: &str, until: Instant) {
        self.model
            .lock()
            .services
            .entry(service.into())
            .or_default()
            .insert(
                rid.into(),
                Expected {
                    data: vec![data.into()],
                    since: Instant::now(),
                    removed: Some(Instant::now()),
                    unsure_until: Some(until),
                },
            );
    }

    /// Stops checking `rid`'s presence until `until` (a publisher whose session node is
    /// cut off from every data node, for a client that does not fail over).
    pub fn excuse(&self, service: &str, rid: &str, until: Instant) {
        if let Some(e) = self
            .model
            .lock()
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(rid))
        {
            e.unsure_until = Some(until);
        }
        self.close_gaps(|_, s, r| s == service && r == rid);
    }

    /// Session node `node`'s answers are not checked until [`Watch::check_node`].
    pub fn skip_node(&self, node: usize) {
        self.model.lock().unchecked.insert(node);
        self.close_gaps(|v, _, _| v == node || v == PUSH_VIEW + node);
    }

    pub fn check_node(&self, node: usize) {
        self.model.lock().unchecked.remove(&node);
    }

    fn services(&self) -> Vec<String> {
        self.model.lock().services.keys().cloned().collect()
    }

    /// Starts sampling every session node of `cluster` every 500 ms, until the returned
    /// handle is aborted.
    pub fn sample(
        &self,
        http: reqwest::Client,
        urls: Vec<String>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        urls.into_iter()
            .enumerate()
            .map(|(node, base)| {
                let me = self.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(SAMPLE_EVERY);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let services = me.services();
                        let started = Instant::now();
                        let answers = futures::future::join_all(
                            services
                                .iter()
                                .map(|s| query_at(&http, &base, s, Duration::from_secs(4))),
                        )
                        .await;
                        let ended = Instant::now();
                        for (svc, got) in services.iter().zip(answers) {
                            me.judge(node, svc, got.as_ref(), started, ended);
                        }
                    }
                })
            })
            .collect()
    }

    fn judge(
        &self,
        node: usize,
        svc: &str,
        got: Option<&BTreeMap<String, Vec<String>>>,
        started: Instant,
        ended: Instant,
    ) {
        let model = self.model.lock();
        let mut f = self.findings.lock();
        f.samples += 1;
        if model.unchecked.contains(&node) {
            // Forget gaps that were open when checking stopped (they are not this node's
            // to answer for while it is excused).
            f.open.retain(|(n, _, _), _| *n != node);
            return;
        }
        let Some(got) = got else {
            *f.errors.entry(node).or_default() += 1;
            return;
        };
        let Some(expected) = model.services.get(svc) else {
            return;
        };
        for (rid, e) in expected {
            let listed = got.get(rid);
            let must_list = e.must_list(started, ended);
            let at = (started, self.started);
            f.observe((node, svc, rid), must_list, listed == Some(&e.data), at);
            if e.must_not_list(started) && listed.is_some() {
                f.ghosts.push(format!(
                    "+{:.1}s session-{node} {svc}: {rid} still listed after its removal",
                    started.duration_since(self.started).as_secs_f64()
                ));
            }
        }
        for rid in got.keys() {
            if !expected.contains_key(rid) {
                f.ghosts.push(format!(
                    "+{:.1}s session-{node} {svc}: {rid} listed, never published",
                    started.duration_since(self.started).as_secs_f64()
                ));
            }
        }
    }

    /// Subscribes to `services` through a session of its own on session node `node` and
    /// checks every push like a query answer (data items instead of registerIds): a push
    /// that lacks a live publisher opens a gap until a later push has it again. Runs until
    /// the returned task is aborted.
    pub fn watch_pushes(
        &self,
        c: &Cluster,
        node: usize,
        services: Vec<String>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let http = c.http.clone();
        let base = c.session_url(node);
        tokio::spawn(async move {
            let sid: serde_json::Value = match http
                .post(format!("{base}/api/v1/sessions"))
                .json(&serde_json::json!({"ttlSeconds": 30}))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return,
            };
            let Some(sid) = sid["sessionId"].as_str().map(str::to_owned) else {
                return;
            };
            let stream = reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client");
            let Ok(events) = stream
                .get(format!("{base}/api/v1/sessions/{sid}/events"))
                .send()
                .await
            else {
                return;
            };
            for svc in &services {
                let _ = http
                    .post(format!("{base}/api/v1/sessions/{sid}/subscribers"))
                    .json(&serde_json::json!({"dataId": svc}))
                    .send()
                    .await;
            }
            let mut pushes = std::pin::pin!(testkit::sse::stream(events));
            while let Some(event) = futures::StreamExt::next(&mut pushes).await {
                if event.event != "push" {
                    continue;
                }
                let Some(svc) = event.data["dataId"].as_str() else {
                    continue;
                };
                let items: BTreeSet<String> =
                    testkit::sse::items(&event.data).into_iter().collect();
                me.judge_push(node, svc, &items, Instant::now());
            }
        })
    }

    fn judge_push(&self, node: usize, svc: &str, items: &BTreeSet<String>, at: Instant) {
        let model = self.model.lock();
        let mut f = self.findings.lock();
        // Gaps in what a subscriber was last pushed are kept apart from query gaps.
        let view = PUSH_VIEW + node;
        f.pushes += 1;
        if model.unchecked.contains(&node) {
            f.open.retain(|(n, _, _), _| *n != view);
            return;
        }
        let Some(expected) = model.services.get(svc) else {
            return;
        };
        let mut known = BTreeSet::new();
        for (rid, e) in expected {
            known.extend(e.data.iter().cloned());
            let listed = !e.data.is_empty() && e.data.iter().all(|d| items.contains(d));
            let must_list = e.must_list(at, at);
            f.observe((view, svc, rid), must_list, listed, (at, self.started));
            if e.must_not_list(at) && listed {
                f.ghosts.push(format!(
                    "+{:.1}s push on session-{node} {svc}: {rid} still pushed after its removal",
                    at.duration_since(self.started).as_secs_f64()
                ));
            }
        }
        for item in items {
            if !known.contains(item) {
                f.ghosts.push(format!(
                    "+{:.1}s push on session-{node} {svc}: {item} pushed, never published",
                    at.duration_since(self.started).as_secs_f64()
                ));
            }
        }
    }

    /// Asserts that no live publisher was missing from any checked answer for longer than
    /// [`MAX_MISSING`] and that no removed or unknown publisher was listed (every node's
    /// log tail is printed when not, as the cluster drops).
    pub fn assert_held(&self, what: &str) {
        if let Err(e) = self.verdict(what) {
            panic!("{e}");
        }
    }

    fn verdict(&self, what: &str) -> Result<(), String> {
        let mut f = self.findings.lock();
        let now = Instant::now();
        let open: Vec<_> = f.open.drain().collect();
        for ((node, svc, rid), from) in open {
            let gap = now.duration_since(from);
            note_gap(
                &mut f,
                gap,
                node,
                &svc,
                &rid,
                from.duration_since(self.started),
            );
        }
        eprintln!(
            "{what}: {} samples, {} pushes, errors per node {:?}, worst gap {:?}, {} ghost samples",
            f.samples,
            f.pushes,
            f.errors,
            f.worst.as_ref().map(|w| (w.0, w.1, &w.2, &w.3, w.4)),
            f.ghosts.len()
        );
        if f.samples == 0 {
            return Err(format!("{what}: nothing was sampled"));
        }
        if let Some((gap, node, svc, rid, at)) = &f.worst {
            if *gap > MAX_MISSING {
                return Err(format!(
                    "{what}: publisher {rid} of {svc} (its session alive) was missing from {} for {gap:?} from +{:.1}s (allowed {MAX_MISSING:?})",
                    view_name(*node),
                    at.as_secs_f64()
                ));
            }
        }
        if !f.ghosts.is_empty() {
            return Err(format!(
                "{what}: publishers listed that must not be: {:?}",
                &f.ghosts[..f.ghosts.len().min(10)]
            ));
        }
        Ok(())
    }

    /// The sets a query must show now, per service (settled expectations only).
    pub fn expected_now(&self) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
        let model = self.model.lock();
        model
            .services
            .iter()
            .map(|(svc, rids)| {
                let set = rids
                    .iter()
                    .filter(|(_, e)| e.removed.is_none())
                    .map(|(rid, e)| (rid.clone(), e.data.clone()))
                    .collect();
                (svc.clone(), set)
            })
            .collect()
    }
}

impl Findings {
    /// One look at `rid` of `svc` in `view` at `at.0` (`at.1`: when the watch started): a
    /// gap opens when it must be listed and is not, and closes when it is listed again.
    fn observe(
        &mut self,
        (view, svc, rid): (usize, &str, &str),
        must_list: bool,
        listed: bool,
        at: (Instant, Instant),
    ) {
        let (now, origin) = at;
        let key = (view, svc.to_owned(), rid.to_owned());
        if !must_list {
            self.open.remove(&key);
        } else if !listed {
            self.open.entry(key).or_insert(now);
        } else if let Some(from) = self.open.remove(&key) {
            let gap = now.duration_since(from);
            note_gap(self, gap, view, svc, rid, from.duration_since(origin));
        }
    }
}

fn note_gap(f: &mut Findings, gap: Duration, node: usize, svc: &str, rid: &str, at: Duration) {
    if f.worst.as_ref().is_none_or(|w| gap > w.0) {
        f.worst = Some((gap, node, svc.to_owned(), rid.to_owned(), at));
    }
}

/// Waits until every session node in `nodes` answers exactly `watch`'s expected sets.
pub async fn wait_exact(c: &Cluster, watch: &Watch, nodes: &[usize], within: Duration, what: &str) {
    let expected = watch.expected_now();
    let deadline = Instant::now() + within;
    loop {
        let mut diff = None;
        'outer: for &n in nodes {
            for (svc, want) in &expected {
                let got = c.query(n, svc).await;
                if got.as_ref() != Some(want) {
                    diff = Some(format!("session-{n} {svc}: want {want:?}, got {got:?}"));
                    break 'outer;
                }
            }
        }
        match diff {
            None => return,
            Some(d) if Instant::now() >= deadline => {
                panic!("{what}: not exact within {within:?}: {d}");
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
