//! The operator on a real Kubernetes control plane (`scripts/kube-up`), installed the way a
//! user installs it: `helm install` of the chart, or `kubectl apply --server-side` of
//! manifests/install.yaml. The operator runs as the 2 pods of its Deployment under its
//! ServiceAccount (every call passes the chart's RBAC through the real authorizer), with
//! leader election; clusters live in namespaces that enforce PodSecurity `restricted`; the
//! real StatefulSet, garbage-collector and EndpointSlice controllers do their part; clients
//! publish and subscribe through the client Service's endpoints the whole time.
//!
//! Scenarios, with publishers and a subscriber live the whole time and exact publisher sets
//! checked after every step: create → Ready; data 3 → 5 → 2; the operator leader's pod
//! deleted (the standby takes over) with session 2 → 3; an image upgrade; kill -9 of a data
//! pod's process; stopPush on and off; the RegistryCluster deleted → everything it owned
//! gone. Every example applies; invalid RegistryClusters are refused by the API server.
//! Access rules with ServiceAccount tokens checked by the real TokenReview API: one
//! ServiceAccount may publish, another gets 403, a token for another audience 401. A
//! cluster with `spec.tls`: HTTPS on the public port with the server's name checked, mutual
//! TLS on every internal port, no port answering plain HTTP.
//!
//! Run by `scripts/kube-test` (which starts the control plane and sets `KUBE_UP_DIR`); the
//! tests share one control plane and run one at a time (`--test-threads=1`). Without
//! `KUBE_UP_DIR` each test says SKIPPED.
//!
//! A scenario is a short function over [`Scenario`]: the cluster, its namespace and
//! RegistryCluster, and the clients.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use operator::crd::RegistryCluster;
use operator::resources::{internal_port, NodeRole};
use operator_testkit::cluster::{repo, Cluster};
use operator_testkit::workload::{push_stopped_on, wait_cluster_ready, Workload, NO_LOSS_WAIT};
use operator_testkit::{assert_only_tls, eventually, tls_secret, ServiceProxy};
use registry_client::{Interest, Publication, ServiceId, Snapshot, Subscription};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use testkit::tls::Ca;

/// The registry-node image of manifests/examples (the node agent runs the built binary).
const IMAGE: &str = "sofaregistry/registry-node:0.1.0";
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
    /// The replicas the spec asks for now.
    data: u32,
    sessions: u32,
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
            data: 3,
            sessions: 2,
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

    async fn wait_ready(&self, data: u32, sessions: u32) -> RegistryCluster {
        let rc = wait_cluster_ready(
            &self.kube.clusters(&self.ns),
            &self.name,
            data,
            sessions,
            READY_WAIT,
        )
        .await;
        self.nodes_on_epoch(
            rc.status
                .as_ref()
                .map(|s| s.membership.epoch)
                .unwrap_or_default(),
        )
        .await;
        rc
    }

    /// The cluster's live pods of `role` (data, session), by name.
    async fn pods(&self, role: &str) -> Vec<Pod> {
        let selector = format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component={role}",
            self.name
        );
        let mut pods = self.kube.live_pods(&self.ns, &selector).await;
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// The cluster token the operator generated (its nodes' internal listeners take it).
    async fn cluster_token(&self) -> String {
        cluster_token(self.kube, &self.ns, &self.name).await
    }

    async fn all_pods(&self) -> Vec<Pod> {
        [self.pods("data").await, self.pods("session").await].concat()
    }

    /// Every session node reports `stopPush` = `stop`.
    async fn push_stopped(&self, stop: bool) -> Option<()> {
        let pods = self.pods("session").await;
        let ips = pods
            .iter()
            .map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect::<Option<Vec<_>>>()?;
        push_stopped_on(ips, stop).await
    }

    /// Every node answers on the published epoch (data nodes on their data port, session
    /// nodes on their API port), reached at its pod IP on the node's bridge.
    async fn nodes_on_epoch(&self, epoch: u64) {
        let token = self.cluster_token().await;
        let http = reqwest::Client::new();
        eventually(
            &format!("every node on epoch {epoch}"),
            READY_WAIT,
            || async {
                for role in [NodeRole::Data, NodeRole::Session] {
                    let (_, port) = internal_port(role);
                    for p in self.pods(role.as_str()).await {
                        let ip = p.status.as_ref()?.pod_ip.clone()?;
                        let v: serde_json::Value = http
                            .get(format!("http://{ip}:{port}/internal/v1/status"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .ok()?
                            .json()
                            .await
                            .ok()?;
                        if v["epoch"].as_u64()? != epoch {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await
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
                let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let roles = Api::<Role>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len()
                    + Api::<RoleBinding>::namespaced(client.clone(), &ns)
                        .list(&lp)
                        .await
                        .ok()?
                        .items
                        .len();
                let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .len();
                let pods = self.kube.pods(&ns).list(&lp).await.ok()?.items.len();
                let rc = self.kube.clusters(&ns).get_opt(&self.name).await.ok()?;
                let left = sts + svc + cms + pdbs + accounts + roles + secrets + pods;
                (left == 0 && rc.is_none()).then_some(())
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
/// and reconciles (a session scale-up, 2 → 3, goes through), with nothing lost.
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
    s.sessions += 1;
    s.patch_spec(json!({"session": {"replicas": s.sessions}}))
        .await;
    s.wait_ready(s.data, s.sessions).await;
    s.workload
        .assert_nothing_lost("leader failover and session 2 → 3")
        .await;
    s.assert_subscriber_current("leader failover").await;
}

/// Data 3 → 5 → 2: the real StatefulSet controller adds and removes pods, the operator
/// drains before the scale-down; nothing is lost at any step.
async fn data_scaled(s: &mut Scenario<'_>) {
    s.patch_spec(json!({"data": {"replicas": 5}})).await;
    s.wait_ready(5, s.sessions).await;
    s.workload.assert_nothing_lost("data 3 → 5").await;
    s.patch_spec(json!({"data": {"replicas": 2}})).await;
    s.data = 2;
    s.wait_ready(2, s.sessions).await;
    eventually("data pods shrink to 2", READY_WAIT, || async {
        (s.pods("data").await.len() == 2).then_some(())
    })
    .await;
    s.workload.assert_nothing_lost("data 5 → 2").await;
    s.assert_subscriber_current("data 3 → 5 → 2").await;
}

/// A new image: every pod is replaced (new uid, new image) one at a time, with nothing lost
/// and no Degraded condition for the planned restarts.
async fn image_upgraded(s: &mut Scenario<'_>) {
    let before: BTreeMap<String, String> = s
        .all_pods()
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    let image = "sofaregistry/registry-node:0.1.1";
    s.patch_spec(json!({ "image": image })).await;
    let want = before.len();
    eventually(
        "every pod replaced with the new image",
        READY_WAIT,
        || async {
            let pods = s.all_pods().await;
            let replaced = pods.len() == want
                && pods.iter().all(|p| {
                    before.get(&p.name_any()) != p.uid().as_ref()
                        && p.spec
                            .as_ref()
                            .is_some_and(|spec| spec.containers[0].image.as_deref() == Some(image))
                });
            replaced.then_some(())
        },
    )
    .await;
    let rc = s.wait_ready(s.data, s.sessions).await;
    let degraded = rc
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Degraded"))
        .cloned();
    assert!(
        degraded.as_ref().is_none_or(|c| c.status == "False"),
        "a planned restart is not a degradation: {degraded:?}"
    );
    s.workload.assert_nothing_lost("image upgrade").await;
    s.assert_subscriber_current("image upgrade").await;
}

/// SIGKILL of a data pod's process (its container's process, as the node runs it): the node
/// agent restarts the container, the node rejoins, nothing is lost.
async fn data_process_killed(s: &mut Scenario<'_>) {
    let victim = format!("{}-data-1", s.name);
    let container = |pods: &[Pod]| {
        pods.iter().find(|p| p.name_any() == victim).and_then(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()
                .cloned()
        })
    };
    let before = container(&s.pods("data").await).expect("victim's container status");
    let pid: i32 = before
        .container_id
        .as_deref()
        .and_then(|id| id.strip_prefix("kube-node-agent://"))
        .and_then(|p| p.parse().ok())
        .expect("containerID names the process");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    eventually("killed data container restarted", READY_WAIT, || async {
        let now = container(&s.pods("data").await)?;
        (now.restart_count > before.restart_count && now.ready).then_some(())
    })
    .await;
    s.wait_ready(s.data, s.sessions).await;
    s.workload
        .assert_nothing_lost("kill -9 of a data pod's process")
        .await;
    s.assert_subscriber_current("kill -9").await;
}

/// stopPush pauses pushes on every session node; clearing it brings the subscriber up to
/// date with what was published meanwhile.
async fn stop_push_toggled(s: &mut Scenario<'_>) {
    s.patch_spec(json!({"stopPush": true})).await;
    eventually("stopPush on every session node", READY_WAIT, || {
        s.push_stopped(true)
    })
    .await;
    let late_data = "10.0.0.99:8080";
    let late = s
        .workload
        .client
        .publish(Publication::new(ServiceId::new("e2e.svc0"), [late_data]))
        .await
        .expect("publish while paused");
    eventually("the paused publish is stored", NO_LOSS_WAIT, || async {
        s.workload
            .data_of("e2e.svc0")
            .await?
            .contains(late_data)
            .then_some(())
    })
    .await;
    // Nothing may arrive while paused: watch for a while (there is no event to wait for).
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        let pushed = s
            .subscription
            .latest()
            .is_some_and(|snap| snap.all_data().any(|d| d == late_data));
        assert!(!pushed, "pushed while stopPush was set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.patch_spec(json!({"stopPush": false})).await;
    eventually("stopPush off on every session node", READY_WAIT, || {
        s.push_stopped(false)
    })
    .await;
    eventually(
        "the subscriber catches up after stopPush is cleared",
        NO_LOSS_WAIT,
        || async {
            let snap = s.subscription.latest()?;
            let caught_up = snap.all_data().any(|d| d == late_data);
            caught_up.then_some(())
        },
    )
    .await;
    late.remove().await.expect("remove the late publisher");
    s.assert_subscriber_current("stopPush off").await;
}

/// Access rules on the real API server (issue 16): the session pods check ServiceAccount
/// tokens with the TokenReview API under the ClusterRole the install ships, bound to the
/// cluster's node ServiceAccount. Tokens come from the TokenRequest API, as a pod's
/// projected token does: `shop/checkout` may publish `com.shop.pay.*`; `shop/storefront`
/// may only subscribe, and its publish is refused with 403 naming the right; a checkout
/// token for another audience, and no token at all, get 401.
async fn service_account_tokens_checked(s: &Scenario<'_>) {
    let kube = s.kube;
    kube.namespace("shop", "restricted").await;
    for sa in ["checkout", "storefront"] {
        kube.kubectl(&["-n", "shop", "create", "serviceaccount", sa])
            .expect("create serviceaccount");
    }
    let binding = format!("{}-node-tokenreview", s.ns);
    kube.kubectl(&[
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole=registry-operator-node-tokenreview",
        &format!("--serviceaccount={}:{}-node", s.ns, s.name),
    ])
    .expect("bind the TokenReview role to the node ServiceAccount");
    let access = json!({"spec": {"access": {"rules": [
        {"principals": ["serviceaccount:shop/checkout"],
         "publish": ["com.shop.pay.*"], "subscribe": ["com.shop.*"]},
        {"principals": ["serviceaccount:shop/storefront"], "subscribe": ["com.shop.*"]},
    ]}}});
    kube.kubectl(&[
        "-n",
        &s.ns,
        "patch",
        "regc",
        &s.name,
        "--type",
        "merge",
        "-p",
        &access.to_string(),
    ])
    .expect("kubectl patch spec.access");

    let token = |sa: &'static str, audience: &'static str| async move {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_owned()]),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(kube.client.clone(), "shop")
            .create_token_request(sa, &Default::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .and_then(|status| status.token)
            .expect("a token")
    };
    let checkout = token("checkout", "sofaregistry.dev").await;
    let storefront = token("storefront", "sofaregistry.dev").await;
    let elsewhere = token("checkout", "another.example").await;

    // The first spec.access rolls the session pods (the rules' volume and --access-file);
    // a session pod that answers 401 without a credential runs with the rules.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = eventually("a session pod enforces the rules", READY_WAIT, || async {
        for pod in s.pods("session").await {
            let ip = pod.status.as_ref().and_then(|st| st.pod_ip.clone())?;
            let base = format!("http://{ip}:9603");
            let res = http
                .post(format!("{base}/api/v1/sessions"))
                .json(&json!({}))
                .send()
                .await;
            if res.is_ok_and(|r| r.status().as_u16() == 401) {
                return Some(base);
            }
        }
        None
    })
    .await;
    let node = testkit::http::Client::over(base, http);
    let (status, v) = node
        .clone()
        .with_token(&elsewhere)
        .post("/api/v1/sessions", json!({}))
        .await;
    assert_eq!(status, 401, "a token for another audience: {v}");

    let publish = |token: &str| {
        let node = node.clone().with_token(token);
        async move {
            let (status, v) = node.post("/api/v1/sessions", json!({})).await;
            assert_eq!(status, 201, "a session with a ServiceAccount token: {v}");
            let sid = v["sessionId"].as_str().expect("sessionId").to_owned();
            let body = json!({"dataId": "com.shop.pay.card", "data": ["10.1.2.3:8080"]});
            node.publish(&sid, body).await
        }
    };
    let (status, v) = publish(&checkout).await;
    assert_eq!(
        status, 201,
        "shop/checkout publishes com.shop.pay.card: {v}"
    );
    let (status, v) = publish(&storefront).await;
    assert_eq!(status, 403, "shop/storefront may not publish: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("publish") && message.contains("serviceaccount:shop/storefront"),
        "the 403 names the principal and the right: {v}"
    );
    eprintln!("[kube] TokenReview: checkout 201, storefront 403, other audience 401");

    kube.kubectl(&["delete", "clusterrolebinding", &binding])
        .expect("delete clusterrolebinding");
    kube.delete_namespace("shop").await;
}

/// A cluster with `spec.tls` from the start. Ready means the operator read every node's
/// status and delivered the membership over mutual TLS (the nodes' internal ports speak
/// nothing else); a client that trusts only the CA and checks the server's name, as
/// `registryctl --ca-file` does, publishes through a session pod (session → data over mutual
/// TLS) and reads it back; no port answers plain HTTP, and an internal port refuses a
/// caller without a certificate.
async fn tls_cluster_speaks_only_tls(kube: &Cluster, ns: &str) {
    const NAME: &str = "registry-tls";
    const SECRET: &str = "registry-tls-certs";
    const SERVER_NAME: &str = "registry-tls.example";
    let ca = Ca::new("registry cluster CA");
    let issued = ca.issue(&[SERVER_NAME]);
    Api::<Secret>::namespaced(kube.client.clone(), ns)
        .create(
            &PostParams::default(),
            &tls_secret(ns, SECRET, &issued, &ca),
        )
        .await
        .expect("create the TLS secret");
    let rc = RegistryCluster::example(NAME, ns, IMAGE)
        .with_data_replicas(2)
        .with_session_replicas(1)
        .with_tls(SECRET);
    kube.clusters(ns)
        .create(&PostParams::default(), &rc)
        .await
        .expect("create the TLS cluster");
    let started = Instant::now();
    let rc = wait_cluster_ready(&kube.clusters(ns), NAME, 2, 1, READY_WAIT).await;
    let epoch = rc.status.map(|s| s.membership.epoch).unwrap_or_default();
    eprintln!(
        "[kube] {ns}/{NAME} Ready over TLS in {:?} at epoch {epoch}",
        started.elapsed()
    );
    let ips = |role: NodeRole| async move {
        let selector = format!(
            "app.kubernetes.io/instance={NAME},app.kubernetes.io/component={}",
            role.as_str()
        );
        let pods = kube.live_pods(ns, &selector).await;
        pods.iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect::<Vec<String>>()
    };
    let session_ips = ips(NodeRole::Session).await;
    let data_ips = ips(NodeRole::Data).await;
    assert_eq!((session_ips.len(), data_ips.len()), (1, 2), "pod IPs");
    let session_ip = &session_ips[0];

    // The public API over HTTPS, the server's name checked against the certificate.
    let addr: std::net::SocketAddr = format!("{session_ip}:9603").parse().expect("pod IP");
    let public = testkit::http::Client::over(
        format!("https://{SERVER_NAME}:9603"),
        ca.client_builder()
            .resolve(SERVER_NAME, addr)
            .build()
            .expect("an HTTPS client"),
    );
    let (status, v) = public.post("/api/v1/sessions", json!({})).await;
    assert_eq!(status, 201, "a session over HTTPS: {v}");
    let sid = v["sessionId"].as_str().expect("sessionId").to_owned();
    let (status, v) = public
        .post(
            &format!("/api/v1/sessions/{sid}/publishers"),
            json!({"dataId": "svc.tls", "registerId": "t1", "data": ["10.9.9.9:1"]}),
        )
        .await;
    assert_eq!(status, 201, "a publisher over HTTPS: {v}");
    eventually("the publisher readable over HTTPS", READY_WAIT, || async {
        let (_, v) = public.get("/api/v1/data?dataId=svc.tls").await;
        (v["publishers"][0]["registerId"] == "t1").then_some(())
    })
    .await;

    // Every internal port: the cluster token with the Secret's certificate opens it; plain
    // HTTP gets nothing; HTTPS without a client certificate is 401.
    let token = cluster_token(kube, ns, NAME).await;
    let internal: Vec<(String, u16)> = data_ips
        .iter()
        .map(|ip| (ip.clone(), internal_port(NodeRole::Data).1))
        .chain([(session_ip.clone(), internal_port(NodeRole::Session).1)])
        .collect();
    assert_only_tls(
        &issued.peer_client(&ca),
        &token,
        epoch,
        &internal,
        session_ip,
    )
    .await;
    eprintln!("[kube] TLS: public HTTPS with the name checked, mutual TLS inside, no plain HTTP");

    kube.clusters(ns)
        .delete(NAME, &DeleteParams::default())
        .await
        .expect("delete the TLS cluster");
}

/// The cluster token the operator generated for cluster `name` (its nodes' internal
/// listeners take it).
async fn cluster_token(kube: &Cluster, ns: &str, name: &str) -> String {
    let secret = Api::<Secret>::namespaced(kube.client.clone(), ns)
        .get(&format!("{name}-cluster-credentials"))
        .await
        .expect("the operator created the cluster's credentials");
    let token = secret.data.unwrap_or_default().remove("cluster-token");
    String::from_utf8(token.expect("cluster-token").0).expect("utf-8")
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
    data_scaled(&mut s).await;
    leader_pod_deleted(&mut s, ns, &leader).await;
    image_upgraded(&mut s).await;
    data_process_killed(&mut s).await;
    stop_push_toggled(&mut s).await;
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

    // Invalid clusters are refused by the API server with a message naming what is wrong,
    // and nothing is stored.
    let image = json!("sofaregistry/registry-node:0.1.0");
    let long_name = format!("r{}", "e".repeat(44));
    let invalid = [
        (
            "data replicas 0",
            "invalid",
            json!({"image": image, "data": {"replicas": 0}, "session": {"replicas": 1}}),
            "spec.data.replicas",
        ),
        (
            "session replicas -1",
            "invalid",
            json!({"image": image, "data": {"replicas": 1}, "session": {"replicas": -1}}),
            "spec.session.replicas",
        ),
        (
            "replicas not a number",
            "invalid",
            json!({"image": image, "data": {"replicas": "three"}, "session": {"replicas": 1}}),
            "spec.data.replicas",
        ),
        (
            "a name too long for its StatefulSets",
            long_name.as_str(),
            json!({"image": image}),
            "at most 44 characters",
        ),
        (
            "a name that is no DNS-1035 label",
            "reg.v1",
            json!({"image": image}),
            "DNS-1035",
        ),
        (
            "a bad image",
            "invalid",
            json!({"image": "sofaregistry/Registry Node:0.1.0"}),
            "spec.image",
        ),
        (
            "no image",
            "invalid",
            json!({"data": {"replicas": 1}}),
            "spec.image",
        ),
    ];
    for (what, name, spec, message) in invalid {
        let doc = json!({"apiVersion": "sofaregistry.dev/v1alpha1", "kind": "RegistryCluster",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec});
        let file = kube.dir.join("invalid.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        let err = kube
            .kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            err.contains(message),
            "{what}: the message says {message:?}: {err}"
        );
        assert!(
            kube.clusters(ns).get_opt(name).await.unwrap().is_none(),
            "{what}: nothing stored"
        );
    }

    service_account_tokens_checked(&s).await;
    s.delete().await;
    tls_cluster_speaks_only_tls(&kube, ns).await;
    kube.delete_namespace(ns).await;
    kube.kubectl(&["delete", "--wait", "-f", install])
        .expect("kubectl delete install.yaml");
}
