//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use kubesim::{Simulator, SimulatorConfig};

/// Polls `check` until it returns Some or the deadline passes (the box is loaded, so
/// deadlines are generous).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn client(sim: &Simulator) -> kube::Client {
    let config = kube::Config::new(sim.url().parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

pub async fn api_only() -> Simulator {
    Simulator::start(SimulatorConfig {
        run_workloads: false,
        ..SimulatorConfig::default()
    })
    .await
    .expect("start simulator")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// The registry-node binary: `REGISTRY_NODE_BIN`, else `<workspace>/target/debug/registry-node`.
pub fn registry_node_bin() -> PathBuf {
    let path = std::env::var_os("REGISTRY_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("registry-node"));
    assert!(path.is_file(), "registry-node binary not found at {} (run `cargo build -p registry-node` or set REGISTRY_NODE_BIN)", path.display());
    path
}
