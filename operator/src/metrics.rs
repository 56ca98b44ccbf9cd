//! The operator's Prometheus metrics and its `/metrics`, `/healthz`, `/readyz` endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciliations: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub membership_epoch: Family<ClusterLabels, Gauge>,
    pub deliveries: Family<ResultLabels, Counter>,
    pub leader: Gauge,
    /// The controller has started (for `/readyz`).
    pub started: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("registry_operator");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciliations",
            "Reconcile passes by result",
            reconciliations.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            reconcile_duration.clone(),
        );
        let membership_epoch = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "membership_epoch",
            "Published membership epoch per RegistryCluster",
            membership_epoch.clone(),
        );
        let deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "membership_deliveries",
            "Membership documents delivered to nodes, by result",
            deliveries.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciliations,
            reconcile_duration,
            membership_epoch,
            deliveries,
            leader,
            started: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn result(result: &str) -> ResultLabels {
        ResultLabels {
            result: result.to_owned(),
        }
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.started.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
                }
            }),
        )
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_text(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let m = Arc::new(Metrics::default());
        m.reconciliations
            .get_or_create(&Metrics::result("ok"))
            .inc();
        m.membership_epoch
            .get_or_create(&ClusterLabels {
                namespace: "ns".into(),
                name: "reg".into(),
            })
            .set(7);
        let (status, body) = get_text(router(m.clone()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#"registry_operator_reconciliations_total{result="ok"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"registry_operator_membership_epoch{namespace="ns",name="reg"} 7"#),
            "{body}"
        );
        assert_eq!(
            get_text(router(m.clone()), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get_text(router(m.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.started.store(true, Ordering::Relaxed);
        assert_eq!(get_text(router(m), "/readyz").await.0, StatusCode::OK);
    }
}
