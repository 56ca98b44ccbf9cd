//! The operator on a real Kubernetes control plane (`scripts/kube-up`), installed the way a
//! user installs it: `helm install` of the chart, or `kubectl apply --server-side` of
//! manifests/install.yaml. The operator runs as the 2 pods of its Deployment under its
//! ServiceAccount (every call passes the chart's RBAC through the real authorizer), with
//! leader election; clusters live in namespaces that enforce PodSecurity `restricted`; the
//! real StatefulSet, garbage-collector and EndpointSlice controllers do their part; clients
//! publish and subscribe through the client Service's endpoints the whole time.
//!
//! Run by `scripts/kube-test` (which starts the control plane and sets `KUBE_UP_DIR`); the
//! tests share one control plane and run one at a time (`--test-threads=1`). Without
//! `KUBE_UP_DIR` each test says SKIPPED.
//!
//! A scenario is a short function over [`Scenario`]: the cluster, its namespace and
//! RegistryCluster, and the clients.

mod kit;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kit::cluster::{repo, Cluster};
use kit::workload::{wait_cluster_ready, Workload};
use kit::{eventually, ServiceProxy};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use registry_client::{Interest, ServiceId, Snapshot, Subscription};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const READY_WAIT: Duration = Duration::from_secs(240);
/// The chart's lease (15 s) plus the time to notice and to start reconciling.
const TAKEOVER_WAIT: Duration = Duration::from_secs(45);
const SELECTOR: &str = "app.kubernetes.io/name=registry-operator";

/// A RegistryCluster in its own restricted namespace, with clients on it.
struct Scenario<'a> {
    kube: &'a Cluster,
    ns: String,
    name: String,
    workload: Workload,
    /// Subscribed to `e2e.svc0` from the start.
    subscription: Subscription,
    _proxy: ServiceProxy,
}

impl<'a> Scenario<'a> {
    /// Applies manifests/examples/minimal.yaml in `ns` and waits for Ready (3 data, 2
    /// session nodes), then starts publishers and a subscriber through the client Service
    /// and checks that every publisher is there.
    async fn create(kube: &'a Cluster, ns: &str) -> Scenario<'a> {
        let started = Instant::now();
        let example = repo("manifests/examples/minimal.yaml");
        kube.kubectl(&[
            "apply",
            "--server-side",
            "-n",
            ns,
            "-f",
            example.to_str().unwrap(),
        ])
        .expect("kubectl apply minimal.yaml");
        let name = "registry".to_owned();
        let rc = wait_cluster_ready(&kube.clusters(ns), &name, 3, 2, READY_WAIT).await;
        eprintln!(
            "[kube] {ns}/{name} Ready in {:?} at epoch {}",
            started.elapsed(),
            rc.status
                .as_ref()
                .map(|s| s.membership.epoch)
                .unwrap_or_default()
        );
        let sts: Api<StatefulSet> = Api::namespaced(kube.client.clone(), ns);
        for owned in ["registry-data", "registry-session"] {
            let s = sts.get(owned).await.expect("statefulset");
            assert_eq!(
                s.owner_references()[0].name,
                name,
                "{owned} owned by the cluster"
            );
        }
        let proxy = kube.service_proxy(ns, &name, "http").await;
        eventually("client Service has ready endpoints", READY_WAIT, || async {
            (proxy.backends().len() == 2).then_some(())
        })
        .await;
        let workload = Workload::start(&proxy.url).await;
        let subscription = workload
            .client
            .subscribe(Interest::new(ServiceId::new("e2e.svc0")))
            .await
            .expect("subscribe");
        workload.assert_nothing_lost("create").await;
        let mut s = Scenario {
            kube,
            ns: ns.to_owned(),
            name,
            workload,
            subscription,
            _proxy: proxy,
        };
        s.assert_subscriber_current("create").await;
        s
    }

    /// The subscriber has been pushed exactly the publishers of `e2e.svc0`.
    async fn assert_subscriber_current(&mut self, step: &str) {
        let want = self
            .workload
            .data_of("e2e.svc0")
            .await
            .expect("data of e2e.svc0");
        let have = |snap: &Snapshot| {
            snap.zones
                .values()
                .flatten()
                .cloned()
                .collect::<BTreeSet<String>>()
        };
        let pushed = self
            .subscription
            .wait_for(READY_WAIT, |snap| have(snap) == want)
            .await;
        assert!(
            pushed.is_some(),
            "after {step}: the subscriber is not pushed {want:?}"
        );
    }

    async fn patch_spec(&self, spec: serde_json::Value) {
        self.kube
            .clusters(&self.ns)
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    /// Deletes the RegistryCluster: the garbage collector removes everything it owned.
    async fn delete(self) {
        self.kube
            .clusters(&self.ns)
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("delete cluster");
        let client = self.kube.client.clone();
        let ns = self.ns.clone();
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        eventually(
            "everything the cluster owned is gone",
            READY_WAIT,
            || async {
                let lp = ListParams::default().labels(&selector);
                let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let svc = Api::<Service>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let pods = self.kube.pods(&ns).list(&lp).await.ok()?.items.len();
                let rc = self.kube.clusters(&ns).get_opt(&self.name).await.ok()?;
                (sts + svc + cms + pods == 0 && rc.is_none()).then_some(())
            },
        )
        .await;
    }
}

/// Waits for the operator Deployment's 2 replicas and one leader; the leader's pod name.
async fn operator_up(kube: &Cluster, ns: &str, deployment: &str) -> String {
    let deployments: Api<Deployment> = Api::namespaced(kube.client.clone(), ns);
    eventually(
        "operator Deployment has 2 ready replicas",
        READY_WAIT,
        || async {
            let d = deployments.get(deployment).await.ok()?;
            (d.status?.ready_replicas? == 2).then_some(())
        },
    )
    .await;
    eventually("an operator pod holds the Lease", READY_WAIT, || async {
        let holder = kube.lease_holder(ns, "registry-operator").await?;
        let pods = kube.live_pods(ns, SELECTOR).await;
        pods.iter()
            .any(|p| p.name_any() == holder)
            .then_some(holder)
    })
    .await
}

/// Deletes the leader's pod: the other replica holds the Lease within the lease duration,
/// and reconciles (a session scale-up 2 → 3 goes through), with nothing lost.
async fn leader_pod_deleted(s: &mut Scenario<'_>, operator_ns: &str, leader: &str) {
    let deleted = Instant::now();
    s.kube
        .kubectl(&["delete", "pod", "-n", operator_ns, leader, "--wait=false"])
        .expect("delete leader pod");
    let standby = eventually(
        "the standby replica takes the Lease",
        TAKEOVER_WAIT,
        || async {
            let holder = s
                .kube
                .lease_holder(operator_ns, "registry-operator")
                .await?;
            (holder != leader).then_some(holder)
        },
    )
    .await;
    eprintln!(
        "[kube] leader {leader} deleted; {standby} leads after {:?}",
        deleted.elapsed()
    );
    s.patch_spec(json!({"session": {"replicas": 3}})).await;
    wait_cluster_ready(&s.kube.clusters(&s.ns), &s.name, 3, 3, READY_WAIT).await;
    s.workload
        .assert_nothing_lost("leader failover and session 2 → 3")
        .await;
    s.assert_subscriber_current("leader failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_installed_operator_runs_a_cluster() {
    let Some(kube) = Cluster::from_env("helm_installed_operator_runs_a_cluster").await else {
        return;
    };
    let ns = "registry-helm";
    kube.namespace(ns, "restricted").await;
    let chart = repo("charts/registry-operator");
    kube.helm(&[
        "install",
        "registry-operator",
        chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--wait",
        "--timeout",
        "5m",
    ])
    .expect("helm install");
    let leader = operator_up(&kube, ns, "registry-operator").await;

    let mut s = Scenario::create(&kube, ns).await;
    leader_pod_deleted(&mut s, ns, &leader).await;
    s.delete().await;

    kube.helm(&[
        "uninstall",
        "registry-operator",
        "--namespace",
        ns,
        "--wait",
    ])
    .expect("helm uninstall");
    kube.delete_namespace(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_applied_operator_runs_a_cluster_and_refuses_invalid_ones() {
    let Some(kube) =
        Cluster::from_env("kubectl_applied_operator_runs_a_cluster_and_refuses_invalid_ones").await
    else {
        return;
    };
    let install = repo("manifests/install.yaml");
    let install = install.to_str().unwrap();
    kube.kubectl(&["apply", "--server-side", "-f", install])
        .expect("kubectl apply install.yaml");
    operator_up(&kube, "registry-system", "registry-operator").await;

    let ns = "registry-kubectl";
    kube.namespace(ns, "restricted").await;
    // Every example is accepted by the API server as it stands (admission and validation
    // included: a server-side dry run); minimal.yaml then runs for real.
    let examples = std::fs::read_dir(repo("manifests/examples")).expect("examples");
    for example in examples.flatten() {
        let path = example.path();
        kube.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            ns,
            "-f",
            path.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{} is refused: {e}", path.display()));
    }
    let s = Scenario::create(&kube, ns).await;

    // Invalid clusters are refused by the API server with a message naming the field.
    let invalid = [
        (
            "data replicas 0",
            json!({"data": {"replicas": 0}, "session": {"replicas": 1}}),
            "spec.data.replicas",
        ),
        (
            "session replicas -1",
            json!({"data": {"replicas": 1}, "session": {"replicas": -1}}),
            "spec.session.replicas",
        ),
        (
            "replicas not a number",
            json!({"data": {"replicas": "three"}, "session": {"replicas": 1}}),
            "spec.data.replicas",
        ),
    ];
    for (what, spec, field) in invalid {
        let mut spec = spec;
        spec["image"] = json!("sofaregistry/registry-node:0.1.0");
        let doc = json!({"apiVersion": "sofaregistry.dev/v1alpha1", "kind": "RegistryCluster",
                         "metadata": {"name": "invalid", "namespace": ns}, "spec": spec});
        let file = kube.dir.join("invalid.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        let err = kube
            .kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            err.contains(field),
            "{what}: the message names {field}: {err}"
        );
        assert!(
            kube.clusters(ns)
                .get_opt("invalid")
                .await
                .unwrap()
                .is_none(),
            "{what}: nothing stored"
        );
    }

    s.delete().await;
    kube.delete_namespace(ns).await;
    kube.kubectl(&["delete", "--wait", "-f", install])
        .expect("kubectl delete install.yaml");
}
