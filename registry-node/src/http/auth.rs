//! Bearer-token authentication, one rule for every listener, two credentials
//! (SECURITY.md): on the public listener every path under `/api/v1` takes the client token
//! (`--token`); on internal listeners every path under `/internal/` takes the cluster token
//! (`--cluster-token`). Neither opens the other's paths: the public listener serves no
//! `/internal/*` at all, and a client token on an internal route is just a wrong token.
//! `Authorization: Bearer <token>` (scheme case-insensitive as RFC 6750 allows, surrounding
//! blanks ignored), compared in constant time; a missing or wrong token is `401
//! unauthorized` in the API's error shape, with `WWW-Authenticate: Bearer`. `/healthz`,
//! `/readyz` and `/metrics` stay open for probes and scrapers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

pub use registry_trust::constant_time_eq;

/// Which credential a listener's protected paths take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    /// The public listener: `/api/v1/*` takes the client token.
    Client,
    /// Internal listeners: `/internal/*` takes the cluster token.
    Cluster,
}

impl Realm {
    /// Whether `path` needs this realm's token (when one is configured).
    pub fn protects(self, path: &str) -> bool {
        match self {
            Realm::Client => path.starts_with("/api/v1/") || path == "/api/v1",
            Realm::Cluster => path.starts_with("/internal/"),
        }
    }

    fn refusal(self) -> ApiError {
        ApiError::Unauthorized(match self {
            Realm::Client => {
                "a valid bearer token is required (Authorization: Bearer <token>)".into()
            }
            Realm::Cluster => "the cluster token is required (Authorization: Bearer <cluster token>); a client token never opens /internal/*".into(),
        })
    }
}

/// Whether the request carries `Authorization: Bearer <token>`.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

/// The check itself: `Err` (401) when the realm's token is configured, the path is
/// protected in that realm and the request does not carry the token.
pub fn check(realm: Realm, token: Option<&str>, req: &Request) -> Result<(), ApiError> {
    match token {
        Some(token)
            if realm.protects(req.uri().path()) && !bearer_matches(req.headers(), token) =>
        {
            Err(realm.refusal())
        }
        _ => Ok(()),
    }
}

/// What the [`require_token`] middleware checks: a realm and its token (`None` or empty:
/// no authentication).
#[derive(Debug, Clone)]
pub struct Guard {
    realm: Realm,
    token: Option<Arc<str>>,
}

impl Guard {
    pub fn new(realm: Realm, token: Option<&str>) -> Guard {
        Guard {
            realm,
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }
}

/// Middleware applying [`check`] (for routers other than the public API, which folds the
/// check into its one middleware).
pub async fn require_token(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    match check(guard.realm, guard.token.as_deref(), &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(bearer_matches(&headers("Bearer s3cret"), "s3cret"));
        assert!(bearer_matches(&headers("bearer s3cret "), "s3cret"));
        assert!(!bearer_matches(&headers("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&headers("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn each_realm_protects_its_own_paths_only() {
        for p in ["/api/v1", "/api/v1/sessions"] {
            assert!(Realm::Client.protects(p), "{p}");
            assert!(!Realm::Cluster.protects(p), "{p}");
        }
        for p in ["/internal/v1/status", "/internal/v1/data/apply"] {
            assert!(Realm::Cluster.protects(p), "{p}");
            // The public listener has no such route: it answers 404, whatever the token.
            assert!(!Realm::Client.protects(p), "{p}");
        }
        for p in ["/healthz", "/readyz", "/metrics", "/api/v10"] {
            assert!(
                !Realm::Client.protects(p) && !Realm::Cluster.protects(p),
                "{p}"
            );
        }
    }

    #[test]
    fn the_client_token_never_passes_the_cluster_check() {
        let req = |auth: &str| {
            Request::builder()
                .uri("/internal/v1/status")
                .header(header::AUTHORIZATION, auth)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert!(check(Realm::Cluster, Some("cluster"), &req("Bearer cluster")).is_ok());
        let refused = check(Realm::Cluster, Some("cluster"), &req("Bearer client"));
        assert!(matches!(refused, Err(ApiError::Unauthorized(_))));
        assert!(check(Realm::Cluster, None, &req("Bearer anything")).is_ok());
    }
}
