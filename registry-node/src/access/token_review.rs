//! Kubernetes ServiceAccount tokens, checked with the TokenReview API: the API server says
//! whether a token is valid for our audience (`--token-review-audience`, default
//! `sofaregistry.dev`) and whose it is (`system:serviceaccount:NS:NAME` becomes the
//! principal `serviceaccount:NS/NAME`). Answers are cached by the token's SHA-256, at most
//! [`CACHE_ENTRIES`] of them: a valid token for at most [`MAX_POSITIVE_TTL`] and never past
//! its own expiry (the `exp` claim), a refused one for [`NEGATIVE_TTL`]. At most
//! [`MAX_IN_FLIGHT`] reviews run at once; a caller waits at most [`REVIEW_TIMEOUT`].
//!
//! The API server is reached with the pod's in-cluster configuration (or `KUBECONFIG`
//! outside a cluster): `kube::Config::infer`. The pure parts (what an answer means, the
//! cache, the expiry claim) are unit-tested here; the call itself on the real control plane
//! (`operator/tests/kube.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use registry_types::access::PrincipalName;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// The audience ServiceAccount tokens must be bound to, unless `--token-review-audience`.
pub const DEFAULT_AUDIENCE: &str = "sofaregistry.dev";
/// Answers kept at most.
pub const CACHE_ENTRIES: usize = 10_000;
/// A valid token's answer is kept at most this long (so a deleted ServiceAccount or pod
/// loses access within it), and never past the token's expiry.
pub const MAX_POSITIVE_TTL: Duration = Duration::from_secs(60);
/// A refused token's answer is kept this long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Reviews in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// How long a request waits for its review.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Tokens longer than this are not sent to the API server.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What the API server said about a token (the `status` of a TokenReview).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewStatus {
    pub authenticated: bool,
    pub username: Option<String>,
    pub audiences: Vec<String>,
    pub error: Option<String>,
}

/// Asks the API server about one token (a trait so the cache is tested without one).
pub trait Reviewer: Send + Sync {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ReviewStatus, String>>;
}

/// The principal an answer names, or why the token is refused.
pub fn principal_of(status: &ReviewStatus, audience: &str) -> Result<PrincipalName, String> {
    if !status.authenticated {
        return Err(match &status.error {
            Some(e) if !e.is_empty() => format!("the API server refused the token: {e}"),
            _ => "the API server refused the token".into(),
        });
    }
    // An API server that does not check audiences answers with its own; only ours counts.
    if !status.audiences.iter().any(|a| a == audience) {
        return Err(format!(
            "the token is not bound to the audience {audience:?} (it is for {:?})",
            status.audiences
        ));
    }
    let user = status.username.as_deref().unwrap_or("");
    let sa = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| format!("{user:?} is not a ServiceAccount"))?;
    PrincipalName::parse(&format!("serviceaccount:{}/{}", sa.0, sa.1))
}

/// Whether a bearer token looks like a JWT (three base64url parts): only those are sent
/// to the API server.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The token's `exp` claim as a time, read without checking the signature (the API server
/// checked it): only ever used to keep a cached answer no longer than the token lives. An
/// `exp` past what a time can hold (any caller can send one) is no expiry.
pub fn expiry_of(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

struct Entry {
    answer: Result<PrincipalName, String>,
    until: Instant,
}

/// Answers by token hash, bounded.
#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], Entry>,
}

impl Cache {
    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Result<PrincipalName, String>> {
        match self.entries.get(key) {
            Some(e) if e.until > now => Some(e.answer.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(
        &mut self,
        key: [u8; 32],
        answer: Result<PrincipalName, String>,
        until: Instant,
        now: Instant,
    ) {
        if until <= now {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= CACHE_ENTRIES {
            self.entries.retain(|_, e| e.until > now);
            if self.entries.len() >= CACHE_ENTRIES {
                // Full of live answers: the one that expires first goes.
                if let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, Entry { answer, until });
    }
}

/// How long an answer may be kept: a refusal [`NEGATIVE_TTL`]; a valid token
/// [`MAX_POSITIVE_TTL`], cut at its expiry (no `exp`: the cap alone).
pub fn cache_ttl(valid: bool, expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    if !valid {
        return NEGATIVE_TTL;
    }
    match expiry {
        Some(exp) => exp
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_POSITIVE_TTL),
        None => MAX_POSITIVE_TTL,
    }
}

/// Why a token could not be checked (the API server unreachable or too slow): `503`, not
/// a refusal of the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot check the ServiceAccount token with the API server: {0}")]
pub struct ReviewUnavailable(pub String);

/// ServiceAccount-token authentication with its cache.
pub struct TokenReviews {
    audience: String,
    reviewer: Arc<dyn Reviewer>,
    cache: Mutex<Cache>,
    in_flight: Semaphore,
}

impl TokenReviews {
    pub fn new(audience: &str, reviewer: Arc<dyn Reviewer>) -> TokenReviews {
        TokenReviews {
            audience: audience.to_owned(),
            reviewer,
            cache: Mutex::new(Cache::default()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The token's principal (`Ok(Err(why))`: refused), from the cache or the API server.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<Result<PrincipalName, String>, ReviewUnavailable> {
        if !looks_like_jwt(token) {
            return Ok(Err("not a ServiceAccount token".into()));
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.lock().get(&key, Instant::now()) {
            return Ok(hit);
        }
        let review = async {
            let _permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| ReviewUnavailable("closed".into()))?;
            // Another request may have asked meanwhile.
            if let Some(hit) = self.cache.lock().get(&key, Instant::now()) {
                return Ok(hit);
            }
            let status = self
                .reviewer
                .review(token, &self.audience)
                .await
                .map_err(ReviewUnavailable)?;
            let answer = principal_of(&status, &self.audience);
            let expiry = answer.is_ok().then(|| expiry_of(token)).flatten();
            let ttl = cache_ttl(answer.is_ok(), expiry, SystemTime::now());
            let now = Instant::now();
            self.cache.lock().put(key, answer.clone(), now + ttl, now);
            Ok(answer)
        };
        tokio::time::timeout(REVIEW_TIMEOUT, review)
            .await
            .map_err(|_| ReviewUnavailable(format!("no answer within {REVIEW_TIMEOUT:?}")))?
    }
}

// === impl KubeReviewer ===

/// The real reviewer: `POST /apis/authentication.k8s.io/v1/tokenreviews`. Without the
/// `token-review` feature (builds of the pure parts, fuzz/) there is none: [`Self::infer`]
/// says so, and ServiceAccount tokens are refused.
pub struct KubeReviewer {
    #[cfg(feature = "token-review")]
    client: kube::Client,
}

impl KubeReviewer {
    /// The in-cluster configuration (or `KUBECONFIG`).
    #[cfg(feature = "token-review")]
    pub async fn infer() -> Result<KubeReviewer, String> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration for TokenReview: {e}"))?;
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        Ok(KubeReviewer { client })
    }

    #[cfg(not(feature = "token-review"))]
    pub async fn infer() -> Result<KubeReviewer, String> {
        Err("this registry-node was built without the token-review feature".to_owned())
    }
}

impl Reviewer for KubeReviewer {
    #[cfg(feature = "token-review")]
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ReviewStatus, String>> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let review = TokenReview {
                metadata: Default::default(),
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![audience.to_owned()]),
                },
                status: None,
            };
            let answer = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let status = answer.status.unwrap_or_default();
            Ok(ReviewStatus {
                authenticated: status.authenticated.unwrap_or(false),
                username: status.user.and_then(|u| u.username),
                audiences: status.audiences.unwrap_or_default(),
                error: status.error,
            })
        })
    }

    #[cfg(not(feature = "token-review"))]
    fn review<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<ReviewStatus, String>> {
        Box::pin(async { Err("no TokenReview in this build".to_owned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ok(user: &str, aud: &str) -> ReviewStatus {
        ReviewStatus {
            authenticated: true,
            username: Some(user.into()),
            audiences: vec![aud.into()],
            error: None,
        }
    }

    #[test]
    fn only_a_service_account_for_our_audience_is_a_principal() {
        let sa = |ns: &str, n: &str| PrincipalName::ServiceAccount {
            namespace: ns.into(),
            name: n.into(),
        };
        assert_eq!(
            principal_of(
                &ok("system:serviceaccount:shop:checkout", DEFAULT_AUDIENCE),
                DEFAULT_AUDIENCE
            ),
            Ok(sa("shop", "checkout"))
        );
        let e = principal_of(
            &ok(
                "system:serviceaccount:shop:checkout",
                "https://kubernetes.default.svc",
            ),
            DEFAULT_AUDIENCE,
        )
        .unwrap_err();
        assert!(e.contains("audience"), "{e}");
        assert!(principal_of(&ok("alice", DEFAULT_AUDIENCE), DEFAULT_AUDIENCE).is_err());
        assert!(principal_of(
            &ok("system:serviceaccount:shop", DEFAULT_AUDIENCE),
            DEFAULT_AUDIENCE
        )
        .is_err());
        let refused = ReviewStatus {
            error: Some("token has expired".into()),
            ..ReviewStatus::default()
        };
        assert!(principal_of(&refused, DEFAULT_AUDIENCE)
            .unwrap_err()
            .contains("expired"));
    }

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", b(r#"{"alg":"RS256"}"#), b(claims), b("sig"))
    }

    #[test]
    fn answers_are_kept_no_longer_than_the_token_lives() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let exp = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(
            cache_ttl(true, exp(1_000_010), now),
            Duration::from_secs(10)
        );
        assert_eq!(cache_ttl(true, exp(2_000_000), now), MAX_POSITIVE_TTL);
        assert_eq!(cache_ttl(true, exp(999_999), now), Duration::ZERO);
        assert_eq!(cache_ttl(true, None, now), MAX_POSITIVE_TTL);
        assert_eq!(cache_ttl(false, exp(2_000_000), now), NEGATIVE_TTL);
        let t = jwt(r#"{"aud":["sofaregistry.dev"],"exp":1700000000,"sub":"x"}"#);
        assert!(looks_like_jwt(&t));
        assert_eq!(expiry_of(&t), exp(1_700_000_000));
        assert_eq!(expiry_of("a.b.c"), None);
        // A forged `exp` that no SystemTime holds is no expiry, not a panic.
        let forged = jwt(r#"{"exp":18446744073709551615}"#);
        assert_eq!(expiry_of(&forged), None);
        assert!(!looks_like_jwt("plain-static-token"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }

    struct Counting {
        calls: AtomicUsize,
        answer: ReviewStatus,
    }

    impl Reviewer for Counting {
        fn review<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<ReviewStatus, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let a = self.answer.clone();
            Box::pin(async move { Ok(a) })
        }
    }

    #[tokio::test]
    async fn a_valid_token_is_reviewed_once_while_cached_and_an_expired_one_again() {
        let reviewer = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            answer: ok("system:serviceaccount:shop:checkout", DEFAULT_AUDIENCE),
        });
        let reviews = TokenReviews::new(DEFAULT_AUDIENCE, reviewer.clone());
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let token = jwt(&format!(r#"{{"exp":{far}}}"#));
        for _ in 0..5 {
            assert!(reviews.authenticate(&token).await.unwrap().is_ok());
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 1);
        // Already expired: never cached, asked every time.
        let past = jwt(r#"{"exp":1}"#);
        for _ in 0..3 {
            let _ = reviews.authenticate(&past).await.unwrap();
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 4);
        // Not a JWT: never sent.
        assert!(reviews.authenticate("static").await.unwrap().is_err());
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = Cache::default();
        let now = Instant::now();
        for i in 0..CACHE_ENTRIES + 10 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.put(
                k,
                Err("x".into()),
                now + Duration::from_secs(1 + i as u64),
                now,
            );
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES);
        let mut newest = [0u8; 32];
        newest[..8].copy_from_slice(&((CACHE_ENTRIES + 9) as u64).to_le_bytes());
        assert!(c.get(&newest, now).is_some());
        assert!(
            c.get(&[0u8; 32], now).is_none(),
            "the first to expire went first"
        );
    }
}
