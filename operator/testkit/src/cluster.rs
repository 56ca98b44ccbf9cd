//! The real control plane that `scripts/kube-up DIR` runs (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and a node agent whose pods are local processes
//! on a bridge this machine reaches). `scripts/kube-test` starts one and runs the tests
//! with `KUBE_UP_DIR=DIR`; without it they say SKIPPED and pass.
//!
//! Everything goes the way a user's would: `DIR/bin/kubectl` and `DIR/bin/helm` with the
//! admin kubeconfig, and a kube client for what the tests watch.

use crate::{eventually, ServiceProxy};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use operator::crd::RegistryCluster;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Cluster {
    pub dir: PathBuf,
    pub client: Client,
}

/// A file of this repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

impl Cluster {
    /// The control plane of `KUBE_UP_DIR`; `None` (and a SKIPPED line naming `test`) when
    /// the variable is not set.
    pub async fn from_env(test: &str) -> Option<Cluster> {
        let Ok(dir) = std::env::var("KUBE_UP_DIR") else {
            eprintln!(
                "SKIPPED {test}: KUBE_UP_DIR is not set (scripts/kube-test starts a real \
                 control plane and runs this test on it)"
            );
            return None;
        };
        let dir = PathBuf::from(dir);
        let kubeconfig = Kubeconfig::read_from(dir.join("kubeconfig")).expect("read kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("kubeconfig");
        let client = Client::try_from(config).expect("client");
        Some(Cluster { dir, client })
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.dir.join("bin").join(name))
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .current_dir(repo(""))
            .output()
            .map_err(|e| format!("{name}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!(
            "[kube] {name} {}: {}",
            args.join(" "),
            if out.status.success() { "ok" } else { "failed" }
        );
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stderr}{stdout}"))
        }
    }

    /// Runs `DIR/bin/kubectl ARGS` with the admin kubeconfig: stdout, or stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.tool("kubectl", args)
    }

    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        self.tool("helm", args)
    }

    /// Creates namespace `name` enforcing PodSecurity `level` (restricted, baseline,
    /// privileged) at the latest version, as a hardened cluster labels it.
    pub async fn namespace(&self, name: &str, level: &str) {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    /// Deletes a namespace and waits until everything in it is gone.
    pub async fn delete_namespace(&self, name: &str) {
        let api = Api::<Namespace>::all(self.client.clone());
        let _ = api.delete(name, &DeleteParams::default()).await;
        eventually(
            &format!("namespace {name} gone"),
            Duration::from_secs(180),
            || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) },
        )
        .await;
    }

    pub fn clusters(&self, ns: &str) -> Api<RegistryCluster> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Pods of `ns` matching `selector`, not being deleted.
    pub async fn live_pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        let list = self
            .pods(ns)
            .list(&ListParams::default().labels(selector))
            .await;
        list.map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// The holder of a Lease whose holder is still within its duration.
    pub async fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .ok()??;
        let spec = lease.spec?;
        let renewed = spec.renew_time?.0;
        let age = k8s_openapi::jiff::Timestamp::now().as_second() - renewed.as_second();
        let fresh = age <= spec.lease_duration_seconds? as i64;
        fresh
            .then_some(spec.holder_identity?)
            .filter(|h| !h.is_empty())
    }

    /// A stand-in for a ClusterIP Service (no kube-proxy runs): follows the ready endpoints
    /// that the EndpointSlice controller publishes for `service`, port `port_name`.
    pub async fn service_proxy(&self, ns: &str, service: &str, port_name: &str) -> ServiceProxy {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let selector = format!("kubernetes.io/service-name={service}");
        let port_name = port_name.to_owned();
        ServiceProxy::following(move |backends| {
            tokio::spawn(async move {
                loop {
                    if let Ok(list) = slices.list(&ListParams::default().labels(&selector)).await {
                        let mut ready = Vec::new();
                        for slice in &list.items {
                            let port = slice
                                .ports
                                .iter()
                                .flatten()
                                .find(|p| p.name.as_deref() == Some(port_name.as_str()))
                                .and_then(|p| p.port);
                            let Some(port) = port else { continue };
                            for ep in slice.endpoints.iter().flatten() {
                                let is_ready =
                                    ep.conditions.as_ref().and_then(|c| c.ready) == Some(true);
                                if let (true, Some(ip)) = (is_ready, ep.addresses.first()) {
                                    ready.push(format!("{ip}:{port}"));
                                }
                            }
                        }
                        ready.sort();
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

    /// The last lines of a pod container's log (the node agent's files), for failures.
    pub fn pod_log(&self, ns: &str, pod: &str, container: &str) -> String {
        let path = self
            .dir
            .join("node/pods")
            .join(ns)
            .join(pod)
            .join(format!("{container}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
