//! The simulated kubelet: runs each Pod as real local processes (one per container) with
//! its own 127.x.y.z pod IP, probes readiness over HTTP/TCP, restarts exited containers,
//! terminates pods gracefully, and writes Pod status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use super::env::{container_env, expand, program_and_args, rewrite_wildcard};
use crate::error::{Error, Result};
use crate::resources::GroupResource;
use crate::store::{now_rfc3339, Store};

/// Settings of the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Image (full reference, repository, or last path segment without tag) → binary.
    pub image_map: BTreeMap<String, PathBuf>,
    /// Pod directories and logs go under `{state_dir}/pods/{namespace}/{pod}/`.
    pub state_dir: PathBuf,
    /// Probes run at most this far apart whatever `periodSeconds`/`initialDelaySeconds`
    /// say, so that simulated clusters settle quickly.
    pub probe_period_cap: Duration,
    /// Longest wait before restarting an exited container.
    pub max_restart_backoff: Duration,
    /// Pod IPs are 127.{a}.{b}.{c}; `None` picks `a` (1..=254) and `b` at random so that
    /// simulators running side by side do not share addresses.
    pub pod_ip_prefix: Option<(u8, u8)>,
    /// Given to every pod process as `KUBECONFIG` (unless its env sets one), so that pods
    /// that talk to the API server (kube's `Config::infer`) reach the simulator.
    pub kubeconfig: Option<PathBuf>,
}

impl KubeletConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            image_map: BTreeMap::new(),
            state_dir,
            probe_period_cap: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(5),
            pod_ip_prefix: None,
            kubeconfig: None,
        }
    }
}

/// A running (or finished) container process, as reported by [`Kubelet::pods`].
#[derive(Debug, Clone, Serialize)]
pub struct ContainerProcess {
    pub name: String,
    pub pid: Option<u32>,
    pub restart_count: u32,
    pub ready: bool,
    pub log: PathBuf,
}

/// A pod the kubelet runs.
#[derive(Debug, Clone, Serialize)]
pub struct PodProcess {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub containers: Vec<ContainerProcess>,
}

#[derive(Debug, Clone)]
struct ContainerState {
    name: String,
    image: String,
    log: PathBuf,
    pid: Option<u32>,
    restart_count: u32,
    ready: bool,
    started: bool,
    /// Will not run again (restart policy says so, or the pod is terminating).
    finished: bool,
    exit_code: Option<i32>,
    state: Value,
    last_state: Value,
}

struct PodCtx {
    store: Arc<Store>,
    pod: Value,
    ip: Ipv4Addr,
    dir: PathBuf,
    image_map: BTreeMap<String, PathBuf>,
    kubeconfig: Option<PathBuf>,
    probe_cap: Duration,
    max_backoff: Duration,
    http: reqwest::Client,
    containers: Mutex<Vec<ContainerState>>,
    notify: Notify,
}

struct PodHandle {
    uid: String,
    ctx: Arc<PodCtx>,
    terminate: watch::Sender<Option<Duration>>,
    terminating: bool,
    task: JoinHandle<()>,
}

impl PodHandle {
    fn kill(&self) {
        self.task.abort();
        for c in self.ctx.containers.lock().iter() {
            if let Some(pid) = c.pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The kubelet. Start [`Kubelet::run`] on a task; it follows Pod objects in the store.
pub struct Kubelet {
    store: Arc<Store>,
    config: KubeletConfig,
    pods: Mutex<HashMap<(String, String), PodHandle>>,
    ip_prefix: (u8, u8),
    next_ip: Mutex<u32>,
    http: reqwest::Client,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

impl Kubelet {
    pub fn new(store: Arc<Store>, config: KubeletConfig) -> Result<Self> {
        let ip_prefix = config.pod_ip_prefix.unwrap_or_else(|| {
            let mut rng = rand::rng();
            (rng.random_range(1..=254), rng.random())
        });
        if ip_prefix.0 == 0 {
            return Err(Error::Config("pod IP prefix 127.0.x.x is reserved (127.0.0.1)".into()));
        }
        let http = reqwest::Client::builder().no_proxy().build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        std::fs::create_dir_all(config.state_dir.join("pods"))?;
        Ok(Self { store, config, pods: Mutex::new(HashMap::new()), ip_prefix, next_ip: Mutex::new(0), http })
    }

    fn allocate_ip(&self) -> Ipv4Addr {
        let mut n = self.next_ip.lock();
        *n += 1;
        let b = self.ip_prefix.1.wrapping_add((*n / 254) as u8);
        Ipv4Addr::new(127, self.ip_prefix.0, b, (*n % 254) as u8 + 1)
    }

    /// Follows Pod objects: starts, terminates and forgets pods. Never returns.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        loop {
            self.sync();
            let wait = async {
                loop {
                    match events.recv().await {
                        Ok(e) if e.gr.group.is_empty() && e.gr.resource == "pods" => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
        }
    }

    fn sync(&self) {
        let pods = self.store.list_all(&GroupResource::new("", "pods"));
        let mut handles = self.pods.lock();
        let mut present = HashSet::new();
        for pod in &pods {
            let key = (s(pod, "/metadata/namespace").to_string(), s(pod, "/metadata/name").to_string());
            let uid = s(pod, "/metadata/uid").to_string();
            let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
            present.insert(key.clone());
            if handles.get(&key).is_some_and(|h| h.uid != uid) {
                if let Some(old) = handles.remove(&key) {
                    old.kill();
                }
            }
            match handles.get_mut(&key) {
                Some(h) => {
                    if deleting && !h.terminating {
                        h.terminating = true;
                        let grace = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30);
                        let _ = h.terminate.send(Some(Duration::from_secs(grace)));
                    }
                    if h.terminating && h.task.is_finished() {
                        self.store.finalize_pod(&key.0, &key.1, &uid);
                    }
                }
                None if deleting => self.store.finalize_pod(&key.0, &key.1, &uid),
                None => {
                    let handle = self.start_pod(pod);
                    handles.insert(key, handle);
                }
            }
        }
        handles.retain(|key, h| {
            let keep = present.contains(key);
            if !keep {
                h.kill();
            }
            keep
        });
    }

    fn start_pod(&self, pod: &Value) -> PodHandle {
        let ns = s(pod, "/metadata/namespace");
        let name = s(pod, "/metadata/name");
        let dir = self.config.state_dir.join("pods").join(ns).join(name);
        let _ = std::fs::create_dir_all(&dir);
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        let cname = s(c, "/name").to_string();
                        ContainerState {
                            log: dir.join(format!("{cname}.log")),
                            name: cname,
                            image: s(c, "/image").to_string(),
                            pid: None,
                            restart_count: 0,
                            ready: false,
                            started: false,
                            finished: false,
                            exit_code: None,
                            state: json!({"waiting": {"reason": "ContainerCreating"}}),
                            last_state: json!({}),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ctx = Arc::new(PodCtx {
            store: self.store.clone(),
            pod: pod.clone(),
            ip: self.allocate_ip(),
            dir,
            image_map: self.config.image_map.clone(),
            kubeconfig: self.config.kubeconfig.clone(),
            probe_cap: self.config.probe_period_cap,
            max_backoff: self.config.max_restart_backoff,
            http: self.http.clone(),
            containers: Mutex::new(containers),
            notify: Notify::new(),
        });
        let (terminate, term_rx) = watch::channel(None);
        let task = tokio::spawn(run_pod(ctx.clone(), term_rx));
        PodHandle { uid: s(pod, "/metadata/uid").to_string(), ctx, terminate, terminating: false, task }
    }

    /// SIGKILLs every process of a pod (simulated node loss of that pod's container); the
    /// kubelet restarts them per the restart policy. Returns the killed process ids.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> Result<Vec<u32>> {
        let handles = self.pods.lock();
        let h = handles.get(&(namespace.to_string(), name.to_string())).ok_or_else(|| Error::not_found("", "pods", name))?;
        let pids: Vec<u32> = h.ctx.containers.lock().iter().filter_map(|c| c.pid).collect();
        if pids.is_empty() {
            return Err(Error::conflict("", "pods", name, "no running process"));
        }
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        Ok(pids)
    }

    /// The pods this kubelet runs, with their IPs, processes and log files.
    pub fn pods(&self) -> Vec<PodProcess> {
        let handles = self.pods.lock();
        let mut out: Vec<PodProcess> = handles
            .iter()
            .map(|((ns, name), h)| PodProcess {
                namespace: ns.clone(),
                name: name.clone(),
                uid: h.uid.clone(),
                ip: h.ctx.ip,
                dir: h.ctx.dir.clone(),
                containers: h
                    .ctx
                    .containers
                    .lock()
                    .iter()
                    .map(|c| ContainerProcess { name: c.name.clone(), pid: c.pid, restart_count: c.restart_count, ready: c.ready, log: c.log.clone() })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// SIGKILLs every pod process now (simulator shutdown).
    pub fn kill_all(&self) {
        for (_, h) in self.pods.lock().drain() {
            h.kill();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

async fn run_pod(ctx: Arc<PodCtx>, term: watch::Receiver<Option<Duration>>) {
    let start_time = now_rfc3339();
    let count = ctx.containers.lock().len();
    let mut set = JoinSet::new();
    for idx in 0..count {
        set.spawn(run_container(ctx.clone(), idx, term.clone()));
    }
    loop {
        write_status(&ctx, &start_time);
        tokio::select! {
            _ = ctx.notify.notified() => {}
            joined = set.join_next() => if joined.is_none() { break },
        }
    }
    write_status(&ctx, &start_time);
}

fn write_status(ctx: &PodCtx, start_time: &str) {
    let containers = ctx.containers.lock().clone();
    let ns = s(&ctx.pod, "/metadata/namespace");
    let name = s(&ctx.pod, "/metadata/name");
    let uid = s(&ctx.pod, "/metadata/uid");
    let ip = ctx.ip.to_string();
    ctx.store.update_status(&GroupResource::new("", "pods"), ns, name, uid, |pod| {
        let old = pod.get("status").cloned().unwrap_or(json!({}));
        let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
        let phase = if !containers.is_empty() && containers.iter().all(|c| c.finished) {
            if containers.iter().all(|c| c.exit_code == Some(0)) { "Succeeded" } else { "Failed" }
        } else if containers.iter().any(|c| c.started) {
            "Running"
        } else {
            "Pending"
        };
        let now = now_rfc3339();
        let condition = |t: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let since = old
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(t)))
                .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or(json!(now));
            json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": format!("kubesim://{}", c.image),
                    "containerID": c.pid.map(|p| format!("kubesim://{p}")),
                    "ready": c.ready, "started": c.pid.is_some(), "restartCount": c.restart_count,
                    "state": c.state, "lastState": c.last_state,
                })
            })
            .collect();
        pod["status"] = json!({
            "phase": phase,
            "conditions": [condition("PodScheduled", true), condition("Initialized", true), condition("ContainersReady", all_ready), condition("Ready", all_ready)],
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        });
    });
}

impl PodCtx {
    fn container_spec(&self, idx: usize) -> Value {
        self.pod.pointer(&format!("/spec/containers/{idx}")).cloned().unwrap_or(json!({}))
    }

    fn update(&self, idx: usize, f: impl FnOnce(&mut ContainerState)) {
        if let Some(c) = self.containers.lock().get_mut(idx) {
            f(c);
        }
        self.notify.notify_one();
    }

    fn lookup(&self, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
        let rt = self.store.resolve("", "v1", kind)?;
        let obj = self.store.get(&rt, Some(ns), name).ok()?;
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(data) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                let v = v.as_str().unwrap_or_default();
                let v = if kind == "secrets" {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()?
                } else {
                    v.to_string()
                };
                values.insert(k.clone(), v);
            }
        }
        if kind == "secrets" {
            if let Some(data) = obj.get("stringData").and_then(Value::as_object) {
                for (k, v) in data {
                    values.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
        }
        if key.is_empty() {
            return serde_json::to_string(&values).ok();
        }
        values.remove(key)
    }

    fn spawn(&self, idx: usize) -> std::result::Result<tokio::process::Child, String> {
        let container = self.container_spec(idx);
        let ip = self.ip.to_string();
        let (program, args) = program_and_args(&self.image_map, &container)?;
        let env = container_env(&self.pod, &container, &ip, &|k, ns, n, key| self.lookup(k, ns, n, key))?;
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let args: Vec<String> = args.iter().map(|a| rewrite_wildcard(&expand(a, &env_map), &ip)).collect();
        let log_path = self.containers.lock().get(idx).map(|c| c.log.clone()).unwrap_or_default();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("log file {}: {e}", log_path.display()))?;
        let _ = writeln!(log, "--- kubesim {}: starting {} {:?} (pod {}/{}, ip {ip})", now_rfc3339(), program.display(), args, s(&self.pod, "/metadata/namespace"), s(&self.pod, "/metadata/name"));
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let workdir = container.get("workingDir").and_then(Value::as_str).map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(|| self.dir.clone());
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .envs(self.kubeconfig.iter().map(|k| ("KUBECONFIG", k.as_os_str())))
            .envs(env)
            .current_dir(workdir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: only an async-signal-safe prctl(2) call runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| format!("starting {}: {e}", program.display()))
    }

    async fn probe_once(&self, probe: &Value, container: &Value) -> bool {
        let timeout = Duration::from_secs(probe.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(1).max(1));
        let port_of = |p: Option<&Value>| -> Option<u16> {
            match p? {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(name) => container
                    .get("ports")
                    .and_then(Value::as_array)?
                    .iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))?
                    .get("containerPort")?
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok()),
                _ => None,
            }
        };
        if let Some(get) = probe.get("httpGet") {
            let Some(port) = port_of(get.get("port")) else { return false };
            let host = get.get("host").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| self.ip.to_string());
            let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
            let url = format!("http://{host}:{port}{}{path}", if path.starts_with('/') { "" } else { "/" });
            return match self.http.get(&url).timeout(timeout).send().await {
                Ok(r) => r.status().as_u16() >= 200 && r.status().as_u16() < 400,
                Err(_) => false,
            };
        }
        if let Some(tcp) = probe.get("tcpSocket") {
            let Some(port) = port_of(tcp.get("port")) else { return false };
            return matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect((self.ip, port))).await, Ok(Ok(_)));
        }
        if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
            let argv: Vec<String> = cmd.iter().filter_map(|a| a.as_str().map(str::to_string)).collect();
            let Some((first, rest)) = argv.split_first() else { return false };
            let run = tokio::process::Command::new(first).args(rest).env("POD_IP", self.ip.to_string()).kill_on_drop(true).status();
            return matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(st)) if st.success());
        }
        false
    }

    /// Probes readiness until cancelled (never returns).
    async fn probe_loop(&self, idx: usize) {
        let container = self.container_spec(idx);
        let Some(probe) = container.get("readinessProbe").cloned() else {
            self.update(idx, |c| c.ready = true);
            return std::future::pending().await;
        };
        let secs = |k: &str, d: u64| Duration::from_secs(probe.get(k).and_then(Value::as_u64).unwrap_or(d));
        let period = secs("periodSeconds", 10).min(self.probe_cap).max(Duration::from_millis(50));
        tokio::time::sleep(secs("initialDelaySeconds", 0).min(self.probe_cap)).await;
        let success_threshold = probe.get("successThreshold").and_then(Value::as_u64).unwrap_or(1).max(1);
        let failure_threshold = probe.get("failureThreshold").and_then(Value::as_u64).unwrap_or(3).max(1);
        let (mut successes, mut failures) = (0u64, 0u64);
        loop {
            let ok = self.probe_once(&probe, &container).await;
            let ready_now = self.containers.lock().get(idx).is_some_and(|c| c.ready);
            if ok {
                successes += 1;
                failures = 0;
                if !ready_now && successes >= success_threshold {
                    self.update(idx, |c| c.ready = true);
                }
            } else {
                failures += 1;
                successes = 0;
                if ready_now && failures >= failure_threshold {
                    self.update(idx, |c| c.ready = false);
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

fn terminated_state(status: &std::process::ExitStatus, started_at: &str) -> (Value, i32) {
    use std::os::unix::process::ExitStatusExt;
    let (code, reason, signal) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, if c == 0 { "Completed" } else { "Error" }, None),
        (None, Some(sig)) => (128 + sig, "Error", Some(sig)),
        (None, None) => (-1, "Error", None),
    };
    let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now_rfc3339()});
    if let Some(sig) = signal {
        t["signal"] = json!(sig);
    }
    (json!({"terminated": t}), code)
}

/// Runs one container: start, probe, restart per policy with backoff, stop on termination.
async fn run_container(ctx: Arc<PodCtx>, idx: usize, mut term: watch::Receiver<Option<Duration>>) {
    let policy = s(&ctx.pod, "/spec/restartPolicy").to_string();
    let initial_backoff = Duration::from_millis(200);
    let mut backoff = initial_backoff;
    let mut ran_before = false;
    loop {
        if term.borrow_and_update().is_some() {
            ctx.update(idx, |c| c.finished = true);
            return;
        }
        if ran_before {
            ctx.update(idx, |c| c.restart_count += 1);
        }
        let spawned = ctx.spawn(idx);
        let mut child = match spawned {
            Ok(child) => child,
            Err(message) => {
                tracing::warn!(pod = s(&ctx.pod, "/metadata/name"), %message, "container not started");
                ctx.update(idx, |c| c.state = json!({"waiting": {"reason": "CreateContainerError", "message": message}}));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = term.changed() => {}
                }
                backoff = (backoff * 2).min(ctx.max_backoff);
                continue;
            }
        };
        ran_before = true;
        let started = Instant::now();
        let started_at = now_rfc3339();
        let pid = child.id();
        ctx.update(idx, |c| {
            c.pid = pid;
            c.started = true;
            c.ready = false;
            c.state = json!({"running": {"startedAt": started_at}});
        });
        let exited = tokio::select! {
            st = child.wait() => Some(st),
            _ = ctx.probe_loop(idx) => None,
            _ = term.changed() => None,
        };
        match exited {
            Some(status) => {
                let (state, code) = match &status {
                    Ok(st) => terminated_state(st, &started_at),
                    Err(e) => (json!({"terminated": {"exitCode": -1, "reason": "Error", "message": e.to_string()}}), -1),
                };
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                ctx.update(idx, |c| {
                    c.pid = None;
                    c.ready = false;
                    c.exit_code = Some(code);
                    c.finished = !restart;
                    c.last_state = state.clone();
                    c.state = if restart { json!({"waiting": {"reason": "CrashLoopBackOff"}}) } else { state };
                });
                if !restart {
                    return;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = initial_backoff;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = term.changed() => {}
                }
                backoff = (backoff * 2).min(ctx.max_backoff);
            }
            None => {
                let grace = term.borrow().unwrap_or(Duration::ZERO);
                if let Some(pid) = pid {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(st) => st,
                    Err(_) => {
                        if let Some(pid) = pid {
                            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        }
                        child.wait().await
                    }
                };
                let (state, code) = match &status {
                    Ok(st) => terminated_state(st, &started_at),
                    Err(e) => (json!({"terminated": {"exitCode": -1, "reason": "Error", "message": e.to_string()}}), -1),
                };
                ctx.update(idx, |c| {
                    c.pid = None;
                    c.ready = false;
                    c.finished = true;
                    c.exit_code = Some(code);
                    c.state = state;
                });
                return;
            }
        }
    }
}
