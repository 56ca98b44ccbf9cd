//! The simulated kubelet: runs each Pod of kubesim's store as real local processes (see
//! [`super::pod`]) with its own 127.x.y.z pod IP on the host's network, and finalizes pods
//! once they have stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;
use rand::Rng;
use serde_json::Value;

use super::pod::{PodHost, PodProcess, PodSettings, RunningPod};
use crate::error::{Error, Result};
use crate::resources::GroupResource;
use crate::store::Store;

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

/// The kubelet. Start [`Kubelet::run`] on a task; it follows Pod objects in the store.
pub struct Kubelet {
    store: Arc<Store>,
    host: Arc<StoreHost>,
    config: KubeletConfig,
    pods: Mutex<HashMap<(String, String), RunningPod>>,
    ip_prefix: (u8, u8),
    next_ip: Mutex<u32>,
    http: reqwest::Client,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

// === impl StoreHost ===

/// Pods of kubesim's own store: status written and references read in place.
struct StoreHost {
    store: Arc<Store>,
}

impl PodHost for StoreHost {
    fn write_status(&self, pod: &Value, status: Value) {
        let (ns, name, uid) = (
            s(pod, "/metadata/namespace"),
            s(pod, "/metadata/name"),
            s(pod, "/metadata/uid"),
        );
        self.store
            .update_status(&GroupResource::new("", "pods"), ns, name, uid, |pod| {
                pod["status"] = status
            });
    }

    fn lookup(&self, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
        let rt = self.store.resolve("", "v1", kind)?;
        let obj = self.store.get(&rt, Some(ns), name).ok()?;
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(data) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                let v = v.as_str().unwrap_or_default();
                let v = if kind == "secrets" {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?)
                        .ok()?
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
}

// === impl Kubelet ===

impl Kubelet {
    pub fn new(store: Arc<Store>, config: KubeletConfig) -> Result<Self> {
        let ip_prefix = config.pod_ip_prefix.unwrap_or_else(|| {
            let mut rng = rand::rng();
            (rng.random_range(1..=254), rng.random())
        });
        if ip_prefix.0 == 0 {
            return Err(Error::Config(
                "pod IP prefix 127.0.x.x is reserved (127.0.0.1)".into(),
            ));
        }
        let http = crate::workload::pod::probe_client()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        std::fs::create_dir_all(config.state_dir.join("pods"))?;
        let host = Arc::new(StoreHost {
            store: store.clone(),
        });
        Ok(Self {
            store,
            host,
            config,
            pods: Mutex::new(HashMap::new()),
            ip_prefix,
            next_ip: Mutex::new(0),
            http,
        })
    }

    fn allocate_ip(&self) -> Ipv4Addr {
        let mut n = self.next_ip.lock();
        *n += 1;
        let b = self.ip_prefix.1.wrapping_add((*n / 254) as u8);
        Ipv4Addr::new(127, self.ip_prefix.0, b, (*n % 254) as u8 + 1)
    }

    fn settings(&self) -> PodSettings {
        PodSettings {
            image_map: self.config.image_map.clone(),
            image_users: BTreeMap::new(),
            kubeconfig: self.config.kubeconfig.clone(),
            probe_period_cap: self.config.probe_period_cap,
            max_restart_backoff: self.config.max_restart_backoff,
            liveness_probes: false,
            host_ip: Ipv4Addr::LOCALHOST,
            base_env: Vec::new(),
            runtime: "kubesim",
        }
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
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
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
            let key = (
                s(pod, "/metadata/namespace").to_string(),
                s(pod, "/metadata/name").to_string(),
            );
            let uid = s(pod, "/metadata/uid").to_string();
            let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
            present.insert(key.clone());
            if handles.get(&key).is_some_and(|h| h.uid() != uid) {
                if let Some(old) = handles.remove(&key) {
                    old.kill();
                }
            }
            match handles.get_mut(&key) {
                Some(h) => {
                    if deleting {
                        let grace = pod
                            .pointer("/metadata/deletionGracePeriodSeconds")
                            .and_then(Value::as_u64)
                            .unwrap_or(30);
                        h.terminate(Duration::from_secs(grace));
                    }
                    if h.is_terminating() && h.is_finished() {
                        self.store.finalize_pod(&key.0, &key.1, &uid);
                    }
                }
                None if deleting => self.store.finalize_pod(&key.0, &key.1, &uid),
                None => {
                    let dir = self.config.state_dir.join("pods").join(&key.0).join(&key.1);
                    let handle = RunningPod::start(
                        self.host.clone(),
                        self.settings(),
                        None,
                        pod,
                        self.allocate_ip(),
                        dir,
                        self.http.clone(),
                    );
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

    /// SIGKILLs every process of a pod (simulated node loss of that pod's container); the
    /// kubelet restarts them per the restart policy. Returns the killed process ids.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> Result<Vec<u32>> {
        let handles = self.pods.lock();
        let h = handles
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| Error::not_found("", "pods", name))?;
        let pids = h.kill_processes();
        if pids.is_empty() {
            return Err(Error::conflict("", "pods", name, "no running process"));
        }
        Ok(pids)
    }

    /// The pods this kubelet runs, with their IPs, processes and log files.
    pub fn pods(&self) -> Vec<PodProcess> {
        let mut out: Vec<PodProcess> = self.pods.lock().values().map(RunningPod::process).collect();
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
