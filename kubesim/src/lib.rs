//! kubesim: a local Kubernetes simulator — a fake API server plus a StatefulSet controller
//! and kubelet that run pods as real local processes on 127.x.y.z pod IPs.
//!
//! Start one in-process with [`Simulator::start`], or run the `kubesim` binary
//! (`kubesim serve --addr 127.0.0.1:0 --image-map registry-node=PATH --kubeconfig-out F`).

pub mod agent;
pub mod api;
pub mod error;
pub mod labels;
pub mod patch;
pub mod resources;
pub mod store;
pub mod table;
pub mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Result};
pub use store::Store;
pub use workload::{ContainerProcess, PodProcess};

use api::{ApiConfig, AppState};
use store::StoreConfig;
use workload::{Kubelet, KubeletConfig, StatefulSetController};

/// How to start a simulator. `Default` is an API server on 127.0.0.1:0 that runs
/// workloads, with state in a fresh temporary directory and no image mappings.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub addr: SocketAddr,
    /// Image → local binary (see [`workload::env::lookup_image`] for the matching rules).
    pub image_map: BTreeMap<String, PathBuf>,
    /// Where pod directories and logs go (`{state_dir}/pods/{ns}/{pod}/{container}.log`);
    /// `None` = a temporary directory removed when the simulator is dropped.
    pub state_dir: Option<PathBuf>,
    /// Run StatefulSets and Pods (false = API server only).
    pub run_workloads: bool,
    /// Upper bound on probe periods and initial delays.
    pub probe_period_cap: Duration,
    pub bookmark_interval: Duration,
    /// Watch events kept per resource type.
    pub watch_history: usize,
    /// Pod IPs are 127.{a}.{b}.x (random when None).
    pub pod_ip_prefix: Option<(u8, u8)>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            image_map: BTreeMap::new(),
            state_dir: None,
            run_workloads: true,
            probe_period_cap: Duration::from_secs(1),
            bookmark_interval: Duration::from_secs(5),
            watch_history: 10_000,
            pod_ip_prefix: None,
        }
    }
}

impl SimulatorConfig {
    /// Adds an image mapping (`registry-node` → `/path/to/registry-node`).
    pub fn map_image(mut self, image: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        self.image_map.insert(image.into(), binary.into());
        self
    }
}

/// A running simulator. Dropping it stops the server and SIGKILLs every pod process.
pub struct Simulator {
    addr: SocketAddr,
    store: Arc<Store>,
    kubelet: Option<Arc<Kubelet>>,
    state_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Simulator {
    /// Binds the API server and starts the controllers (must run inside a tokio runtime).
    pub async fn start(config: SimulatorConfig) -> Result<Self> {
        let (state_dir, temp) = match &config.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("kubesim-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let store = Arc::new(Store::new(StoreConfig {
            history_per_resource: config.watch_history,
            graceful_pod_deletion: config.run_workloads,
        }));
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let pod_kubeconfig = state_dir.join("kubeconfig");
        std::fs::write(&pod_kubeconfig, kubeconfig_yaml(&format!("http://{addr}")))?;
        let mut tasks = Vec::new();
        let kubelet = if config.run_workloads {
            let mut kc = KubeletConfig::new(state_dir.clone());
            kc.image_map = config.image_map.clone();
            kc.probe_period_cap = config.probe_period_cap;
            kc.pod_ip_prefix = config.pod_ip_prefix;
            kc.kubeconfig = Some(pod_kubeconfig);
            let kubelet = Arc::new(Kubelet::new(store.clone(), kc)?);
            tasks.push(tokio::spawn(kubelet.clone().run()));
            tasks.push(tokio::spawn(
                Arc::new(StatefulSetController::new(store.clone())).run(),
            ));
            Some(kubelet)
        } else {
            None
        };
        let state = Arc::new(AppState {
            store: store.clone(),
            kubelet: kubelet.clone(),
            config: ApiConfig {
                bookmark_interval: config.bookmark_interval,
                ..ApiConfig::default()
            },
        });
        let app = api::router(state);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));
        Ok(Self {
            addr,
            store,
            kubelet,
            state_dir,
            _temp: temp,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Direct access to the object store (bypasses HTTP).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// A kubeconfig (YAML) pointing at this simulator, context `kubesim`, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.kubeconfig())?;
        Ok(())
    }

    /// SIGKILLs a pod's processes (the kubelet restarts them, restartCount + 1).
    pub fn kill_pod(&self, namespace: &str, name: &str) -> Result<Vec<u32>> {
        self.kubelet
            .as_ref()
            .ok_or_else(|| Error::Config("workloads are not run".into()))?
            .kill_pod(namespace, name)
    }

    /// The pods being run: IPs, process ids, log files.
    pub fn pods(&self) -> Vec<PodProcess> {
        self.kubelet.as_ref().map(|k| k.pods()).unwrap_or_default()
    }

    /// Makes every resourceVersion handed out so far too old to watch from and ends open
    /// watches: watchers get an ERROR 410 event on their next watch and re-list.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Stops the server and kills every pod process.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(k) = &self.kubelet {
            k.kill_all();
        }
    }
}

/// A kubeconfig for a simulator at `url`.
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\nusers:\n- name: kubesim\n  user: {{}}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\n    namespace: default\ncurrent-context: kubesim\n"
    )
}
