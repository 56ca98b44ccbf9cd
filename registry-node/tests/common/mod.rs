//! Test kit: an in-process standalone node on 127.0.0.1:0; the HTTP client, the SSE reader
//! and `eventually` come from the workspace's test kit.

use registry_node::config::Config;
use registry_node::roles::{start_standalone, RunningNode};

pub use testkit::prelude::*;

/// Starts a standalone node with short timings, adjusted by `f`.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> RunningNode {
    let mut cfg = Config::for_tests();
    cfg.push_delay_ms = 50;
    cfg.push_max_delay_ms = 300;
    cfg.ping_interval_ms = 300;
    cfg.version_scan_ms = 500;
    cfg.node_name = Some("test-node".into());
    f(&mut cfg);
    start_standalone(&cfg).await.expect("start node")
}

pub async fn start() -> RunningNode {
    start_with(|_| {}).await
}
