//! Bearer-token authentication, one rule for every listener: with `--token`, every path
//! under `/api/v1` and `/internal/` requires `Authorization: Bearer <token>` (scheme
//! case-insensitive as RFC 6750 allows, surrounding blanks ignored); a missing or wrong
//! token is `401 unauthorized` in the API's error shape, with `WWW-Authenticate: Bearer`.
//! `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Compares without stopping at the first difference (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Whether a path needs the token (when one is configured).
pub fn is_protected(path: &str) -> bool {
    path.starts_with("/api/v1/") || path == "/api/v1" || path.starts_with("/internal/")
}

/// The check itself: `Err` (401) when a token is configured, the path is protected and the
/// request does not carry the token.
pub fn check(token: Option<&str>, req: &Request) -> Result<(), ApiError> {
    match token {
        Some(token) if is_protected(req.uri().path()) && !bearer_matches(req.headers(), token) => {
            Err(ApiError::Unauthorized(
                "a valid bearer token is required (Authorization: Bearer <token>)".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// The token as the [`require_token`] middleware takes it: `None` or an empty token
/// means no authentication.
pub fn token_state(token: Option<&str>) -> Option<Arc<str>> {
    token.filter(|t| !t.is_empty()).map(Arc::from)
}

/// Middleware applying [`check`] (for routers other than the public API, which folds the
/// check into its one middleware).
pub async fn require_token(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    match check(token.as_deref(), &req) {
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
    fn only_api_and_internal_paths_are_protected() {
        for p in [
            "/api/v1",
            "/api/v1/sessions",
            "/internal/v1/status",
            "/internal/v1/data/apply",
        ] {
            assert!(is_protected(p), "{p}");
        }
        for p in ["/healthz", "/readyz", "/metrics", "/api/v10"] {
            assert!(!is_protected(p), "{p}");
        }
    }
}
