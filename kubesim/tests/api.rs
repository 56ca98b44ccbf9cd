//! The fake API server against kube 5's client, watcher and Controller, and raw HTTP
//! (discovery, Tables, Status errors).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::client;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{finalizer, watcher};
use kube::Resource;
use kubesim::{Simulator, SimulatorConfig};
use serde_json::json;
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// A simulator serving the API only (no kubelet).
async fn api_only() -> Simulator {
    Simulator::start(SimulatorConfig {
        run_workloads: false,
        ..SimulatorConfig::default()
    })
    .await
    .expect("start simulator")
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "t"}}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn raw_watch_sees_added_modified_deleted() {
    let sim = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim), "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("w")).await.unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        match event {
            WatchEvent::Added(o) => seen.push(("ADDED", o.data.unwrap()["k"].clone())),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.data.unwrap()["k"].clone())),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.data.unwrap()["k"].clone())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED", "v".to_string()),
            ("MODIFIED", "v2".to_string()),
            ("DELETED", "v2".to_string())
        ]
    );
}

#[tokio::test]
async fn watcher_relists_after_410_expired() {
    let sim = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim), "default");
    api.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut inits = 0;
    let mut errors = 0;
    let mut applied = Vec::new();
    let mut stage = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => inits += 1,
                Ok(watcher::Event::InitApply(o)) | Ok(watcher::Event::Apply(o)) => {
                    applied.push(o.metadata.name.clone().unwrap())
                }
                Ok(watcher::Event::InitDone) if stage == 0 => {
                    stage = 1;
                    api.create(&PostParams::default(), &cm("live"))
                        .await
                        .unwrap();
                }
                Ok(watcher::Event::InitDone) if stage == 2 => break,
                Ok(_) => {}
                Err(_) => errors += 1,
            }
            if stage == 1 && applied.iter().any(|n| n == "live") {
                stage = 2;
                sim.compact();
            }
        }
    })
    .await
    .expect("watcher re-listed in time");
    assert_eq!(inits, 2, "a 410 makes the watcher list again");
    assert!(errors >= 1, "the Expired ERROR event reaches the watcher");
    assert_eq!(
        applied.iter().filter(|n| *n == "before").count(),
        2,
        "{applied:?}"
    );
}

struct Ctx {
    client: kube::Client,
    reconciles: AtomicUsize,
    cleaned_up: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] finalizer::Error<kube::Error>);

const FINALIZER: &str = "kubesim.test/cleanup";

async fn reconcile(obj: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = obj.metadata.namespace.clone().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let ctx2 = ctx.clone();
    Ok(finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            finalizer::Event::Apply(cm) => {
                let name = format!("{}-owned", cm.metadata.name.clone().unwrap());
                let owner = cm.controller_owner_ref(&()).unwrap();
                let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "ownerReferences": [owner]}, "stringData": {"x": "y"}});
                secrets.patch(&name, &PatchParams::apply("kubesim-test").force(), &Patch::Apply(secret)).await?;
                Ok(Action::await_change())
            }
            finalizer::Event::Cleanup(_) => {
                ctx2.cleaned_up.store(true, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await?)
}

#[tokio::test]
async fn controller_with_owns_finalizer_and_cascade() {
    let sim = api_only().await;
    let c = client(&sim);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");
    let ctx = Arc::new(Ctx {
        client: c.clone(),
        reconciles: AtomicUsize::new(0),
        cleaned_up: AtomicBool::new(false),
    });
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, e, _| {
                eprintln!("reconcile error: {e:?}");
                Action::requeue(Duration::from_millis(200))
            },
            ctx.clone(),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let owner = cms
        .create(&PostParams::default(), &cm("app"))
        .await
        .unwrap();
    let owner_uid = owner.metadata.uid.clone().unwrap();
    let first = eventually("owned secret", WAIT, || async {
        secrets.get_opt("app-owned").await.unwrap()
    })
    .await;
    assert_eq!(
        first.metadata.owner_references.as_ref().unwrap()[0].uid,
        owner_uid
    );
    let with_finalizer = cms.get("app").await.unwrap();
    assert_eq!(
        with_finalizer.metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );

    // Deleting the owned object triggers the owner's reconcile (`.owns`), which re-creates it.
    secrets
        .delete("app-owned", &DeleteParams::default())
        .await
        .unwrap();
    let first_uid = first.metadata.uid.clone();
    let second = eventually("re-created secret", WAIT, || async {
        secrets
            .get_opt("app-owned")
            .await
            .unwrap()
            .filter(|s| s.metadata.uid != first_uid)
    })
    .await;
    assert_ne!(second.metadata.uid, first.metadata.uid);

    // The finalizer holds the owner until the controller's cleanup removed it; then the
    // owned secret is garbage-collected.
    cms.delete("app", &DeleteParams::default()).await.unwrap();
    eventually("owner gone", WAIT, || async {
        cms.get_opt("app").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        ctx.cleaned_up.load(Ordering::SeqCst),
        "cleanup ran before the owner disappeared"
    );
    eventually("owned secret collected", WAIT, || async {
        secrets
            .get_opt("app-owned")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(ctx.reconciles.load(Ordering::SeqCst) >= 3);
    task.abort();
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let sim = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim), "default");
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = api.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    let patch = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["test/hold"]}, {"op": "remove", "path": "/metadata/finalizers"}]);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn status_errors_have_codes_and_reasons() {
    let sim = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim), "default");
    assert_eq!(
        api_error(api.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );
    let created = api
        .create(&PostParams::default(), &cm("dup"))
        .await
        .unwrap();
    assert_eq!(
        api_error(
            api.create(&PostParams::default(), &cm("dup"))
                .await
                .unwrap_err()
        ),
        (409, "AlreadyExists".into())
    );
    api.patch(
        "dup",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "new"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        api_error(
            api.replace("dup", &PostParams::default(), &created)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    assert_eq!(
        api_error(
            api.create(&PostParams::default(), &cm("Not_Valid"))
                .await
                .unwrap_err()
        ),
        (422, "Invalid".into())
    );
    let failing_test = json!([{"op": "test", "path": "/data/k", "value": "old"}, {"op": "replace", "path": "/data/k", "value": "x"}]);
    let e = api
        .patch(
            "dup",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(failing_test).unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(e).0, 422);
    assert_eq!(
        api.get("dup").await.unwrap().data.unwrap()["k"],
        "new",
        "a failed patch changes nothing"
    );
}

#[tokio::test]
async fn label_selectors_and_paging() {
    let sim = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&sim), "default");
    for i in 0..5 {
        let mut c = cm(&format!("c{i}"));
        c.metadata.labels = Some([("n".to_string(), (i % 2).to_string())].into());
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    assert_eq!(
        api.list(&ListParams::default().labels("n=1"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(
        api.list(&ListParams::default().labels("n in (0,1),n!=1"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert_eq!(
        api_error(
            api.list(&ListParams::default().labels("n in 1"))
                .await
                .unwrap_err()
        )
        .0,
        400
    );
}

fn crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.kubesim.dev"},
        "spec": {"group": "test.kubesim.dev", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn crds_become_servable_with_status_generation_discovery_and_tables() {
    let sim = api_only().await;
    let c = client(&sim);
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&PostParams::default(), &crd()).await.unwrap();
    let gvk = GroupVersionKind::gvk("test.kubesim.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let apply = PatchParams::apply("kubesim-test");
    let w = json!({"apiVersion": "test.kubesim.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}});
    let created = widgets
        .patch("w1", &apply, &Patch::Apply(&w))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.metadata.managed_fields.as_ref().unwrap()[0]
            .manager
            .as_deref(),
        Some("kubesim-test")
    );
    let status = json!({"apiVersion": "test.kubesim.dev/v1", "kind": "Widget", "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let after_status = widgets
        .patch_status("w1", &apply.clone().force(), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(
        after_status.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let w2 = json!({"apiVersion": "test.kubesim.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 4}});
    let after_spec = widgets
        .patch("w1", &apply, &Patch::Apply(&w2))
        .await
        .unwrap();
    assert_eq!(after_spec.metadata.generation, Some(2));
    assert_eq!(
        after_spec.data["status"]["conditions"][0]["status"], "True",
        "spec writes keep status"
    );

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let groups: serde_json::Value = http
        .get(format!("{}/apis", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "test.kubesim.dev"));
    let resources: serde_json::Value = http
        .get(format!("{}/apis/test.kubesim.dev/v1", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let widget = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "widgets")
        .unwrap()
        .clone();
    assert_eq!(
        (
            widget["kind"].as_str(),
            widget["shortNames"][0].as_str(),
            widget["namespaced"].as_bool()
        ),
        (Some("Widget"), Some("wdg"), Some(true))
    );
    let table: serde_json::Value = http
        .get(format!(
            "{}/apis/test.kubesim.dev/v1/namespaces/default/widgets",
            sim.url()
        ))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"][0]["cells"], json!(["w1", 4, "True"]));

    // Deleting the CRD removes its objects and its API.
    crds.delete("widgets.test.kubesim.dev", &DeleteParams::default())
        .await
        .unwrap();
    let gone = http
        .get(format!(
            "{}/apis/test.kubesim.dev/v1/namespaces/default/widgets/w1",
            sim.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let missing: serde_json::Value = http
        .get(format!("{}/api/v1/namespaces/default/nothings", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (missing["kind"].as_str(), missing["code"].as_i64()),
        (Some("Status"), Some(404))
    );
}
