//! The StatefulSet controller: ordered pod creation and deletion, rolling updates with
//! partitions, and the StatefulSet status (the planning step is pure and unit-tested).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::resources::GroupResource;
use crate::store::{DeleteOptions, Store};

const MANAGER: &str = "kubesim-statefulset-controller";

/// What the planner needs to know of one existing pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub ordinal: u32,
    pub revision: String,
    pub ready: bool,
    pub terminating: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodManagement {
    OrderedReady,
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStrategy {
    RollingUpdate { partition: u32 },
    OnDelete,
}

/// One step the controller takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(u32),
    Delete(u32),
}

/// Decides the next actions for a StatefulSet, as the Kubernetes controller does:
/// OrderedReady creates one pod at a time in ordinal order and waits for each to be Ready;
/// scale-down removes the highest ordinal first, one at a time; a rolling update replaces
/// the highest out-of-date ordinal at or above the partition once every pod is Ready.
pub fn plan(
    replicas: u32,
    policy: PodManagement,
    strategy: UpdateStrategy,
    update_revision: &str,
    pods: &[PodView],
) -> Vec<Action> {
    let by_ordinal: HashMap<u32, &PodView> = pods.iter().map(|p| (p.ordinal, p)).collect();
    let mut actions = Vec::new();
    let ordered = policy == PodManagement::OrderedReady;
    for ord in 0..replicas {
        match by_ordinal.get(&ord) {
            None => {
                actions.push(Action::Create(ord));
                if ordered {
                    return actions;
                }
            }
            Some(p) if ordered && (p.terminating || !p.ready) => return actions,
            Some(_) => {}
        }
    }
    if !actions.is_empty() {
        return actions;
    }
    let mut condemned: Vec<&PodView> = pods.iter().filter(|p| p.ordinal >= replicas).collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    if ordered {
        if condemned.iter().any(|p| p.terminating) {
            return actions;
        }
        if let Some(p) = condemned.first() {
            return vec![Action::Delete(p.ordinal)];
        }
    } else {
        actions.extend(
            condemned
                .iter()
                .filter(|p| !p.terminating)
                .map(|p| Action::Delete(p.ordinal)),
        );
        if !condemned.is_empty() {
            return actions;
        }
    }
    if let UpdateStrategy::RollingUpdate { partition } = strategy {
        let all_ready = (0..replicas).all(|o| {
            by_ordinal
                .get(&o)
                .is_some_and(|p| p.ready && !p.terminating)
        });
        if !all_ready {
            return actions;
        }
        let outdated = (partition..replicas).rev().find(|o| {
            by_ordinal
                .get(o)
                .is_some_and(|p| p.revision != update_revision)
        });
        if let Some(o) = outdated {
            actions.push(Action::Delete(o));
        }
    }
    actions
}

/// The revision name of a pod template: `{sts}-{hash}` like `controller-revision-hash`.
pub fn revision_of(sts_name: &str, template: &Value) -> String {
    let mut h = DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{sts_name}-{:x}", h.finish() & 0xff_ffff_ffff)
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

pub(crate) fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// Runs StatefulSets: creates and deletes their Pod objects and keeps their status.
pub struct StatefulSetController {
    store: Arc<Store>,
    /// Pod templates seen per (namespace, revision), to recreate pods below a partition at
    /// their current revision.
    templates: Mutex<HashMap<(String, String), Value>>,
}

impl StatefulSetController {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            templates: Mutex::new(HashMap::new()),
        }
    }

    /// Reconciles on every StatefulSet/Pod change and at least once a second.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        loop {
            self.reconcile_all();
            let wait = async {
                loop {
                    match events.recv().await {
                        Ok(e)
                            if (e.gr.group == "apps" && e.gr.resource == "statefulsets")
                                || (e.gr.group.is_empty() && e.gr.resource == "pods") =>
                        {
                            return
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while events.try_recv().is_ok() {}
        }
    }

    pub fn reconcile_all(&self) {
        let sets = self
            .store
            .list_all(&GroupResource::new("apps", "statefulsets"));
        let pods = self.store.list_all(&GroupResource::new("", "pods"));
        for sts in &sets {
            self.reconcile(sts, &pods);
        }
    }

    fn reconcile(&self, sts: &Value, all_pods: &[Value]) {
        let name = s(sts, "/metadata/name");
        let ns = s(sts, "/metadata/namespace");
        let uid = s(sts, "/metadata/uid");
        if sts.pointer("/metadata/deletionTimestamp").is_some() {
            return;
        }
        let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let update_revision = revision_of(name, &template);
        self.templates
            .lock()
            .insert((ns.to_string(), update_revision.clone()), template.clone());
        let current_revision = match s(sts, "/status/currentRevision") {
            "" => update_revision.clone(),
            r => r.to_string(),
        };
        let replicas = sts
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as u32;
        let policy = match s(sts, "/spec/podManagementPolicy") {
            "Parallel" => PodManagement::Parallel,
            _ => PodManagement::OrderedReady,
        };
        let strategy = match s(sts, "/spec/updateStrategy/type") {
            "OnDelete" => UpdateStrategy::OnDelete,
            _ => UpdateStrategy::RollingUpdate {
                partition: sts
                    .pointer("/spec/updateStrategy/rollingUpdate/partition")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u32,
            },
        };
        let prefix = format!("{name}-");
        let owned: Vec<&Value> = all_pods
            .iter()
            .filter(|p| s(p, "/metadata/namespace") == ns)
            .filter(|p| {
                p.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter().any(|r| {
                            r.get("uid").and_then(Value::as_str) == Some(uid)
                                && r.get("controller").and_then(Value::as_bool) == Some(true)
                        })
                    })
            })
            .collect();
        let views: Vec<PodView> = owned
            .iter()
            .filter_map(|p| {
                let ordinal = s(p, "/metadata/name").strip_prefix(&prefix)?.parse().ok()?;
                Some(PodView {
                    ordinal,
                    revision: s(p, "/metadata/labels/controller-revision-hash").to_string(),
                    ready: pod_ready(p),
                    terminating: p.pointer("/metadata/deletionTimestamp").is_some(),
                })
            })
            .collect();
        let partition = match strategy {
            UpdateStrategy::RollingUpdate { partition } => partition,
            UpdateStrategy::OnDelete => u32::MAX,
        };
        for action in plan(replicas, policy, strategy, &update_revision, &views) {
            match action {
                Action::Create(ord) => {
                    let (rev, tpl) = if ord < partition && current_revision != update_revision {
                        match self
                            .templates
                            .lock()
                            .get(&(ns.to_string(), current_revision.clone()))
                        {
                            Some(t) => (current_revision.clone(), t.clone()),
                            None => (update_revision.clone(), template.clone()),
                        }
                    } else {
                        (update_revision.clone(), template.clone())
                    };
                    self.create_pod(sts, ord, &rev, &tpl);
                }
                Action::Delete(ord) => {
                    if let Some(rt) = self.store.resolve("", "v1", "pods") {
                        let _ = self.store.delete(
                            &rt,
                            Some(ns),
                            &format!("{name}-{ord}"),
                            &DeleteOptions::default(),
                        );
                    }
                }
            }
        }
        self.update_status(sts, &views, replicas, &current_revision, &update_revision);
    }

    fn create_pod(&self, sts: &Value, ordinal: u32, revision: &str, template: &Value) {
        let Some(rt) = self.store.resolve("", "v1", "pods") else {
            return;
        };
        let name = s(sts, "/metadata/name");
        let ns = s(sts, "/metadata/namespace");
        let pod_name = format!("{name}-{ordinal}");
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["controller-revision-hash"] = json!(revision);
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        labels["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["hostname"] = json!(pod_name);
        if let Some(svc) = sts.pointer("/spec/serviceName").and_then(Value::as_str) {
            spec["subdomain"] = json!(svc);
        }
        spec["nodeName"] = json!("kubesim");
        let mut metadata = json!({
            "name": pod_name,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": s(sts, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}],
        });
        if let Some(a) = template.pointer("/metadata/annotations") {
            metadata["annotations"] = a.clone();
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        if let Err(e) = self.store.create(&rt, Some(ns), pod, Some(MANAGER)) {
            tracing::debug!(pod = %pod_name, error = %e, "pod not created");
        }
    }

    fn update_status(
        &self,
        sts: &Value,
        views: &[PodView],
        replicas: u32,
        current_revision: &str,
        update_revision: &str,
    ) {
        let live: Vec<&PodView> = views.iter().filter(|p| !p.terminating).collect();
        let ready = live.iter().filter(|p| p.ready).count();
        let updated = live
            .iter()
            .filter(|p| p.revision == update_revision)
            .count();
        let rolled =
            updated == replicas as usize && views.iter().all(|p| p.revision == update_revision);
        let current_revision = if rolled {
            update_revision
        } else {
            current_revision
        };
        let current = live
            .iter()
            .filter(|p| p.revision == current_revision)
            .count();
        let status = json!({
            "replicas": views.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": update_revision,
            "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "collisionCount": 0,
        });
        self.store.update_status(
            &GroupResource::new("apps", "statefulsets"),
            s(sts, "/metadata/namespace"),
            s(sts, "/metadata/name"),
            s(sts, "/metadata/uid"),
            |o| {
                o["status"] = status;
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: u32, rev: &str, ready: bool) -> PodView {
        PodView {
            ordinal,
            revision: rev.into(),
            ready,
            terminating: false,
        }
    }
    const RU: UpdateStrategy = UpdateStrategy::RollingUpdate { partition: 0 };

    #[test]
    fn ordered_creation_waits_for_ready() {
        use PodManagement::*;
        assert_eq!(plan(3, OrderedReady, RU, "r", &[]), vec![Action::Create(0)]);
        assert_eq!(
            plan(3, OrderedReady, RU, "r", &[pod(0, "r", false)]),
            vec![]
        );
        assert_eq!(
            plan(3, OrderedReady, RU, "r", &[pod(0, "r", true)]),
            vec![Action::Create(1)]
        );
        assert_eq!(
            plan(3, Parallel, RU, "r", &[pod(1, "r", false)]),
            vec![Action::Create(0), Action::Create(2)]
        );
    }

    #[test]
    fn scale_down_highest_first_one_at_a_time() {
        use PodManagement::*;
        let pods: Vec<PodView> = (0..5).map(|o| pod(o, "r", true)).collect();
        assert_eq!(
            plan(2, OrderedReady, RU, "r", &pods),
            vec![Action::Delete(4)]
        );
        let mut terminating = pods.clone();
        terminating[4].terminating = true;
        assert_eq!(plan(2, OrderedReady, RU, "r", &terminating), vec![]);
        assert_eq!(
            plan(2, Parallel, RU, "r", &terminating),
            vec![Action::Delete(3), Action::Delete(2)]
        );
    }

    #[test]
    fn rolling_update_highest_first_respects_partition() {
        use PodManagement::*;
        let pods: Vec<PodView> = (0..3).map(|o| pod(o, "old", true)).collect();
        assert_eq!(
            plan(3, OrderedReady, RU, "new", &pods),
            vec![Action::Delete(2)]
        );
        let mut p = pods.clone();
        p[2] = pod(2, "new", false);
        assert_eq!(
            plan(3, OrderedReady, RU, "new", &p),
            vec![],
            "waits for the updated pod to be Ready"
        );
        p[2].ready = true;
        assert_eq!(
            plan(3, OrderedReady, RU, "new", &p),
            vec![Action::Delete(1)]
        );
        let partitioned = UpdateStrategy::RollingUpdate { partition: 2 };
        assert_eq!(plan(3, OrderedReady, partitioned, "new", &p), vec![]);
        assert_eq!(
            plan(3, OrderedReady, UpdateStrategy::OnDelete, "new", &pods),
            vec![]
        );
    }

    #[test]
    fn revision_changes_with_template() {
        let a = revision_of("s", &json!({"spec": {"containers": [{"image": "a"}]}}));
        let b = revision_of("s", &json!({"spec": {"containers": [{"image": "b"}]}}));
        assert_ne!(a, b);
        assert!(a.starts_with("s-"));
        assert_eq!(
            a,
            revision_of("s", &json!({"spec": {"containers": [{"image": "a"}]}}))
        );
    }
}
