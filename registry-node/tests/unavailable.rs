//! When the data layer cannot be reached: 503 `unavailable` in the API's error shape, and
//! nothing changes. Driven in-process through the Router with `tower::ServiceExt::oneshot`
//! over a data plane that refuses every call.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body_util::BodyExt;
use registry_node::dataplane::{DataPlane, DataPlaneError, DataPlaneStatus};
use registry_node::http::api::{self, AppState};
use registry_node::http::NodeInfo;
use registry_node::metrics::Metrics;
use registry_node::model::{ChangeNotice, DatumSnapshot, PublisherOp, ServiceSummary};
use registry_node::session::{SessionConfig, SessionLayer};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A data layer with no membership: every call fails.
struct Unreachable;

impl DataPlane for Unreachable {
    fn apply(&self, _ops: Vec<PublisherOp>) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        async { Err(DataPlaneError::Unavailable("no membership yet".into())) }.boxed()
    }
    fn fetch(&self, _id: &str) -> BoxFuture<'_, Result<DatumSnapshot, DataPlaneError>> {
        async { Err(DataPlaneError::Unavailable("no membership yet".into())) }.boxed()
    }
    fn services(
        &self,
        _p: &str,
        _l: usize,
    ) -> BoxFuture<'_, Result<Vec<ServiceSummary>, DataPlaneError>> {
        async { Err(DataPlaneError::Unavailable("no membership yet".into())) }.boxed()
    }
    fn watch_changes(&self, _tx: mpsc::Sender<Vec<ChangeNotice>>) {}
    fn status(&self) -> DataPlaneStatus {
        DataPlaneStatus {
            epoch: 0,
            members: vec![],
            ready: false,
        }
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn an_unreachable_data_layer_is_503_and_changes_nothing() {
    let cfg = registry_node::config::Config::for_tests();
    let data: Arc<dyn DataPlane> = Arc::new(Unreachable);
    let metrics = Arc::new(Metrics::new());
    let session = SessionLayer::new(
        SessionConfig::from_config(&cfg, "n1"),
        data.clone(),
        metrics.clone(),
        CancellationToken::new(),
    );
    session.start();
    let auth = Arc::new(registry_node::http::auth::Authenticator::new(
        None,
        None,
        None,
        registry_node::access::audit::Audit::new(metrics.clone()),
    ));
    let app = api::router(AppState {
        session: session.clone(),
        data,
        metrics,
        auth,
        info: Arc::new(NodeInfo {
            node_name: "n1".into(),
            roles: vec!["session"],
            ..NodeInfo::default()
        }),
    });

    let (st, v) = call(&app, "POST", "/api/v1/sessions", None).await;
    assert_eq!(st, StatusCode::CREATED);
    let s = v["sessionId"].as_str().unwrap().to_owned();
    let unavailable = |st: StatusCode, v: &Value| {
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["error"]["code"], "unavailable");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data layer"));
    };
    let (st, v) = call(
        &app,
        "POST",
        &format!("/api/v1/sessions/{s}/publishers"),
        Some(json!({"dataId": "a", "registerId": "p", "data": ["x"]})),
    )
    .await;
    unavailable(st, &v);
    assert_eq!(
        session.publisher_count(),
        0,
        "a refused publish is rolled back"
    );
    // Retrying later is a fresh publisher again (201 / version 1 once the data layer is back).
    let (st, v) = call(&app, "GET", "/api/v1/data?dataId=a", None).await;
    unavailable(st, &v);
    let (st, v) = call(
        &app,
        "GET",
        "/api/v1/data?dataId=a&waitIndex=0&wait=1s",
        None,
    )
    .await;
    unavailable(st, &v);
    let (st, v) = call(&app, "GET", "/api/v1/services", None).await;
    unavailable(st, &v);
    let (st, v) = call(&app, "GET", "/readyz", None).await;
    unavailable(st, &v);
    let (st, _) = call(&app, "GET", "/healthz", None).await;
    assert_eq!(st, StatusCode::OK);
    // Subscribing needs no data layer; its first push waits for one.
    let (st, _) = call(
        &app,
        "POST",
        &format!("/api/v1/sessions/{s}/subscribers"),
        Some(json!({"dataId": "a"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = call(&app, "GET", "/api/v1/cluster", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["epoch"], 0);
    assert_eq!(v["ready"], false);
}
