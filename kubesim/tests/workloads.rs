//! StatefulSets run as real registry-node processes: ordered start, readiness on pod IPs,
//! scale up and down, rolling template changes, and restarts after SIGKILL.

mod common;

use std::time::Duration;

use common::client;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kubesim::{Simulator, SimulatorConfig};
use serde_json::json;
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);

fn statefulset(replicas: i32) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "reg", "namespace": "default"},
        "spec": {"replicas": replicas, "serviceName": "reg", "selector": {"matchLabels": {"app": "reg"}},
            "template": {"metadata": {"labels": {"app": "reg"}},
                "spec": {"terminationGracePeriodSeconds": 10, "containers": [{
                    "name": "node", "image": "ghcr.io/example/registry-node:dev",
                    "args": ["--http-addr", "0.0.0.0:9603", "--data-addr", "0.0.0.0:9622", "--node-name", "$(POD_NAME)"],
                    "env": [{"name": "RUST_LOG", "value": "warn"}],
                    "ports": [{"name": "http", "containerPort": 9603}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}}]}}}
    }))
    .unwrap()
}

async fn ready_replicas(api: &Api<StatefulSet>, want: i32) -> StatefulSet {
    eventually(&format!("{want} ready replicas"), WAIT, || async {
        let sts = api.get("reg").await.unwrap();
        let st = sts.status.clone()?;
        let settled = st.replicas == want
            && st.ready_replicas == Some(want)
            && st.updated_replicas == Some(want)
            && st.observed_generation == sts.metadata.generation
            && st.current_revision == st.update_revision;
        settled.then_some(sts)
    })
    .await
}

async fn pod_names(pods: &Api<Pod>) -> Vec<String> {
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels("app=reg"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    names.sort();
    names
}

async fn readyz(http: &reqwest::Client, ip: &str) -> bool {
    http.get(format!("http://{ip}:9603/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn deleted_pods_in_order(pods: &Api<Pod>, rv: &str, count: usize) -> Vec<String> {
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=reg").timeout(120), rv)
        .await
        .unwrap()
        .boxed();
    let mut deleted = Vec::new();
    while deleted.len() < count {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("pod deletions in time")
            .unwrap()
        {
            Some(WatchEvent::Deleted(p)) => deleted.push(p.metadata.name.unwrap()),
            Some(_) => {}
            None => panic!("watch ended early after {deleted:?}"),
        }
    }
    deleted
}

#[tokio::test]
async fn statefulset_runs_real_registry_nodes() {
    let sim = Simulator::start(
        SimulatorConfig::default()
            .map_image("registry-node", testkit::binary::REGISTRY_NODE.path()),
    )
    .await
    .unwrap();
    let c = client(&sim);
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    sets.create(&PostParams::default(), &statefulset(3))
        .await
        .unwrap();
    ready_replicas(&sets, 3).await;
    assert_eq!(pod_names(&pods).await, ["reg-0", "reg-1", "reg-2"]);
    let mut ips = Vec::new();
    for p in pods
        .list(&ListParams::default().labels("app=reg"))
        .await
        .unwrap()
    {
        let ip = p.status.unwrap().pod_ip.unwrap();
        assert!(ip.starts_with("127.") && ip != "127.0.0.1", "pod IP {ip}");
        assert!(
            readyz(&http, &ip).await,
            "{} answers on its pod IP {ip}",
            p.metadata.name.unwrap()
        );
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct pod IPs");
    let pid = sim
        .pods()
        .iter()
        .find(|p| p.name == "reg-0")
        .and_then(|p| p.containers[0].pid)
        .expect("reg-0 pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        environ.contains(&"POD_NAME=reg-0".to_string()),
        "{environ:?}"
    );
    assert!(
        environ.iter().any(|v| v.starts_with("POD_IP=127.")),
        "{environ:?}"
    );
    assert!(
        environ.contains(&format!(
            "KUBECONFIG={}",
            sim.state_dir().join("kubeconfig").display()
        )),
        "{environ:?}"
    );
    let log = sim.state_dir().join("pods/default/reg-0/node.log");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("--node-name"),
        "log at {}",
        log.display()
    );

    // A SIGKILLed process is restarted and becomes Ready again on the same pod IP.
    let pod0 = pods.get("reg-0").await.unwrap();
    let ip0 = pod0.status.unwrap().pod_ip.unwrap();
    sim.kill_pod("default", "reg-0").unwrap();
    eventually("reg-0 restarted and Ready", WAIT, || async {
        let p = pods.get("reg-0").await.unwrap();
        let cs = p.status?.container_statuses?.pop()?;
        (cs.restart_count == 1 && cs.ready).then_some(())
    })
    .await;
    assert!(readyz(&http, &ip0).await);

    // Scale up through the scale subresource, then down: highest ordinal first.
    sets.patch_scale(
        "reg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    ready_replicas(&sets, 5).await;
    assert_eq!(
        pod_names(&pods).await,
        ["reg-0", "reg-1", "reg-2", "reg-3", "reg-4"]
    );
    let ip4 = pods
        .get("reg-4")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    sets.patch_scale(
        "reg",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    assert_eq!(
        deleted_pods_in_order(&pods, &rv, 3).await,
        ["reg-4", "reg-3", "reg-2"]
    );
    ready_replicas(&sets, 2).await;
    assert_eq!(pod_names(&pods).await, ["reg-0", "reg-1"]);
    assert!(
        !readyz(&http, &ip4).await,
        "the removed pod's process is gone"
    );

    // A template change rolls the pods, highest ordinal first, each waiting for Ready.
    let before = sets
        .get("reg")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision
        .unwrap();
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let env = json!({"spec": {"template": {"spec": {"containers": [{"name": "node", "env": [{"name": "RUST_LOG", "value": "info"}]}]}}}});
    sets.patch("reg", &PatchParams::default(), &Patch::Strategic(env))
        .await
        .unwrap();
    assert_eq!(
        deleted_pods_in_order(&pods, &rv, 2).await,
        ["reg-1", "reg-0"]
    );
    let rolled = ready_replicas(&sets, 2).await;
    let after = rolled.status.unwrap().update_revision.unwrap();
    assert_ne!(before, after);
    for p in pods
        .list(&ListParams::default().labels("app=reg"))
        .await
        .unwrap()
    {
        assert_eq!(
            p.metadata.labels.unwrap()["controller-revision-hash"],
            after
        );
        assert_eq!(
            p.spec.unwrap().containers[0].args.as_ref().unwrap().len(),
            6,
            "strategic merge kept the args"
        );
        assert!(readyz(&http, &p.status.unwrap().pod_ip.unwrap()).await);
    }
}
