//! Multi-process clusters for registry-node's cluster tests (`registry-node/tests/cluster_kit`
//! re-exports this module): data and session nodes of the real binary on a random `127.x.y`
//! prefix, SIGKILLed, paused and restarted; the membership file they watch; and reads of the
//! registry through the public API, checked against exact publisher sets.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::process::{Process, Spawn};
use crate::sse;

pub use crate::poll::eventually as poll;
pub use crate::sse::data_info_id;

pub const DATA_PORT: u16 = 9622;
pub const HTTP_PORT: u16 = 9603;
/// A session node's internal listener (membership, status).
pub const INTERNAL_PORT: u16 = 9624;
pub const LEASE_MS: u64 = 2_000;

/// Publishers as a query shows them: registerId → data.
pub type PublisherSet = BTreeMap<String, Vec<String>>;
/// The publishers each service must end with, by service name.
pub type ServiceSets = BTreeMap<String, PublisherSet>;

/// How a test cluster is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--replication-factor` of every node (the binary's default when `None`).
    pub replication_factor: Option<usize>,
    /// `--token` of every node; the kit's HTTP client then sends it.
    pub token: Option<String>,
    /// `--cluster-token` of every node; the kit's internal client ([`Cluster::internal`])
    /// then sends it.
    pub cluster_token: Option<String>,
    /// Sign every membership the kit writes with this key, and start every node with its
    /// public half as `--membership-key`.
    pub signer: Option<std::sync::Arc<registry_trust::MembershipSigner>>,
    /// Write the first membership (epoch 1, every data node) before starting.
    pub membership: bool,
    /// Wait for every session node's `/readyz`.
    pub wait_ready: bool,
    /// `--anti-entropy-ms` of data nodes (300 when `None`).
    pub anti_entropy_ms: Option<u64>,
    /// `--reconcile-ms` of session nodes (500 when `None`).
    pub reconcile_ms: Option<u64>,
    /// More flags for every data node.
    pub data_args: Vec<String>,
    /// More flags for every session node (e.g. `--access-file`).
    pub session_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replication_factor: None,
            token: None,
            cluster_token: None,
            signer: None,
            membership: true,
            wait_ready: true,
            anti_entropy_ms: None,
            reconcile_ms: None,
            data_args: Vec::new(),
            session_args: Vec::new(),
        }
    }
}

/// One node of the cluster: declared with its address and flags, started (again) on demand.
pub struct Proc {
    pub addr: String,
    spawn: Spawn,
    log: PathBuf,
    process: Option<Process>,
}

impl Proc {
    fn spawn(&mut self) {
        self.kill();
        let process = self
            .spawn
            .clone()
            .start()
            .unwrap_or_else(|e| panic!("{}: {e}", self.addr));
        self.process = Some(process);
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM: asks for a graceful stop (see [`Proc::exited`]).
    pub fn terminate(&mut self) {
        if let Some(p) = &self.process {
            p.terminate();
        }
    }

    /// SIGSTOP: the node freezes with its sockets open (see [`Proc::resume`]).
    pub fn pause(&mut self) {
        if let Some(p) = &self.process {
            p.pause();
        }
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&mut self) {
        if let Some(p) = &self.process {
            p.resume();
        }
    }

    /// The exit status once the process has ended (it is then no longer running).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.exited()?;
        self.process = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(Process::is_running)
    }

    /// The node's log file (it survives restarts).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// What the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub prefix: String,
    pub data: Vec<Proc>,
    pub sessions: Vec<Proc>,
    pub members_file: PathBuf,
    pub epoch: u64,
    pub http: reqwest::Client,
    /// Sends the cluster token: for internal listeners.
    pub internal: reqwest::Client,
    pub options: Options,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop the nodes before their logs are removed or kept.
        for p in self.data.iter_mut().chain(self.sessions.iter_mut()) {
            p.kill();
        }
        let keep =
            std::thread::panicking() || std::env::var_os("REGISTRY_TEST_KEEP_LOGS").is_some();
        if let Some(dir) = self.dir.take().filter(|_| keep) {
            eprintln!("cluster logs kept in {}", dir.keep().display());
        }
    }
}

impl Cluster {
    /// `n_data` data nodes (all members, epoch 1) and `n_sessions` session nodes.
    pub async fn start(n_data: usize, n_sessions: usize) -> Cluster {
        Self::start_with(n_data, n_sessions, Options::default()).await
    }

    pub async fn start_with(n_data: usize, n_sessions: usize, options: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir()
            .expect("tempdir");
        let members_file = dir.path().join("members.json");
        let mut c = Cluster {
            prefix: crate::net::loopback_prefix(),
            data: Vec::new(),
            sessions: Vec::new(),
            members_file,
            epoch: 0,
            http: client_builder(options.token.as_deref())
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            internal: client_builder(options.cluster_token.as_deref())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            options,
            dir: Some(dir),
        };
        for _ in 0..n_data {
            c.add_data_proc();
        }
        if c.options.membership {
            let members: Vec<String> = c.data.iter().map(|d| d.addr.clone()).collect();
            c.set_membership(&members, &[]);
        }
        for d in &mut c.data {
            d.spawn();
        }
        for i in 0..n_sessions {
            let addr = format!("{}.{}:{HTTP_PORT}", c.prefix, 101 + i);
            let internal = format!("{}.{}:{INTERNAL_PORT}", c.prefix, 101 + i);
            let name = format!("session-{i}");
            let spawn = c
                .node(&name)
                .args(["--role", "session", "--http-addr", &addr])
                .args(["--internal-addr", &internal])
                .args(["--session-lease-ms", &LEASE_MS.to_string()])
                .args([
                    "--reconcile-ms",
                    &c.options.reconcile_ms.unwrap_or(500).to_string(),
                ])
                .args([
                    "--push-delay-ms",
                    "50",
                    "--push-max-delay-ms",
                    "300",
                    "--version-scan-ms",
                    "1000",
                ])
                .args(c.options.session_args.iter().cloned());
            let mut p = Proc {
                log: c.log_of(&name),
                addr,
                spawn,
                process: None,
            };
            p.spawn();
            c.sessions.push(p);
        }
        if c.options.wait_ready {
            for i in 0..n_sessions {
                c.wait_ready(i).await;
            }
        }
        c
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.dir
            .as_ref()
            .expect("cluster dir")
            .path()
            .join(format!("{name}.log"))
    }

    /// A node named `name` with the flags every node of the cluster shares.
    fn node(&self, name: &str) -> Spawn {
        let mut spawn = Spawn::registry_node(name)
            .log(self.log_of(name))
            .args(["--node-name", name])
            .arg("--members-file")
            .arg(&self.members_file);
        if let Some(rf) = self.options.replication_factor {
            spawn = spawn.args(["--replication-factor", &rf.to_string()]);
        }
        if let Some(t) = &self.options.token {
            spawn = spawn.args(["--token", t]);
        }
        if let Some(t) = &self.options.cluster_token {
            spawn = spawn.args(["--cluster-token", t]);
        }
        if let Some(signer) = &self.options.signer {
            spawn = spawn.args(["--membership-key", &signer.public_key().to_base64()]);
        }
        spawn
    }

    /// Opens the event stream of session `sid` on session node `session`.
    pub fn stream(&self, session: usize, sid: &str) -> mpsc::UnboundedReceiver<Push> {
        open_stream_with(
            self.options.token.as_deref(),
            &self.session_url(session),
            sid,
        )
    }

    /// Declares one more data node (not started, not a member yet).
    pub fn add_data_proc(&mut self) -> usize {
        let i = self.data.len();
        let addr = format!("{}.{}:{DATA_PORT}", self.prefix, 1 + i);
        let name = format!("data-{i}");
        let spawn = self
            .node(&name)
            .args(["--role", "data", "--data-addr", &addr])
            .args(["--session-lease-ms", &LEASE_MS.to_string()])
            .args([
                "--anti-entropy-ms",
                &self.options.anti_entropy_ms.unwrap_or(300).to_string(),
            ])
            .args(self.options.data_args.iter().cloned());
        self.data.push(Proc {
            log: self.log_of(&name),
            addr,
            spawn,
            process: None,
        });
        i
    }

    pub fn start_data(&mut self, i: usize) {
        self.data[i].spawn();
    }

    pub fn restart_data(&mut self, i: usize) {
        self.data[i].kill();
        self.data[i].spawn();
    }

    /// Writes a new membership (next epoch) into the members file every node watches,
    /// signed when the cluster has a signer.
    pub fn set_membership(&mut self, members: &[String], leaving: &[String]) {
        self.epoch += 1;
        let doc = self.membership_doc(self.epoch, members, leaving);
        self.write_members_file(&doc);
    }

    /// A membership document, signed when the cluster has a signer.
    pub fn membership_doc(&self, epoch: u64, members: &[String], leaving: &[String]) -> Value {
        let doc = registry_types::MembershipDoc {
            epoch,
            members: members.to_vec(),
            leaving: leaving.to_vec(),
            signature: None,
            ids: Default::default(),
        };
        let doc = match &self.options.signer {
            Some(signer) => doc.signed(signer),
            None => doc,
        };
        serde_json::to_value(doc).expect("membership json")
    }

    /// Replaces the members file every node watches with `doc`, as is.
    pub fn write_members_file(&self, doc: &Value) {
        crate::fs::replace_file(&self.members_file, doc.to_string());
    }

    /// `http://` of session node `i`'s internal listener.
    pub fn session_internal_url(&self, i: usize) -> String {
        format!("http://{}.{}:{INTERNAL_PORT}", self.prefix, 101 + i)
    }

    pub fn session_url(&self, i: usize) -> String {
        format!("http://{}", self.sessions[i].addr)
    }

    pub fn data_url(&self, i: usize) -> String {
        format!("http://{}", self.data[i].addr)
    }

    /// Prints the end of every node's log.
    pub fn dump_logs(&self) {
        for p in self.data.iter().chain(self.sessions.iter()) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("==== {} ====", p.addr);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    pub async fn wait_ready(&self, session: usize) {
        let url = format!("{}/readyz", self.session_url(session));
        poll("session ready", Duration::from_secs(30), || async {
            matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
        })
        .await;
    }

    pub async fn status(&self, data: usize) -> Option<Value> {
        let r = self
            .internal
            .get(format!("{}/internal/v1/status", self.data_url(data)))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// A session of 300 s on session node `session`.
    pub async fn create_session(&self, session: usize) -> String {
        self.create_session_with_ttl(session, 300).await
    }

    /// A session of `ttl_seconds` on session node `session`.
    pub async fn create_session_with_ttl(&self, session: usize, ttl_seconds: u64) -> String {
        let r: Value = self
            .http
            .post(format!("{}/api/v1/sessions", self.session_url(session)))
            .json(&json!({"ttlSeconds": ttl_seconds}))
            .send()
            .await
            .expect("create session")
            .json()
            .await
            .expect("session json");
        r["sessionId"].as_str().expect("sessionId").to_owned()
    }

    /// Publishes; true on a 2xx.
    pub async fn publish(
        &self,
        session: usize,
        sid: &str,
        data_id: &str,
        register_id: &str,
        data: &[&str],
    ) -> bool {
        publish_at(
            &self.http,
            &self.session_url(session),
            sid,
            data_id,
            register_id,
            data,
        )
        .await
    }

    pub async fn subscribe(&self, session: usize, sid: &str, data_id: &str) -> String {
        let r: Value = self
            .http
            .post(format!(
                "{}/api/v1/sessions/{sid}/subscribers",
                self.session_url(session)
            ))
            .json(&json!({"dataId": data_id}))
            .send()
            .await
            .expect("subscribe")
            .json()
            .await
            .expect("subscribe json");
        r["registerId"].as_str().expect("registerId").to_owned()
    }

    /// Publishes each `(service, register id, address)` through session node `session`,
    /// asserting it is accepted, and records it in `expected`.
    pub async fn publish_recorded(
        &self,
        session: usize,
        sid: &str,
        publishers: impl IntoIterator<Item = (String, String, String)>,
        expected: &mut ServiceSets,
    ) {
        for (svc, rid, data) in publishers {
            assert!(self.publish(session, sid, &svc, &rid, &[&data]).await);
            expected.entry(svc).or_default().insert(rid, vec![data]);
        }
    }

    /// The publishers of `data_id` as session node `session` answers; `None` on an error.
    pub async fn query(&self, session: usize, data_id: &str) -> Option<PublisherSet> {
        query_at(&self.http, &self.session_url(session), data_id).await
    }

    /// Waits until data node `data` says it is synced and holds exactly `publishers` publishers.
    pub async fn wait_synced_holding(&self, data: usize, publishers: u64, within: Duration) {
        let what = format!("data node {data} synced with {publishers} publishers");
        poll(&what, within, || async {
            self.status(data).await.is_some_and(|s| {
                s["data"]["synced"] == true && s["data"]["publisherCount"] == publishers
            })
        })
        .await;
    }

    /// Waits until every session node answers exactly its set for each service of `expected`
    /// (`within` for each service).
    pub async fn wait_all_sessions_show_each(&self, expected: &ServiceSets, within: Duration) {
        for (svc, want) in expected {
            self.wait_all_sessions_show(svc, want, within).await;
        }
    }

    /// Waits until every running session node answers exactly `expected` for `data_id`; at
    /// the deadline prints every node's log and what the first differing node showed.
    pub async fn wait_all_sessions_show(
        &self,
        data_id: &str,
        expected: &PublisherSet,
        within: Duration,
    ) {
        let differing = || async {
            for s in (0..self.sessions.len()).filter(|s| self.sessions[*s].is_running()) {
                let got = self.query(s, data_id).await;
                if got.as_ref() != Some(expected) {
                    return Err(format!(
                        "session {s} shows {:?} for {data_id}, expected {} publishers: {}",
                        got.as_ref().map(|g| g.len()),
                        expected.len(),
                        diff(expected, got.as_ref())
                    ));
                }
            }
            Ok(())
        };
        if let Err(e) = crate::poll::poll_until(data_id, within, differing).await {
            self.dump_logs();
            panic!("{}", e.last.clone().unwrap_or_else(|| e.to_string()));
        }
    }
}

/// What concurrent publishers recorded: the publishers each service must end with (the
/// accepted publishes) and how many publishes failed.
#[derive(Default)]
pub struct PublishLog {
    expected: Mutex<ServiceSets>,
    failures: AtomicUsize,
}

impl PublishLog {
    pub fn record(&self, accepted: bool, svc: &str, rid: String, data: String) {
        if accepted {
            self.expected
                .lock()
                .entry(svc.to_owned())
                .or_default()
                .insert(rid, vec![data]);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn published(&self) -> usize {
        self.expected.lock().values().map(|s| s.len()).sum()
    }

    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn expected(&self) -> ServiceSets {
        self.expected.lock().clone()
    }
}

/// Publisher `t` of `publishers` concurrent ones: until `stop`, publishes register ids
/// `t{t}-{n}` (address `{rid}.example:80`) over `services` in turn through
/// `publish(service, register id, address)`, recording each outcome in `log`.
pub async fn publish_until_stopped<F, Fut>(
    t: usize,
    publishers: usize,
    services: &[String],
    stop: &AtomicBool,
    log: &PublishLog,
    mut publish: F,
) where
    F: FnMut(String, String, String) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let svc = &services[(n * publishers + t) % services.len()];
        let rid = format!("t{t}-{n}");
        let data = format!("{rid}.example:80");
        let accepted = publish(svc.clone(), rid.clone(), data.clone()).await;
        log.record(accepted, svc, rid, data);
        n += 1;
    }
}

/// Publishes through the session node at `base`; true on a 2xx.
pub async fn publish_at(
    http: &reqwest::Client,
    base: &str,
    sid: &str,
    data_id: &str,
    register_id: &str,
    data: &[&str],
) -> bool {
    let r = http
        .post(format!("{base}/api/v1/sessions/{sid}/publishers"))
        .json(&json!({"dataId": data_id, "registerId": register_id, "data": data}))
        .send()
        .await;
    matches!(r, Ok(r) if r.status().is_success())
}

/// `GET /api/v1/data?dataId=` at `base`: the publishers, `None` on an error.
pub async fn query_at(http: &reqwest::Client, base: &str, data_id: &str) -> Option<PublisherSet> {
    let r = http
        .get(format!("{base}/api/v1/data"))
        .query(&[("dataId", data_id)])
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some(publisher_set(&v["publishers"]))
}

fn diff(expected: &PublisherSet, got: Option<&PublisherSet>) -> String {
    let empty = PublisherSet::new();
    let got = got.unwrap_or(&empty);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| got.get(*k) != expected.get(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    format!("missing/different {missing:?}, extra {extra:?}")
}

/// The `publishers` array of a query answer as a [`PublisherSet`].
pub fn publisher_set(v: &Value) -> PublisherSet {
    let strings = |d: &Value| -> Vec<String> {
        d.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["registerId"].as_str().unwrap_or_default().to_owned(),
                strings(&p["data"]),
            )
        })
        .collect()
}

/// One push as a subscriber received it: dataInfoId, version, every data item (sorted).
#[derive(Debug, Clone)]
pub struct Push {
    pub data_info_id: String,
    pub version: u64,
    pub items: Vec<String>,
}

/// A client builder that sends `token` as a bearer token on every request.
pub fn client_builder(token: Option<&str>) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).expect("token");
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder().default_headers(headers)
}

/// Opens the event stream of a session and forwards its pushes.
pub fn open_stream(http: &reqwest::Client, base: &str, sid: &str) -> mpsc::UnboundedReceiver<Push> {
    let _ = http;
    open_stream_with(None, base, sid)
}

/// [`open_stream`] with a bearer token.
pub fn open_stream_with(
    token: Option<&str>,
    base: &str,
    sid: &str,
) -> mpsc::UnboundedReceiver<Push> {
    let (tx, rx) = mpsc::unbounded_channel();
    let request = client_builder(token)
        .build()
        .expect("client")
        .get(format!("{base}/api/v1/sessions/{sid}/events"));
    tokio::spawn(async move {
        let Ok(response) = sse::open(request).await else {
            return;
        };
        let mut events = std::pin::pin!(sse::stream(response));
        while let Some(event) = events.next().await {
            if event.event != "push" {
                continue;
            }
            let push = Push {
                data_info_id: event.data["dataInfoId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                version: event.data["version"].as_u64().unwrap_or(0),
                items: sse::items(&event.data),
            };
            if tx.send(push).is_err() {
                return;
            }
        }
    });
    rx
}

/// A publisher set from `(registerId, address)` pairs.
pub fn set(pairs: &[(&str, &str)]) -> PublisherSet {
    pairs
        .iter()
        .map(|(r, d)| (r.to_string(), vec![d.to_string()]))
        .collect()
}

/// Every address of a publisher set, sorted.
pub fn items(set: &PublisherSet) -> Vec<String> {
    let mut v: Vec<String> = set.values().flatten().cloned().collect();
    v.sort();
    v
}

/// Latest push per dataInfoId from one stream.
pub struct Subscriber {
    pub rx: mpsc::UnboundedReceiver<Push>,
    pub latest: BTreeMap<String, Push>,
}

impl Subscriber {
    pub fn drain(&mut self) {
        while let Ok(p) = self.rx.try_recv() {
            let prev = self
                .latest
                .get(&p.data_info_id)
                .map(|l| l.version)
                .unwrap_or(0);
            assert!(
                p.version >= prev,
                "push went backwards for {}",
                p.data_info_id
            );
            self.latest.insert(p.data_info_id.clone(), p);
        }
    }

    pub fn shows(&self, data_id: &str, expected: &[String]) -> bool {
        self.latest
            .get(&data_info_id(data_id))
            .is_some_and(|p| p.items == expected)
    }
}

/// Waits until `sub` shows `expected` for `data_id`; returns how long that took.
pub async fn wait_subscriber(
    sub: &mut Subscriber,
    data_id: &str,
    expected: &[String],
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let what = format!("the subscriber of {data_id} to get {expected:?}");
    let shown = crate::poll::poll_until(&what, within, || {
        sub.drain();
        std::future::ready(sub.shows(data_id, expected))
    })
    .await;
    if let Err(e) = shown {
        panic!(
            "{e}; last push {:?}",
            sub.latest.get(&data_info_id(data_id))
        );
    }
    start.elapsed()
}
