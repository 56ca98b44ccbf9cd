//! The four benchmarked backends behind one interface: start a server, connect clients,
//! register instances, subscribe to a service, vanish like a crashed client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::etcd::EtcdClient;
use crate::registry::RegistryClient;
use crate::servers::{data_dir, poll_until, ServerProcess};
use crate::zk::ZkClient;
use testkit::Spawn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// this registry, one standalone process
    Registry,
    /// this registry, 2 session + 3 data node processes
    RegistryCluster,
    Etcd,
    Zookeeper,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::RegistryCluster => "registry-cluster",
            Self::Etcd => "etcd",
            Self::Zookeeper => "zookeeper",
        }
    }

    pub fn is_registry(self) -> bool {
        matches!(self, Self::Registry | Self::RegistryCluster)
    }
}

/// What a subscriber saw, and when it saw it.
#[derive(Debug, Clone)]
pub struct Update {
    pub sub: usize,
    pub at: Instant,
    pub instances: Vec<String>,
}

/// Settings shared by every server start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub registry_bin: PathBuf,
    pub push_delay_ms: u64,
    pub replication_factor: usize,
}

pub struct Server {
    pub kind: BackendKind,
    procs: Vec<ServerProcess>,
    /// Public endpoints clients connect to (registry: session nodes' base URLs).
    endpoints: Vec<String>,
    /// Registry cluster: base URLs of the running data nodes (for replication progress).
    data_urls: Vec<String>,
    /// Registry cluster: base URLs of the session nodes' internal listeners (membership).
    internal_urls: Vec<String>,
    /// Registry cluster: data node `i`'s address as started (its identity in the ring).
    data_members: Vec<String>,
    next_endpoint: AtomicUsize,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(kind: BackendKind, cfg: &ServerConfig) -> Result<Self> {
        let dir = data_dir()?;
        let mut procs = Vec::new();
        let mut endpoints = Vec::new();
        let mut data_urls = Vec::new();
        let mut internal_urls = Vec::new();
        match kind {
            BackendKind::Registry => {
                let spawn = registry_node(cfg, "registry", "standalone", dir.path()).args([
                    "--http-addr",
                    "127.0.0.1:0",
                    "--data-addr",
                    "127.0.0.1:0",
                    "--node-name",
                    "bench-standalone",
                ]);
                let p = ServerProcess::spawn(spawn)?;
                endpoints.push(format!("http://{}", field(p.listening_line(), "http")?));
                procs.push(p);
            }
            BackendKind::RegistryCluster => {
                let ports = (0..3)
                    .map(|_| free_port())
                    .collect::<std::io::Result<Vec<_>>>()?;
                let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
                let members_arg = members.join(",");
                for (i, addr) in members.iter().enumerate() {
                    let spawn = registry_node(cfg, &format!("data-{i}"), "data", dir.path())
                        .args([
                            "--data-addr",
                            addr,
                            "--members",
                            &members_arg,
                            "--node-name",
                            &format!("bench-data-{i}"),
                        ])
                        .args(["--replication-factor", &cfg.replication_factor.to_string()]);
                    let p = ServerProcess::spawn(spawn)?;
                    data_urls.push(format!("http://{}", field(p.listening_line(), "data")?));
                    procs.push(p);
                }
                for i in 0..2 {
                    let spawn = registry_node(cfg, &format!("session-{i}"), "session", dir.path())
                        .args([
                            "--http-addr",
                            "127.0.0.1:0",
                            "--members",
                            &members_arg,
                            "--node-name",
                            &format!("bench-session-{i}"),
                        ])
                        .args(["--replication-factor", &cfg.replication_factor.to_string()]);
                    let p = ServerProcess::spawn(spawn)?;
                    endpoints.push(format!("http://{}", field(p.listening_line(), "http")?));
                    internal_urls
                        .push(format!("http://{}", field(p.listening_line(), "internal")?));
                    procs.push(p);
                }
            }
            BackendKind::Etcd => {
                let (client_port, peer_port) = (free_port()?, free_port()?);
                let client_url = format!("http://127.0.0.1:{client_port}");
                let peer_url = format!("http://127.0.0.1:{peer_port}");
                let spawn = Spawn::new("etcd", "etcd")
                    .log(dir.path().join("etcd.log"))
                    .arg("--name=bench")
                    .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
                    .arg(format!("--listen-client-urls={client_url}"))
                    .arg(format!("--advertise-client-urls={client_url}"))
                    .arg(format!("--listen-peer-urls={peer_url}"))
                    .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                    .arg(format!("--initial-cluster=bench={peer_url}"))
                    .arg("--log-level=warn");
                procs.push(ServerProcess::spawn(spawn)?);
                endpoints.push(client_url);
            }
            BackendKind::Zookeeper => {
                let port = free_port()?;
                let data = dir.path().join("zk");
                std::fs::create_dir_all(&data)?;
                let cfg_path = dir.path().join("zoo.cfg");
                // maxClientCnxns=0: every benchmark client comes from 127.0.0.1 (default limit 60).
                std::fs::write(
                    &cfg_path,
                    format!(
                        "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n",
                        data.display()
                    ),
                )?;
                let spawn = Spawn::new("zookeeper", "java")
                    .log(dir.path().join("zookeeper.log"))
                    .args([
                        "-cp",
                        "/usr/share/java/zookeeper.jar",
                        "org.apache.zookeeper.server.ZooKeeperServerMain",
                    ])
                    .arg(&cfg_path);
                procs.push(ServerProcess::spawn(spawn)?);
                endpoints.push(format!("127.0.0.1:{port}"));
            }
        }
        let data_members = data_urls
            .iter()
            .map(|u| u.trim_start_matches("http://").to_string())
            .collect();
        let server = Self {
            kind,
            procs,
            endpoints,
            data_urls,
            internal_urls,
            data_members,
            next_endpoint: AtomicUsize::new(0),
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Duration::from_secs(60);
        match self.kind {
            BackendKind::Registry | BackendKind::RegistryCluster => {
                let http = reqwest::Client::builder().no_proxy().build()?;
                for url in self.endpoints.iter().chain(&self.data_urls) {
                    poll_until(&format!("{url}/readyz"), deadline, || async {
                        let s = http.get(format!("{url}/readyz")).send().await?.status();
                        if s.is_success() {
                            Ok(())
                        } else {
                            Err(anyhow!("readyz: {s}"))
                        }
                    })
                    .await?;
                }
            }
            BackendKind::Etcd => {
                poll_until("etcd", deadline, || crate::etcd::probe(&self.endpoints[0])).await?;
            }
            BackendKind::Zookeeper => {
                poll_until("zookeeper", deadline, || async {
                    ZkClient::connect(&self.endpoints[0], Duration::from_secs(10), false)
                        .await
                        .map(drop)
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Fails if any process of the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(|p| p.check_alive())
    }

    /// Sum over the server's processes of a /proc status field, in bytes.
    pub fn memory_bytes(&self, field: &str) -> u64 {
        self.procs
            .iter()
            .filter_map(|p| p.status_kib(field))
            .sum::<u64>()
            * 1024
    }

    /// CPU seconds used so far by all the server's processes together.
    pub fn cpu_seconds(&self) -> f64 {
        self.procs.iter().filter_map(|p| p.cpu_seconds()).sum()
    }

    /// Registry cluster: the same sum over data nodes only.
    pub fn data_node_memory_bytes(&self, field: &str) -> u64 {
        self.procs
            .iter()
            .filter(|p| p.name.starts_with("data-"))
            .filter_map(|p| p.status_kib(field))
            .sum::<u64>()
            * 1024
    }

    pub fn process_count(&self) -> usize {
        self.procs.len()
    }

    /// Registry cluster: publisher copies held by all data nodes together (from their status).
    pub async fn data_publisher_copies(&self) -> Result<u64> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let mut total = 0;
        for url in &self.data_urls {
            let v: serde_json::Value = http
                .get(format!("{url}/internal/v1/status"))
                .send()
                .await?
                .json()
                .await?;
            total += v["data"]["publisherCount"]
                .as_u64()
                .ok_or_else(|| anyhow!("no data.publisherCount from {url}"))?;
        }
        Ok(total)
    }

    pub fn has_data_nodes(&self) -> bool {
        !self.data_urls.is_empty()
    }

    /// Connects a client to the next endpoint (round robin over session nodes).
    pub async fn connect(&self, name: &str, ttl: Duration, detached: bool) -> Result<Client> {
        let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        self.connect_at(i, name, ttl, detached).await
    }

    /// Number of public endpoints (registry cluster: session nodes; every other backend: 1).
    pub fn session_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Registry: the session nodes' base URLs.
    pub fn session_urls(&self) -> &[String] {
        &self.endpoints
    }

    /// Registry cluster: the base URLs of the data nodes still running.
    pub fn data_urls(&self) -> &[String] {
        &self.data_urls
    }

    /// Registry cluster: every data node's address as started (the initial membership).
    pub fn data_members(&self) -> &[String] {
        &self.data_members
    }

    /// Connects a client to endpoint `i` (modulo the endpoint count): lets a workload put
    /// a writer and its subscribers on different session nodes.
    pub async fn connect_at(
        &self,
        i: usize,
        name: &str,
        ttl: Duration,
        detached: bool,
    ) -> Result<Client> {
        self.connect_with(i, name, ttl, detached, true).await
    }

    /// Like [`Server::connect_at`] for a client that only subscribes: a registry session
    /// then opens no write connection (one socket less per subscriber); the other backends'
    /// clients are the same either way.
    pub async fn connect_reader_at(&self, i: usize, name: &str, ttl: Duration) -> Result<Client> {
        self.connect_with(i, name, ttl, false, false).await
    }

    async fn connect_with(
        &self,
        i: usize,
        name: &str,
        ttl: Duration,
        detached: bool,
        writer: bool,
    ) -> Result<Client> {
        let ep = &self.endpoints[i % self.endpoints.len()];
        Ok(match self.kind {
            BackendKind::Registry | BackendKind::RegistryCluster => {
                Client::Registry(RegistryClient::connect(ep, name, ttl, writer).await?)
            }
            BackendKind::Etcd => Client::Etcd(Box::new(EtcdClient::connect(ep, ttl).await?)),
            BackendKind::Zookeeper => Client::Zk(ZkClient::connect(ep, ttl, detached).await?),
        })
    }

    /// Creates what a service needs before anyone registers (ZooKeeper: its parent znode).
    pub async fn prepare_services(&self, services: &[String]) -> Result<()> {
        if self.kind == BackendKind::Zookeeper {
            let c = ZkClient::connect(&self.endpoints[0], Duration::from_secs(10), false).await?;
            for s in services {
                c.prepare(s).await?;
            }
        }
        Ok(())
    }

    /// Registry cluster: SIGKILLs data node `i` (as started, 0-based) and waits for it to be
    /// gone; returns its address (its identity in the membership). It no longer counts in
    /// memory, CPU, liveness or replication figures.
    pub async fn kill_data_node(&mut self, i: usize) -> Result<String> {
        let name = format!("data-{i}");
        let pos = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| anyhow!("no running {name}"))?;
        let addr = self
            .data_members
            .get(i)
            .cloned()
            .ok_or_else(|| anyhow!("no data node {i}"))?;
        self.procs.remove(pos).kill();
        self.data_urls
            .retain(|u| u.trim_start_matches("http://") != addr);
        Ok(addr)
    }

    /// Registry cluster: offers a data-node membership document to every running node
    /// (`POST /internal/v1/membership`, docs/INTERNAL.md) and checks each one adopted `epoch`.
    pub async fn publish_membership(&self, epoch: u64, members: &[String]) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let body = serde_json::json!({"epoch": epoch, "members": members});
        // Internal listeners only: the public listener serves no /internal/* (SECURITY.md).
        let calls = self.internal_urls.iter().chain(&self.data_urls).map(|url| {
            let (http, body) = (&http, &body);
            async move {
                let resp = http
                    .post(format!("{url}/internal/v1/membership"))
                    .json(body)
                    .send()
                    .await?;
                let status = resp.status();
                let v: serde_json::Value = resp
                    .json()
                    .await
                    .with_context(|| format!("{url}: membership answer ({status})"))?;
                match v["epoch"].as_u64() {
                    Some(e) if status.is_success() && e == epoch => Ok(()),
                    _ => bail!("{url} did not adopt epoch {epoch}: HTTP {status} {v}"),
                }
            }
        });
        futures::future::try_join_all(calls).await.map(drop)
    }

    pub async fn stop(self) {
        for p in self.procs {
            p.stop(Duration::from_secs(10));
        }
    }
}

/// A registry node of the benchmarked binary, logging into `dir`. The test kit starts it with
/// no `REGISTRY_*` variable of ours (every flag has such a fallback), so only these flags apply.
fn registry_node(cfg: &ServerConfig, name: &str, role: &str, dir: &std::path::Path) -> Spawn {
    Spawn::new(name, &cfg.registry_bin)
        .args([
            "--role",
            role,
            "--push-delay-ms",
            &cfg.push_delay_ms.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .log(dir.join(format!("{name}.log")))
        .listening(Duration::from_secs(30))
}

fn free_port() -> std::io::Result<u16> {
    testkit::net::free_port("127.0.0.1")
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> Result<&'a str> {
    line.get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("listening line has no {name:?}: {line}"))
}

pub enum Client {
    Registry(RegistryClient),
    Etcd(Box<EtcdClient>),
    Zk(ZkClient),
}

impl Client {
    pub async fn register(&self, service: &str, instance: &str) -> Result<()> {
        match self {
            Self::Registry(c) => c.register(service, instance).await,
            Self::Etcd(c) => c.register(service, instance).await,
            Self::Zk(c) => c.register(service, instance).await,
        }
        .with_context(|| format!("registering {instance} in {service}"))
    }

    /// Registers `(service, instance)` pairs in one request: the backend's batch operation
    /// (registry `publishers:batch`, etcd txn, ZooKeeper multi).
    pub async fn register_batch(&self, regs: &[(&str, String)]) -> Result<()> {
        match self {
            Self::Registry(c) => c.register_batch(regs).await,
            Self::Etcd(c) => c.register_batch(regs).await,
            Self::Zk(c) => c.register_batch(regs).await,
        }
        .with_context(|| format!("registering a batch of {}", regs.len()))
    }

    /// Starts forwarding the service's instance list to `tx`; returns once the first state is in.
    pub async fn subscribe(
        &mut self,
        service: &str,
        sub: usize,
        tx: mpsc::UnboundedSender<Update>,
    ) -> Result<()> {
        match self {
            Self::Registry(c) => c.subscribe(service, sub, tx).await,
            Self::Etcd(c) => c.subscribe(service, sub, tx).await,
            Self::Zk(c) => c.subscribe(service, sub, tx).await,
        }
        .with_context(|| format!("subscribing to {service}"))
    }

    /// Goes away without deregistering anything, like a crashed process.
    pub fn vanish(self) {
        match self {
            Self::Registry(c) => c.vanish(),
            Self::Etcd(c) => c.vanish(),
            Self::Zk(c) => c.vanish(),
        }
    }
}

/// Checks a backend's external tools before starting it, with a hint at `bench/setup.sh`.
pub fn check_tools(kind: BackendKind, cfg: &ServerConfig) -> Result<()> {
    let missing = |what: &str| -> Result<()> { bail!("{what} not found: run bench/setup.sh") };
    match kind {
        BackendKind::Registry | BackendKind::RegistryCluster => {
            if !cfg.registry_bin.is_file() {
                bail!(
                    "registry-node binary {} not found: build it with `cargo build --release -p registry-node` or pass --registry-bin",
                    cfg.registry_bin.display()
                );
            }
        }
        BackendKind::Etcd => {
            if which("etcd").is_none() {
                missing("etcd")?;
            }
        }
        BackendKind::Zookeeper => {
            if which("java").is_none()
                || !std::path::Path::new("/usr/share/java/zookeeper.jar").is_file()
            {
                missing("java or /usr/share/java/zookeeper.jar")?;
            }
        }
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file())
}
