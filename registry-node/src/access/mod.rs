//! Who is calling, and what they may do: principals, the access rules of `--access-file`
//! (the document of `registry_types::access`), their evaluation, the file that is re-read
//! when it changes, the Kubernetes TokenReview check of ServiceAccount tokens and the audit
//! of denials. The HTTP edge (`crate::http::auth`) authenticates a request into a
//! [`Principal`] with these and asks [`Policy::allows`]; nothing here knows HTTP.
//!
//! - [`pattern`]: dataId patterns (`*` = any run of characters). Pure.
//! - this file: [`Principal`], [`Right`], the compiled [`Policy`]. Pure.
//! - [`file`]: the access file, parsed, swapped on change (a bad new file keeps the old rules).
//! - [`token_review`]: ServiceAccount tokens checked by the API server, cached.
//! - [`audit`]: each denial logged (rate-limited) and counted by reason.

pub mod audit;
pub mod file;
pub mod pattern;
pub mod token_review;

use std::collections::HashMap;
use std::sync::Arc;

use registry_types::access::{parse_sha256_hex, AccessDoc, PrincipalName};
use sha2::{Digest, Sha256};

use pattern::Pattern;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// No credential is configured at all (no `--token`, no access file): every caller is
    /// this one, with every right (today's behaviour for local runs).
    Anonymous,
    /// The holder of `--token`: one unnamed principal with every right.
    Root,
    /// A named principal of the access rules: `token:NAME` or `serviceaccount:NS/NAME`.
    Named(PrincipalName),
}

impl Principal {
    /// The key a publisher records as its principal (what a takeover must match): `None`
    /// for the anonymous caller, `"token"` for `--token`, else `token:NAME` /
    /// `serviceaccount:NS/NAME`.
    pub fn owner_key(&self) -> Option<Arc<str>> {
        match self {
            Principal::Anonymous => None,
            Principal::Root => Some(ROOT_OWNER_KEY.into()),
            Principal::Named(n) => Some(n.to_string().into()),
        }
    }
}

/// The owner key of `--token`'s principal (no colon: never a named principal's).
pub const ROOT_OWNER_KEY: &str = "token";

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::Root => f.write_str("token (--token)"),
            Principal::Named(n) => write!(f, "{n}"),
        }
    }
}

/// A right the rules grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    Publish,
    Subscribe,
    Admin,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Subscribe => "subscribe",
            Right::Admin => "admin",
        }
    }
}

/// What one principal is granted, all of its rules together.
#[derive(Debug, Clone, Default)]
struct Grants {
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    admin: bool,
}

/// A validated access document, compiled for evaluation.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// SHA-256 of each static token → its principal.
    tokens: Vec<([u8; 32], PrincipalName)>,
    grants: HashMap<PrincipalName, Grants>,
}

impl Policy {
    /// Compiles a document (validated first: the error names the field).
    pub fn new(doc: &AccessDoc) -> Result<Policy, registry_types::access::AccessError> {
        doc.validate()?;
        let tokens = doc
            .tokens
            .iter()
            .map(|t| {
                (
                    parse_sha256_hex(&t.sha256).expect("validated"),
                    PrincipalName::Token(t.name.clone()),
                )
            })
            .collect();
        let mut grants: HashMap<PrincipalName, Grants> = HashMap::new();
        for rule in &doc.rules {
            for p in &rule.principals {
                let g = grants
                    .entry(PrincipalName::parse(p).expect("validated"))
                    .or_default();
                g.publish
                    .extend(rule.publish.iter().map(|s| Pattern::new(s)));
                g.subscribe
                    .extend(rule.subscribe.iter().map(|s| Pattern::new(s)));
                g.admin |= rule.admin;
            }
        }
        Ok(Policy { tokens, grants })
    }

    /// The static token's principal, when `token` is one of `tokens` (compared by SHA-256,
    /// in constant time against every entry).
    pub fn static_token(&self, token: &str) -> Option<PrincipalName> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, name) in &self.tokens {
            if registry_trust::constant_time_eq(hash, &digest) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Whether `principal` has `right` (on `data_id`, for publish and subscribe).
    pub fn allows(&self, principal: &PrincipalName, right: Right, data_id: &str) -> bool {
        let Some(g) = self.grants.get(principal) else {
            return false;
        };
        match right {
            Right::Admin => g.admin,
            Right::Publish => g.publish.iter().any(|p| p.matches(data_id)),
            Right::Subscribe => g.subscribe.iter().any(|p| p.matches(data_id)),
        }
    }

    /// The dataId prefixes that hold everything `principal` may subscribe to: the literal
    /// prefix of each subscribe pattern, with prefixes of other prefixes left out (so the
    /// lists they cover are read once).
    pub fn subscribe_prefixes(&self, principal: &PrincipalName) -> Vec<String> {
        let Some(g) = self.grants.get(principal) else {
            return Vec::new();
        };
        let mut all: Vec<&str> = g.subscribe.iter().map(Pattern::literal_prefix).collect();
        all.sort_unstable();
        all.dedup();
        let mut kept: Vec<String> = Vec::new();
        for p in all {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p.to_owned());
            }
        }
        kept
    }
}

/// What a caller may do: the access rules (when there are any) applied to a principal.
#[derive(Debug, Clone)]
pub enum Decision {
    Allowed,
    /// The principal lacks the right; the message names it.
    Denied(String),
}

/// Whether `principal` may use `right` on `data_id` (`None` for admin) under `policy` (no
/// policy: every authenticated caller may do everything, today's behaviour).
pub fn decide(
    policy: Option<&Policy>,
    principal: &Principal,
    right: Right,
    data_id: Option<&str>,
) -> Decision {
    let named = match (principal, policy) {
        (Principal::Root, _) | (_, None) => return Decision::Allowed,
        (Principal::Anonymous, Some(_)) => {
            return Decision::Denied("a credential is required".into())
        }
        (Principal::Named(n), Some(_)) => n,
    };
    let policy = policy.expect("matched above");
    if policy.allows(named, right, data_id.unwrap_or("")) {
        return Decision::Allowed;
    }
    Decision::Denied(match (right, data_id) {
        (Right::Admin, _) | (_, None) => {
            format!("principal {named} lacks the {} right", right.as_str())
        }
        (_, Some(id)) => format!(
            "principal {named} lacks the {} right on dataId {id:?}",
            right.as_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_types::access::sha256_hex;

    fn policy() -> Policy {
        let doc = AccessDoc::parse(&format!(
            r#"
tokens:
  - {{name: payments, sha256: "{}"}}
  - {{name: reader, sha256: "{}"}}
rules:
  - principals: ["token:payments", "serviceaccount:shop/checkout"]
    publish: ["com.shop.pay.*"]
    subscribe: ["com.shop.*"]
  - principals: ["token:reader"]
    subscribe: ["com.shop.pay.*", "com.shop.pay.card", "org.*", "com.shop.*"]
  - principals: ["serviceaccount:shop/checkout"]
    publish: ["com.shop.cart"]
  - principals: ["serviceaccount:registry-system/registry-admin"]
    admin: true
"#,
            sha256_hex(b"pay-secret"),
            sha256_hex(b"read-secret")
        ))
        .unwrap();
        Policy::new(&doc).unwrap()
    }

    fn sa(ns: &str, name: &str) -> PrincipalName {
        PrincipalName::ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn static_tokens_resolve_by_their_hash() {
        let p = policy();
        assert_eq!(
            p.static_token("pay-secret"),
            Some(PrincipalName::Token("payments".into()))
        );
        assert_eq!(
            p.static_token("read-secret"),
            Some(PrincipalName::Token("reader".into()))
        );
        assert_eq!(p.static_token("pay-secre"), None);
        assert_eq!(p.static_token(&sha256_hex(b"pay-secret")), None);
    }

    #[test]
    fn each_rule_grants_exactly_its_rights() {
        let p = policy();
        let pay = PrincipalName::Token("payments".into());
        let checkout = sa("shop", "checkout");
        let admin = sa("registry-system", "registry-admin");
        let reader = PrincipalName::Token("reader".into());
        assert!(p.allows(&pay, Right::Publish, "com.shop.pay.card"));
        assert!(!p.allows(&pay, Right::Publish, "com.shop.cart"));
        assert!(p.allows(&pay, Right::Subscribe, "com.shop.cart"));
        assert!(!p.allows(&pay, Right::Subscribe, "com.other"));
        assert!(!p.allows(&pay, Right::Admin, ""));
        // Rules add up per principal.
        assert!(p.allows(&checkout, Right::Publish, "com.shop.cart"));
        assert!(p.allows(&checkout, Right::Publish, "com.shop.pay.x"));
        assert!(!p.allows(&checkout, Right::Publish, "com.shop.cartx"));
        assert!(p.allows(&admin, Right::Admin, ""));
        assert!(!p.allows(&admin, Right::Subscribe, "com.shop.cart"));
        assert!(!p.allows(&reader, Right::Publish, "com.shop.pay.card"));
        // Another ServiceAccount of the same namespace, or the same name elsewhere: nothing.
        assert!(!p.allows(&sa("shop", "other"), Right::Publish, "com.shop.pay.x"));
        assert!(!p.allows(&sa("other", "checkout"), Right::Publish, "com.shop.pay.x"));
    }

    #[test]
    fn decisions_name_the_missing_right() {
        let p = policy();
        let pay = Principal::Named(PrincipalName::Token("payments".into()));
        match decide(Some(&p), &pay, Right::Publish, Some("com.shop.cart")) {
            Decision::Denied(m) => assert_eq!(
                m,
                "principal token:payments lacks the publish right on dataId \"com.shop.cart\""
            ),
            Decision::Allowed => panic!("allowed"),
        }
        match decide(Some(&p), &pay, Right::Admin, None) {
            Decision::Denied(m) => assert!(m.contains("lacks the admin right"), "{m}"),
            Decision::Allowed => panic!("allowed"),
        }
        // --token has every right; without rules everyone has every right.
        assert!(matches!(
            decide(Some(&p), &Principal::Root, Right::Admin, None),
            Decision::Allowed
        ));
        assert!(matches!(
            decide(None, &pay, Right::Publish, Some("x")),
            Decision::Allowed
        ));
        assert!(matches!(
            decide(Some(&p), &Principal::Anonymous, Right::Subscribe, Some("x")),
            Decision::Denied(_)
        ));
    }

    #[test]
    fn subscribe_prefixes_cover_every_pattern_once() {
        let p = policy();
        assert_eq!(
            p.subscribe_prefixes(&PrincipalName::Token("reader".into())),
            vec!["com.shop.".to_owned(), "org.".to_owned()]
        );
        assert!(p.subscribe_prefixes(&sa("x", "y")).is_empty());
    }

    #[test]
    fn owner_keys_never_collide() {
        assert_eq!(Principal::Anonymous.owner_key(), None);
        assert_eq!(Principal::Root.owner_key().as_deref(), Some("token"));
        assert_eq!(
            Principal::Named(PrincipalName::Token("token".into()))
                .owner_key()
                .as_deref(),
            Some("token:token")
        );
    }
}
