//! The object store: versioned objects of every resource type, watch history and
//! broadcast, and the API server's object semantics (generation, status subresource,
//! conflicts, finalizers, owner-reference garbage collection, no-op write suppression).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::labels::{FieldSelector, LabelSelector};
use crate::patch::{self, PatchType};
use crate::resources::{GroupResource, Registry, ResourceType};

/// Type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object, as kept in history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub gr: GroupResource,
    pub event_type: EventType,
    pub rv: u64,
    pub namespace: String,
    pub object: Arc<Value>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// How dependents are handled when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}

/// The start of a watch: events to send first, then the live receiver.
pub struct WatchStart {
    pub initial: Vec<Arc<StoredEvent>>,
    pub receiver: broadcast::Receiver<Arc<StoredEvent>>,
    /// The store's resourceVersion when the watch started (first bookmark value).
    pub start_rv: u64,
}

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Events kept per resource type for watch replay.
    pub history_per_resource: usize,
    /// Pods are deleted gracefully (deletionTimestamp first; the kubelet removes them once
    /// their processes are gone). Off when no workload runner runs.
    pub graceful_pod_deletion: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history_per_resource: 10_000,
            graceful_pod_deletion: false,
        }
    }
}

type ObjectKey = (String, String);

struct Inner {
    rv: u64,
    registry: Registry,
    objects: BTreeMap<GroupResource, BTreeMap<ObjectKey, Value>>,
    history: HashMap<GroupResource, VecDeque<Arc<StoredEvent>>>,
    /// Highest resourceVersion dropped from each resource's history.
    dropped: HashMap<GroupResource, u64>,
    /// Every resourceVersion below this is too old to watch from (explicit compaction).
    compacted: u64,
    config: StoreConfig,
    service_ips: u32,
    tx: broadcast::Sender<Arc<StoredEvent>>,
}

/// The thread-safe object store.
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    compactions: tokio::sync::watch::Sender<u64>,
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().expect("object");
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("metadata object")
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// An object without the fields that change on every write, for no-op detection.
fn comparable(obj: &Value) -> Value {
    let mut c = obj.clone();
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    c
}

/// The part of an object whose change bumps `generation`.
fn generation_content(obj: &Value) -> Value {
    let mut c = obj.clone();
    if let Some(o) = c.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    c
}

/// Checks a name as the API server does for most kinds (DNS subdomain; RBAC kinds also
/// allow `:` as in `system:controller`).
fn validate_name(rt: &ResourceType, name: &str) -> Result<()> {
    let rbac = rt.group == "rbac.authorization.k8s.io";
    let ok_char = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || c == '.'
            || (rbac && (c == ':' || c.is_ascii_uppercase()))
    };
    let alnum_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty()
        || name.len() > 253
        || !name.chars().all(ok_char)
        || !alnum_edge(name.chars().next())
        || !alnum_edge(name.chars().last())
    {
        return Err(Error::invalid(format!(
            "{} {name:?} is invalid: metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            rt.kind
        )));
    }
    Ok(())
}

/// Kind-specific validation of what the simulator relies on.
fn validate_object(rt: &ResourceType, obj: &Value) -> Result<()> {
    let name = meta_str(obj, "name").unwrap_or_default();
    let invalid = |what: &str| Error::invalid(format!("{} {name:?} is invalid: {what}", rt.kind));
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "statefulsets") | ("apps", "deployments") => {
            let sel = obj
                .pointer("/spec/selector/matchLabels")
                .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()));
            let Some(sel) = sel else {
                return Err(invalid("spec.selector: Required value"));
            };
            let template_labels = obj
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(Value::Null);
            let selector = LabelSelector::from_match_labels(sel);
            if !selector.matches(&json!({"metadata": {"labels": template_labels}})) {
                return Err(invalid("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"));
            }
            if obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .is_none_or(|c| c.is_empty())
            {
                return Err(invalid("spec.template.spec.containers: Required value"));
            }
            if obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .is_some_and(|r| r < 0)
            {
                return Err(invalid(
                    "spec.replicas: Invalid value: must be greater than or equal to 0",
                ));
            }
        }
        ("", "services") => {
            // Service names become DNS labels (`<name>.<namespace>.svc`): RFC 1035.
            let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            let last_ok = name
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            let chars_ok = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if name.len() > 63 || !first_ok || !last_ok || !chars_ok {
                return Err(invalid(&format!(
                    "metadata.name: Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character, and be at most 63 characters"
                )));
            }
        }
        ("", "pods")
            if obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .is_none_or(|c| c.is_empty()) =>
        {
            return Err(invalid("spec.containers: Required value"));
        }
        _ => {}
    }
    Ok(())
}

fn apply_defaults(rt: &ResourceType, obj: &mut Value) {
    if rt.group == "apps" && rt.plural == "statefulsets" {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        spec.entry("replicas").or_insert(json!(1));
        spec.entry("podManagementPolicy")
            .or_insert(json!("OrderedReady"));
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        let strategy = spec.entry("updateStrategy").or_insert(json!({}));
        if let Some(s) = strategy.as_object_mut() {
            s.entry("type").or_insert(json!("RollingUpdate"));
            if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = s.entry("rollingUpdate").or_insert(json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    ru.entry("partition").or_insert(json!(0));
                }
            }
        }
    }
}

/// Who writes, and how (server-side apply carries the applied configuration).
#[derive(Clone, Copy)]
struct Writer<'a> {
    manager: Option<&'a str>,
    apply: Option<&'a Value>,
    force: bool,
}

impl<'a> Writer<'a> {
    fn update(manager: Option<&'a str>) -> Self {
        Self {
            manager,
            apply: None,
            force: false,
        }
    }

    fn operation(&self) -> &'static str {
        if self.apply.is_some() {
            "Apply"
        } else {
            "Update"
        }
    }
}

/// Field paths for managedFields: leaves of objects (lists count as one leaf).
mod fields {
    use serde_json::{json, Map, Value};

    pub type Path = Vec<String>;

    /// Leaf paths of an object, leaving out identity and server-set metadata.
    pub fn leaves(v: &Value) -> Vec<Path> {
        let mut out = Vec::new();
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "metadata" => {
                        for mk in ["labels", "annotations"] {
                            if let Some(c) = child.get(mk) {
                                walk(c, vec!["metadata".into(), mk.into()], &mut out);
                            }
                        }
                        for mk in ["finalizers", "ownerReferences"] {
                            if child.get(mk).is_some() {
                                out.push(vec!["metadata".into(), mk.into()]);
                            }
                        }
                    }
                    _ => walk(child, vec![k.clone()], &mut out),
                }
            }
        }
        out
    }

    fn walk(v: &Value, path: Path, out: &mut Vec<Path>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    let mut p = path.clone();
                    p.push(k.clone());
                    walk(child, p, out);
                }
            }
            _ => out.push(path),
        }
    }

    fn get<'v>(v: &'v Value, p: &Path) -> Option<&'v Value> {
        p.iter().try_fold(v, |cur, k| cur.get(k))
    }

    pub fn exists(v: &Value, p: &Path) -> bool {
        get(v, p).is_some_and(|x| !x.is_null())
    }

    /// Leaf paths whose value differs between two versions of an object.
    pub fn changed(old: &Value, new: &Value) -> Vec<Path> {
        let mut all = leaves(old);
        for p in leaves(new) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        all.into_iter()
            .filter(|p| get(old, p) != get(new, p))
            .collect()
    }

    pub fn to_v1(paths: &[Path]) -> Value {
        let mut root = Map::new();
        for p in paths {
            let mut cur = &mut root;
            for k in p {
                let next = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
                if !next.is_object() {
                    *next = json!({});
                }
                cur = next.as_object_mut().expect("object");
            }
        }
        Value::Object(root)
    }

    pub fn from_v1(v: &Value) -> Vec<Path> {
        let mut out = Vec::new();
        fn rec(v: &Value, path: Path, out: &mut Vec<Path>) {
            let Some(m) = v.as_object() else { return };
            let children: Vec<(&String, &Value)> =
                m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
            if children.is_empty() {
                if !path.is_empty() {
                    out.push(path);
                }
                return;
            }
            for (k, child) in children {
                let mut p = path.clone();
                p.push(k[2..].to_string());
                rec(child, p, out);
            }
        }
        rec(v, Vec::new(), &mut out);
        out
    }

    pub fn dotted(p: &Path) -> String {
        p.iter().map(|k| format!(".{k}")).collect()
    }
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        let (tx, _) = broadcast::channel(16_384);
        let store = Self {
            inner: Mutex::new(Inner {
                rv: 0,
                registry: Registry::builtin(),
                objects: BTreeMap::new(),
                history: HashMap::new(),
                dropped: HashMap::new(),
                compacted: 0,
                config,
                service_ips: 0,
                tx: tx.clone(),
            }),
            tx,
            compactions: tokio::sync::watch::Sender::new(0),
        };
        if let Some(ns) = store.resolve("", "v1", "namespaces") {
            for name in ["default", "kube-system", "kube-public"] {
                let _ = store.create(&ns, None, json!({"metadata": {"name": name}}), None);
            }
        }
        store
    }

    /// The served type at group/version/plural.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.inner
            .lock()
            .registry
            .find(group, version, plural)
            .cloned()
    }

    /// A snapshot of the served types.
    pub fn registry(&self) -> Registry {
        self.inner.lock().registry.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Subscribe to every change (all kinds).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tx.subscribe()
    }

    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value> {
        let inner = self.inner.lock();
        inner
            .get(&rt.gr(), &key(rt, namespace, name))
            .cloned()
            .ok_or_else(|| Error::not_found(&rt.group, &rt.plural, name))
    }

    pub fn list(&self, rt: &ResourceType, opts: &ListOptions) -> Result<ListPage> {
        let inner = self.inner.lock();
        let rv = inner.rv;
        let start = opts.continue_token.as_deref().map(|t| {
            let (ns, name) = t.split_once('/').unwrap_or(("", t));
            (ns.to_string(), name.to_string())
        });
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0;
        if let Some(objects) = inner.objects.get(&rt.gr()) {
            for ((ns, name), obj) in objects {
                if let Some(start) = &start {
                    if (ns, name) <= (&start.0, &start.1) {
                        continue;
                    }
                }
                if opts.namespace.as_ref().is_some_and(|want| want != ns) {
                    continue;
                }
                if !opts.labels.matches(obj) || !opts.fields.matches(obj) {
                    continue;
                }
                if opts.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                    remaining += 1;
                    continue;
                }
                items.push(obj.clone());
                last_key = Some(format!("{ns}/{name}"));
            }
        }
        let continue_token = if remaining > 0 { last_key } else { None };
        Ok(ListPage {
            items,
            resource_version: rv,
            continue_token,
            remaining,
        })
    }

    /// Every object of a stored resource (for controllers).
    pub fn list_all(&self, gr: &GroupResource) -> Vec<Value> {
        self.inner
            .lock()
            .objects
            .get(gr)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        obj: Value,
        manager: Option<&str>,
    ) -> Result<Value> {
        self.inner
            .lock()
            .create(rt, namespace, obj, Writer::update(manager))
    }

    pub fn replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        sub: Subresource,
        manager: Option<&str>,
    ) -> Result<Value> {
        let mut inner = self.inner.lock();
        let old = inner
            .get(&rt.gr(), &key(rt, namespace, name))
            .cloned()
            .ok_or_else(|| Error::not_found(&rt.group, &rt.plural, name))?;
        inner.write(rt, namespace, name, &old, obj, sub, Writer::update(manager))
    }

    /// PATCH; server-side apply creates the object when it is missing, and without `force`
    /// fails with 409 Conflict when it would change a field another manager owns.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        sub: Subresource,
        manager: Option<&str>,
        force: bool,
    ) -> Result<Value> {
        let mut inner = self.inner.lock();
        let existing = inner.get(&rt.gr(), &key(rt, namespace, name)).cloned();
        let writer = if kind == PatchType::Apply {
            Writer {
                manager,
                apply: Some(body),
                force,
            }
        } else {
            Writer::update(manager)
        };
        if kind == PatchType::Apply && manager.is_none_or(str::is_empty) {
            return Err(Error::invalid("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
        }
        let Some(old) = existing else {
            if kind == PatchType::Apply && sub == Subresource::Main {
                let mut obj = body.clone();
                let m = meta_mut(&mut obj);
                m.entry("name").or_insert(json!(name));
                if meta_str(&obj, "name") != Some(name) {
                    return Err(Error::bad_request(format!(
                        "the name of the object does not match the name on the URL ({name})"
                    )));
                }
                return inner.create(rt, namespace, obj, writer);
            }
            return Err(Error::not_found(&rt.group, &rt.plural, name));
        };
        if kind == PatchType::Apply {
            for (field, want) in [("apiVersion", None), ("kind", Some(rt.kind.as_str()))] {
                match body.get(field).and_then(Value::as_str) {
                    None => {
                        return Err(Error::bad_request(format!(
                            "{field} must be set in an apply patch"
                        )))
                    }
                    Some(v) if want.is_some_and(|w| w != v) => {
                        return Err(Error::bad_request(format!(
                            "{field} {v:?} does not match {}",
                            rt.kind
                        )))
                    }
                    _ => {}
                }
            }
        }
        let mut new = patch::apply_patch(kind, &old, body)?;
        // A patch carries a resourceVersion precondition only if it sets one itself.
        let rv_in_patch = body.pointer("/metadata/resourceVersion").is_some()
            || kind == PatchType::Json
                && new.pointer("/metadata/resourceVersion")
                    != old.pointer("/metadata/resourceVersion");
        if !rv_in_patch {
            meta_mut(&mut new).remove("resourceVersion");
        }
        inner.write(rt, namespace, name, &old, new, sub, writer)
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        self.inner
            .lock()
            .delete(&rt.gr(), &key(rt, namespace, name), opts)
    }

    /// Removes a terminating pod once its processes are gone (kubelet), unless finalizers
    /// still hold it.
    pub fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) {
        let mut inner = self.inner.lock();
        let gr = GroupResource::new("", "pods");
        let k = (namespace.to_string(), name.to_string());
        let ready = inner.get(&gr, &k).is_some_and(|p| {
            meta_str(p, "uid") == Some(uid) && is_deleting(p) && finalizers(p).is_empty()
        });
        if ready {
            inner.remove_object(&gr, &k, Propagation::Background);
        }
    }

    /// Internal status write (controllers, kubelet): `f` edits the object's status; no
    /// write happens when nothing changed or the object is gone or replaced (uid differs).
    pub fn update_status(
        &self,
        gr: &GroupResource,
        namespace: &str,
        name: &str,
        uid: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut inner = self.inner.lock();
        let rt = inner.registry.find_gr(gr)?.clone();
        let old = inner.get(gr, &key(&rt, Some(namespace), name))?.clone();
        if meta_str(&old, "uid") != Some(uid) {
            return None;
        }
        let mut new = old.clone();
        f(&mut new);
        meta_mut(&mut new).remove("resourceVersion");
        inner
            .write(
                &rt,
                Some(namespace),
                name,
                &old,
                new,
                Subresource::Status,
                Writer::update(None),
            )
            .ok()
    }

    /// Starts a watch: replays history after `rv` (or synthesises ADDED events for the
    /// current objects when `rv` is None), then follows live changes.
    pub fn watch(
        &self,
        rt: &ResourceType,
        rv: Option<u64>,
        opts: &ListOptions,
    ) -> Result<WatchStart> {
        let inner = self.inner.lock();
        let gr = rt.gr();
        let receiver = self.tx.subscribe();
        let matches = |e: &StoredEvent| {
            opts.namespace.as_ref().is_none_or(|ns| *ns == e.namespace)
                && opts.labels.matches(&e.object)
                && opts.fields.matches(&e.object)
        };
        let initial = match rv {
            None => inner
                .objects
                .get(&gr)
                .map(|m| {
                    m.iter()
                        .map(|((ns, _), o)| {
                            Arc::new(StoredEvent {
                                gr: gr.clone(),
                                event_type: EventType::Added,
                                rv: o
                                    .pointer("/metadata/resourceVersion")
                                    .and_then(Value::as_str)
                                    .and_then(|s| s.parse().ok())
                                    .unwrap_or(0),
                                namespace: ns.clone(),
                                object: Arc::new(o.clone()),
                            })
                        })
                        .filter(|e| matches(e))
                        .collect()
                })
                .unwrap_or_default(),
            Some(rv) => {
                let oldest_ok = inner
                    .compacted
                    .max(inner.dropped.get(&gr).copied().unwrap_or(0));
                if rv < oldest_ok {
                    return Err(Error::expired(format!(
                        "too old resource version: {rv} ({oldest_ok})"
                    )));
                }
                inner
                    .history
                    .get(&gr)
                    .map(|h| {
                        h.iter()
                            .filter(|e| e.rv > rv && matches(e))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        Ok(WatchStart {
            initial,
            receiver,
            start_rv: inner.rv,
        })
    }

    /// Forgets all watch history: every resourceVersion handed out so far becomes too old
    /// to watch from (watchers get `410 Expired` and re-list). For tests.
    pub fn compact(&self) {
        let mut inner = self.inner.lock();
        inner.rv += 1;
        inner.compacted = inner.rv;
        inner.history.clear();
        drop(inner);
        self.compactions.send_modify(|n| *n += 1);
    }

    /// Changes on every [`Store::compact`]; open watches end then.
    pub fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.compactions.subscribe()
    }
}

fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
    let ns = if rt.namespaced {
        namespace.unwrap_or_default()
    } else {
        ""
    };
    (ns.to_string(), name.to_string())
}

impl Inner {
    fn get(&self, gr: &GroupResource, k: &ObjectKey) -> Option<&Value> {
        self.objects.get(gr).and_then(|m| m.get(k))
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(
        &mut self,
        gr: &GroupResource,
        event_type: EventType,
        rv: u64,
        namespace: &str,
        object: &Value,
    ) {
        let event = Arc::new(StoredEvent {
            gr: gr.clone(),
            event_type,
            rv,
            namespace: namespace.to_string(),
            object: Arc::new(object.clone()),
        });
        let limit = self.config.history_per_resource.max(1);
        let history = self.history.entry(gr.clone()).or_default();
        history.push_back(event.clone());
        while history.len() > limit {
            if let Some(old) = history.pop_front() {
                self.dropped.insert(gr.clone(), old.rv);
            }
        }
        let _ = self.tx.send(event);
    }

    /// Records the writer in `managedFields` with the fields it owns (FieldsV1), moves
    /// ownership of changed fields to it, and refuses (409) an apply without `force` that
    /// would change a field another manager owns.
    fn record_manager(
        obj: &mut Value,
        old: Option<&Value>,
        rt: &ResourceType,
        writer: Writer<'_>,
        sub: Subresource,
    ) -> Result<()> {
        let Some(manager) = writer.manager.filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        let operation = writer.operation();
        let sub_name = (sub == Subresource::Status).then_some("status");
        let empty = json!({});
        let before = old.unwrap_or(&empty);
        let changed = fields::changed(before, obj);
        let mut entries: Vec<Value> = old
            .and_then(|o| o.pointer("/metadata/managedFields"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_mine = |e: &Value| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some(operation)
                && e.get("subresource").and_then(Value::as_str) == sub_name
        };
        let mine: Vec<fields::Path> = match writer.apply {
            Some(applied) => {
                let applied_paths = fields::leaves(applied);
                if !writer.force {
                    let mut conflicts = Vec::new();
                    for e in entries
                        .iter()
                        .filter(|e| e.get("manager").and_then(Value::as_str) != Some(manager))
                    {
                        let owned = fields::from_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
                        for p in applied_paths
                            .iter()
                            .filter(|p| changed.contains(p) && owned.contains(p))
                        {
                            conflicts.push(format!(
                                "conflict with {:?}: {}",
                                e.get("manager").and_then(Value::as_str).unwrap_or_default(),
                                fields::dotted(p)
                            ));
                        }
                    }
                    if !conflicts.is_empty() {
                        let name = meta_str(obj, "name").unwrap_or_default().to_string();
                        return Err(Error::conflict(
                            &rt.group,
                            &rt.plural,
                            &name,
                            &format!(
                                "Apply failed with {} conflict(s): {}",
                                conflicts.len(),
                                conflicts.join("; ")
                            ),
                        ));
                    }
                }
                applied_paths
            }
            None => {
                let mut set = entries
                    .iter()
                    .find(|e| is_mine(e))
                    .map(|e| fields::from_v1(e.get("fieldsV1").unwrap_or(&Value::Null)))
                    .unwrap_or_default();
                set.extend(changed.iter().cloned());
                set
            }
        };
        entries.retain(|e| !is_mine(e));
        for e in entries.iter_mut() {
            let mut owned = fields::from_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
            owned.retain(|p| !changed.contains(p) && fields::exists(obj, p));
            e["fieldsV1"] = fields::to_v1(&owned);
        }
        entries.retain(|e| {
            e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        });
        let mine: Vec<fields::Path> = mine
            .into_iter()
            .filter(|p| fields::exists(obj, p))
            .collect();
        let mut entry = json!({"manager": manager, "operation": operation, "apiVersion": rt.api_version(), "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields::to_v1(&mine)});
        if let Some(s) = sub_name {
            entry["subresource"] = json!(s);
        }
        entries.push(entry);
        meta_mut(obj).insert("managedFields".into(), Value::Array(entries));
        Ok(())
    }

    fn check_version(rt: &ResourceType, obj: &mut Value) -> Result<()> {
        match obj.get("apiVersion").and_then(Value::as_str) {
            None => {}
            Some(v) => {
                let group = v.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
                if group != rt.group {
                    return Err(Error::bad_request(format!("the API version in the data ({v}) does not match the expected API version ({})", rt.api_version())));
                }
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) if k != rt.kind => {
                return Err(Error::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )))
            }
            _ => {}
        }
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(rt.api_version()));
            o.insert("kind".into(), json!(rt.kind));
        }
        Ok(())
    }

    fn check_namespace(
        rt: &ResourceType,
        namespace: Option<&str>,
        obj: &mut Value,
    ) -> Result<String> {
        if !rt.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(String::new());
        }
        let path_ns = namespace.filter(|n| !n.is_empty());
        let body_ns = meta_str(obj, "namespace")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let ns = match (path_ns, body_ns) {
            (Some(p), Some(b)) if p != b => {
                return Err(Error::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b,
            (None, None) => "default".to_string(),
        };
        meta_mut(obj).insert("namespace".into(), json!(ns));
        Ok(ns)
    }

    fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        writer: Writer<'_>,
    ) -> Result<Value> {
        if !obj.is_object() {
            return Err(Error::bad_request("the body must be a JSON object"));
        }
        Self::check_version(rt, &mut obj)?;
        let ns = Self::check_namespace(rt, namespace, &mut obj)?;
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => return Err(Error::invalid(format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", rt.kind))),
            },
        };
        validate_name(rt, &name)?;
        let gr = rt.gr();
        let k = (ns.clone(), name.clone());
        if self.get(&gr, &k).is_some() {
            return Err(Error::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.namespaced
            && !self
                .objects
                .get(&GroupResource::new("", "namespaces"))
                .is_some_and(|m| m.contains_key(&(String::new(), ns.clone())))
        {
            return Err(Error::not_found("", "namespaces", &ns));
        }
        apply_defaults(rt, &mut obj);
        validate_object(rt, &obj)?;
        let rv = self.next_rv();
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(random_uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("managedFields");
        }
        Self::record_manager(&mut obj, None, rt, writer, Subresource::Main)?;
        if rt.status && rt.crd.is_some() {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => obj["status"] = json!({"phase": "Active"}),
            ("", "services") => self.assign_cluster_ip(&mut obj, None),
            ("", "pods") if obj.pointer("/status/phase").is_none() => {
                obj["status"] = json!({"phase": "Pending"})
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                self.registry.apply_crd(&obj)?;
                obj["status"] = crd_status(&obj);
            }
            _ => {}
        }
        self.objects
            .entry(gr.clone())
            .or_default()
            .insert(k.clone(), obj.clone());
        self.emit(&gr, EventType::Added, rv, &ns, &obj);
        // As the garbage collector does: an object created with owners that are all gone
        // (a controller acting on a snapshot taken before its owner's deletion, e.g. a
        // StatefulSet pod recreated while the set is being collected) is collected too.
        let owners: Vec<String> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !owners.is_empty() && !owners.iter().any(|u| self.uid_exists(u)) {
            let _ = self.delete(&gr, &k, &DeleteOptions::default());
        }
        Ok(obj)
    }

    fn assign_cluster_ip(&mut self, obj: &mut Value, old: Option<&Value>) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return;
        }
        if let Some(ip) = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned() {
            spec.insert("clusterIP".into(), ip);
            return;
        }
        if spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            == "ExternalName"
        {
            return;
        }
        spec.entry("type").or_insert(json!("ClusterIP"));
        self.service_ips += 1;
        let n = self.service_ips;
        spec.insert(
            "clusterIP".into(),
            json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        sub: Subresource,
        writer: Writer<'_>,
    ) -> Result<Value> {
        if !new.is_object() {
            return Err(Error::bad_request("the body must be a JSON object"));
        }
        Self::check_version(rt, &mut new)?;
        let ns = Self::check_namespace(rt, namespace, &mut new)?;
        if let Some(body_name) = meta_str(&new, "name").filter(|n| !n.is_empty()) {
            if body_name != name {
                return Err(Error::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
            }
        }
        let old_rv = meta_str(old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        if let Some(want) = meta_str(&new, "resourceVersion").filter(|v| !v.is_empty()) {
            if want != old_rv {
                return Err(Error::conflict(&rt.group, &rt.plural, name, "the object has been modified; please apply your changes to the latest version and try again"));
            }
        }
        let mut merged = match sub {
            Subresource::Status => {
                let mut m = old.clone();
                match new.get("status") {
                    Some(s) => m["status"] = s.clone(),
                    None => {
                        if let Some(o) = m.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                m
            }
            Subresource::Main => {
                let mut m = new;
                if rt.status {
                    match old.get("status") {
                        Some(s) => m["status"] = s.clone(),
                        None => {
                            if let Some(o) = m.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                let om = old.get("metadata").cloned().unwrap_or(json!({}));
                let mm = meta_mut(&mut m);
                mm.insert("name".into(), json!(name));
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "managedFields",
                ] {
                    match om.get(f) {
                        Some(v) => mm.insert(f.into(), v.clone()),
                        None => mm.remove(f),
                    };
                }
                if rt.namespaced {
                    mm.insert("namespace".into(), json!(ns));
                }
                apply_defaults(rt, &mut m);
                if rt.group.is_empty() && rt.plural == "services" {
                    self.assign_cluster_ip(&mut m, Some(old));
                }
                m
            }
        };
        if is_deleting(old) {
            let before = finalizers(old);
            if finalizers(&merged).iter().any(|f| !before.contains(f)) {
                return Err(Error::forbidden(format!("{} \"{name}\" is forbidden: no new finalizers can be added if the object is being deleted", rt.plural)));
            }
        }
        if sub == Subresource::Main {
            validate_object(rt, &merged)?;
            if generation_content(&merged) != generation_content(old) {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                meta_mut(&mut merged).insert("generation".into(), json!(g + 1));
            }
        }
        meta_mut(&mut merged).insert("resourceVersion".into(), json!(old_rv));
        if comparable(&merged) == comparable(old) {
            return Ok(old.clone());
        }
        let is_crd = rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions";
        if is_crd && sub == Subresource::Main {
            self.registry.apply_crd(&merged)?;
            merged["status"] = crd_status(&merged);
        }
        Self::record_manager(&mut merged, Some(old), rt, writer, sub)?;
        let rv = self.next_rv();
        meta_mut(&mut merged).insert("resourceVersion".into(), json!(rv.to_string()));
        let gr = rt.gr();
        let k = (ns.clone(), name.to_string());
        self.objects
            .entry(gr.clone())
            .or_default()
            .insert(k.clone(), merged.clone());
        self.emit(&gr, EventType::Modified, rv, &ns, &merged);
        let kubelet_owned =
            gr.group.is_empty() && gr.resource == "pods" && self.config.graceful_pod_deletion;
        if is_deleting(&merged) && finalizers(&merged).is_empty() && !kubelet_owned {
            return Ok(self.remove_object(&gr, &k, Propagation::Background));
        }
        Ok(merged)
    }

    fn delete(&mut self, gr: &GroupResource, k: &ObjectKey, opts: &DeleteOptions) -> Result<Value> {
        let obj = self
            .get(gr, k)
            .cloned()
            .ok_or_else(|| Error::not_found(&gr.group, &gr.resource, &k.1))?;
        if let Some(uid) = &opts.precondition_uid {
            if meta_str(&obj, "uid") != Some(uid.as_str()) {
                return Err(Error::conflict(
                    &gr.group,
                    &gr.resource,
                    &k.1,
                    "Precondition failed: UID in precondition does not match the UID in record",
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if meta_str(&obj, "resourceVersion") != Some(rv.as_str()) {
                return Err(Error::conflict(
                    &gr.group,
                    &gr.resource,
                    &k.1,
                    "Precondition failed: ResourceVersion in precondition does not match",
                ));
            }
        }
        let graceful_pod = gr.group.is_empty()
            && gr.resource == "pods"
            && self.config.graceful_pod_deletion
            && opts.grace_period_seconds != Some(0);
        if graceful_pod || !finalizers(&obj).is_empty() {
            if is_deleting(&obj) {
                return Ok(obj);
            }
            let mut marked = obj.clone();
            let grace = opts
                .grace_period_seconds
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            {
                let m = meta_mut(&mut marked);
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert(
                    "deletionGracePeriodSeconds".into(),
                    json!(if graceful_pod { grace } else { 0 }),
                );
            }
            if opts.propagation == Propagation::Orphan {
                self.orphan_dependents(&obj);
            }
            let rv = self.next_rv();
            meta_mut(&mut marked).insert("resourceVersion".into(), json!(rv.to_string()));
            self.objects
                .entry(gr.clone())
                .or_default()
                .insert(k.clone(), marked.clone());
            self.emit(gr, EventType::Modified, rv, &k.0, &marked);
            return Ok(marked);
        }
        Ok(self.remove_object(gr, k, opts.propagation))
    }

    fn orphan_dependents(&mut self, owner: &Value) {
        let Some(uid) = meta_str(owner, "uid").map(str::to_string) else {
            return;
        };
        for (gr, k) in self.dependents(&uid) {
            let Some(rt) = self.registry.find_gr(&gr).cloned() else {
                continue;
            };
            let Some(old) = self.get(&gr, &k).cloned() else {
                continue;
            };
            let mut new = old.clone();
            if let Some(refs) = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
            }
            meta_mut(&mut new).remove("resourceVersion");
            let _ = self.write(
                &rt,
                Some(&k.0),
                &k.1,
                &old,
                new,
                Subresource::Main,
                Writer::update(None),
            );
        }
    }

    fn dependents(&self, uid: &str) -> Vec<(GroupResource, ObjectKey)> {
        let mut out = Vec::new();
        for (gr, objects) in &self.objects {
            for (k, o) in objects {
                let owned = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                    });
                if owned {
                    out.push((gr.clone(), k.clone()));
                }
            }
        }
        out
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects
            .values()
            .any(|m| m.values().any(|o| meta_str(o, "uid") == Some(uid)))
    }

    /// Removes an object now (DELETED event), then collects what it owned.
    fn remove_object(
        &mut self,
        gr: &GroupResource,
        k: &ObjectKey,
        propagation: Propagation,
    ) -> Value {
        let Some(mut obj) = self.objects.get_mut(gr).and_then(|m| m.remove(k)) else {
            return Value::Null;
        };
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.emit(gr, EventType::Deleted, rv, &k.0, &obj);

        if gr.group == "apiextensions.k8s.io" && gr.resource == "customresourcedefinitions" {
            let served: Vec<GroupResource> = self
                .registry
                .types()
                .iter()
                .filter(|t| t.crd.as_deref() == Some(k.1.as_str()))
                .map(|t| t.gr())
                .collect();
            for cgr in served {
                let keys: Vec<ObjectKey> = self
                    .objects
                    .get(&cgr)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for ck in keys {
                    self.remove_object(&cgr, &ck, Propagation::Background);
                }
            }
            self.registry.remove_crd(&k.1);
        }
        if gr.group.is_empty() && gr.resource == "namespaces" {
            let ns = k.1.clone();
            let inside: Vec<(GroupResource, ObjectKey)> = self
                .objects
                .iter()
                .flat_map(|(g, m)| {
                    m.keys()
                        .filter(|(n, _)| *n == ns)
                        .map(move |key| (g.clone(), key.clone()))
                })
                .collect();
            for (g, key) in inside {
                let _ = self.delete(
                    &g,
                    &key,
                    &DeleteOptions {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                );
                // Finalizers cannot hold objects of a vanished namespace here.
                if self.get(&g, &key).is_some()
                    && !(g.group.is_empty()
                        && g.resource == "pods"
                        && self.config.graceful_pod_deletion)
                {
                    self.remove_object(&g, &key, Propagation::Background);
                }
            }
        }
        if let Some(uid) = meta_str(&obj, "uid").map(str::to_string) {
            if propagation == Propagation::Orphan {
                self.orphan_dependents(&obj);
            } else {
                for (dgr, dk) in self.dependents(&uid) {
                    let Some(dep) = self.get(&dgr, &dk) else {
                        continue;
                    };
                    let other_owner_alive = dep
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                                .any(|u| u != uid && self.uid_exists(u))
                        });
                    if other_owner_alive {
                        continue;
                    }
                    let _ = self.delete(&dgr, &dk, &DeleteOptions::default());
                }
            }
        }
        obj
    }
}

fn crd_status(crd: &Value) -> Value {
    let now = now_rfc3339();
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|v| v.iter().filter(|x| x.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|x| x.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(StoreConfig::default())
    }

    fn cm(store: &Store) -> ResourceType {
        store.resolve("", "v1", "configmaps").unwrap()
    }

    #[test]
    fn service_names_are_dns_1035_labels() {
        let s = store();
        let rt = s.resolve("", "v1", "services").unwrap();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "reg-data"}}),
            None,
        )
        .unwrap();
        for bad in ["reg.v1-data", "1reg", &"r".repeat(64)] {
            let e = s
                .create(
                    &rt,
                    Some("default"),
                    json!({"metadata": {"name": bad}}),
                    None,
                )
                .unwrap_err();
            assert_eq!(e.code(), 422, "{bad}");
            assert!(e.to_string().contains("DNS-1035"), "{e}");
        }
    }

    #[test]
    fn create_sets_metadata_and_rejects_duplicates_and_bad_names() {
        let s = store();
        let rt = cm(&s);
        let o = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                None,
            )
            .unwrap();
        assert_eq!(o["kind"], "ConfigMap");
        assert_eq!(o["apiVersion"], "v1");
        assert!(o["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert_eq!(o["metadata"]["generation"], 1);
        let e = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}}),
                None,
            )
            .unwrap_err();
        assert_eq!(
            (e.code(), e.to_status()["reason"].as_str().unwrap()),
            (409, "AlreadyExists")
        );
        assert_eq!(
            s.create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "Bad_Name"}}),
                None
            )
            .unwrap_err()
            .code(),
            422
        );
        assert_eq!(
            s.create(&rt, Some("nope"), json!({"metadata": {"name": "b"}}), None)
                .unwrap_err()
                .code(),
            404
        );
        assert_eq!(
            s.create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "b", "namespace": "kube-system"}}),
                None
            )
            .unwrap_err()
            .code(),
            400
        );
        let g = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"generateName": "gen-"}}),
                None,
            )
            .unwrap();
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    }

    #[test]
    fn generation_counts_spec_changes_only_and_stale_writes_conflict() {
        let s = store();
        let sts = s.resolve("apps", "v1", "statefulsets").unwrap();
        let body = json!({"metadata": {"name": "w"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let o = s.create(&sts, Some("default"), body, None).unwrap();
        let rv1 = o["metadata"]["resourceVersion"].clone();
        let o = s
            .update_status(
                &sts.gr(),
                "default",
                "w",
                o["metadata"]["uid"].as_str().unwrap(),
                |o| o["status"] = json!({"replicas": 1}),
            )
            .unwrap();
        assert_eq!(o["metadata"]["generation"], 1);
        let mut stale = o.clone();
        stale["metadata"]["resourceVersion"] = rv1;
        stale["spec"]["replicas"] = json!(3);
        assert_eq!(
            s.replace(&sts, Some("default"), "w", stale, Subresource::Main, None)
                .unwrap_err()
                .code(),
            409
        );
        let o = s
            .patch(
                &sts,
                Some("default"),
                "w",
                PatchType::Merge,
                &json!({"spec": {"replicas": 3}, "status": {"replicas": 9}}),
                Subresource::Main,
                Some("t"),
                false,
            )
            .unwrap();
        assert_eq!(o["metadata"]["generation"], 2);
        assert_eq!(
            o["status"]["replicas"], 1,
            "status is not written through the main resource"
        );
        let before = o["metadata"]["resourceVersion"].clone();
        let again = s
            .patch(
                &sts,
                Some("default"),
                "w",
                PatchType::Merge,
                &json!({"spec": {"replicas": 3}}),
                Subresource::Main,
                Some("t"),
                false,
            )
            .unwrap();
        assert_eq!(
            again["metadata"]["resourceVersion"], before,
            "a no-op write changes nothing"
        );
        let bad = s
            .patch(
                &sts,
                Some("default"),
                "w",
                PatchType::Merge,
                &json!({"spec": {"selector": null}}),
                Subresource::Main,
                None,
                false,
            )
            .unwrap_err();
        assert_eq!(bad.code(), 422);
    }

    #[test]
    fn apply_creates_then_merges() {
        let s = store();
        let rt = cm(&s);
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let o = s
            .patch(
                &rt,
                Some("default"),
                "x",
                PatchType::Apply,
                &body,
                Subresource::Main,
                Some("me"),
                false,
            )
            .unwrap();
        assert_eq!(o["metadata"]["managedFields"][0]["manager"], "me");
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"b": "2"}});
        let o = s
            .patch(
                &rt,
                Some("default"),
                "x",
                PatchType::Apply,
                &body,
                Subresource::Main,
                Some("me"),
                false,
            )
            .unwrap();
        assert_eq!(o["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(o["metadata"]["managedFields"].as_array().unwrap().len(), 1);
        assert_eq!(
            s.patch(
                &rt,
                Some("default"),
                "x",
                PatchType::Apply,
                &body,
                Subresource::Main,
                None,
                false
            )
            .unwrap_err()
            .code(),
            422
        );
        assert_eq!(
            s.patch(
                &rt,
                Some("default"),
                "y",
                PatchType::Merge,
                &json!({}),
                Subresource::Main,
                None,
                false
            )
            .unwrap_err()
            .code(),
            404
        );
    }

    #[test]
    fn apply_conflicts_on_fields_owned_by_another_manager() {
        let s = store();
        let rt = s.resolve("coordination.k8s.io", "v1", "leases").unwrap();
        let lease = |holder: Value| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}});
        let apply = |who: &str, holder: Value, force: bool| {
            s.patch(
                &rt,
                Some("default"),
                "l",
                PatchType::Apply,
                &lease(holder),
                Subresource::Main,
                Some(who),
                force,
            )
        };
        apply("a", json!("a"), false).unwrap();
        let e = apply("b", json!("b"), false).unwrap_err();
        assert_eq!(
            (e.code(), e.to_status()["reason"].as_str().unwrap()),
            (409, "Conflict")
        );
        assert!(e.to_string().contains(".spec.holderIdentity"), "{e}");
        assert_eq!(
            apply("b", json!("a"), false).unwrap()["spec"]["holderIdentity"],
            "a",
            "same value: shared ownership, no conflict"
        );
        let o = apply("b", json!("b"), true).unwrap();
        assert_eq!(o["spec"]["holderIdentity"], "b");
        let a_entry = o["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "a")
            .cloned()
            .unwrap();
        assert!(
            a_entry["fieldsV1"]["f:spec"]
                .get("f:holderIdentity")
                .is_none(),
            "forced apply took the field: {a_entry}"
        );
        assert_eq!(apply("a", json!("a"), false).unwrap_err().code(), 409);
        s.patch(
            &rt,
            Some("default"),
            "l",
            PatchType::Strategic,
            &json!({"spec": {"holderIdentity": null}}),
            Subresource::Main,
            Some("b"),
            false,
        )
        .unwrap();
        assert_eq!(
            apply("a", json!("a"), false).unwrap()["spec"]["holderIdentity"],
            "a",
            "a released field can be applied"
        );
    }

    #[test]
    fn an_object_created_for_an_owner_that_is_gone_is_collected() {
        let s = store();
        let rt = cm(&s);
        let oref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "no-such-uid"}]);
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "late", "ownerReferences": oref}}),
            None,
        )
        .unwrap();
        assert!(
            s.get(&rt, Some("default"), "late").is_err(),
            "collected at once"
        );
        // An owner that exists keeps its dependent.
        let owner = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "here"}}),
                None,
            )
            .unwrap();
        let oref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "here", "uid": owner["metadata"]["uid"]}]);
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "kept", "ownerReferences": oref}}),
            None,
        )
        .unwrap();
        assert!(s.get(&rt, Some("default"), "kept").is_ok());
    }

    #[test]
    fn finalizers_hold_deletion_and_owners_cascade() {
        let s = store();
        let rt = cm(&s);
        let owner = s
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "owner", "finalizers": ["x/y"]}}),
                None,
            )
            .unwrap();
        let uid = owner["metadata"]["uid"].clone();
        let oref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "dep", "ownerReferences": oref}}),
            None,
        )
        .unwrap();
        let marked = s
            .delete(&rt, Some("default"), "owner", &DeleteOptions::default())
            .unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&rt, Some("default"), "owner").is_ok());
        assert!(s.get(&rt, Some("default"), "dep").is_ok());
        let e = s
            .patch(
                &rt,
                Some("default"),
                "owner",
                PatchType::Merge,
                &json!({"metadata": {"finalizers": ["x/y", "new"]}}),
                Subresource::Main,
                None,
                false,
            )
            .unwrap_err();
        assert_eq!(e.code(), 403);
        s.patch(
            &rt,
            Some("default"),
            "owner",
            PatchType::Merge,
            &json!({"metadata": {"finalizers": null}}),
            Subresource::Main,
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            s.get(&rt, Some("default"), "owner").unwrap_err().code(),
            404
        );
        assert_eq!(s.get(&rt, Some("default"), "dep").unwrap_err().code(), 404);
    }

    #[test]
    fn watch_replays_history_and_expires_after_compaction() {
        let s = store();
        let rt = cm(&s);
        let rv0 = s.resource_version();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}}),
            None,
        )
        .unwrap();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "b"}}),
            None,
        )
        .unwrap();
        let opts = ListOptions {
            labels: LabelSelector::parse("x=1").unwrap(),
            ..Default::default()
        };
        let w = s.watch(&rt, Some(rv0), &opts).unwrap();
        assert_eq!(w.initial.len(), 1);
        assert_eq!(w.initial[0].event_type, EventType::Added);
        s.compact();
        assert_eq!(s.watch(&rt, Some(rv0), &opts).err().unwrap().code(), 410);
        assert!(s.watch(&rt, Some(s.resource_version()), &opts).is_ok());
    }

    #[test]
    fn list_pages_with_continue() {
        let s = store();
        let rt = cm(&s);
        for n in ["a", "b", "c"] {
            s.create(&rt, Some("default"), json!({"metadata": {"name": n}}), None)
                .unwrap();
        }
        let p1 = s
            .list(
                &rt,
                &ListOptions {
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, 1);
        let p2 = s
            .list(
                &rt,
                &ListOptions {
                    limit: Some(2),
                    continue_token: p1.continue_token,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(p2.items.len(), 1);
        assert_eq!(p2.items[0]["metadata"]["name"], "c");
        assert!(p2.continue_token.is_none());
    }
}
