//! The audit of denials: every `401`/`403` of the public API is counted by reason
//! (`registry_access_denied_total{reason}`) and logged with principal, route and reason,
//! once per minute for the same (principal, route, reason): a caller retrying in a loop,
//! or many callers at once, cannot flood the log. What the limit suppresses is counted and
//! reported with the next line that is logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Why a request was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No bearer token where one is required (401).
    MissingCredential,
    /// A bearer token that no principal holds, or a ServiceAccount token the API server
    /// refused (401).
    InvalidCredential,
    /// The principal lacks the publish right on the dataId (403).
    Publish,
    /// The principal lacks the subscribe right on the dataId (403).
    Subscribe,
    /// The principal lacks the admin right (403).
    Admin,
    /// The session was created by another principal (403).
    Session,
    /// The registerId is held by another principal (403).
    Owner,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingCredential => "missing_credential",
            Reason::InvalidCredential => "invalid_credential",
            Reason::Publish => "publish",
            Reason::Subscribe => "subscribe",
            Reason::Admin => "admin",
            Reason::Session => "session",
            Reason::Owner => "owner",
        }
    }
}

/// One line per (principal, route, reason) per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Keys remembered at most; when full, expired ones are dropped, and if none expired the
/// line is suppressed (and counted) rather than the table grown.
const MAX_KEYS: usize = 4096;

/// The audit log of one node.
pub struct Audit {
    metrics: Arc<Metrics>,
    logged: Mutex<HashMap<(String, &'static str, Reason), Instant>>,
    suppressed: AtomicU64,
}

impl Audit {
    pub fn new(metrics: Arc<Metrics>) -> Audit {
        Audit {
            metrics,
            logged: Mutex::new(HashMap::new()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records a denial: counted always, logged unless the same one was logged less than a
    /// minute ago.
    pub fn deny(&self, principal: &str, route: &'static str, reason: Reason, message: &str) {
        self.metrics
            .access_denied
            .get_or_create(&crate::metrics::DenialLabels {
                reason: reason.as_str(),
            })
            .inc();
        if !self.should_log(principal, route, reason, Instant::now()) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            principal,
            route,
            reason = reason.as_str(),
            suppressed,
            "access denied: {message}"
        );
    }

    fn should_log(
        &self,
        principal: &str,
        route: &'static str,
        reason: Reason,
        now: Instant,
    ) -> bool {
        let mut logged = self.logged.lock();
        // Principal names are bounded (a bearer never becomes one unless it authenticated;
        // unknown callers are logged as "unauthenticated"), but cap their length anyway.
        let key = (
            principal.chars().take(300).collect::<String>(),
            route,
            reason,
        );
        if let Some(at) = logged.get(&key) {
            if now.duration_since(*at) < LOG_EVERY {
                return false;
            }
        } else if logged.len() >= MAX_KEYS {
            logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            if logged.len() >= MAX_KEYS {
                return false;
            }
        }
        logged.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_denial_is_logged_once_a_minute_and_always_counted() {
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::new(metrics.clone());
        let t0 = Instant::now();
        assert!(audit.should_log("token:a", "/r", Reason::Publish, t0));
        assert!(!audit.should_log(
            "token:a",
            "/r",
            Reason::Publish,
            t0 + Duration::from_secs(59)
        ));
        assert!(audit.should_log("token:a", "/r", Reason::Subscribe, t0));
        assert!(audit.should_log("token:b", "/r", Reason::Publish, t0));
        assert!(audit.should_log("token:a", "/r", Reason::Publish, t0 + LOG_EVERY));
        for _ in 0..3 {
            audit.deny("token:c", "/r", Reason::Admin, "no");
        }
        let text = metrics.encode();
        assert!(
            text.contains("registry_access_denied_total{reason=\"admin\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn the_table_never_grows_past_its_bound() {
        let audit = Audit::new(Arc::new(Metrics::new()));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            assert!(audit.should_log(&format!("p{i}"), "/r", Reason::Publish, t0));
        }
        assert!(!audit.should_log("one-more", "/r", Reason::Publish, t0));
        assert_eq!(audit.logged.lock().len(), MAX_KEYS);
        // Once the old ones expire, new ones are logged again.
        assert!(audit.should_log("one-more", "/r", Reason::Publish, t0 + LOG_EVERY));
        assert_eq!(audit.logged.lock().len(), 1);
    }
}
