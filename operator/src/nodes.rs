//! HTTP calls from the operator to registry nodes: read a node's status, deliver the
//! membership document, and read and set the session nodes' push settings.

use crate::membership::NodeReport;
use crate::{Error, Result};
use registry_types::{EpochAnswer, MembershipDoc};
use serde::Deserialize;
use std::time::Duration;

pub use registry_types::{NodeStatus, PushSettings};

impl From<&NodeStatus> for NodeReport {
    fn from(status: &NodeStatus) -> NodeReport {
        NodeReport {
            epoch: status.epoch,
            synced: status.synced(),
            handover_complete: status.handover_complete(),
        }
    }
}

/// `ip:port` of a pod's port, IPv6 addresses in brackets (`[fd00::5]:9622`), as URLs and
/// the membership document write them.
pub fn host_port(ip: &str, port: u16) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{ip}:{port}"),
    }
}

/// A client for node endpoints. `base` arguments are `http://ip:port`, or `https://ip:port`
/// for a cluster with TLS ([`NodeClient::base`]).
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    timeout: Duration,
    scheme: &'static str,
}

/// The PEM texts of a cluster's TLS Secret (`spec.tls.secretName`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl NodeClient {
    /// Pod traffic goes straight to pod IPs: an `HTTP(S)_PROXY` set for the operator's
    /// own egress must not carry membership and status calls (a proxy outside the cluster
    /// network cannot reach pods, and would see the bearer token).
    pub fn new(timeout: Duration) -> NodeClient {
        let http = Self::builder(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        NodeClient {
            http,
            timeout,
            scheme: "http",
        }
    }

    fn builder(timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
    }

    /// A client of the same timeout for a cluster with TLS: HTTPS, presenting the Secret's
    /// certificate (the nodes' internal listeners ask for one) and accepting nodes whose
    /// certificate chains to its CA (`registry_trust::tls`: pods are dialled by IP).
    pub fn with_tls(&self, pem: &TlsPem) -> std::result::Result<NodeClient, String> {
        let config = registry_trust::tls::peer_client_config(&pem.cert, &pem.key, &pem.ca)
            .map_err(|e| e.to_string())?;
        let http = Self::builder(self.timeout)
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(NodeClient {
            http,
            timeout: self.timeout,
            scheme: "https",
        })
    }

    /// A plain client that calls `https://` (without a certificate): for a cluster whose TLS
    /// Secret is unusable, so that nothing is sent in clear text to its TLS listeners.
    pub fn with_scheme_https(&self) -> NodeClient {
        NodeClient {
            scheme: "https",
            ..self.clone()
        }
    }

    /// `http(s)://ip:port` of a pod's port, in this client's scheme.
    pub fn base(&self, ip: &str, port: u16) -> String {
        format!("{}://{}", self.scheme, host_port(ip, port))
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        base: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let node_error = |message: String| Error::Node {
            node: base.to_owned(),
            message,
        };
        let resp = req.send().await.map_err(|e| node_error(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(node_error(format!("HTTP {status}: {body}")));
        }
        resp.json::<T>()
            .await
            .map_err(|e| node_error(format!("bad answer: {e}")))
    }

    pub async fn status(&self, base: &str, token: Option<&str>) -> Result<NodeStatus> {
        let req = self.request(
            reqwest::Method::GET,
            format!("{base}/internal/v1/status"),
            token,
        );
        self.send(base, req).await
    }

    /// Delivers a membership document; returns the epoch the node now uses.
    pub async fn deliver(
        &self,
        base: &str,
        token: Option<&str>,
        doc: &MembershipDoc,
    ) -> Result<u64> {
        let req = self
            .request(
                reqwest::Method::POST,
                format!("{base}/internal/v1/membership"),
                token,
            )
            .json(doc);
        Ok(self.send::<EpochAnswer>(base, req).await?.epoch)
    }

    pub async fn push_settings(&self, base: &str, token: Option<&str>) -> Result<PushSettings> {
        let req = self.request(
            reqwest::Method::GET,
            format!("{base}/api/v1/admin/push"),
            token,
        );
        self.send(base, req).await
    }

    pub async fn set_push_settings(
        &self,
        base: &str,
        token: Option<&str>,
        settings: PushSettings,
    ) -> Result<PushSettings> {
        let req = self
            .request(
                reqwest::Method::PUT,
                format!("{base}/api/v1/admin/push"),
                token,
            )
            .json(&settings);
        self.send(base, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct FakeNode {
        epoch: Mutex<u64>,
        push: Mutex<Option<PushSettings>>,
    }

    fn authorized(headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer s3cret")
    }

    async fn serve() -> (String, Arc<FakeNode>) {
        let node = Arc::new(FakeNode::default());
        let app = Router::new()
            .route(
                "/internal/v1/status",
                get(|State(n): State<Arc<FakeNode>>, h: HeaderMap| async move {
                    if !authorized(&h) {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    let epoch = *n.epoch.lock().unwrap();
                    Ok(Json(
                        serde_json::json!({"nodeName": "d-0", "roles": ["data"], "epoch": epoch,
                        "members": [], "data": {"datumCount": 0, "publisherCount": 0,
                        "synced": true, "handoverComplete": false}}),
                    ))
                }),
            )
            .route(
                "/internal/v1/membership",
                post(
                    |State(n): State<Arc<FakeNode>>,
                     h: HeaderMap,
                     Json(doc): Json<MembershipDoc>| async move {
                        if !authorized(&h) {
                            return Err(StatusCode::UNAUTHORIZED);
                        }
                        let mut e = n.epoch.lock().unwrap();
                        *e = (*e).max(doc.epoch);
                        Ok(Json(serde_json::json!({"epoch": *e})))
                    },
                ),
            )
            .route(
                "/api/v1/admin/push",
                get(|State(n): State<Arc<FakeNode>>| async move {
                    Json(n.push.lock().unwrap().unwrap_or(PushSettings {
                        stop_push: false,
                        push_delay_millis: 200,
                    }))
                })
                .put(
                    |State(n): State<Arc<FakeNode>>, Json(s): Json<PushSettings>| async move {
                        *n.push.lock().unwrap() = Some(s);
                        Json(s)
                    },
                ),
            )
            .with_state(node.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), node)
    }

    #[test]
    fn ipv6_pod_addresses_are_bracketed() {
        assert_eq!(host_port("10.1.2.3", 9622), "10.1.2.3:9622");
        assert_eq!(host_port("fd00:10::5", 9622), "[fd00:10::5]:9622");
        let plain = NodeClient::new(Duration::from_secs(1));
        assert_eq!(plain.base("fd00:10::5", 9603), "http://[fd00:10::5]:9603");
        assert_eq!(plain.base("10.1.2.3", 9603), "http://10.1.2.3:9603");
        assert_eq!(
            plain.with_scheme_https().base("10.1.2.3", 9622),
            "https://10.1.2.3:9622"
        );
        let url: reqwest::Url = plain.base("fd00:10::5", 9603).parse().expect("a valid URL");
        assert_eq!(url.port(), Some(9603));
    }

    #[tokio::test]
    async fn delivers_membership_and_reads_status_with_the_token() {
        let (base, _node) = serve().await;
        let client = NodeClient::new(Duration::from_secs(5));
        let err = client.status(&base, None).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");

        let doc = MembershipDoc {
            epoch: 4,
            members: vec!["127.0.0.9:9622".into()],
            leaving: vec![],
            signature: None,
            ids: Default::default(),
        };
        assert_eq!(
            client.deliver(&base, Some("s3cret"), &doc).await.unwrap(),
            4
        );
        let older = MembershipDoc { epoch: 2, ..doc };
        assert_eq!(
            client.deliver(&base, Some("s3cret"), &older).await.unwrap(),
            4
        );
        let report = NodeReport::from(&client.status(&base, Some("s3cret")).await.unwrap());
        assert_eq!(
            report,
            NodeReport {
                epoch: 4,
                synced: true,
                handover_complete: false
            }
        );
    }

    #[tokio::test]
    async fn sets_push_settings_and_reports_unreachable_nodes() {
        let (base, node) = serve().await;
        let client = NodeClient::new(Duration::from_secs(5));
        let want = PushSettings {
            stop_push: true,
            push_delay_millis: 50,
        };
        assert_eq!(
            client.set_push_settings(&base, None, want).await.unwrap(),
            want
        );
        assert_eq!(*node.push.lock().unwrap(), Some(want));
        assert_eq!(client.push_settings(&base, None).await.unwrap(), want);

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        assert!(matches!(
            client.status(&gone, None).await,
            Err(Error::Node { .. })
        ));
    }
}
