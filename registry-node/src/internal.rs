//! Node-level internal endpoints served on every listener (`/internal/v1/membership`, `/internal/v1/status`), the bearer-token guard for `/internal/*`, and the data listener's router.

use crate::data::node::{DataNode, DataStatus};
use crate::membership::{Membership, MembershipDoc};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Something that can report the data-layer part of the status (a data node, or the
/// in-process data layer of a standalone node).
pub trait DataStatusSource: Send + Sync + 'static {
    fn data_status(&self) -> DataStatus;
}

impl DataStatusSource for DataNode {
    fn data_status(&self) -> DataStatus {
        self.status()
    }
}

impl DataStatusSource for crate::data::LocalDataPlane {
    fn data_status(&self) -> DataStatus {
        DataStatus {
            datum_count: self.datum_count(),
            publisher_count: self.publisher_count(),
            synced: true,
            handover_complete: false,
        }
    }
}

/// What `/internal/v1/status` reports about this process.
pub struct NodeInfo {
    pub node_name: String,
    pub roles: Vec<&'static str>,
    pub membership: Arc<Membership>,
    pub data_addr: Option<String>,
    pub http_addr: Option<String>,
    pub data: Option<Arc<dyn DataStatusSource>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    node_name: String,
    roles: Vec<&'static str>,
    epoch: u64,
    members: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    leaving: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataStatus>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// `POST /internal/v1/membership` and `GET /internal/v1/status`.
pub fn node_router(info: Arc<NodeInfo>) -> Router {
    Router::new()
        .route("/internal/v1/membership", post(post_membership))
        .route("/internal/v1/status", get(get_status))
        .with_state(info)
}

pub async fn post_membership(
    State(info): State<Arc<NodeInfo>>,
    body: axum::body::Bytes,
) -> Response {
    match MembershipDoc::parse(&body) {
        Ok(doc) => {
            let epoch = info.membership.adopt(doc);
            Json(serde_json::json!({"epoch": epoch})).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()),
    }
}

async fn get_status(State(info): State<Arc<NodeInfo>>) -> Json<serde_json::Value> {
    let view = info.membership.view();
    let body = StatusBody {
        node_name: info.node_name.clone(),
        roles: info.roles.clone(),
        epoch: view.epoch(),
        members: view.doc.members.clone(),
        leaving: view.doc.leaving.clone(),
        data_addr: info.data_addr.clone(),
        http_addr: info.http_addr.clone(),
        data: info.data.as_ref().map(|d| d.data_status()),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}

/// Middleware: with a token configured, `/internal/*` (and `/api/v1/*`, when the caller
/// layers it there) requires `Authorization: Bearer <token>`.
pub async fn require_token(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !(path.starts_with("/internal/") || path.starts_with("/api/v1/")) {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token".into(),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the data listener serves: the data protocol, node endpoints, health,
/// readiness and metrics, behind the token guard.
pub fn data_listener_router(
    node: Arc<DataNode>,
    info: Arc<NodeInfo>,
    token: Option<String>,
) -> Router {
    let ready_node = node.clone();
    let metrics_node = node.clone();
    Router::new()
        .merge(node.router())
        .merge(node_router(info))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let node = ready_node.clone();
                async move {
                    if node.membership().epoch() > 0 {
                        (StatusCode::OK, "ready").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "no membership yet").into_response()
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let node = metrics_node.clone();
                async move { data_metrics(&node) }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            token.map(|t| Arc::<str>::from(t.as_str())),
            require_token,
        ))
}

fn data_metrics(node: &DataNode) -> Response {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let status = node.status();
    let mut registry = Registry::with_prefix("registry_data");
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    registry.register(
        "datums",
        "Datums with at least one live publisher",
        gauge(status.datum_count as i64),
    );
    registry.register(
        "publishers",
        "Live publishers held by this data node",
        gauge(status.publisher_count as i64),
    );
    registry.register(
        "synced",
        "1 when this node holds everything it owns under the current epoch",
        gauge(status.synced as i64),
    );
    registry.register(
        "handover_complete",
        "1 when this node is out of the ring and has handed everything over",
        gauge(status.handover_complete as i64),
    );
    registry.register(
        "membership_epoch",
        "Membership epoch in use",
        gauge(node.membership().epoch() as i64),
    );
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
