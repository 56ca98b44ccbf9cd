//! The public HTTP API of API.md (session role), plus the operational endpoints every node
//! serves: routes, request parsing, the bearer token, per-route metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{self, Authenticator, Caller};
use super::error::ApiError;
use super::service_list::{ListQuery, ServiceRow};
use super::stream_encoding::{self, StreamEncoders};
use super::validate;
use super::NodeInfo;
use crate::access::audit::Reason;
use crate::access::{Principal, Right};
use crate::dataplane::cluster_view::SessionNodeView;
use crate::dataplane::DataPlane;
use crate::metrics::{static_method, static_route, Metrics, RequestLabels, RouteLabels};
use crate::model::DataInfoId;
use crate::session::prepared::group_zones;
use crate::session::{Published, SessionLayer};
use registry_types::{NodeStatus, SessionCounts};

/// A request body is at most 1 MiB (API.md).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub session: Arc<SessionLayer>,
    pub data: Arc<dyn DataPlane>,
    pub metrics: Arc<Metrics>,
    pub info: Arc<NodeInfo>,
    /// Who is calling and what they may do (SECURITY.md).
    pub auth: Arc<Authenticator>,
}

type ApiResult<T> = Result<T, ApiError>;

/// The router of the public listener.
pub fn router(state: AppState) -> Router {
    // Behind one Arc: handlers and the middleware clone the state once per request.
    let state = Arc::new(state);
    let api = Router::new()
        .route("/api/v1/sessions", post(create_session))
        .route(
            "/api/v1/sessions/{session_id}",
            axum::routing::delete(delete_session),
        )
        .route("/api/v1/sessions/{session_id}/heartbeat", post(heartbeat))
        .route("/api/v1/sessions/{session_id}/events", get(events))
        .route("/api/v1/sessions/{session_id}/publishers", post(publish))
        .route(
            "/api/v1/sessions/{session_id}/publishers:batch",
            post(publish_batch),
        )
        .route(
            "/api/v1/sessions/{session_id}/publishers/{register_id}",
            axum::routing::delete(unpublish),
        )
        .route("/api/v1/sessions/{session_id}/subscribers", post(subscribe))
        .route(
            "/api/v1/sessions/{session_id}/subscribers/{register_id}",
            axum::routing::delete(unsubscribe),
        )
        .route("/api/v1/data", get(query_data))
        .route("/api/v1/services", get(query_services))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/admin/push", get(get_push).put(put_push))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let encoders = StreamEncoders::new(state.session.config().max_compressed_streams);
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(encoders))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_and_record,
        ))
        .with_state(state)
}

// ----- middleware -----

/// The one middleware of the public listener: the bearer token, then per-route metrics.
/// (One layer instead of two: each `from_fn` layer costs a boxed service clone per request.)
async fn authorize_and_record(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| static_route(p.as_str()));
    let method = static_method(req.method());
    let start = std::time::Instant::now();
    // Every `/api/v1/*` call is authenticated (`/internal/*` has no route here: 404); the
    // admin routes need the admin right whatever the method.
    let res = if auth::Realm::Client.protects(req.uri().path()) {
        match authenticate(&state, req, route).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        }
    } else {
        next.run(req).await
    };
    let metrics = &state.metrics;
    metrics
        .http_request_seconds
        .get_or_create(&RouteLabels { method, route })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// The caller of `req` (added to its extensions), and the admin check of admin routes.
async fn authenticate(
    state: &AppState,
    mut req: Request,
    route: &'static str,
) -> Result<Request, ApiError> {
    let principal = state.auth.authenticate(req.headers(), route).await?;
    if req.uri().path().starts_with("/api/v1/admin/") {
        state
            .auth
            .authorize(&principal, Right::Admin, None, route)?;
    }
    req.extensions_mut().insert(Caller(Arc::new(principal)));
    Ok(req)
}

/// The session must be the caller's: `403` (audited) when another principal created it.
fn own_session(
    state: &AppState,
    caller: &Caller,
    session_id: &str,
    route: &'static str,
) -> ApiResult<()> {
    state
        .session
        .check_session_principal(session_id, caller.0.owner_key().as_ref())
        .map_err(|e| owner_denial(state, caller, route, e, Reason::Session))
}

/// A session-layer error, with its `403`s audited under `reason`.
fn owner_denial(
    state: &AppState,
    caller: &Caller,
    route: &'static str,
    e: crate::session::SessionError,
    reason: Reason,
) -> ApiError {
    match e {
        crate::session::SessionError::Forbidden(m) => {
            state.auth.forbid(&caller.0, route, reason, m)
        }
        e => e.into(),
    }
}

// ----- extraction helpers -----

fn body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "request body must be at most {MAX_BODY_BYTES} bytes"
            ))
        } else {
            ApiError::invalid(format!("cannot read request body: {}", e.body_text()))
        }
    })
}

fn path_param<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::invalid(format!("malformed path: {}", e.body_text())))
}

/// The query string's parameters, each name and value percent-decoded into UTF-8 (a value
/// that is not UTF-8 once decoded is refused, not replaced by U+FFFD).
fn query(RawQuery(raw): RawQuery) -> ApiResult<HashMap<String, String>> {
    validate::parse_query(raw.as_deref().unwrap_or(""))
}

/// The internal listener's share of a session or standalone node: its status (with the
/// session counts), health, readiness and metrics. The caller adds the cluster-token guard.
pub fn status_router(state: AppState) -> Router {
    Router::new()
        .route("/internal/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

pub(crate) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on {}", uri.path()))
}

// ----- sessions -----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionCreated {
    session_id: Arc<str>,
    ttl_seconds: u64,
}

async fn create_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let req = validate::create_session(&body(raw)?)?;
    let session =
        state
            .session
            .create_session_as(req.client_id, req.ttl_seconds, caller.0.owner_key())?;
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated {
            session_id: session.id.clone(),
            ttl_seconds: session.ttl.as_secs(),
        }),
    ))
}

async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let session_id = path_param(path)?;
    own_session(
        &state,
        &caller,
        &session_id,
        "/api/v1/sessions/{session_id}/heartbeat",
    )?;
    // A session node that cannot reach the data layer cannot keep its clients' publishers
    // there (the data nodes' session lease runs out): telling the client at its next
    // heartbeat lets it fail over to another session node and re-publish in time.
    // An unknown or expired session is still 404 (the client opens a new one either way).
    if !state.data.status().ready {
        state.session.live_session(&session_id).await?;
        return Err(ApiError::Unavailable(
            "this session node cannot reach the data layer; use another session node".into(),
        ));
    }
    let hb = state.session.heartbeat(&session_id).await?;
    Ok(Json(json!({
        "sessionId": hb.session_id,
        "ttlSeconds": hb.ttl_seconds,
        "expiresInMs": hb.expires_in_ms,
    })))
}

async fn delete_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let session_id = path_param(path)?;
    own_session(
        &state,
        &caller,
        &session_id,
        "/api/v1/sessions/{session_id}",
    )?;
    // An expired session that the reaper has not reached yet is already gone for the client.
    state.session.live_session(&session_id).await?;
    if state.session.remove_session(&session_id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "session {session_id:?} not found or expired"
        )))
    }
}

/// The session's event stream; gzip-compressed as a whole when the client asks for it
/// (see [`stream_encoding`](super::stream_encoding)).
async fn events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(encoders): Extension<StreamEncoders>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let session_id = path_param(path)?;
    own_session(
        &state,
        &caller,
        &session_id,
        "/api/v1/sessions/{session_id}/events",
    )?;
    let stream = state.session.open_stream(&session_id).await?;
    let gzip = encoders.gzip_for(&headers);
    let compressed = gzip.is_some();
    let body = match gzip {
        Some(permit) => Body::from_stream(stream_encoding::gzip(stream, permit)),
        None => Body::from_stream(stream),
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if compressed {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

// ----- publishers and subscribers -----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublishAnswer {
    register_id: Arc<str>,
    data_info_id: DataInfoId,
    version: u64,
}

impl From<&Published> for PublishAnswer {
    fn from(done: &Published) -> Self {
        PublishAnswer {
            register_id: done.publisher.register_id.clone(),
            data_info_id: done.publisher.data_info_id.clone(),
            version: done.publisher.version,
        }
    }
}

async fn publish(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    const ROUTE: &str = "/api/v1/sessions/{session_id}/publishers";
    let session_id = path_param(path)?;
    let req = validate::publish(&body(raw)?)?;
    own_session(&state, &caller, &session_id, ROUTE)?;
    state
        .auth
        .authorize(&caller.0, Right::Publish, Some(&req.key.data_id), ROUTE)?;
    let done = state
        .session
        .publish(&session_id, req)
        .await
        .map_err(|e| owner_denial(&state, &caller, ROUTE, e, Reason::Owner))?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(PublishAnswer::from(&done))))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchPublishAnswer {
    publishers: Vec<BatchPublished>,
}

/// A publisher as the one-publisher answer has it, and whether it is new.
#[derive(Serialize)]
struct BatchPublished {
    #[serde(flatten)]
    publisher: PublishAnswer,
    created: bool,
}

/// Extension of API.md: several publishers of one session in one request, all or nothing.
async fn publish_batch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<BatchPublishAnswer>> {
    const ROUTE: &str = "/api/v1/sessions/{session_id}/publishers:batch";
    let session_id = path_param(path)?;
    let reqs = validate::publish_batch(&body(raw)?)?;
    own_session(&state, &caller, &session_id, ROUTE)?;
    // All or nothing: one entry without the right refuses the batch.
    for (i, req) in reqs.iter().enumerate() {
        state
            .auth
            .authorize(&caller.0, Right::Publish, Some(&req.key.data_id), ROUTE)
            .map_err(|e| ApiError::Forbidden(format!("publishers[{i}]: {e}")))?;
    }
    let done = state
        .session
        .publish_many(&session_id, reqs)
        .await
        .map_err(|e| owner_denial(&state, &caller, ROUTE, e, Reason::Owner))?;
    Ok(Json(BatchPublishAnswer {
        publishers: done
            .into_iter()
            .map(|d| BatchPublished {
                publisher: PublishAnswer::from(&d),
                created: d.created,
            })
            .collect(),
    }))
}

async fn unpublish(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (session_id, register_id) = path_param(path)?;
    own_session(
        &state,
        &caller,
        &session_id,
        "/api/v1/sessions/{session_id}/publishers/{register_id}",
    )?;
    state.session.unpublish(&session_id, &register_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn subscribe(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    const ROUTE: &str = "/api/v1/sessions/{session_id}/subscribers";
    let session_id = path_param(path)?;
    let req = validate::subscribe(&body(raw)?)?;
    own_session(&state, &caller, &session_id, ROUTE)?;
    state
        .auth
        .authorize(&caller.0, Right::Subscribe, Some(&req.key.data_id), ROUTE)?;
    let sub = state.session.subscribe(&session_id, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"registerId": sub.register_id, "dataInfoId": sub.data_info_id})),
    ))
}

async fn unsubscribe(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (session_id, register_id) = path_param(path)?;
    own_session(
        &state,
        &caller,
        &session_id,
        "/api/v1/sessions/{session_id}/subscribers/{register_id}",
    )?;
    state.session.unsubscribe(&session_id, &register_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- queries -----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublisherView<'a> {
    register_id: &'a str,
    zone: &'a str,
    data: &'a [String],
    version: u64,
    /// Extension (README): when this version was accepted, in ms since the Unix epoch.
    register_timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

async fn query_data(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    q: RawQuery,
) -> ApiResult<Response> {
    let q = query(q)?;
    let key = validate::query_key(
        q.get("dataId").map(String::as_str),
        q.get("group").map(String::as_str),
        q.get("instanceId").map(String::as_str),
    )?;
    state.auth.authorize(
        &caller.0,
        Right::Subscribe,
        Some(&key.data_id),
        "/api/v1/data",
    )?;
    let wait = q.get("wait").map(|w| validate::parse_wait(w)).transpose()?;
    let index = q
        .get("waitIndex")
        .map(|i| validate::parse_u64("waitIndex", i))
        .transpose()?;
    let id = key.data_info_id();
    let snapshot = match index {
        Some(index) => {
            let wait = wait.unwrap_or(validate::MAX_WAIT);
            let deadline = tokio::time::Instant::now() + wait;
            state.session.wait_for_version(&id, index, deadline).await?
        }
        None => state.data.fetch(&id).await?,
    };
    let mut publishers: Vec<_> = snapshot.publishers.iter().collect();
    publishers.sort_by(|a, b| a.register_id.cmp(&b.register_id));
    let body = json!({
        "dataInfoId": snapshot.data_info_id,
        "version": snapshot.version,
        "zones": group_zones(&snapshot.publishers, None),
        "publishers": publishers.iter().map(|p| PublisherView {
            register_id: &p.register_id,
            zone: &p.zone,
            data: &p.data,
            version: p.version,
            register_timestamp: p.register_timestamp,
            client_id: p.client_id.as_deref(),
        }).collect::<Vec<_>>(),
    });
    let mut res = Json(body).into_response();
    // Consul-style: the index to pass as waitIndex next.
    if let Ok(v) = HeaderValue::from_str(&snapshot.version.to_string()) {
        res.headers_mut().insert("x-registry-index", v);
    }
    Ok(res)
}

async fn query_services(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    q: RawQuery,
) -> ApiResult<impl IntoResponse> {
    let list = ListQuery::parse(&query(q)?)?;
    let found = match (state.auth.policy(), &*caller.0) {
        (Some(policy), Principal::Named(name)) => {
            visible_services(&state, &policy, &caller.0, name, &list).await?
        }
        _ => {
            state
                .data
                .services(&list.prefix, list.fetch_limit())
                .await?
        }
    };
    let rows = found
        .into_iter()
        .map(|summary| ServiceRow {
            subscriber_count: state.session.subscriber_count(&summary.data_info_id),
            summary,
        })
        .collect();
    Ok(Json(list.answer(rows)))
}

/// The services matching `list.prefix` that `principal` may subscribe to, sorted by
/// dataInfoId, at most `list.fetch_limit()`: the data layer is asked under the literal
/// prefix of each subscribe pattern (within the caller's prefix), and what comes back is
/// filtered by the full patterns; a read that filtering thinned out is asked again for
/// more until it is exhausted.
async fn visible_services(
    state: &AppState,
    policy: &crate::access::Policy,
    principal: &Principal,
    name: &registry_types::access::PrincipalName,
    list: &ListQuery,
) -> ApiResult<Vec<crate::model::ServiceSummary>> {
    let want = list.fetch_limit();
    let mut found: std::collections::BTreeMap<DataInfoId, crate::model::ServiceSummary> =
        Default::default();
    for prefix in policy.subscribe_prefixes(name) {
        let within = if prefix.starts_with(&list.prefix) {
            prefix
        } else if list.prefix.starts_with(&prefix) {
            list.prefix.clone()
        } else {
            continue;
        };
        let mut ask = want;
        loop {
            let rows = state.data.services(&within, ask).await?;
            let exhausted = rows.len() < ask;
            let mut kept = 0;
            for row in rows {
                let data_id = crate::model::ServiceKey::parse(&row.data_info_id)
                    .map(|k| k.data_id)
                    .unwrap_or_default();
                if state.auth.may_subscribe(Some(policy), principal, &data_id) {
                    kept += 1;
                    found.insert(row.data_info_id.clone(), row);
                }
            }
            if exhausted || kept >= want {
                break;
            }
            ask = ask.saturating_mul(4);
        }
    }
    Ok(found.into_values().take(want).collect())
}

// ----- operations -----

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let m = state.data.status();
    if m.ready {
        Json(json!({"status": "ready", "epoch": m.epoch})).into_response()
    } else {
        ApiError::Unavailable(
            "not ready: no data-layer membership yet or data layer unreachable".into(),
        )
        .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// API.md's fields, and the README's extension: `dataNodes` with each one's state, sync,
/// ring share and counts, `sessionNodes` (those the data nodes hold leases of, and this
/// node) and `replicationFactor`.
async fn cluster(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = state.data.status();
    let mut layer = state.data.cluster_view().await;
    let me = &state.info.node_name;
    if state.info.roles.contains(&"session") && !layer.session_nodes.iter().any(|s| &s.name == me) {
        layer.session_nodes.push(SessionNodeView {
            name: me.clone(),
            seen_by: Vec::new(),
            last_renewal_ms: 0,
        });
        layer.session_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Json(json!({
        "nodeName": state.info.node_name,
        "roles": state.info.roles,
        "epoch": m.epoch,
        "members": m.members,
        "dataNodes": layer.data_nodes,
        "sessionNodes": layer.session_nodes,
        "replicationFactor": layer.replication_factor,
        "ready": m.ready,
    }))
}

async fn status(State(state): State<Arc<AppState>>) -> Json<NodeStatus> {
    let m = state.data.status();
    let (sessions, publishers, subscribers) = state.session.counts();
    Json(NodeStatus {
        node_name: state.info.node_name.clone(),
        roles: state.info.roles.iter().map(|r| r.to_string()).collect(),
        epoch: m.epoch,
        members: m.members,
        http_addr: state.info.http_addr.clone(),
        data_addr: state.info.data_addr.clone(),
        session: Some(SessionCounts {
            sessions,
            publishers,
            subscribers,
        }),
        ..NodeStatus::default()
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushSettingsBody {
    stop_push: Option<serde_json::Value>,
    push_delay_millis: Option<serde_json::Value>,
}

async fn get_push(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    Json(state.session.push_settings())
}

/// Longest push delay the admin endpoint accepts.
pub const MAX_PUSH_DELAY: Duration = Duration::from_secs(60);

async fn put_push(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let obj = validate::parse_object(&body(raw)?, false)?;
    let b: PushSettingsBody = serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let stop = match b.stop_push {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(v)) => Some(v),
        Some(_) => return Err(ApiError::invalid("stopPush must be a boolean")),
    };
    let max = MAX_PUSH_DELAY.as_millis() as u64;
    let delay = match b.push_delay_millis {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(d) if d <= max => Some(d),
            _ => {
                return Err(ApiError::invalid(format!(
                    "pushDelayMillis must be an integer from 0 to {max}"
                )))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "pushDelayMillis must be an integer from 0 to {max}"
            )))
        }
    };
    Ok(Json(state.session.set_push_settings(stop, delay)))
}
