//! The operator's end-to-end kit, shared by `operator/tests/e2e.rs` (kubesim) and
//! `operator/tests/kube.rs` (the real control plane); dev-only.
//!
//! Layout:
//! - this file: a kubesim process running real registry-node pods ([`Sim`]), operator
//!   processes pointed at it ([`Operator`]), and a stand-in for the client Service
//!   ([`ServiceProxy`]);
//! - [`cluster`]: the real control plane of `scripts/kube-up` and the kubectl/helm it has;
//! - [`workload`]: the live publishers and subscriber every scenario runs, and readiness.
//!
//! Processes, binaries and polling come from the workspace's test kit (`testkit`).

pub mod cluster;
pub mod workload;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use operator::crd::RegistryCluster;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::binary::{KUBESIM, OPERATOR, REGISTRY_NODE};
use testkit::{Process, Spawn};

pub use testkit::eventually;

pub const NS: &str = "default";

/// A TLS Secret `name` in `namespace` in the cert-manager layout (`tls.crt`, `tls.key`,
/// `ca.crt`), as `spec.tls.secretName` names it: `issued` and the CA that issued it.
pub fn tls_secret(
    namespace: &str,
    name: &str,
    issued: &testkit::tls::Issued,
    ca: &testkit::tls::Ca,
) -> Secret {
    let data = |s: &str| k8s_openapi::ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(std::collections::BTreeMap::from([
            ("tls.crt".to_owned(), data(&issued.cert_pem)),
            ("tls.key".to_owned(), data(&issued.key_pem)),
            ("ca.crt".to_owned(), data(&ca.pem())),
        ])),
        ..Default::default()
    }
}

/// What every port of a cluster with `spec.tls` must answer. On each internal `(ip, port)`:
/// the cluster `token` over mutual TLS with a certificate under the cluster CA (`peer`)
/// reads the node's status at `epoch`; HTTPS without a client certificate is 401; plain
/// HTTP gets no answer. The public listener of the session pod at `session_ip` answers no
/// plain HTTP either.
pub async fn assert_only_tls(
    peer: &reqwest::Client,
    token: &str,
    epoch: u64,
    internal: &[(String, u16)],
    session_ip: &str,
) {
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let no_cert = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (ip, port) in internal {
        let url = format!("https://{ip}:{port}/internal/v1/status");
        let status: serde_json::Value = peer
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("mutual TLS")
            .json()
            .await
            .expect("a status");
        assert_eq!(status["epoch"], epoch, "{ip}:{port}");
        let resp = no_cert.get(&url).bearer_auth(token).send().await;
        assert_eq!(
            resp.map(|r| r.status().as_u16()).ok(),
            Some(401),
            "{ip}:{port} without a client certificate"
        );
        let refused = plain
            .get(format!("http://{ip}:{port}/internal/v1/status"))
            .bearer_auth(token)
            .send()
            .await;
        assert!(refused.is_err(), "{ip}:{port} answered plain HTTP");
    }
    let refused = plain
        .get(format!("http://{session_ip}:9603/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "the public port answered plain HTTP");
}

/// How many times the containers of `pod` were restarted in place: kubesim restarts a
/// crashed or killed container under the same pod (same UID, restartCount + 1).
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |containers| {
            containers.iter().map(|c| c.restart_count).sum()
        })
}

/// What tells a pod's run from another: a recreated pod has a new UID, a container
/// restarted in place a higher restart count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRun {
    pub name: String,
    pub uid: Option<String>,
    pub restarts: i32,
}

impl PodRun {
    pub fn of(pod: &Pod) -> PodRun {
        PodRun {
            name: pod.name_any(),
            uid: pod.uid(),
            restarts: restarts(pod),
        }
    }
}

/// A kubesim process. Dropping it stops it with SIGTERM, which stops its pods.
pub struct Sim {
    process: Process,
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
        let process = Spawn::new("kubesim", KUBESIM.path())
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .arg("--image-map")
            .arg(format!("registry-node={}", REGISTRY_NODE.path().display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .env("RUST_LOG", "warn")
            .log(dir.path().join("kubesim.log"))
            .listening(Duration::from_secs(30))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = process.listening_addr("url").expect("url").to_owned();
        let config = kube::Config::new(url.parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &RegistryCluster::crd())
            .await
            .expect("create CRD");
        Sim {
            process,
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

    /// Name, UID and in-place restarts of every pod of `role`, by name: the same before and
    /// after a step in which no pod of it was recreated or had its container restarted.
    pub async fn pod_runs(&self, role: &str) -> Vec<PodRun> {
        self.pods(role).await.iter().map(PodRun::of).collect()
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
        self.process.stop(Duration::from_secs(15));
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
    process: Process,
    pub metrics: String,
}

impl Operator {
    pub fn start(sim: &Sim, identity: &str, extra: &[&str]) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let process = Spawn::new(&format!("operator-{identity}"), OPERATOR.path())
            .env("KUBECONFIG", &sim.kubeconfig)
            .env("RUST_LOG", "info,kube=warn,kube_lease_manager=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .args(["--metrics-addr", &metrics, "--identity", identity])
            .args(extra)
            .log(sim.log_dir().join(format!("operator-{identity}.log")))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Operator { process, metrics }
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
        self.process.kill();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(10));
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
        ServiceProxy::following(move |backends| {
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
        })
        .await
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

impl ServiceProxy {
    /// A proxy whose backends (`ip:port`) the task that `follow` starts keeps current.
    pub async fn following(
        follow: impl FnOnce(Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()>,
    ) -> ServiceProxy {
        let backends: Arc<Mutex<Vec<String>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let follow = follow(backends.clone());
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
}
