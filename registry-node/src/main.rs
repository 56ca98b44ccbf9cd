//! The registry-node binary: parses the configuration, starts the node's roles, prints the
//! `listening` line and serves until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use registry_node::config::{Config, Role};

// glibc malloc/free was about a quarter of the publish path in the profile (BENCHMARKS.md);
// mimalloc's per-thread free lists avoid its consolidation and locking.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let node = match config.role {
        Role::Standalone => registry_node::node::start_standalone(&config)
            .await
            .with_context(|| format!("cannot start a standalone node on {}", config.http_addr))?,
        Role::Session => registry_node::cluster::start_session_role(&config)
            .await
            .with_context(|| format!("cannot start a session node on {}", config.http_addr))?,
        Role::Data => {
            let node = registry_node::cluster::start_data_role(&config)
                .await
                .with_context(|| format!("cannot start a data node on {}", config.data_addr))?;
            println!("{}", node.listening_line());
            tracing::info!(data = %node.data_addr, advertise = %node.advertise_addr, "data node serving");
            let shutdown = node.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                shutdown.cancel();
            });
            node.wait().await.context("server failed")?;
            tracing::info!("stopped");
            return Ok(());
        }
    };
    println!("{}", node.listening_line());
    tracing::info!(http = %node.http_addr, role = ?config.role, "registry node serving");

    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    node.wait().await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
