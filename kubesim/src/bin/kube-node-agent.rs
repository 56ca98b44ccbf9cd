//! `kube-node-agent`: a node of a real Kubernetes API server whose pods run as local
//! processes (see `kubesim::agent`). Needs root (network namespaces, mounts, users).
//!
//! `kube-node-agent --kubeconfig node.kubeconfig --node-name node-0 --state-dir DIR`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubesim::agent::{Agent, AgentConfig};

#[derive(Parser)]
#[command(
    name = "kube-node-agent",
    about = "A Kubernetes node whose pods run as local processes, for a real API server"
)]
struct Args {
    /// Credentials of the node (user `system:node:NAME` in group `system:nodes`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "node-0")]
    node_name: String,
    /// Pod directories and logs: STATE_DIR/pods/NAMESPACE/POD/CONTAINER.log
    #[arg(long)]
    state_dir: PathBuf,
    /// IMAGE=PATH: containers whose image is IMAGE run the binary at PATH (repeatable).
    /// `sofaregistry/registry-node` and `sofaregistry/operator` default to the
    /// `registry-node` and `operator` binaries beside this one.
    #[arg(long = "image-map", value_name = "IMAGE=PATH")]
    image_map: Vec<String>,
    /// IMAGE=UID[:GID]: the user IMAGE's `USER` line names, which its containers run as
    /// unless their securityContext says otherwise (repeatable; default root). The
    /// `sofaregistry/*` images are 65532:65532, as their Dockerfiles say.
    #[arg(long = "image-user", value_name = "IMAGE=UID[:GID]")]
    image_user: Vec<String>,
    /// The pod network 10.A.B.0/24 as "10.A.B" (the node is 10.A.B.1); the API server must
    /// be reachable from it.
    #[arg(long)]
    pod_subnet: String,
    /// Short id of the pod network's bridge and namespaces (1 to 6 letters or digits).
    #[arg(long, default_value = "0")]
    network_id: String,
    /// Node Lease duration in seconds.
    #[arg(long, default_value_t = 40)]
    lease_seconds: i32,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
}

fn subnet(s: &str) -> anyhow::Result<[u8; 3]> {
    let parts: Vec<u8> = s
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("--pod-subnet {s:?}"))?;
    match parts.as_slice() {
        [10, a, b] => Ok([10, *a, *b]),
        _ => anyhow::bail!("--pod-subnet {s:?}: expected 10.A.B"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut image_map =
        kubesim::workload::env::parse_image_map(&args.image_map).map_err(anyhow::Error::msg)?;
    let beside = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    for (image, binary) in [
        ("sofaregistry/registry-node", "registry-node"),
        ("sofaregistry/operator", "operator"),
    ] {
        if !image_map.contains_key(image) && beside.join(binary).is_file() {
            image_map.insert(image.to_string(), beside.join(binary));
        }
    }
    let mut image_users = std::collections::BTreeMap::new();
    for image in ["sofaregistry/registry-node", "sofaregistry/operator"] {
        image_users.insert(image.to_string(), (65532, 65532));
    }
    for entry in &args.image_user {
        let (image, user) = entry
            .split_once('=')
            .with_context(|| format!("--image-user {entry:?}: expected IMAGE=UID[:GID]"))?;
        let (uid, gid) = user.split_once(':').unwrap_or((user, user));
        let parsed = (uid.parse::<u32>(), gid.parse::<u32>());
        let (Ok(uid), Ok(gid)) = parsed else {
            anyhow::bail!("--image-user {entry:?}: UID and GID are numbers")
        };
        image_users.insert(image.to_string(), (uid, gid));
    }
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    let api_host = config
        .cluster_url
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let api_port = config.cluster_url.port_u16().unwrap_or(443);
    let client = kube::Client::try_from(config)?;
    let agent = Agent::new(
        client,
        AgentConfig {
            node_name: args.node_name,
            state_dir: args.state_dir,
            image_map,
            image_users,
            network_id: args.network_id,
            pod_subnet: subnet(&args.pod_subnet)?,
            api_host,
            api_port,
            lease_seconds: args.lease_seconds,
            max_pods: args.max_pods,
        },
    )
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    agent.run(shutdown).await
}
