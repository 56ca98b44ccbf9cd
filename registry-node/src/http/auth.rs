//! Bearer-token authentication, one rule for every listener, two credentials
//! (SECURITY.md): on the public listener every path under `/api/v1` takes the client token
//! (`--token`); on internal listeners every path under `/internal/` takes the cluster token
//! (`--cluster-token`). Neither opens the other's paths: the public listener serves no
//! `/internal/*` at all, and a client token on an internal route is just a wrong token.
//! `Authorization: Bearer <token>` (scheme `Bearer` or `bearer`, surrounding blanks
//! ignored), compared in constant time; a missing or wrong token is `401
//! unauthorized` in the API's error shape, with `WWW-Authenticate: Bearer`. `/healthz`,
//! `/readyz` and `/metrics` stay open for probes and scrapers.
//!
//! On the public listener, [`Authenticator`] turns the bearer into a [`Principal`]: with
//! neither `--token` nor `--access-file` every caller is [`Principal::Anonymous`] (no
//! authentication); `--token` is [`Principal::Root`] (every right); with an access file
//! also its static tokens (`token:NAME`, by SHA-256) and, with TokenReview on, Kubernetes
//! ServiceAccount tokens (`serviceaccount:NS/NAME`). Anything else is `401`. What the
//! principal may then do is [`Authenticator::authorize`]'s answer from the access rules
//! (`403 forbidden` naming the missing right); every denial goes to the audit.

use std::sync::Arc;

use crate::access::audit::{Audit, Reason};
use crate::access::file::AccessFile;
use crate::access::token_review::TokenReviews;
use crate::access::{decide, Decision, Policy, Principal, Right};

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

/// The bearer token of `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Whether the request carries `Authorization: Bearer <token>`.
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
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

// === impl Authenticator ===

/// The authenticated caller of a public-API request (a request extension).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

/// Authentication and authorization of the public listener.
pub struct Authenticator {
    root: Option<Arc<str>>,
    access: Option<Arc<AccessFile>>,
    reviews: Option<Arc<TokenReviews>>,
    pub audit: Audit,
}

impl Authenticator {
    pub fn new(
        root: Option<&str>,
        access: Option<Arc<AccessFile>>,
        reviews: Option<Arc<TokenReviews>>,
        audit: Audit,
    ) -> Authenticator {
        Authenticator {
            root: root.filter(|t| !t.is_empty()).map(Arc::from),
            access,
            reviews,
            audit,
        }
    }

    /// The access rules in use, when there is an access file.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.access.as_ref().map(|a| a.policy())
    }

    /// Who sent the request: `401` (audited) without a valid credential where one is
    /// required, `503` when a ServiceAccount token cannot be checked right now.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        route: &'static str,
    ) -> Result<Principal, ApiError> {
        if self.root.is_none() && self.access.is_none() {
            return Ok(Principal::Anonymous);
        }
        let Some(given) = bearer(headers).filter(|t| !t.is_empty()) else {
            return Err(self.refuse(
                "unauthenticated",
                route,
                Reason::MissingCredential,
                "a valid bearer token is required (Authorization: Bearer <token>)".into(),
            ));
        };
        if let Some(root) = &self.root {
            if constant_time_eq(given.as_bytes(), root.as_bytes()) {
                return Ok(Principal::Root);
            }
        }
        if let Some(policy) = self.policy() {
            if let Some(name) = policy.static_token(given) {
                return Ok(Principal::Named(name));
            }
            if let Some(reviews) = &self.reviews {
                match reviews.authenticate(given).await {
                    Ok(Ok(name)) => return Ok(Principal::Named(name)),
                    Ok(Err(why)) if crate::access::token_review::looks_like_jwt(given) => {
                        return Err(self.refuse(
                            "unauthenticated",
                            route,
                            Reason::InvalidCredential,
                            format!("a valid bearer token is required: the ServiceAccount token was not accepted ({why})"),
                        ))
                    }
                    Ok(Err(_)) => {}
                    Err(e) => return Err(ApiError::Unavailable(e.to_string())),
                }
            }
        }
        Err(self.refuse(
            "unauthenticated",
            route,
            Reason::InvalidCredential,
            "a valid bearer token is required (Authorization: Bearer <token>)".into(),
        ))
    }

    /// `Ok` when `principal` has `right` (on `data_id`); else `403` naming the right,
    /// audited.
    pub fn authorize(
        &self,
        principal: &Principal,
        right: Right,
        data_id: Option<&str>,
        route: &'static str,
    ) -> Result<(), ApiError> {
        match decide(self.policy().as_deref(), principal, right, data_id) {
            Decision::Allowed => Ok(()),
            Decision::Denied(why) => {
                let reason = match right {
                    Right::Publish => Reason::Publish,
                    Right::Subscribe => Reason::Subscribe,
                    Right::Admin => Reason::Admin,
                };
                Err(self.forbid(principal, route, reason, why))
            }
        }
    }

    /// Whether `principal` may subscribe to `data_id` (no audit: for filtering lists).
    pub fn may_subscribe(
        &self,
        policy: Option<&Policy>,
        principal: &Principal,
        data_id: &str,
    ) -> bool {
        matches!(
            decide(policy, principal, Right::Subscribe, Some(data_id)),
            Decision::Allowed
        )
    }

    /// A `403` for `principal`, audited.
    pub fn forbid(
        &self,
        principal: &Principal,
        route: &'static str,
        reason: Reason,
        message: String,
    ) -> ApiError {
        self.audit
            .deny(&principal.to_string(), route, reason, &message);
        ApiError::Forbidden(message)
    }

    fn refuse(&self, who: &str, route: &'static str, reason: Reason, message: String) -> ApiError {
        self.audit.deny(who, route, reason, &message);
        ApiError::Unauthorized(message)
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
