//! End to end on kubesim: the real operator binary reconciles RegistryClusters whose pods
//! are real registry-node processes, while clients publish and subscribe over HTTP.
//! Run alone with `cargo test -p operator --test e2e` (after `cargo build --workspace`).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use operator::crd::{MemberState, RegistryCluster};
use operator_testkit::workload::{
    push_stopped_on, wait_cluster_ready, Workload, NO_LOSS_WAIT, SERVICES,
};
use operator_testkit::{
    assert_only_tls, eventually, restarts, tls_secret, Operator, ServiceProxy, Sim, NS,
};
use registry_client::{Interest, Publication, ServiceId};
use registry_types::access::sha256_hex;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many objects of kind `K` in the test namespace match `lp` (None when the list fails).
async fn count<K>(client: &kube::Client, lp: &ListParams) -> Option<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Some(
        Api::<K>::namespaced(client.clone(), NS)
            .list(lp)
            .await
            .ok()?
            .items
            .len(),
    )
}

const READY_WAIT: Duration = Duration::from_secs(180);
async fn wait_ready(sim: &Sim, name: &str, data: u32, sessions: u32) -> RegistryCluster {
    wait_cluster_ready(&sim.clusters(), name, data, sessions, READY_WAIT).await
}

/// The cluster's client Service (its session pods' port 9603), once it has backends.
async fn client_service(sim: &Sim) -> ServiceProxy {
    let proxy = ServiceProxy::start(
        sim.client.clone(),
        "app.kubernetes.io/component=session".into(),
        9603,
    )
    .await;
    eventually("client service has backends", READY_WAIT, || async {
        (!proxy.backends().is_empty()).then_some(())
    })
    .await;
    proxy
}

async fn patch_spec(sim: &Sim, name: &str, spec: serde_json::Value) {
    sim.clusters()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

/// A value of one of the cluster's Secrets (what the operator generated).
async fn secret_value(sim: &Sim, secret: &str, key: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let s = secrets
        .get(secret)
        .await
        .expect("the operator created the secret");
    let bytes = s
        .data
        .unwrap_or_default()
        .remove(key)
        .expect("key in secret");
    String::from_utf8(bytes.0).expect("utf-8")
}

/// The cluster token the operator generated for cluster `name`.
async fn cluster_token(sim: &Sim, name: &str) -> String {
    secret_value(sim, &format!("{name}-cluster-credentials"), "cluster-token").await
}

/// `GET /internal/v1/status` of the node at `ip:port`, with the cluster token.
async fn internal_status(ip: &str, port: u16, token: &str) -> Option<serde_json::Value> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let (status, v) = testkit::http::Client::over(format!("http://{ip}:{port}"), http)
        .with_token(token)
        .try_get("/internal/v1/status")
        .await
        .ok()?;
    status.is_success().then_some(v)
}

/// SECURITY.md through the operator: it generated the cluster's credentials in Secrets the
/// cluster owns and signs what it publishes; nodes take the cluster token only (not the
/// client token), serve no `/internal/*` on the public port, and refuse forged membership.
async fn cluster_trust_holds(
    sim: &Sim,
    name: &str,
    session_ip: &str,
    client_token: &str,
    epoch: u64,
) {
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    for (secret, keys) in [
        (
            format!("{name}-cluster-credentials"),
            vec!["cluster-token", "membership-key"],
        ),
        (
            format!("{name}-membership-signing-key"),
            vec!["ed25519-seed"],
        ),
    ] {
        let s = secrets.get(&secret).await.expect("credentials secret");
        assert_eq!(
            s.owner_references()[0].name,
            name,
            "{secret} is owned by the cluster"
        );
        let have: Vec<String> = s.data.unwrap_or_default().into_keys().collect();
        assert_eq!(have, keys, "{secret}");
    }
    let token = cluster_token(sim, name).await;
    assert!(token.len() >= 40, "a generated token: {token:?}");
    assert_ne!(token, client_token);
    let key = registry_trust::MembershipKey::parse(
        &secret_value(
            sim,
            &format!("{name}-cluster-credentials"),
            "membership-key",
        )
        .await,
    )
    .expect("public key");

    // What the operator published is signed with the cluster's key.
    let configs: Api<ConfigMap> = Api::namespaced(sim.client.clone(), NS);
    let config = configs
        .get(&format!("{name}-node-config"))
        .await
        .expect("node config");
    let published: operator::membership::MembershipDoc =
        serde_json::from_str(&config.data.unwrap_or_default()["membership.json"])
            .expect("membership document");
    assert_eq!(published.epoch, epoch);
    key.verify(published.fields(), published.signature.as_deref())
        .expect("the published document verifies with the cluster's key");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let data_ip = sim
        .pods("data")
        .await
        .iter()
        .find_map(pod_ip)
        .expect("data pod ip");
    let error_code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        (
            status,
            v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        )
    };
    // Internal listeners: no token or the client token is 401; the cluster token opens them.
    for (ip, port) in [(data_ip.as_str(), 9622), (session_ip, 9624)] {
        let url = format!("http://{ip}:{port}/internal/v1/status");
        let anonymous = http.get(&url).send().await.expect("status");
        assert_eq!(
            error_code(anonymous).await,
            (401, "unauthorized".to_owned()),
            "{url}"
        );
        let client = http
            .get(&url)
            .bearer_auth(client_token)
            .send()
            .await
            .expect("status");
        assert_eq!(
            error_code(client).await,
            (401, "unauthorized".to_owned()),
            "{url}"
        );
        let v = internal_status(ip, port, &token)
            .await
            .expect("status with the cluster token");
        assert_eq!(v["epoch"], epoch, "{url}");
    }
    // The public port has no internal routes, whatever the token.
    for t in [client_token, token.as_str()] {
        let r = http
            .post(format!("http://{session_ip}:9603/internal/v1/membership"))
            .bearer_auth(t)
            .json(&published)
            .send()
            .await
            .expect("public membership");
        assert_eq!(error_code(r).await, (404, "not_found".to_owned()));
    }
    // Forged membership is refused even with the cluster token; a replay is not adopted.
    let mut forged = published.clone();
    forged.epoch = u64::MAX;
    forged.members = vec!["127.0.0.1:9999".into()];
    // (Well formed, so that only the signature refuses it: no ring ids for absent nodes.)
    forged.ids.clear();
    let unsigned = operator::membership::MembershipDoc {
        signature: None,
        ..forged.clone()
    };
    let foreign = unsigned
        .clone()
        .signed(&registry_trust::MembershipSigner::generate());
    let membership = format!("http://{data_ip}:9622/internal/v1/membership");
    for doc in [&forged, &unsigned, &foreign] {
        let r = http
            .post(&membership)
            .bearer_auth(&token)
            .json(doc)
            .send()
            .await
            .expect("post");
        assert_eq!(
            error_code(r).await,
            (403, "forbidden".to_owned()),
            "{doc:?}"
        );
    }
    let replay = http
        .post(&membership)
        .bearer_auth(&token)
        .json(&published)
        .send()
        .await;
    let v: serde_json::Value = replay.expect("replay").json().await.expect("json");
    assert_eq!(
        v,
        json!({"epoch": epoch}),
        "a replay is not newer: the epoch in use"
    );
    let v = internal_status(&data_ip, 9622, &token)
        .await
        .expect("status");
    assert_eq!(v["epoch"], epoch, "nothing forged was adopted");
}

/// Every data node answers on the published epoch, and the session nodes have it too (on
/// their internal listeners, with the cluster token: the public port serves no
/// `/internal/*`).
async fn nodes_on_epoch(sim: &Sim, name: &str, epoch: u64) {
    let token = cluster_token(sim, name).await;
    let token = token.as_str();
    eventually(
        &format!("every node on epoch {epoch}"),
        READY_WAIT,
        || async {
            for (role, port) in [("data", 9622), ("session", 9624)] {
                for p in sim.pods(role).await {
                    let ip = pod_ip(&p)?;
                    let v = internal_status(&ip, port, token).await?;
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

/// Records every membership the cluster's status shows, to check that epochs only rise and
/// that each change of the document came with a higher epoch.
/// (member name, address, state) as one status showed it.
type MemberView = Vec<(String, String, MemberState)>;

struct EpochLog {
    seen: Arc<Mutex<Vec<(u64, MemberView)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EpochLog {
    fn start(clusters: Api<RegistryCluster>, name: &str) -> EpochLog {
        let seen: Arc<Mutex<Vec<_>>> = Arc::default();
        let name = name.to_owned();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(rc) = clusters.get(&name).await {
                        let m = rc.status.unwrap_or_default().membership;
                        let view: Vec<_> = m
                            .members
                            .iter()
                            .map(|x| (x.name.clone(), x.address.clone(), x.state))
                            .collect();
                        let mut s = seen.lock().unwrap();
                        if s.last().map(|(e, v)| (*e, v)) != Some((m.epoch, &view)) {
                            s.push((m.epoch, view));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        EpochLog { seen, task }
    }

    fn check(&self) -> Vec<u64> {
        let seen = self.seen.lock().unwrap();
        let ring = |v: &MemberView| -> (Vec<String>, Vec<String>) {
            let members = v
                .iter()
                .filter(|m| m.2 != MemberState::Leaving)
                .map(|m| m.1.clone())
                .collect();
            let leaving = v
                .iter()
                .filter(|m| m.2 == MemberState::Leaving)
                .map(|m| m.1.clone())
                .collect();
            (members, leaving)
        };
        for w in seen.windows(2) {
            let ((e1, v1), (e2, v2)) = (&w[0], &w[1]);
            assert!(e2 >= e1, "epoch went backwards: {e1} → {e2}");
            if ring(v1) != ring(v2) {
                assert!(
                    e2 > e1,
                    "membership changed without a new epoch at {e1}: {v1:?} → {v2:?}"
                );
            }
            if e2 == e1 {
                assert_eq!(
                    ring(v1),
                    ring(v2),
                    "two different documents with epoch {e1}"
                );
            }
        }
        let mut epochs: Vec<u64> = seen.iter().map(|(e, _)| *e).collect();
        epochs.dedup();
        epochs
    }

    fn saw_leaving(&self) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v)| v.iter().any(|m| m.2 == MemberState::Leaving))
    }
}

impl Drop for EpochLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn events_for(sim: &Sim, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(sim.client.clone(), NS);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Which operator instances wrote the events.
fn event_writers(events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e.reporting_instance.clone())
        .collect()
}

fn reasons(events: &[Event]) -> BTreeSet<String> {
    events.iter().filter_map(|e| e.reason.clone()).collect()
}

/// Every distinct membership document the operator publishes for `name` (its node
/// ConfigMap), in order, polled every 100 ms.
struct DocumentLog {
    seen: Arc<Mutex<Vec<registry_types::MembershipDoc>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DocumentLog {
    fn start(sim: &Sim, name: &str) -> DocumentLog {
        let api: Api<ConfigMap> = Api::namespaced(sim.client.clone(), NS);
        let config = format!("{name}-node-config");
        let seen: Arc<Mutex<Vec<registry_types::MembershipDoc>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let doc = api.get(&config).await.ok().and_then(|c| {
                        let json = c.data?.remove("membership.json")?;
                        serde_json::from_str::<registry_types::MembershipDoc>(&json).ok()
                    });
                    if let Some(doc) = doc.filter(|d| d.epoch > 0) {
                        let mut s = seen.lock().unwrap();
                        if s.last().map(|d| d.epoch) != Some(doc.epoch) {
                            s.push(doc);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        DocumentLog { seen, task }
    }

    fn documents(&self) -> Vec<registry_types::MembershipDoc> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for DocumentLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many (datum, membership change) pairs gave a datum another owner set, over the
/// consecutive documents `docs`: owners as the ring places them (RF 3), each named by its
/// ring identity (the address when the document gives none), so a member that only moved
/// to a new address is the same owner.
fn datums_moved(docs: &[registry_types::MembershipDoc], ids: &[String]) -> usize {
    use registry_node::data::ring::{Ring, DEFAULT_VIRTUAL_NODES};
    let owners = |d: &registry_types::MembershipDoc, ring: &Ring, id: &str| -> BTreeSet<String> {
        ring.owners(id, 3)
            .into_iter()
            .map(|a| d.ring_key(a).to_owned())
            .collect()
    };
    docs.windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let (ra, rb) = (
                Ring::of(a, DEFAULT_VIRTUAL_NODES),
                Ring::of(b, DEFAULT_VIRTUAL_NODES),
            );
            ids.iter()
                .filter(|id| owners(a, &ra, id) != owners(b, &rb, id))
                .count()
        })
        .sum()
}

/// A rolling upgrade of 5 data pods, each coming back at a new IP, moves no datum: every
/// member keeps its place on the ring under its identity (the pod's name) while its pod is
/// replaced, and nothing is lost. Prints the figures (datums moved, over the workload's
/// datums and over 10,000 dataInfoIds standing for a larger registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_of_five_data_pods_moves_no_datum() {
    let sim = Sim::start().await;
    let _operator = Operator::start(&sim, "op-upgrade", &["--no-leader-election"]);
    let name = "up";
    let mut rc = RegistryCluster::example(name, NS, "registry-node:v1");
    rc.spec.data.replicas = 5;
    rc.spec.session.replicas = 1;
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create cluster");
    let rc = wait_ready(&sim, name, 5, 1).await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    let proxy = client_service(&sim).await;
    let workload = Workload::start(&proxy.url).await;
    workload.assert_nothing_lost("create").await;

    let docs = DocumentLog::start(&sim, name);
    let before: BTreeMap<String, String> = sim
        .pods("data")
        .await
        .iter()
        .map(|p| (p.name_any(), pod_ip(p).unwrap_or_default()))
        .collect();
    assert_eq!(before.len(), 5);
    patch_spec(&sim, name, json!({"image": "registry-node:v2"})).await;
    eventually(
        "every data pod replaced at a new IP",
        READY_WAIT,
        || async {
            let pods = sim.pods("data").await;
            let all_new = pods.len() == 5
                && pods.iter().all(|p| {
                    pod_ip(p).is_some_and(|ip| before.get(&p.name_any()) != Some(&ip))
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers[0].image.as_deref() == Some("registry-node:v2")
                        })
                });
            all_new.then_some(())
        },
    )
    .await;
    let rc = wait_ready(&sim, name, 5, 1).await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    workload
        .assert_nothing_lost("rolling upgrade of 5 data pods")
        .await;

    let docs = docs.documents();
    let ours: Vec<String> = (0..SERVICES)
        .map(|s| format!("e2e.svc{s}"))
        .chain(["e2e.churn".to_owned()])
        .map(|s| ServiceId::new(s).data_info_id())
        .collect();
    let many: Vec<String> = (0..10_000)
        .map(|i| ServiceId::new(format!("com.example.Service{i}")).data_info_id())
        .collect();
    let (moved, moved_many) = (datums_moved(&docs, &ours), datums_moved(&docs, &many));
    eprintln!(
        "[e2e] 5-data-pod upgrade: {} membership documents; datums given other owners, summed over the changes: {moved} for the workload's {} datums, {moved_many} for 10,000 dataInfoIds",
        docs.len(),
        ours.len()
    );
    assert!(
        docs.len() >= 2,
        "the upgrade published the new addresses: {docs:?}"
    );
    assert_eq!(moved, 0, "the upgrade moved datums: {docs:?}");
    assert_eq!(moved_many, 0, "the upgrade moved datums: {docs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_lifecycle_loses_no_publisher() {
    let sim = Sim::start().await;
    let _operator = Operator::start(&sim, "op-solo", &["--no-leader-election"]);
    let name = "reg";
    let mut rc = RegistryCluster::example(name, NS, "registry-node:v1");
    rc.spec.push_delay_millis = 100;
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create cluster");
    let epochs = EpochLog::start(sim.clusters(), name);

    // Create → Ready.
    let started = Instant::now();
    let rc = wait_ready(&sim, name, 3, 2).await;
    let epoch = rc.status.as_ref().unwrap().membership.epoch;
    nodes_on_epoch(&sim, name, epoch).await;
    eprintln!(
        "[e2e] created and Ready in {:?} at epoch {epoch}",
        started.elapsed()
    );
    let sts: Api<StatefulSet> = Api::namespaced(sim.client.clone(), NS);
    for owned in ["reg-data", "reg-session"] {
        let s = sts.get(owned).await.expect("statefulset");
        assert_eq!(s.owner_references()[0].name, name);
    }

    let proxy = client_service(&sim).await;
    let workload = Workload::start(&proxy.url).await;
    let subscription = workload
        .client
        .subscribe(Interest::new(ServiceId::new("e2e.svc0")))
        .await
        .expect("subscribe");
    workload.assert_nothing_lost("create").await;

    // Scale data 3 → 5 → 2.
    patch_spec(&sim, name, json!({"data": {"replicas": 5}})).await;
    let rc = wait_ready(&sim, name, 5, 2).await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    workload.assert_nothing_lost("scale 3 → 5").await;

    patch_spec(&sim, name, json!({"data": {"replicas": 2}})).await;
    let rc = wait_ready(&sim, name, 2, 2).await;
    assert_eq!(sts.get("reg-data").await.unwrap().spec.replicas, Some(2));
    eventually("data pods shrink to 2", READY_WAIT, || async {
        (sim.pods("data").await.len() == 2).then_some(())
    })
    .await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    workload.assert_nothing_lost("scale 5 → 2").await;
    assert!(epochs.saw_leaving(), "scale-down went through Leaving");
    let r = reasons(&events_for(&sim, name).await);
    for reason in [
        "MemberJoining",
        "MemberActive",
        "MemberLeaving",
        "MemberRemoved",
        "ScaledUpData",
        "ScaledDownData",
        "MembershipPublished",
    ] {
        assert!(r.contains(reason), "event {reason} missing; have {r:?}");
    }

    // Image change → one-at-a-time rolling restart.
    let before: BTreeMap<String, String> = sim
        .pods("data")
        .await
        .iter()
        .chain(sim.pods("session").await.iter())
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    patch_spec(&sim, name, json!({"image": "registry-node:v2"})).await;
    eventually(
        "every pod replaced with the new image",
        READY_WAIT,
        || async {
            let pods: Vec<Pod> = [sim.pods("data").await, sim.pods("session").await].concat();
            let all_new = pods.len() == 4
                && pods.iter().all(|p| {
                    before.get(&p.name_any()) != p.uid().as_ref()
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers[0].image.as_deref() == Some("registry-node:v2")
                        })
                });
            all_new.then_some(())
        },
    )
    .await;
    let rc = wait_ready(&sim, name, 2, 2).await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    workload.assert_nothing_lost("rolling upgrade").await;
    let degraded = rc
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .cloned()
        .unwrap();
    assert_eq!(
        degraded.status, "False",
        "a planned restart is not a degradation: {degraded:?}"
    );
    let steps = events_for(&sim, name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RollingUpgradeStep"))
        .count();
    assert!(steps >= 1, "the upgrade was stepped through the partition");

    // kill -9 a data pod.
    let victim = "reg-data-1";
    let victim_restarts = || async {
        let pods = sim.pods("data").await;
        pods.iter()
            .filter(|p| p.name_any() == victim)
            .map(restarts)
            .sum::<i32>()
    };
    let before = victim_restarts().await;
    sim.kill_pod(victim).await;
    eventually("killed data pod restarted", READY_WAIT, || async {
        (victim_restarts().await > before).then_some(())
    })
    .await;
    let rc = wait_ready(&sim, name, 2, 2).await;
    nodes_on_epoch(&sim, name, rc.status.as_ref().unwrap().membership.epoch).await;
    workload.assert_nothing_lost("kill -9 of a data pod").await;

    // stopPush pauses pushes; clearing it brings subscribers up to date.
    eventually("subscriber has the current data", NO_LOSS_WAIT, || async {
        let snap = subscription.latest()?;
        (snap.all_data().count() == 3).then_some(())
    })
    .await;
    patch_spec(&sim, name, json!({"stopPush": true})).await;
    eventually("stopPush on every session node", READY_WAIT, || async {
        push_stopped_on(sim.pods("session").await.iter().filter_map(pod_ip), true).await
    })
    .await;
    let late = workload
        .client
        .publish(Publication::new(
            ServiceId::new("e2e.svc0"),
            ["10.0.0.99:8080"],
        ))
        .await
        .expect("publish while paused");
    eventually("paused publish is stored", NO_LOSS_WAIT, || async {
        workload
            .data_of("e2e.svc0")
            .await?
            .contains("10.0.0.99:8080")
            .then_some(())
    })
    .await;
    // Nothing may arrive while paused: watch for a while (there is no event to wait for).
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        let snap = subscription.latest().expect("snapshot");
        assert!(
            !snap.all_data().any(|d| d == "10.0.0.99:8080"),
            "pushed while stopPush was set"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    patch_spec(&sim, name, json!({"stopPush": false})).await;
    eventually(
        "subscriber catches up after stopPush is cleared",
        NO_LOSS_WAIT,
        || async {
            let snap = subscription.latest()?;
            let caught_up = snap.all_data().any(|d| d == "10.0.0.99:8080");
            caught_up.then_some(())
        },
    )
    .await;
    drop(late);

    let seen = epochs.check();
    eprintln!("[e2e] epochs seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert!(
        seen.len() >= 6,
        "every membership change took a new epoch: {seen:?}"
    );
    drop(subscription);
    workload.churn.abort();

    // Delete → everything owned is gone.
    sim.clusters()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually("owned objects and pods gone", READY_WAIT, || async {
        let lp = ListParams::default().labels(&format!("sofaregistry.dev/cluster={name}"));
        let c = &sim.client;
        let n = count::<StatefulSet>(c, &lp).await?
            + count::<Service>(c, &lp).await?
            + count::<PodDisruptionBudget>(c, &lp).await?
            + count::<ConfigMap>(c, &lp).await?
            + count::<ServiceAccount>(c, &lp).await?
            + count::<Role>(c, &lp).await?
            + count::<RoleBinding>(c, &lp).await?
            + count::<Pod>(c, &lp).await?;
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    const LEASE_SECONDS: u64 = 4;
    let sim = Sim::start().await;
    let lease_args = ["--lease-seconds", "4", "--lease-name", "e2e-operator"];
    let mut a = Operator::start(&sim, "op-a", &lease_args);
    eventually("op-a leads", READY_WAIT, || async {
        (a.metric("registry_operator_leader ").await? == 1.0).then_some(())
    })
    .await;
    let b = Operator::start(&sim, "op-b", &lease_args);
    eventually("op-b is up", READY_WAIT, || async { b.scrape().await }).await;

    // This cluster also requires the API token: the operator must use it on every node call.
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let mut secret = Secret::default();
    secret.metadata.name = Some("lead-token".into());
    secret.data = Some(BTreeMap::from([(
        "token".to_owned(),
        ByteString(b"e2e-s3cret".to_vec()),
    )]));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let name = "lead";
    let rc = RegistryCluster::example(name, NS, "registry-node:v1")
        .with_data_replicas(1)
        .with_session_replicas(1)
        .with_token("lead-token", "token");
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create");
    let rc = wait_ready(&sim, name, 1, 1).await;
    let session_ip = sim
        .pods("session")
        .await
        .iter()
        .find_map(pod_ip)
        .expect("session pod ip");
    let epoch = rc.status.as_ref().unwrap().membership.epoch;
    assert!(epoch > 0);
    cluster_trust_holds(&sim, name, &session_ip, "e2e-s3cret", epoch).await;

    assert_eq!(b.metric("registry_operator_leader ").await, Some(0.0));
    assert_eq!(
        b.metric("registry_operator_reconciliations_total{result=\"ok\"}")
            .await,
        Some(0.0),
        "the follower reconciled"
    );
    assert!(
        a.metric("registry_operator_reconciliations_total{result=\"ok\"}")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    let writers = event_writers(&events_for(&sim, name).await);
    assert_eq!(
        writers,
        BTreeSet::from(["op-a".to_owned()]),
        "events come from the leader only"
    );

    a.kill9();
    let killed = Instant::now();
    eventually(
        "op-b takes over",
        Duration::from_secs(LEASE_SECONDS * 2 + 20),
        || async { (b.metric("registry_operator_leader ").await? == 1.0).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!("[e2e] follower took over {takeover:?} after the leader was killed (lease {LEASE_SECONDS}s)");
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS * 2 + 2),
        "takeover took {takeover:?}"
    );

    patch_spec(&sim, name, json!({"data": {"replicas": 2}})).await;
    wait_ready(&sim, name, 2, 1).await;
    assert!(
        b.metric("registry_operator_reconciliations_total{result=\"ok\"}")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    let writers = event_writers(&events_for(&sim, name).await);
    assert!(
        writers.contains("op-b"),
        "the new leader writes: {writers:?}"
    );
}

/// `/internal/v1/status` of a pod's node, or `None` while it does not answer.
fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_pod_rejoins_at_the_current_epoch_with_the_operator_down() {
    let sim = Sim::start().await;
    let operator = Operator::start(&sim, "op-away", &["--no-leader-election"]);
    let name = "away";
    let rc = RegistryCluster::example(name, NS, "registry-node:v1")
        .with_data_replicas(3)
        .with_session_replicas(1);
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create");
    let rc = wait_ready(&sim, name, 3, 1).await;
    let membership = rc.status.unwrap().membership;
    nodes_on_epoch(&sim, name, membership.epoch).await;
    let token = cluster_token(&sim, name).await;
    drop(operator);

    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), NS);
    // Internal ports: the public port serves no /internal/*.
    for (victim, port) in [("away-data-1", 9622), ("away-session-0", 9624)] {
        let old_uid = pods.get(victim).await.expect("pod").uid();
        let deleted = Instant::now();
        pods.delete(victim, &DeleteParams::default())
            .await
            .expect("delete pod");
        let status = eventually(
            &format!("{victim} back, Ready, on epoch {}", membership.epoch),
            Duration::from_secs(30),
            || async {
                let p = pods.get(victim).await.ok()?;
                if p.uid() == old_uid || !pod_ready(&p) {
                    return None;
                }
                let status = internal_status(&pod_ip(&p)?, port, &token).await?;
                (status["epoch"].as_u64()? == membership.epoch).then_some(status)
            },
        )
        .await;
        eprintln!(
            "[e2e] {victim} back on epoch {} {:?} after its deletion, with no operator",
            membership.epoch,
            deleted.elapsed()
        );
        let members: Vec<String> = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            members,
            membership.document().members,
            "{victim} took the ring from the mounted ConfigMap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_the_api_server_refuses_shows_in_status_as_degraded() {
    let sim = Sim::start().await;
    let _operator = Operator::start(&sim, "op-refused", &["--no-leader-election"]);
    // A real API server refuses this name already in the CRD (CEL); kubesim does not
    // evaluate CEL, so the Service named after it is what gets refused.
    let name = "reg.v1";
    sim.clusters()
        .create(
            &PostParams::default(),
            &RegistryCluster::example(name, NS, "registry-node:v1"),
        )
        .await
        .expect("create");
    let degraded = eventually(
        "Degraded with the API server's message",
        READY_WAIT,
        || async {
            let rc = sim.clusters().get(name).await.ok()?;
            rc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")
        },
    )
    .await;
    assert_eq!(degraded.reason, "ApplyFailed");
    assert!(
        degraded.message.contains("Service reg.v1-data") && degraded.message.contains("DNS-1035"),
        "{degraded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_tls_speaks_it_on_every_port_and_takes_a_renewed_secret() {
    use testkit::tls::Ca;
    let sim = Sim::start().await;
    let _operator = Operator::start(&sim, "op-tls", &["--no-leader-election"]);
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let ca = Ca::new("registry cluster CA");
    let issued = ca.issue(&["tls.registry.svc"]);
    secrets
        .create(
            &PostParams::default(),
            &tls_secret(NS, "tls-certs", &issued, &ca),
        )
        .await
        .expect("create the TLS secret");
    let name = "tls";
    let rc = RegistryCluster::example(name, NS, "registry-node:v1")
        .with_data_replicas(2)
        .with_session_replicas(1)
        .with_tls("tls-certs");
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create");
    // Ready means the operator read every node's status and delivered the membership:
    // over mutual TLS, since the nodes' internal ports speak nothing else.
    let rc = wait_ready(&sim, name, 2, 1).await;
    let epoch = rc.status.unwrap().membership.epoch;
    let token = cluster_token(&sim, name).await;
    let peer = issued.peer_client(&ca);
    let pods = sim.pods("session").await;
    let session_ip = pods.iter().find_map(pod_ip).expect("a session pod IP");
    let runs = [sim.pod_runs("session").await, sim.pod_runs("data").await];
    let data_ips: Vec<String> = sim.pods("data").await.iter().filter_map(pod_ip).collect();
    assert_eq!(data_ips.len(), 2);

    // The public API over HTTPS: publish, then read it back.
    let public = format!("https://{session_ip}:9603");
    let sid: serde_json::Value = peer
        .post(format!("{public}/api/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .expect("HTTPS to the session pod")
        .json()
        .await
        .unwrap();
    let sid = sid["sessionId"].as_str().expect("a session").to_owned();
    let resp = peer
        .post(format!("{public}/api/v1/sessions/{sid}/publishers"))
        .json(&json!({"dataId": "svc.tls", "registerId": "t1", "data": ["10.9.9.9:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let api = testkit::http::Client::over(&public, peer.clone());
    eventually("the publisher readable over HTTPS", READY_WAIT, || async {
        let (_, v) = api.try_get("/api/v1/data?dataId=svc.tls").await.ok()?;
        (v["publishers"][0]["registerId"] == "t1").then_some(())
    })
    .await;

    // Every internal port: the cluster token with the Secret's certificate opens it; plain
    // HTTP gets nothing; HTTPS without a client certificate is 401.
    let internal: Vec<(String, u16)> = data_ips
        .iter()
        .map(|ip| (ip.clone(), 9622))
        .chain([(session_ip.clone(), 9624)])
        .collect();
    assert_only_tls(&peer, &token, epoch, &internal, &session_ip).await;

    // A renewed Secret under a new CA: the pods take it without a restart, the operator
    // too (it still reaches every node: a push-settings change arrives).
    let new_ca = Ca::new("renewed cluster CA");
    let renewed = new_ca.issue(&["tls.registry.svc"]);
    secrets
        .replace(
            "tls-certs",
            &PostParams::default(),
            &tls_secret(NS, "tls-certs", &renewed, &new_ca),
        )
        .await
        .expect("renew the TLS secret");
    let new_peer = renewed.peer_client(&new_ca);
    for (ip, port) in &internal {
        let url = format!("https://{ip}:{port}/internal/v1/status");
        eventually(
            &format!("{ip}:{port} on the renewed certificate"),
            READY_WAIT,
            || async {
                let ok = new_peer
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                ok.then_some(())
            },
        )
        .await;
    }
    patch_spec(&sim, name, json!({"stopPush": true})).await;
    let renewed_api = testkit::http::Client::over(&public, new_peer.clone());
    eventually(
        "stopPush applied over the renewed TLS",
        READY_WAIT,
        || async {
            let (_, v) = renewed_api.try_get("/api/v1/admin/push").await.ok()?;
            (v["stopPush"] == true).then_some(())
        },
    )
    .await;
    assert_eq!(
        [sim.pod_runs("session").await, sim.pod_runs("data").await],
        runs,
        "no session or data pod recreated or restarted (UIDs and restart counts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_access_is_rendered_for_the_session_nodes_and_enforced() {
    let sim = Sim::start().await;
    let _operator = Operator::start(&sim, "op-access", &["--no-leader-election"]);
    let name = "guarded";
    let access = |pay: &[&str]| {
        json!({
            "tokens": [
                {"name": "payments", "sha256": sha256_hex(b"pay-secret")},
                {"name": "ops", "sha256": sha256_hex(b"ops-secret")},
            ],
            "rules": [
                {"principals": ["token:payments"], "publish": pay, "subscribe": ["com.shop.*"]},
                {"principals": ["token:ops"], "admin": true},
            ],
        })
    };
    let mut rc = RegistryCluster::example(name, NS, "registry-node:v1")
        .with_data_replicas(1)
        .with_session_replicas(1);
    rc.spec.replication_factor = 1;
    rc.spec.access = Some(serde_json::from_value(access(&["com.shop.pay.*"])).unwrap());
    sim.clusters()
        .create(&PostParams::default(), &rc)
        .await
        .expect("create");
    wait_ready(&sim, name, 1, 1).await;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), NS);
    let session_pod = pods.get(&format!("{name}-session-0")).await.expect("pod");
    let ip = pod_ip(&session_pod).expect("pod IP");
    let runs = [sim.pod_runs("session").await, sim.pod_runs("data").await];
    let node = testkit::http::Client::new(format!("{ip}:9603"));
    let payments = node.clone().with_token("pay-secret");
    let ops = node.clone().with_token("ops-secret");
    let (s, v) = node.post("/api/v1/sessions", json!({})).await;
    assert_eq!(s, 401, "no credential: {v}");
    let (s, v) = payments.post("/api/v1/sessions", json!({})).await;
    assert_eq!(s, 201, "{v}");
    let sid = v["sessionId"].as_str().unwrap().to_owned();
    let publish = |data_id: &'static str| {
        payments.publish(&sid, json!({"dataId": data_id, "data": ["10.0.0.1:80"]}))
    };
    assert_eq!(publish("com.shop.pay.card").await.0, 201);
    let (s, v) = publish("com.shop.cart").await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("publish"),
        "{v}"
    );

    // A new rule reaches the running node (the Secret is rewritten, the node reads it
    // again): no restart.
    patch_spec(&sim, name, json!({"access": access(&["com.shop.*"])})).await;
    eventually("the new rule applies", READY_WAIT, || async {
        (publish("com.shop.cart").await.0 == 201).then_some(())
    })
    .await;
    assert_eq!(
        [sim.pod_runs("session").await, sim.pod_runs("data").await],
        runs,
        "no session or data pod recreated or restarted (UIDs and restart counts)"
    );

    // The operator's own admin calls pass the rules: stopPush reaches the node, which the
    // admin principal sees; payments may not look.
    patch_spec(&sim, name, json!({"stopPush": true})).await;
    eventually(
        "stopPush delivered through the rules",
        READY_WAIT,
        || async {
            let (s, v) = ops.get("/api/v1/admin/push").await;
            (s == 200 && v["stopPush"] == true).then_some(())
        },
    )
    .await;
    let (s, _) = payments.get("/api/v1/admin/push").await;
    assert_eq!(s, 403);

    // A document the node would refuse is Degraded with the field, and the rules stay: the
    // Secret the node reads them from is not rewritten, and they still grant.
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), NS);
    let access_secret = format!("{name}-access");
    let rules_version = secrets
        .get(&access_secret)
        .await
        .expect("the access Secret")
        .resource_version();
    assert!(
        rules_version.is_some(),
        "the access Secret has a resourceVersion"
    );
    patch_spec(
        &sim,
        name,
        json!({"access": {"rules": [{"principals": ["token:ghost"], "admin": true}]}}),
    )
    .await;
    let degraded = eventually("Degraded AccessInvalid", READY_WAIT, || async {
        let rc = sim.clusters().get(name).await.ok()?;
        rc.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "AccessInvalid")
    })
    .await;
    assert!(
        degraded.message.contains("rules[0].principals[0]"),
        "{degraded:?}"
    );
    assert_eq!(
        secrets
            .get(&access_secret)
            .await
            .expect("the access Secret")
            .resource_version(),
        rules_version,
        "the access Secret was rewritten for a refused document"
    );
    assert_eq!(
        publish("com.shop.cart").await.0,
        201,
        "the rules in use stay"
    );
}
