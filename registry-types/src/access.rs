//! The access document: who may publish, subscribe and administer. One shape for a node's
//! `--access-file` (YAML or JSON) and for `spec.access` of a RegistryCluster, which the
//! operator renders into that file for its nodes.
//!
//! ```yaml
//! tokens:                      # static tokens, stored as hex SHA-256, never in clear
//!   - {name: payments, sha256: "…"}
//! rules:
//!   - principals: ["token:payments", "serviceaccount:shop/checkout"]
//!     publish: ["com.shop.pay.*"]      # dataId patterns, * = any run of characters
//!     subscribe: ["com.shop.*"]
//!   - principals: ["serviceaccount:registry-system/registry-admin"]
//!     admin: true
//! ```
//!
//! This module holds the serde types and [`AccessDoc::validate`], which every reader calls
//! (the node before adopting a file, the operator before rendering one): errors name the
//! offending field (`rules[1].publish[0]: …`). Evaluating the rules is the node's job.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// At most this many static tokens, rules, and principals or patterns per rule.
pub const MAX_ENTRIES: usize = 1000;
/// A dataId pattern is at most this long (a dataId is at most 256 bytes).
pub const MAX_PATTERN_BYTES: usize = 256;
/// A static token's name is at most this long.
pub const MAX_TOKEN_NAME_BYTES: usize = 253;
/// An access file is at most this large.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The access rules of a registry: static tokens and the rights of principals.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessDoc {
    /// Static bearer tokens for callers outside Kubernetes. The principal of one is
    /// `token:NAME`. Only the hex SHA-256 of each token is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub tokens: Vec<StaticToken>,
    /// Who may do what. Everything not granted here is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub rules: Vec<AccessRule>,
}

/// A named static token: `printf %s "$TOKEN" | sha256sum`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticToken {
    /// The token's name: its principal is `token:NAME` (letters, digits, `.`, `_`, `-`).
    #[schemars(length(min = 1, max = 253), pattern(r"^[A-Za-z0-9._-]+$"))]
    pub name: String,
    /// Hex SHA-256 of the token (64 hex digits).
    #[schemars(pattern(r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
}

/// Rights granted to some principals.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// `token:NAME` (a static token above) or `serviceaccount:NAMESPACE/NAME`.
    #[schemars(length(min = 1, max = 1000), inner(pattern(r"^(token:[A-Za-z0-9._-]{1,253}|serviceaccount:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$")))]
    pub principals: Vec<String>,
    /// dataId patterns the principals may publish (`*` matches any run of characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 256)))]
    pub publish: Vec<String>,
    /// dataId patterns the principals may subscribe to and query (`GET /api/v1/data`,
    /// blocking queries, `GET /api/v1/services`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 256)))]
    pub subscribe: Vec<String>,
    /// The admin routes (`/api/v1/admin/*`: the push switch and every other one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why an access document cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccessError(pub String);

/// A principal as rules name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalName {
    /// `token:NAME`
    Token(String),
    /// `serviceaccount:NAMESPACE/NAME`
    ServiceAccount { namespace: String, name: String },
}

impl PrincipalName {
    /// Parses `token:NAME` or `serviceaccount:NS/NAME`.
    pub fn parse(s: &str) -> Result<PrincipalName, String> {
        if let Some(name) = s.strip_prefix("token:") {
            check_token_name(name)?;
            Ok(PrincipalName::Token(name.to_owned()))
        } else if let Some(rest) = s.strip_prefix("serviceaccount:") {
            let (namespace, name) = rest.split_once('/').ok_or_else(|| {
                format!("{s:?}: a ServiceAccount principal is serviceaccount:NAMESPACE/NAME")
            })?;
            if !is_dns_label(namespace, 63) {
                return Err(format!(
                    "{s:?}: namespace {namespace:?} is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)"
                ));
            }
            if !is_dns_subdomain(name) {
                return Err(format!(
                    "{s:?}: ServiceAccount name {name:?} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253)"
                ));
            }
            Ok(PrincipalName::ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        } else {
            Err(format!(
                "{s:?}: a principal is token:NAME or serviceaccount:NAMESPACE/NAME"
            ))
        }
    }
}

impl std::fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrincipalName::Token(n) => write!(f, "token:{n}"),
            PrincipalName::ServiceAccount { namespace, name } => {
                write!(f, "serviceaccount:{namespace}/{name}")
            }
        }
    }
}

fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TOKEN_NAME_BYTES {
        return Err(format!(
            "token name {name:?} must be 1 to {MAX_TOKEN_NAME_BYTES} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "token name {name:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(l, 63))
}

/// Checks a dataId pattern: 1 to 256 bytes, no control characters, no `#@#`.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "pattern {p:?} must be 1 to {MAX_PATTERN_BYTES} bytes"
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(format!("pattern {p:?} must not contain control characters"));
    }
    if p.contains("#@#") {
        return Err(format!("pattern {p:?} must not contain \"#@#\""));
    }
    Ok(())
}

/// The SHA-256 of `bytes` as a `sha256` field holds it: 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The 32 bytes of a hex SHA-256 (either case, surrounding whitespace ignored); `None`
/// unless 64 hex digits.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl AccessDoc {
    /// Parses an access file: YAML (JSON is YAML too). Unknown fields are refused, so a
    /// typo (`publsh`) never silently grants or denies.
    pub fn parse(text: &str) -> Result<AccessDoc, AccessError> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(AccessError(format!(
                "the access document is {} bytes; at most {MAX_DOCUMENT_BYTES}",
                text.len()
            )));
        }
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_yaml::from_str(text)
                .map_err(|e| AccessError(format!("not a YAML or JSON document: {e}")))?
        };
        Self::from_value(&value)
    }

    /// The document from parsed JSON/YAML, refusing unknown fields; then [`Self::validate`].
    pub fn from_value(value: &serde_json::Value) -> Result<AccessDoc, AccessError> {
        let top = value
            .as_object()
            .ok_or_else(|| AccessError("the access document must be a map".into()))?;
        only_fields("", top, &["tokens", "rules"])?;
        for (list, fields) in [
            ("tokens", &["name", "sha256"][..]),
            (
                "rules",
                &["principals", "publish", "subscribe", "admin"][..],
            ),
        ] {
            if let Some(items) = top.get(list).and_then(|v| v.as_array()) {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{list}[{i}]");
                    let obj = item
                        .as_object()
                        .ok_or_else(|| AccessError(format!("{at}: must be a map")))?;
                    only_fields(&at, obj, fields)?;
                }
            }
        }
        let doc: AccessDoc = serde_json::from_value(value.clone())
            .map_err(|e| AccessError(format!("malformed access document: {e}")))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), AccessError> {
        let err = |at: String, m: String| Err(AccessError(format!("{at}: {m}")));
        if self.tokens.len() > MAX_ENTRIES {
            return err("tokens".into(), format!("at most {MAX_ENTRIES} tokens"));
        }
        if self.rules.len() > MAX_ENTRIES {
            return err("rules".into(), format!("at most {MAX_ENTRIES} rules"));
        }
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if let Err(m) = check_token_name(&t.name) {
                return err(format!("tokens[{i}].name"), m);
            }
            if !names.insert(t.name.as_str()) {
                return err(
                    format!("tokens[{i}].name"),
                    format!("token {:?} is named twice", t.name),
                );
            }
            let Some(hash) = parse_sha256_hex(&t.sha256) else {
                return err(
                    format!("tokens[{i}].sha256"),
                    "must be the hex SHA-256 of the token (64 hex digits), never the token itself"
                        .into(),
                );
            };
            if !hashes.insert(hash) {
                return err(
                    format!("tokens[{i}].sha256"),
                    "the same token is listed twice".into(),
                );
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if r.principals.is_empty() {
                return err(
                    at("principals"),
                    "a rule names at least one principal".into(),
                );
            }
            for (lists, field) in [
                (&r.principals, "principals"),
                (&r.publish, "publish"),
                (&r.subscribe, "subscribe"),
            ] {
                if lists.len() > MAX_ENTRIES {
                    return err(at(field), format!("at most {MAX_ENTRIES} entries"));
                }
            }
            for (j, p) in r.principals.iter().enumerate() {
                match PrincipalName::parse(p) {
                    Ok(PrincipalName::Token(name)) if !names.contains(name.as_str()) => {
                        return err(
                            format!("rules[{i}].principals[{j}]"),
                            format!("{p:?} names no token of `tokens`"),
                        )
                    }
                    Ok(_) => {}
                    Err(m) => return err(format!("rules[{i}].principals[{j}]"), m),
                }
            }
            for (list, field) in [(&r.publish, "publish"), (&r.subscribe, "subscribe")] {
                for (j, p) in list.iter().enumerate() {
                    if let Err(m) = check_pattern(p) {
                        return err(format!("rules[{i}].{field}[{j}]"), m);
                    }
                }
            }
            if r.publish.is_empty() && r.subscribe.is_empty() && !r.admin {
                return err(
                    format!("rules[{i}]"),
                    "grants nothing: give it publish, subscribe or admin".into(),
                );
            }
        }
        Ok(())
    }
}

fn only_fields(
    at: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
) -> Result<(), AccessError> {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            let at = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            return Err(AccessError(format!(
                "{at}: unknown field (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_issue_example_parses_from_yaml_and_json() {
        let yaml = format!(
            r#"
tokens:
  - {{name: payments, sha256: "{HASH}"}}
rules:
  - principals: ["token:payments", "serviceaccount:shop/checkout"]
    publish: ["com.shop.pay.*"]
    subscribe: ["com.shop.*"]
  - principals: ["serviceaccount:registry-system/registry-admin"]
    admin: true
"#
        );
        let doc = AccessDoc::parse(&yaml).unwrap();
        assert_eq!(doc.tokens[0].name, "payments");
        assert_eq!(doc.rules.len(), 2);
        assert!(doc.rules[1].admin);
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(AccessDoc::parse(&json).unwrap(), doc);
        assert_eq!(AccessDoc::parse("").unwrap(), AccessDoc::default());
    }

    fn refused(text: &str) -> String {
        AccessDoc::parse(text).unwrap_err().0
    }

    #[test]
    fn every_mistake_is_named() {
        let cases = [
            ("publsh: []", "publsh: unknown field"),
            ("[1, 2]", "must be a map"),
            ("tokens: [{name: a, sha256: abc}]", "tokens[0].sha256"),
            (
                &format!("tokens: [{{name: a, sha256: {HASH}}}, {{name: a, sha256: {HASH}}}]"),
                "tokens[1].name: token \"a\" is named twice",
            ),
            (
                &format!("tokens: [{{name: a, sha256: {HASH}}}, {{name: b, sha256: {HASH}}}]"),
                "tokens[1].sha256",
            ),
            ("tokens: [{name: 'a b', sha256: x}]", "tokens[0].name"),
            (
                "rules: [{principals: [], publish: [a]}]",
                "rules[0].principals",
            ),
            (
                "rules: [{principals: ['token:ghost'], publish: [a]}]",
                "rules[0].principals[0]: \"token:ghost\" names no token",
            ),
            (
                "rules: [{principals: ['serviceaccount:Shop/x'], publish: [a]}]",
                "rules[0].principals[0]",
            ),
            (
                "rules: [{principals: ['serviceaccount:shop'], publish: [a]}]",
                "serviceaccount:NAMESPACE/NAME",
            ),
            (
                "rules: [{principals: ['user:bob'], publish: [a]}]",
                "token:NAME or serviceaccount",
            ),
            (
                "rules: [{principals: ['serviceaccount:a/b'], publish: ['']}]",
                "rules[0].publish[0]",
            ),
            (
                "rules: [{principals: ['serviceaccount:a/b'], subscribe: ['a#@#b']}]",
                "rules[0].subscribe[0]",
            ),
            (
                "rules: [{principals: ['serviceaccount:a/b']}]",
                "rules[0]: grants nothing",
            ),
            (
                "rules: [{principals: ['serviceaccount:a/b'], admin: true, pubish: [a]}]",
                "rules[0].pubish: unknown field",
            ),
            ("rules: [{principals: 'x'}]", "malformed"),
            ("{{{", "not a YAML or JSON document"),
        ];
        for (text, want) in cases {
            let got = refused(text);
            assert!(got.contains(want), "{text}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn principals_parse_and_print() {
        for s in ["token:payments", "serviceaccount:shop/checkout"] {
            assert_eq!(PrincipalName::parse(s).unwrap().to_string(), s);
        }
        assert!(PrincipalName::parse("token:").is_err());
        assert!(PrincipalName::parse("serviceaccount:/x").is_err());
        assert!(PrincipalName::parse("serviceaccount:a/").is_err());
    }

    #[test]
    fn sha256_hex_is_strict() {
        assert!(parse_sha256_hex(HASH).is_some());
        assert_eq!(
            parse_sha256_hex(&HASH.to_uppercase()),
            parse_sha256_hex(HASH)
        );
        assert!(parse_sha256_hex(&HASH[1..]).is_none());
        assert!(parse_sha256_hex(&format!("{}g", &HASH[1..])).is_none());
    }
}
