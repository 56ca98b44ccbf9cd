//! Parsing and validation of request bodies and query parameters against API.md's rules,
//! with messages that name the offending field.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::model::{
    ServiceKey, DATA_INFO_ID_SEPARATOR, DEFAULT_GROUP, DEFAULT_INSTANCE_ID, DEFAULT_ZONE,
};
use crate::session::{PublishRequest, Scope, SubscribeRequest};

pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_REGISTER_ID_BYTES: usize = 128;
pub const MAX_DATA_ITEMS: usize = 1000;
pub const MAX_DATA_ITEM_BYTES: usize = 16 * 1024;
pub const MIN_TTL_SECONDS: u64 = 5;
pub const MAX_TTL_SECONDS: u64 = 600;
pub const DEFAULT_TTL_SECONDS: u64 = 30;
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSession {
    pub client_id: Option<String>,
    pub ttl_seconds: u64,
}

/// Parses a body as a JSON object; an empty body is `{}` when `empty_ok`.
pub fn parse_object(body: &[u8], empty_ok: bool) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(Map::new())
        } else {
            Err(ApiError::invalid("request body must be a JSON object"))
        };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

/// A name field (dataId, group, instanceId, zone, clientId): 1 to 256 bytes, no control
/// characters, no `#@#`.
pub fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_NAME_BYTES} bytes, got {}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    if value.contains(DATA_INFO_ID_SEPARATOR) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain \"{DATA_INFO_ID_SEPARATOR}\""
        )));
    }
    Ok(())
}

/// A registerId: 1 to 128 bytes of printable characters.
pub fn check_register_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_REGISTER_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_REGISTER_ID_BYTES} bytes, got {}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(format!(
            "{field} must be printable (no control characters)"
        )));
    }
    Ok(())
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
    }
}

fn opt_name(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    let v = opt_string(obj, field)?;
    if let Some(s) = &v {
        check_name(field, s)?;
    }
    Ok(v)
}

fn service_key(obj: &Map<String, Value>) -> Result<ServiceKey, ApiError> {
    let data_id =
        opt_string(obj, "dataId")?.ok_or_else(|| ApiError::invalid("dataId is required"))?;
    check_name("dataId", &data_id)?;
    let group = opt_name(obj, "group")?.unwrap_or_else(|| DEFAULT_GROUP.to_owned());
    let instance_id =
        opt_name(obj, "instanceId")?.unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_owned());
    Ok(ServiceKey {
        data_id,
        group,
        instance_id,
    })
}

fn register_id(obj: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let v = opt_string(obj, "registerId")?;
    if let Some(s) = &v {
        check_register_id("registerId", s)?;
    }
    Ok(v)
}

pub fn create_session(body: &[u8]) -> Result<CreateSession, ApiError> {
    let obj = parse_object(body, true)?;
    let client_id = opt_name(&obj, "clientId")?;
    let ttl_seconds = match obj.get("ttlSeconds") {
        None | Some(Value::Null) => DEFAULT_TTL_SECONDS,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(t) if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&t) => t,
            _ => {
                return Err(ApiError::invalid(format!(
                    "ttlSeconds must be an integer from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}, got {n}"
                )))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "ttlSeconds must be an integer from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
            )))
        }
    };
    Ok(CreateSession {
        client_id,
        ttl_seconds,
    })
}

pub fn publish(body: &[u8]) -> Result<PublishRequest, ApiError> {
    publisher(&parse_object(body, false)?)
}

/// At most this many publishers in one batch publish.
pub const MAX_BATCH_PUBLISHERS: usize = 1000;

/// A batch publish body: `{"publishers": [<publish body>, ...]}`, 1 to 1,000 entries, every
/// entry valid and no registerId twice; messages name the entry (`publishers[3].dataId`).
pub fn publish_batch(body: &[u8]) -> Result<Vec<PublishRequest>, ApiError> {
    let obj = parse_object(body, false)?;
    let entries = match obj.get("publishers") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "publishers is required (a list of publisher objects)",
            ))
        }
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(ApiError::invalid("publishers must be a list of objects")),
    };
    if entries.is_empty() || entries.len() > MAX_BATCH_PUBLISHERS {
        return Err(ApiError::invalid(format!(
            "publishers must have 1 to {MAX_BATCH_PUBLISHERS} entries, got {}",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(ApiError::invalid(format!(
                "publishers[{i}] must be an object"
            )));
        };
        let req = publisher(entry).map_err(|e| match e {
            ApiError::InvalidArgument(m) => ApiError::invalid(format!("publishers[{i}].{m}")),
            other => other,
        })?;
        if let Some(rid) = &req.register_id {
            if !seen.insert(rid.clone()) {
                return Err(ApiError::invalid(format!(
                    "publishers[{i}].registerId {rid:?} appears twice in the batch"
                )));
            }
        }
        out.push(req);
    }
    Ok(out)
}

fn publisher(obj: &Map<String, Value>) -> Result<PublishRequest, ApiError> {
    let key = service_key(obj)?;
    let zone = opt_name(obj, "zone")?.unwrap_or_else(|| DEFAULT_ZONE.to_owned());
    let register_id = register_id(obj)?;
    let items = match obj.get("data") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("data is required (a list of strings)"))
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("data must be a list of strings")),
    };
    if items.len() > MAX_DATA_ITEMS {
        return Err(ApiError::invalid(format!(
            "data must have at most {MAX_DATA_ITEMS} items, got {}",
            items.len()
        )));
    }
    let mut data = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if s.len() <= MAX_DATA_ITEM_BYTES => data.push(s.clone()),
            Value::String(s) => {
                return Err(ApiError::invalid(format!(
                    "data[{i}] must be at most {MAX_DATA_ITEM_BYTES} bytes, got {}",
                    s.len()
                )))
            }
            _ => return Err(ApiError::invalid(format!("data[{i}] must be a string"))),
        }
    }
    Ok(PublishRequest {
        key,
        zone,
        register_id,
        data,
    })
}

pub fn subscribe(body: &[u8]) -> Result<SubscribeRequest, ApiError> {
    let obj = parse_object(body, false)?;
    let key = service_key(&obj)?;
    let zone = opt_name(&obj, "zone")?.unwrap_or_else(|| DEFAULT_ZONE.to_owned());
    let scope = match opt_string(&obj, "scope")?.as_deref() {
        None | Some("dataCenter") => Scope::DataCenter,
        Some("zone") => Scope::Zone,
        Some("global") => Scope::Global,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "scope must be one of \"zone\", \"dataCenter\", \"global\", got {other:?}"
            )))
        }
    };
    let register_id = register_id(&obj)?;
    // The opt-in to `event: delta` pushes (README, "Delta pushes"); absent or null: off.
    let delta = match obj.get("delta") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("delta must be a boolean")),
    };
    Ok(SubscribeRequest {
        key,
        zone,
        scope,
        register_id,
        delta,
    })
}

/// The service named by query parameters `dataId`, `group`, `instanceId`.
pub fn query_key(
    data_id: Option<&str>,
    group: Option<&str>,
    instance_id: Option<&str>,
) -> Result<ServiceKey, ApiError> {
    let data_id = data_id.ok_or_else(|| ApiError::invalid("dataId is required"))?;
    check_name("dataId", data_id)?;
    let group = group.unwrap_or(DEFAULT_GROUP);
    check_name("group", group)?;
    let instance_id = instance_id.unwrap_or(DEFAULT_INSTANCE_ID);
    check_name("instanceId", instance_id)?;
    Ok(ServiceKey {
        data_id: data_id.to_owned(),
        group: group.to_owned(),
        instance_id: instance_id.to_owned(),
    })
}

/// `wait` of a blocking query: a duration such as `30s`, `1m`, `1500ms` (a bare number is
/// seconds), capped at 300 s.
pub fn parse_wait(value: &str) -> Result<std::time::Duration, ApiError> {
    let v = value.trim();
    let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok().map(std::time::Duration::from_secs)
    } else {
        humantime::parse_duration(v).ok()
    };
    match parsed {
        Some(d) => Ok(d.min(MAX_WAIT)),
        None => Err(ApiError::invalid(format!(
            "wait must be a duration such as \"30s\" or \"1m\" (at most 300s), got {value:?}"
        ))),
    }
}

/// Parameters of a query string (`application/x-www-form-urlencoded`): `+` is a space,
/// `%XX` a byte; a name or value that is not UTF-8 once decoded is refused with the
/// parameter's name (never silently turned into U+FFFD). A repeated name keeps its last value.
pub fn parse_query(raw: &str) -> Result<std::collections::HashMap<String, String>, ApiError> {
    fn decode(part: &str) -> Option<String> {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    }
    let mut params = std::collections::HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).ok_or_else(|| {
            ApiError::invalid(
                "malformed query string: a parameter name is not UTF-8 once percent-decoded",
            )
        })?;
        let value = decode(value).ok_or_else(|| {
            ApiError::invalid(format!(
                "malformed query string: {name} is not UTF-8 once percent-decoded"
            ))
        })?;
        params.insert(name, value);
    }
    Ok(params)
}

pub fn parse_u64(field: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::invalid(format!(
            "{field} must be a non-negative integer, got {value:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(e: ApiError) -> String {
        assert_eq!(e.code(), "invalid_argument");
        e.to_string()
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("dataId", "com.example.Echo").is_ok());
        assert!(check_name("dataId", &"a".repeat(256)).is_ok());
        assert!(msg(check_name("dataId", "").unwrap_err()).contains("dataId must not be empty"));
        assert!(msg(check_name("group", &"a".repeat(257)).unwrap_err()).contains("group"));
        assert!(msg(check_name("zone", "a\nb").unwrap_err()).contains("control"));
        assert!(msg(check_name("zone", "a\u{7f}b").unwrap_err()).contains("control"));
        assert!(msg(check_name("instanceId", "a#@#b").unwrap_err()).contains("#@#"));
        assert!(check_name("dataId", "a#@b#").is_ok());
    }

    #[test]
    fn register_ids_are_checked() {
        assert!(check_register_id("registerId", &"r".repeat(128)).is_ok());
        assert!(check_register_id("registerId", &"r".repeat(129)).is_err());
        assert!(check_register_id("registerId", "").is_err());
        assert!(check_register_id("registerId", "a\tb").is_err());
    }

    #[test]
    fn sessions_default_and_bound_the_ttl() {
        assert_eq!(create_session(b"").unwrap().ttl_seconds, 30);
        assert_eq!(create_session(b"{}").unwrap().ttl_seconds, 30);
        assert_eq!(
            create_session(br#"{"ttlSeconds":5}"#).unwrap().ttl_seconds,
            5
        );
        assert_eq!(
            create_session(br#"{"ttlSeconds":600}"#)
                .unwrap()
                .ttl_seconds,
            600
        );
        for bad in [
            &br#"{"ttlSeconds":4}"#[..],
            br#"{"ttlSeconds":601}"#,
            br#"{"ttlSeconds":"30"}"#,
            br#"{"ttlSeconds":7.5}"#,
            br#"{"ttlSeconds":-1}"#,
        ] {
            assert!(msg(create_session(bad).unwrap_err()).contains("ttlSeconds"));
        }
        assert!(msg(create_session(br#"{"clientId":""}"#).unwrap_err()).contains("clientId"));
        assert!(msg(create_session(b"[1]").unwrap_err()).contains("JSON object"));
        assert!(msg(create_session(b"{").unwrap_err()).contains("JSON"));
    }

    #[test]
    fn publish_requests_are_validated() {
        let p = publish(br#"{"dataId":"svc","data":["a","b"]}"#).unwrap();
        assert_eq!(p.key.group, DEFAULT_GROUP);
        assert_eq!(p.key.instance_id, DEFAULT_INSTANCE_ID);
        assert_eq!(p.zone, DEFAULT_ZONE);
        assert_eq!(p.data, vec!["a", "b"]);
        assert!(msg(publish(br#"{"data":[]}"#).unwrap_err()).contains("dataId"));
        assert!(msg(publish(br#"{"dataId":"svc"}"#).unwrap_err()).contains("data"));
        assert!(msg(publish(br#"{"dataId":"svc","data":"x"}"#).unwrap_err()).contains("data"));
        assert!(msg(publish(br#"{"dataId":"svc","data":[1]}"#).unwrap_err()).contains("data[0]"));
        assert!(msg(publish(br#"{"dataId":5,"data":[]}"#).unwrap_err()).contains("dataId"));
        assert!(
            msg(publish(br#"{"dataId":"s","registerId":"","data":[]}"#).unwrap_err())
                .contains("registerId")
        );
        let many = format!(
            r#"{{"dataId":"s","data":[{}]}}"#,
            vec!["\"x\""; 1001].join(",")
        );
        assert!(msg(publish(many.as_bytes()).unwrap_err()).contains("1000"));
        let ok = format!(
            r#"{{"dataId":"s","data":[{}]}}"#,
            vec!["\"x\""; 1000].join(",")
        );
        assert!(publish(ok.as_bytes()).is_ok());
        let big = format!(
            r#"{{"dataId":"s","data":["{}"]}}"#,
            "x".repeat(16 * 1024 + 1)
        );
        assert!(msg(publish(big.as_bytes()).unwrap_err()).contains("data[0]"));
        let edge = format!(r#"{{"dataId":"s","data":["{}"]}}"#, "x".repeat(16 * 1024));
        assert!(publish(edge.as_bytes()).is_ok());
    }

    #[test]
    fn subscribe_requests_are_validated() {
        assert_eq!(
            subscribe(br#"{"dataId":"s"}"#).unwrap().scope,
            Scope::DataCenter
        );
        assert_eq!(
            subscribe(br#"{"dataId":"s","scope":"zone"}"#)
                .unwrap()
                .scope,
            Scope::Zone
        );
        assert_eq!(
            subscribe(br#"{"dataId":"s","scope":"global"}"#)
                .unwrap()
                .scope,
            Scope::Global
        );
        assert!(
            msg(subscribe(br#"{"dataId":"s","scope":"planet"}"#).unwrap_err()).contains("scope")
        );
        assert!(msg(subscribe(br#"{"dataId":"s","zone":"a#@#b"}"#).unwrap_err()).contains("zone"));
        assert!(
            !subscribe(br#"{"dataId":"s"}"#).unwrap().delta,
            "off unless asked"
        );
        assert!(subscribe(br#"{"dataId":"s","delta":true}"#).unwrap().delta);
        assert!(!subscribe(br#"{"dataId":"s","delta":null}"#).unwrap().delta);
        for bad in [r#""yes""#, "1", "[]"] {
            let body = format!(r#"{{"dataId":"s","delta":{bad}}}"#);
            assert!(msg(subscribe(body.as_bytes()).unwrap_err()).contains("delta"));
        }
    }

    #[test]
    fn waits_parse_and_cap() {
        use std::time::Duration;
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_wait("1h").unwrap(), MAX_WAIT);
        assert!(msg(parse_wait("soon").unwrap_err()).contains("wait"));
        assert!(parse_wait("").is_err());
        assert!(parse_wait("-5s").is_err());
    }

    #[test]
    fn query_values_must_be_utf8_once_decoded() {
        let q = parse_query("dataId=a%20b+c&group=%C3%A9&empty&x=1&x=2").unwrap();
        assert_eq!(q["dataId"], "a b c");
        assert_eq!(q["group"], "é");
        assert_eq!(q["empty"], "");
        assert_eq!(q["x"], "2");
        let e = parse_query("dataId=%FF").unwrap_err();
        assert!(e.to_string().contains("dataId"), "{e}");
        assert!(parse_query("%C3%28=1").is_err());
        assert!(parse_query("").unwrap().is_empty());
        // A lone or short escape is kept as it is (as browsers do), and is valid UTF-8.
        assert_eq!(parse_query("a=%&b=%4").unwrap()["a"], "%");
    }
}
