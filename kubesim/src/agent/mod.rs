//! The node agent: kubesim's process kubelet ([`crate::workload::pod`]) in front of a real
//! API server, through kube-rs. It stands in for a kubelet where no container runtime can
//! run.
//!
//! - registers its Node (Ready, with allocatable resources and its address) and renews its
//!   Lease in `kube-node-lease`, so the node lifecycle controller keeps it Ready;
//! - runs the containers of the pods bound to it as local processes, each pod in a network
//!   namespace of its own on the node's bridge ([`network`]), with its volumes as files
//!   ([`volumes`]: ConfigMaps, Secrets, downward API, and ServiceAccount tokens from the
//!   TokenRequest API at the standard in-cluster paths) and the user its securityContext
//!   names;
//! - writes pod status (phase, IPs, conditions, containerStatuses: `containerID` is
//!   `kube-node-agent://PID`);
//! - on `deletionTimestamp`, stops the pod within its grace period, then deletes it with
//!   `gracePeriodSeconds=0` and a UID precondition, as a kubelet does.

pub mod network;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::workload::pod::{Isolation, PodHost, PodSettings, RunningPod};
use network::{PodNetwork, PodSandbox};
use volumes::Volumes;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Pod directories: `{state_dir}/pods/{namespace}/{pod}/` (logs `{container}.log`,
    /// volumes under `volumes/`).
    pub state_dir: PathBuf,
    pub image_map: BTreeMap<String, PathBuf>,
    /// Image → (uid, gid) of its `USER` (see [`PodSettings::image_users`]).
    pub image_users: BTreeMap<String, (u32, u32)>,
    /// Short id of the pod network's interfaces and namespaces (1 to 6 letters or digits).
    pub network_id: String,
    /// The node's pod network `10.a.b.0/24`, as `[10, a, b]`.
    pub pod_subnet: [u8; 3],
    /// `KUBERNETES_SERVICE_HOST`/`_PORT` given to pods (no kube-proxy routes the
    /// `kubernetes` Service's ClusterIP here: this is the API server's own address).
    pub api_host: String,
    pub api_port: u16,
    /// Node Lease duration; renewed every quarter of it.
    pub lease_seconds: i32,
    pub max_pods: u32,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn micro_time() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

// === impl RefCache ===

/// ConfigMap and Secret values the agent last read, by (kind, namespace, name); `None`
/// value: the object does not exist.
#[derive(Clone, Default)]
pub struct RefCache(Arc<Mutex<HashMap<RefKey, Option<Values>>>>);

/// (kind, namespace, name) of a ConfigMap or Secret.
type RefKey = (String, String, String);
/// Its values, decoded.
type Values = BTreeMap<String, Vec<u8>>;

impl RefCache {
    pub fn put(&self, kind: &str, ns: &str, name: &str, values: Option<BTreeMap<String, Vec<u8>>>) {
        self.0
            .lock()
            .insert((kind.to_string(), ns.to_string(), name.to_string()), values);
    }

    fn get(&self, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
        let cache = self.0.lock();
        let values = cache
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))?
            .as_ref()?;
        if key.is_empty() {
            let all: BTreeMap<&String, String> = values
                .iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(v).to_string()))
                .collect();
            return serde_json::to_string(&all).ok();
        }
        values
            .get(key)
            .map(|v| String::from_utf8_lossy(v).to_string())
    }
}

// === impl ApiHost ===

struct StatusWrite {
    namespace: String,
    name: String,
    uid: String,
    status: Value,
}

/// Pods of a real API server: status goes out through one writer task (the newest status
/// of a pod replaces one not yet written), references come from the [`RefCache`].
struct ApiHost {
    refs: RefCache,
    statuses: mpsc::UnboundedSender<StatusWrite>,
}

impl PodHost for ApiHost {
    fn write_status(&self, pod: &Value, status: Value) {
        let _ = self.statuses.send(StatusWrite {
            namespace: s(pod, "/metadata/namespace").to_string(),
            name: s(pod, "/metadata/name").to_string(),
            uid: s(pod, "/metadata/uid").to_string(),
            status,
        });
    }

    fn lookup(&self, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
        self.refs.get(kind, ns, name, key)
    }
}

/// Writes pod statuses, newest first wins; a write that fails for another reason than the
/// pod being gone or replaced is retried.
async fn write_statuses(client: Client, mut rx: mpsc::UnboundedReceiver<StatusWrite>) {
    let mut pending: HashMap<(String, String), (String, Value)> = HashMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(w) => {
                    pending.insert((w.namespace, w.name), (w.uid, w.status));
                }
                None => return,
            }
        }
        while let Ok(w) = rx.try_recv() {
            pending.insert((w.namespace, w.name), (w.uid, w.status));
        }
        let mut failed = false;
        for ((ns, name), (uid, status)) in std::mem::take(&mut pending) {
            let api = Api::<Pod>::namespaced(client.clone(), &ns);
            let patch = json!({"metadata": {"uid": uid}, "status": status});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "pod status not written: retrying");
                    pending.entry((ns, name)).or_insert((uid, status));
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

// === impl Agent ===

struct PodEntry {
    running: RunningPod,
    sandbox: PodSandbox,
    refresher: tokio::task::JoinHandle<()>,
    deleting: bool,
}

/// A running node agent (see the module docs).
pub struct Agent {
    client: Client,
    config: AgentConfig,
    network: PodNetwork,
    host: Arc<ApiHost>,
    refs: RefCache,
    http: reqwest::Client,
    pods: Mutex<HashMap<(String, String), PodEntry>>,
    /// The API server's version, reported as the node's kubelet version.
    kubelet_version: Mutex<String>,
}

impl Agent {
    /// Creates the pod network and starts writing pod status (inside a tokio runtime).
    pub async fn new(client: Client, config: AgentConfig) -> anyhow::Result<Arc<Self>> {
        let network = PodNetwork::create(&config.network_id, config.pod_subnet)?;
        std::fs::create_dir_all(config.state_dir.join("pods"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_statuses(client.clone(), rx));
        let refs = RefCache::default();
        let http = crate::workload::pod::probe_client()?;
        Ok(Arc::new(Self {
            client,
            network,
            host: Arc::new(ApiHost {
                refs: refs.clone(),
                statuses: tx,
            }),
            refs,
            http,
            pods: Mutex::new(HashMap::new()),
            kubelet_version: Mutex::new(String::new()),
            config,
        }))
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        self.network.host_ip()
    }

    /// Registers the Node, keeps it Ready and runs its pods until `shutdown` resolves; then
    /// stops every pod (SIGTERM, SIGKILL after their grace period, at most 10 s).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        // The API server may start after the agent (it binds the agent's bridge address).
        let register = async {
            loop {
                match self.register().await {
                    Ok(uid) => break uid,
                    Err(e) => {
                        tracing::info!(error = %e, "node not registered yet: retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        };
        let node_uid = tokio::select! {
            uid = register => uid,
            _ = &mut shutdown => return Ok(()),
        };
        let heartbeat = tokio::spawn(self.clone().heartbeat(node_uid));
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node_name));
        let (reader, writer) = reflector::store();
        let mut events = Box::pin(reflector(writer, watcher(pods, selector)).default_backoff());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The store is complete once the first list is in. (Awaiting `wait_until_ready`
        // here would stop polling `events`, which is what makes it ready.)
        let mut listed = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                e = events.next() => match e {
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch"),
                    Some(Ok(watcher::Event::InitDone)) => listed = true,
                    Some(Ok(_)) => {}
                    None => break,
                },
                _ = tick.tick() => {}
            }
            if listed {
                self.sync(reader.state()).await;
            }
        }
        heartbeat.abort();
        self.stop_all().await;
        Ok(())
    }

    fn node_status(&self, since: &str) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let cond = |t: &str, status: &str, reason: &str, message: &str| json!({"type": t, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": since});
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(1 << 20);
        let resources = json!({"cpu": cpus.to_string(), "memory": format!("{memory_kib}Ki"), "pods": self.config.max_pods.to_string(), "ephemeral-storage": "100Gi"});
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        json!({
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "node agent has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.node_ip().to_string()}, {"type": "Hostname", "address": self.config.node_name}],
            "capacity": resources, "allocatable": resources,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": kernel, "osImage": "kube-node-agent",
                "containerRuntimeVersion": format!("kube-node-agent://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": *self.kubelet_version.lock(), "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            },
        })
    }

    /// Creates the Node (or takes over one of the same name) and its Lease; the Node's uid.
    async fn register(&self) -> anyhow::Result<String> {
        let name = &self.config.node_name;
        *self.kubelet_version.lock() = self.client.apiserver_version().await?.git_version;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH}},
        }))?;
        let created = match nodes.create(&PostParams::default(), &node).await {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(name).await?,
            Err(e) => return Err(e.into()),
        };
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": self.node_status(&since)})),
            )
            .await?;
        let uid = created.metadata.uid.unwrap_or_default();
        self.renew_lease(&uid).await?;
        Ok(uid)
    }

    async fn renew_lease(&self, node_uid: &str) -> anyhow::Result<()> {
        let name = &self.config.node_name;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let spec = json!({"holderIdentity": name, "leaseDurationSeconds": self.config.lease_seconds, "renewTime": micro_time()});
        match leases
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease",
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
                    "spec": spec,
                }))?;
                leases.create(&PostParams::default(), &lease).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the Lease every quarter of its duration and posts Node status every 30 s.
    async fn heartbeat(self: Arc<Self>, node_uid: String) {
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let every = Duration::from_secs((self.config.lease_seconds / 4).max(1) as u64);
        let mut last_status = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.renew_lease(&node_uid).await {
                tracing::warn!(error = %e, "node lease not renewed");
            }
            if last_status.elapsed() >= Duration::from_secs(30) {
                let patch = Patch::Merge(json!({"status": self.node_status(&since)}));
                match nodes
                    .patch_status(&self.config.node_name, &PatchParams::default(), &patch)
                    .await
                {
                    Ok(_) => last_status = tokio::time::Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "node status not posted"),
                }
            }
        }
    }

    async fn sync(&self, pods: Vec<Arc<Pod>>) {
        let mut present = HashSet::new();
        for pod in pods {
            let Ok(v) = serde_json::to_value(&*pod) else {
                continue;
            };
            let key = (
                s(&v, "/metadata/namespace").to_string(),
                s(&v, "/metadata/name").to_string(),
            );
            let uid = s(&v, "/metadata/uid").to_string();
            let deleting = v.pointer("/metadata/deletionTimestamp").is_some();
            present.insert(key.clone());
            let replaced = self
                .pods
                .lock()
                .get(&key)
                .is_some_and(|e| e.running.uid() != uid);
            if replaced {
                if let Some(old) = self.pods.lock().remove(&key) {
                    self.forget(old);
                }
            }
            let known = {
                let mut pods = self.pods.lock();
                match pods.get_mut(&key) {
                    Some(e) => {
                        if deleting {
                            let grace = v
                                .pointer("/metadata/deletionGracePeriodSeconds")
                                .and_then(Value::as_u64)
                                .unwrap_or(30);
                            e.running.terminate(Duration::from_secs(grace));
                        }
                        if e.running.is_terminating() && e.running.is_finished() && !e.deleting {
                            e.deleting = true;
                            self.finalize(&key.0, &key.1, &uid);
                        }
                        true
                    }
                    None => false,
                }
            };
            if known {
                continue;
            }
            let phase = s(&v, "/status/phase");
            if deleting {
                self.finalize(&key.0, &key.1, &uid);
            } else if phase != "Succeeded" && phase != "Failed" {
                match self.start(&v).await {
                    Ok(entry) => {
                        self.pods.lock().insert(key, entry);
                    }
                    Err(e) => tracing::warn!(pod = %key.1, error = %e, "pod not started"),
                }
            }
        }
        let gone: Vec<PodEntry> = {
            let mut pods = self.pods.lock();
            let keys: Vec<_> = pods
                .keys()
                .filter(|k| !present.contains(*k))
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| pods.remove(&k)).collect()
        };
        for e in gone {
            self.forget(e);
        }
    }

    async fn start(&self, pod: &Value) -> anyhow::Result<PodEntry> {
        let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        let sandbox = self.network.add_pod()?;
        let dir = self.config.state_dir.join("pods").join(ns).join(name);
        let _ = std::fs::remove_dir_all(dir.join("volumes"));
        std::fs::create_dir_all(&dir)?;
        let volumes = Arc::new(Volumes::new(
            self.client.clone(),
            pod.clone(),
            dir.clone(),
            self.refs.clone(),
        ));
        if let Err(e) = volumes.refresh().await {
            tracing::warn!(pod = %name, error = %e, "volumes not ready");
        }
        let refresher = tokio::spawn({
            let (volumes, name) = (volumes.clone(), name.to_string());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    if let Err(e) = volumes.refresh().await {
                        tracing::warn!(pod = %name, error = %e, "volumes not refreshed");
                    }
                }
            }
        });
        let (host, port) = (
            self.config.api_host.clone(),
            self.config.api_port.to_string(),
        );
        let settings = PodSettings {
            image_map: self.config.image_map.clone(),
            image_users: self.config.image_users.clone(),
            kubeconfig: None,
            probe_period_cap: Duration::from_secs(3600),
            max_restart_backoff: Duration::from_secs(10),
            liveness_probes: true,
            host_ip: self.node_ip(),
            base_env: vec![
                ("HOSTNAME".into(), name.to_string()),
                ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
                ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
                ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
                ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
            ],
            runtime: "kube-node-agent",
        };
        let isolation = Isolation {
            netns: sandbox.netns_path(),
        };
        let running = RunningPod::start(
            self.host.clone(),
            settings,
            Some(isolation),
            pod,
            sandbox.ip,
            dir,
            self.http.clone(),
        );
        tracing::info!(namespace = %ns, pod = %name, ip = %sandbox.ip, "pod started");
        Ok(PodEntry {
            running,
            sandbox,
            refresher,
            deleting: false,
        })
    }

    /// Stops running a pod now (it is gone from the API) and frees its address.
    fn forget(&self, e: PodEntry) {
        e.running.kill();
        e.refresher.abort();
        self.network.remove_pod(&e.sandbox);
    }

    /// Deletes a stopped pod for good: `gracePeriodSeconds=0` with a UID precondition, so
    /// that a new pod of the same name is never deleted by mistake.
    fn finalize(&self, ns: &str, name: &str, uid: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let (name, uid) = (name.to_string(), uid.to_string());
        tokio::spawn(async move {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(pod = %name, "pod deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %name, error = %e, "pod not deleted"),
            }
        });
    }

    async fn stop_all(&self) {
        let mut entries: Vec<PodEntry> = self.pods.lock().drain().map(|(_, e)| e).collect();
        for e in &mut entries {
            e.running.terminate(Duration::from_secs(10));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        while entries.iter().any(|e| !e.running.is_finished())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for e in entries {
            self.forget(e);
        }
    }
}
