//! The operator binary: command line, leader election, metrics server, controller.

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use kube_lease_manager::LeaseManagerBuilder;
use operator::controller::{self, Context, RunConfig};
use operator::metrics::{self, Metrics};
use operator::resources::OperatorPeer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Reconciles RegistryCluster resources into self-managing registries (docs/INTERNAL.md,
/// "operator command line").
#[derive(Parser, Debug)]
#[command(name = "operator", version)]
struct Args {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Only watch RegistryClusters in this namespace (all namespaces when absent).
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Hold the coordination.k8s.io Lease before writing (default on).
    #[arg(long = "leader-election", env = "OPERATOR_LEADER_ELECTION", action = ArgAction::Set,
          num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    leader_election: bool,
    /// Run without leader election (a single replica).
    #[arg(long = "no-leader-election", overrides_with = "leader_election")]
    no_leader_election: bool,
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "registry-operator")]
    lease_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Lease duration in seconds; a follower takes over at most this long after the leader
    /// stops renewing.
    #[arg(long, env = "OPERATOR_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_seconds: u64,
    /// Holder identity in the Lease (defaults to the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Give every RegistryCluster a NetworkPolicy: its data and internal ports reachable
    /// only from its own registry pods and from this operator (SECURITY.md).
    #[arg(long = "network-policy", env = "OPERATOR_NETWORK_POLICY", action = ArgAction::Set,
          num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    network_policy: bool,
    /// Labels of the operator's own pods (`k=v,...`), admitted by those NetworkPolicies
    /// from the operator's namespace (`POD_NAMESPACE`).
    #[arg(long, env = "OPERATOR_POD_LABELS", default_value = "app.kubernetes.io/name=registry-operator",
          value_parser = parse_labels)]
    operator_pod_labels: std::collections::BTreeMap<String, String>,
}

fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{kv:?} is not key=value")),
        })
        .collect::<Result<_, _>>()
        .and_then(|m: std::collections::BTreeMap<String, String>| {
            if m.is_empty() {
                Err("at least one label is needed".to_owned())
            } else {
                Ok(m)
            }
        })
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("registry-operator-{}", std::process::id()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let leader_election = args.leader_election && !args.no_leader_election;

    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot bind --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %listener.local_addr()?, "metrics listening");
    let app = metrics::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    let (leader_tx, leader_rx) = watch::channel(!leader_election);
    metrics.leader.set(i64::from(!leader_election));
    let mut lease_task = None;
    if leader_election {
        let grace = (args.lease_seconds / 3).max(1);
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_seconds)
            .with_grace(grace)
            .with_field_manager(format!("registry-operator-{identity}"))
            .build()
            .await
            .context("cannot set up the leader Lease")?;
        let (mut lease_rx, handle) = manager.watch().await;
        let metrics = metrics.clone();
        let forward = tokio::spawn(async move {
            loop {
                let leading = *lease_rx.borrow_and_update();
                metrics.leader.set(i64::from(leading));
                info!(%leading, "leadership");
                if leader_tx.send(leading).is_err() || lease_rx.changed().await.is_err() {
                    break;
                }
            }
            // Dropping the receiver makes the manager release the Lease.
            drop(lease_rx);
        });
        lease_task = Some((forward, handle));
    }

    let peer = args.network_policy.then(|| OperatorPeer {
        namespace: args.lease_namespace.clone(),
        pod_labels: args.operator_pod_labels.clone(),
    });
    let ctx =
        Arc::new(Context::new(client, &identity, metrics, leader_rx).with_network_policy(peer));
    info!(%identity, leader_election, namespace = ?args.namespace, "operator starting");
    controller::run(
        RunConfig {
            namespace: args.namespace,
        },
        ctx,
        shutdown_signal(),
    )
    .await;
    info!("controller stopped");

    if let Some((forward, handle)) = lease_task {
        forward.abort();
        let _ = forward.await;
        match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Ok(Ok(Ok(_))) => info!("lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "lease not released"),
            _ => warn!("lease release did not finish"),
        }
    }
    Ok(())
}
