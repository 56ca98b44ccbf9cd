//! The HTTP API server: discovery, resource CRUD/patch/watch routes, subresources, Tables,
//! and the simulator's debug endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::Error;
use crate::labels::{FieldSelector, LabelSelector};
use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::store::{DeleteOptions, ListOptions, Propagation, Store, Subresource};
use crate::table;
use crate::workload::Kubelet;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bookmark_interval: Duration,
    pub default_watch_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// Shared state of the routes.
pub struct AppState {
    pub store: Arc<Store>,
    pub kubelet: Option<Arc<Kubelet>>,
    pub config: ApiConfig,
}

type Shared = Arc<AppState>;

/// The API server's router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/debug/kubesim/v1/pods", get(debug_pods))
        .route(
            "/debug/kubesim/v1/namespaces/{ns}/pods/{name}/kill",
            post(debug_kill),
        )
        .route("/debug/kubesim/v1/compact", post(debug_compact))
        .fallback(resource_request)
        .with_state(state)
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        json_response(self.code(), &self.to_status())
    }
}

async fn version() -> Response {
    json_response(
        200,
        &json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-kubesim", "gitCommit": "kubesim",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
            "compiler": "gc", "platform": "linux/amd64"
        }),
    )
}

async fn api_versions() -> Response {
    json_response(
        200,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

async fn api_groups(State(state): State<Shared>) -> Response {
    let groups: Vec<Value> = state
        .store
        .registry()
        .groups()
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json_response(
        200,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn resource_list(state: &AppState, group: &str, version: &str) -> Option<Value> {
    let registry = state.store.registry();
    if !registry.has_group_version(group, version) {
        return None;
    }
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = Vec::new();
    for t in registry
        .types()
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.scale.is_some() {
            resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

async fn debug_pods(State(state): State<Shared>) -> Response {
    match &state.kubelet {
        Some(k) => json_response(200, &json!({"pods": k.pods()})),
        None => Error::path_not_found("workloads are not run by this simulator").into_response(),
    }
}

async fn debug_kill(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(k) = &state.kubelet else {
        return Error::path_not_found("workloads are not run by this simulator").into_response();
    };
    match k.kill_pod(&ns, &name) {
        Ok(pids) => json_response(200, &json!({"killed": pids})),
        Err(e) => e.into_response(),
    }
}

async fn debug_compact(State(state): State<Shared>) -> Response {
    state.store.compact();
    json_response(
        200,
        &json!({"resourceVersion": state.store.resource_version().to_string()}),
    )
}

/// What a resource path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Parsed {
    Discovery(Value),
    Resource(Box<Target>),
}

fn parse_path(state: &AppState, path: &str) -> Result<Parsed, Error> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let not_found = || Error::path_not_found(path);
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g] => {
            let groups = state.store.registry().groups();
            let (g, vs) = groups
                .iter()
                .find(|(name, _)| name == g)
                .ok_or_else(not_found)?;
            let mut body = group_json(g, vs);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            return Ok(Parsed::Discovery(body));
        }
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        return resource_list(state, group, version)
            .map(Parsed::Discovery)
            .ok_or_else(not_found);
    }
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] => {
            (None, "namespaces", Some(*ns), Some(*sub))
        }
        ["namespaces", ns, plural, tail @ ..] => {
            if tail.len() > 2 {
                return Err(not_found());
            }
            (
                Some(*ns),
                *plural,
                tail.first().copied(),
                tail.get(1).copied(),
            )
        }
        [plural, tail @ ..] => {
            if tail.len() > 2 {
                return Err(not_found());
            }
            (None, *plural, tail.first().copied(), tail.get(1).copied())
        }
        [] => return Err(not_found()),
    };
    let rt = state
        .store
        .resolve(group, version, plural)
        .ok_or_else(not_found)?;
    if !rt.namespaced && namespace.is_some() {
        return Err(not_found());
    }
    Ok(Parsed::Resource(Box::new(Target {
        rt,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    })))
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn list_options(
    q: &HashMap<String, String>,
    namespace: Option<String>,
) -> Result<ListOptions, Error> {
    Ok(ListOptions {
        namespace,
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        limit: match q.get("limit") {
            Some(l) => Some(
                l.parse()
                    .map_err(|_| Error::bad_request(format!("invalid limit {l:?}")))?,
            ),
            None => None,
        },
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

/// Serves an object at the version of the request (versions share one store).
fn present(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if o.get("apiVersion").and_then(Value::as_str) != Some(rt.api_version().as_str()) {
        o["apiVersion"] = json!(rt.api_version());
    }
    o
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|a| a.contains("as=Table"))
}

fn parse_json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Error> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| Error::bad_request(format!("error decoding YAML body: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::bad_request(format!("error decoding JSON body: {e}")))
    }
}

async fn resource_request(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&state, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code(), error = %e, "request failed");
            e.into_response()
        }
    }
}

async fn handle(
    state: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Error> {
    let target = match parse_path(state, uri.path())? {
        Parsed::Discovery(v) if method == Method::GET => return Ok(json_response(200, &v)),
        Parsed::Discovery(_) => {
            return Err(Error::method_not_allowed(format!(
                "{method} is not supported on {}",
                uri.path()
            )))
        }
        Parsed::Resource(t) => *t,
    };
    let q = query_map(uri);
    if q.contains_key("dryRun") {
        return Err(Error::bad_request("dryRun is not supported by kubesim"));
    }
    let manager = q.get("fieldManager").map(String::as_str);
    let store = &state.store;
    let rt = &target.rt;
    let ns = target.namespace.as_deref();
    let sub = match target.sub.as_deref() {
        None => None,
        Some("status") if rt.status => Some("status"),
        Some("scale") if rt.scale.is_some() => Some("scale"),
        Some(other) => return Err(Error::path_not_found(&format!("{}/{other}", rt.plural))),
    };
    let subresource = if sub == Some("status") {
        Subresource::Status
    } else {
        Subresource::Main
    };
    let table = wants_table(headers);
    let include_object = q
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());

    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) => {
            let opts = list_options(&q, target.namespace.clone())?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(state, rt.clone(), &q, opts, table, include_object);
            }
            let page = store.list(rt, &opts)?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
                meta["remainingItemCount"] = json!(page.remaining);
            }
            let items: Vec<Value> = page.items.iter().map(|o| present(rt, o)).collect();
            if table {
                return Ok(json_response(
                    200,
                    &table::to_table(rt, &items, meta, &include_object),
                ));
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
            ))
        }
        (Method::GET, Some(name)) => {
            let obj = store.get(rt, ns, name)?;
            if sub == Some("scale") {
                return Ok(json_response(200, &scale_of(rt, &obj)));
            }
            let obj = present(rt, &obj);
            if table {
                return Ok(json_response(
                    200,
                    &table::to_table(rt, &[obj], json!({}), &include_object),
                ));
            }
            Ok(json_response(200, &obj))
        }
        (Method::POST, None) => {
            let obj = parse_json_body(headers, body)?;
            let created = store.create(rt, ns, obj, manager)?;
            Ok(json_response(201, &present(rt, &created)))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_json_body(headers, body)?;
            if sub == Some("scale") {
                let replicas = obj
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        Error::invalid("Scale is invalid: spec.replicas: Required value")
                    })?;
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let updated = set_scale(store, rt, ns, name, replicas, rv, manager)?;
                return Ok(json_response(200, &scale_of(rt, &updated)));
            }
            let updated = store.replace(rt, ns, name, obj, subresource, manager)?;
            Ok(json_response(200, &present(rt, &updated)))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(ct).ok_or_else(|| Error::unsupported_media_type(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})")))?;
            let patch_body = patch::parse_body(kind, body)?;
            if sub == Some("scale") {
                let current = scale_of(rt, &store.get(rt, ns, name)?);
                let patched = patch::apply_patch(
                    if kind == PatchType::Apply {
                        PatchType::Strategic
                    } else {
                        kind
                    },
                    &current,
                    &patch_body,
                )?;
                let replicas = patched
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        Error::invalid("Scale is invalid: spec.replicas: Required value")
                    })?;
                let rv = patch_body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                let updated = set_scale(store, rt, ns, name, replicas, rv, manager)?;
                return Ok(json_response(200, &scale_of(rt, &updated)));
            }
            let force = q.get("force").is_some_and(|f| f == "true");
            let updated =
                store.patch(rt, ns, name, kind, &patch_body, subresource, manager, force)?;
            Ok(json_response(200, &present(rt, &updated)))
        }
        (Method::DELETE, Some(name)) => {
            let opts = delete_options(&q, body)?;
            let deleted = store.delete(rt, ns, name, &opts)?;
            Ok(json_response(200, &present(rt, &deleted)))
        }
        (Method::DELETE, None) => {
            let opts = list_options(&q, target.namespace.clone())?;
            let dopts = delete_options(&q, body)?;
            let page = store.list(
                rt,
                &ListOptions {
                    limit: None,
                    continue_token: None,
                    ..opts
                },
            )?;
            let mut items = Vec::new();
            for o in &page.items {
                let name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let ons = o.pointer("/metadata/namespace").and_then(Value::as_str);
                if let Ok(d) = store.delete(rt, ons, name, &dopts) {
                    items.push(present(rt, &d));
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items}),
            ))
        }
        _ => Err(Error::method_not_allowed(format!(
            "{method} is not supported on {}",
            uri.path()
        ))),
    }
}

fn delete_options(q: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, Error> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let policy = q
        .get("propagationPolicy")
        .map(String::as_str)
        .or_else(|| b.get("propagationPolicy").and_then(Value::as_str));
    let propagation = match policy {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )))
        }
    };
    let orphan = b.get("orphanDependents").and_then(Value::as_bool) == Some(true);
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| Error::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => b.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    Ok(DeleteOptions {
        propagation: if orphan {
            Propagation::Orphan
        } else {
            propagation
        },
        grace_period_seconds: grace,
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn path_to_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, p| format!("{acc}/{p}"))
}

/// The `autoscaling/v1` Scale view of an object.
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let paths = rt
        .scale
        .clone()
        .unwrap_or_else(|| crate::resources::ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
    let spec = obj
        .pointer(&path_to_pointer(&paths.spec_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = obj
        .pointer(&path_to_pointer(&paths.status_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = match &paths.label_selector {
        Some(p) => obj
            .pointer(&path_to_pointer(p))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp")},
        "spec": {"replicas": spec},
        "status": {"replicas": status, "selector": selector},
    })
}

fn set_scale(
    store: &Store,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    replicas: i64,
    rv: Option<&str>,
    manager: Option<&str>,
) -> Result<Value, Error> {
    if replicas < 0 {
        return Err(Error::invalid(format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")));
    }
    let spec_path = rt
        .scale
        .as_ref()
        .map(|s| s.spec_replicas.clone())
        .unwrap_or_else(|| ".spec.replicas".into());
    let mut patch_body = json!({});
    let parts: Vec<&str> = spec_path.trim_start_matches('.').split('.').collect();
    let mut cur = &mut patch_body;
    for (i, p) in parts.iter().enumerate() {
        cur[*p] = if i + 1 == parts.len() {
            json!(replicas)
        } else {
            json!({})
        };
        cur = &mut cur[*p];
    }
    if let Some(rv) = rv {
        patch_body["metadata"] = json!({"resourceVersion": rv});
    }
    store.patch(
        rt,
        ns,
        name,
        PatchType::Merge,
        &patch_body,
        Subresource::Main,
        manager,
        false,
    )
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    state: &Shared,
    rt: ResourceType,
    q: &HashMap<String, String>,
    opts: ListOptions,
    table: bool,
    include_object: String,
) -> Result<Response, Error> {
    let rv = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Error::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| Error::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => state.config.default_watch_timeout,
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let render = move |rt: &ResourceType, o: &Value| -> Value {
        let o = present(rt, o);
        if table {
            table::to_table(rt, &[o], json!({}), &include_object)
        } else {
            o
        }
    };
    let start = match state.store.watch(&rt, rv, &opts) {
        Ok(s) => s,
        Err(e) if e.code() == 410 => {
            // A 200 stream carrying an ERROR event makes clients re-list; an HTTP 410 would not.
            let line = event_line("ERROR", &e.to_status());
            return Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(line))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        Err(e) => return Err(e),
    };
    let mut compactions = state.store.compactions();
    compactions.mark_unchanged();
    let bookmark_interval = state.config.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen_rv = start.start_rv;
        let mut receiver = start.receiver;
        for e in &start.initial {
            if tx
                .send(Ok(event_line(
                    e.event_type.as_str(),
                    &render(&rt, &e.object),
                )))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        let gr = rt.gr();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = compactions.changed() => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": {"resourceVersion": seen_rv.to_string()}});
                    if tx.send(Ok(event_line("BOOKMARK", &bookmark))).await.is_err() { break; }
                }
                received = receiver.recv() => match received {
                    Ok(e) => {
                        seen_rv = seen_rv.max(e.rv);
                        let wanted = e.gr == gr
                            && opts.namespace.as_ref().is_none_or(|ns| *ns == e.namespace)
                            && opts.labels.matches(&e.object)
                            && opts.fields.matches(&e.object);
                        if wanted && tx.send(Ok(event_line(e.event_type.as_str(), &render(&rt, &e.object)))).await.is_err() {
                            break;
                        }
                    }
                    // A watcher that fell behind is closed; it resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .map_err(|e| Error::bad_request(e.to_string()))
}
