//! The `kubesim` command: runs the simulator until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kubesim::{Simulator, SimulatorConfig};

#[derive(Parser)]
#[command(
    name = "kubesim",
    about = "Local Kubernetes simulator: fake API server + StatefulSet runner with real processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run workloads until SIGINT/SIGTERM.
    Serve {
        /// Listen address (port 0 = ephemeral).
        #[arg(long, env = "KUBESIM_ADDR", default_value = "127.0.0.1:6443")]
        addr: SocketAddr,
        /// IMAGE=PATH: containers whose image is IMAGE run the binary at PATH (repeatable).
        /// IMAGE matches the full reference, the repository, or the last path segment
        /// without tag (`ghcr.io/x/registry-node:1` matches `registry-node`).
        #[arg(long = "image-map", value_name = "IMAGE=PATH")]
        image_map: Vec<String>,
        /// Pod directories and logs: STATE_DIR/pods/NAMESPACE/POD/CONTAINER.log
        /// (default: a temporary directory, removed on exit).
        #[arg(long, env = "KUBESIM_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Write a kubeconfig for this server to PATH (for kubectl and the operator).
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
        /// Serve the API only; do not run StatefulSets and Pods.
        #[arg(long)]
        no_workloads: bool,
        /// Probes run at least this often (ms), whatever periodSeconds says.
        #[arg(long, default_value_t = 1000)]
        probe_period_cap_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve {
        addr,
        image_map,
        state_dir,
        kubeconfig_out,
        no_workloads,
        probe_period_cap_ms,
    } = Cli::parse().command;
    let config = SimulatorConfig {
        addr,
        image_map: kubesim::workload::env::parse_image_map(&image_map)
            .map_err(anyhow::Error::msg)?,
        state_dir,
        run_workloads: !no_workloads,
        probe_period_cap: Duration::from_millis(probe_period_cap_ms.max(10)),
        ..SimulatorConfig::default()
    };
    let sim = Simulator::start(config)
        .await
        .context("starting the simulator")?;
    if let Some(path) = &kubeconfig_out {
        sim.write_kubeconfig(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({"event": "listening", "url": sim.url(), "stateDir": sim.state_dir(), "kubeconfig": kubeconfig_out})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down; killing pod processes");
    sim.shutdown();
    Ok(())
}
