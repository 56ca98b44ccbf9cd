//! The registry-node binary: parses the configuration, starts the node's roles, prints the
//! `listening` line and serves until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use registry_node::config::Config;

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
    // Listening from before the `listening` line: a supervisor that stops the node right
    // after it started must get a clean shutdown, not the default action (exit 143).
    let signals = shutdown_signals().context("cannot listen for SIGTERM/SIGINT")?;

    let node = registry_node::roles::start(&config)
        .await
        .with_context(|| format!("cannot start {}", registry_node::roles::describe(&config)))?;
    println!("{}", node.listening_line());
    let (listener, addr) = node.serving();
    tracing::info!(listener, %addr, role = ?config.role, "registry node serving");

    cancel_on(signals, node.shutdown_token());
    node.wait().await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT after this call.
fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn cancel_on(
    signals: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        signals.await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}
