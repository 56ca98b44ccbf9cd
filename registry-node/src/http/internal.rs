//! Node-level internal endpoints (`POST /internal/v1/membership`, `GET /internal/v1/status`) and the routers of the internal listeners (a data node's data listener, a session or standalone node's internal listener), behind the cluster token of [`super::auth`]. The public listener serves none of this.

use super::auth::{self, require_token, Realm};
use super::error::ApiError;
use super::NodeInfo;
use crate::data::node::{DataNode, DataStatus};
use crate::membership::{Membership, MembershipDoc};
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use registry_types::{EpochAnswer, NodeStatus, SessionLease, MAX_MEMBERSHIP_BYTES};
use std::sync::Arc;

/// Something that can report the data-layer part of the status (a data node, or the
/// in-process data layer of a standalone node).
pub trait DataStatusSource: Send + Sync + 'static {
    fn data_status(&self) -> DataStatus;

    /// The session nodes holding a lease on this data layer (none in process).
    fn session_leases(&self) -> Vec<SessionLease> {
        Vec::new()
    }
}

impl DataStatusSource for DataNode {
    fn data_status(&self) -> DataStatus {
        self.status()
    }

    fn session_leases(&self) -> Vec<SessionLease> {
        DataNode::session_leases(self)
    }
}

impl DataStatusSource for crate::dataplane::LocalDataPlane {
    fn data_status(&self) -> DataStatus {
        DataStatus {
            datum_count: self.datum_count(),
            publisher_count: self.publisher_count(),
            synced: true,
            handover_complete: false,
        }
    }
}

/// What the node endpoints serve from: the node's facts, the membership it uses, and the
/// data-layer part of its status (when it has a data layer).
pub struct NodeEndpoints {
    pub info: NodeInfo,
    pub membership: Arc<Membership>,
    pub data: Option<Arc<dyn DataStatusSource>>,
}

/// `POST /internal/v1/membership` and `GET /internal/v1/status`.
pub fn node_router(node: Arc<NodeEndpoints>) -> Router {
    membership_router(node.clone()).merge(
        Router::new()
            .route("/internal/v1/status", get(get_status))
            .with_state(node),
    )
}

/// `POST /internal/v1/membership`: `200 {"epoch"}` (the epoch in use afterwards, adopted or
/// not: a document that is not newer, such as a replay, changes nothing), `400` malformed,
/// `403` not signed with the membership key, `413` over [`MAX_MEMBERSHIP_BYTES`]. A refused
/// document changes nothing.
pub async fn post_membership(
    State(node): State<Arc<NodeEndpoints>>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::PayloadTooLarge(format!(
                "a membership document is at most {MAX_MEMBERSHIP_BYTES} bytes"
            ))
            .into_response()
        }
        Err(e) => return ApiError::invalid(e.body_text()).into_response(),
    };
    match MembershipDoc::parse(&body).and_then(|doc| node.membership.offer(doc)) {
        Ok(a) => Json(EpochAnswer { epoch: a.epoch }).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The membership route alone, with its body bound (the session node's internal listener
/// adds it to the status routes).
pub fn membership_router(node: Arc<NodeEndpoints>) -> Router {
    Router::new()
        .route("/internal/v1/membership", post(post_membership))
        .layer(DefaultBodyLimit::max(MAX_MEMBERSHIP_BYTES))
        .with_state(node)
}

/// Guards `router` with the cluster token (and, over mutual TLS, the peer's certificate)
/// and answers unknown routes in the error shape: what every internal listener serves.
pub fn internal_listener(router: Router, cluster_token: Option<&str>) -> Router {
    router
        .fallback(super::api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            auth::Guard::new(Realm::Cluster, cluster_token),
            require_token,
        ))
        .layer(axum::middleware::from_fn(
            crate::tls::require_peer_certificate,
        ))
}

async fn get_status(State(node): State<Arc<NodeEndpoints>>) -> Json<NodeStatus> {
    let view = node.membership.view();
    Json(NodeStatus {
        node_name: node.info.node_name.clone(),
        roles: node.info.roles.iter().map(|r| r.to_string()).collect(),
        epoch: view.epoch(),
        members: view.doc.members.clone(),
        leaving: view.doc.leaving.clone(),
        data_addr: node.info.data_addr.clone(),
        http_addr: node.info.http_addr.clone(),
        data: node.data.as_ref().map(|d| d.data_status()),
        session: None,
        session_leases: node
            .data
            .as_ref()
            .map(|d| d.session_leases())
            .unwrap_or_default(),
    })
}

/// Everything the data listener serves: the data protocol, node endpoints, health,
/// readiness and metrics, behind the cluster token.
pub fn data_listener_router(node: Arc<DataNode>, endpoints: Arc<NodeEndpoints>) -> Router {
    let cluster_token = endpoints.info.cluster_token.clone();
    let ready_node = node.clone();
    let metrics_node = node.clone();
    let router = Router::new()
        .merge(node.router())
        .merge(node_router(endpoints))
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
        );
    internal_listener(router, cluster_token.as_deref())
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
