//! End-to-end kit: a kubesim process running real registry-node pods, operator processes
//! pointed at it, a stand-in for the client Service, and polling helpers.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use operator::crd::RegistryCluster;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NS: &str = "default";

/// A binary named by `env`, else next to this test's operator binary (same target dir).
pub fn binary(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_operator"));
    let path = operator.with_file_name(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build --workspace`) or set {env}",
        path.display()
    );
    path
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn stop(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A kubesim process. Dropping it stops it with SIGTERM, which stops its pods.
pub struct Sim {
    child: Child,
    pub url: String,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    pub client: Client,
}

impl Sim {
    pub async fn start() -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("operator-e2e-")
            .tempdir()
            .expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let node = binary("REGISTRY_NODE_BIN", "registry-node");
        let mut child = Command::new(binary("KUBESIM_BIN", "kubesim"))
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .arg("--image-map")
            .arg(format!("registry-node={}", node.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("kubesim.log")).expect("log"),
            ))
            .spawn()
            .expect("spawn kubesim");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kubesim listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("listening JSON");
        let url = v["url"].as_str().expect("url").to_owned();
        let config = kube::Config::new(url.parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &RegistryCluster::crd())
            .await
            .expect("create CRD");
        Sim {
            child,
            url,
            kubeconfig,
            dir,
            client,
        }
    }

    pub fn clusters(&self) -> Api<RegistryCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn pods(&self, role: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/component={role}"));
        let mut items = pods.list(&lp).await.map(|l| l.items).unwrap_or_default();
        items.sort_by_key(|p| p.name_any());
        items
    }

    /// SIGKILLs a pod's processes; kubesim restarts them.
    pub async fn kill_pod(&self, name: &str) {
        let url = format!(
            "{}/debug/kubesim/v1/namespaces/{NS}/pods/{name}/kill",
            self.url
        );
        let resp = reqwest::Client::new()
            .post(url)
            .send()
            .await
            .expect("kill request");
        assert!(resp.status().is_success(), "kill {name}: {}", resp.status());
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(15));
        if std::thread::panicking() {
            // Keep logs of a failed run.
            let kept =
                std::env::temp_dir().join(format!("operator-e2e-failed-{}", std::process::id()));
            let _ = std::fs::rename(self.dir.path(), &kept);
            eprintln!("logs kept in {}", kept.display());
        }
    }
}

/// An operator process.
pub struct Operator {
    child: Option<Child>,
    pub identity: String,
    pub metrics: String,
}

impl Operator {
    pub fn start(sim: &Sim, identity: &str, extra: &[&str]) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(sim.log_dir().join(format!("operator-{identity}.log")))
            .expect("log");
        let child = Command::new(binary("OPERATOR_BIN", "operator"))
            .env("KUBECONFIG", &sim.kubeconfig)
            .env("RUST_LOG", "info,kube=warn,kube_lease_manager=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .args(["--metrics-addr", &metrics, "--identity", identity])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn operator");
        Operator {
            child: Some(child),
            identity: identity.to_owned(),
            metrics,
        }
    }

    /// `/metrics` as text, or `None` while it does not answer.
    pub async fn scrape(&self) -> Option<String> {
        let resp = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?;
        resp.text().await.ok()
    }

    pub async fn metric(&self, line_prefix: &str) -> Option<f64> {
        let text = self.scrape().await?;
        Some(
            text.lines()
                .find(|l| l.starts_with(line_prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        )
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c, Duration::from_secs(10));
        }
    }
}

/// Stands in for the client Service (kubesim has no kube-proxy): accepts on 127.0.0.1:0 and
/// forwards each connection to a ready session pod, following pods as they come and go.
/// Like the Service's `sessionAffinity: ClientIP`, it keeps sending to the same pod while
/// that pod stays ready (a registry session lives on one session node).
pub struct ServiceProxy {
    pub url: String,
    backends: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceProxy {
    pub async fn start(client: Client, selector: String, port: u16) -> ServiceProxy {
        let backends: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let follow = {
            let backends = backends.clone();
            tokio::spawn(async move {
                let pods: Api<Pod> = Api::namespaced(client, NS);
                loop {
                    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                        let ready: Vec<String> = list
                            .items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .filter(|p| {
                                p.status
                                    .as_ref()
                                    .and_then(|s| s.conditions.as_ref())
                                    .is_some_and(|cs| {
                                        cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                    })
                            })
                            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                            .map(|ip| format!("{ip}:{port}"))
                            .collect();
                        if let Ok(mut b) = backends.lock() {
                            *b = ready;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let accept = {
            let backends = backends.clone();
            tokio::spawn(async move {
                let mut sticky: Option<String> = None;
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let ready = backends.lock().map(|b| b.clone()).unwrap_or_default();
                    if !sticky.as_ref().is_some_and(|s| ready.contains(s)) {
                        sticky = ready.first().cloned();
                    }
                    let Some(backend) = sticky.clone() else {
                        continue;
                    };
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&backend).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            })
        };
        ServiceProxy {
            url,
            backends,
            tasks: vec![follow, accept],
        }
    }

    pub fn backends(&self) -> Vec<String> {
        self.backends.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
