//! Patch application: JSON merge patch, a simplified strategic merge patch, RFC 6902 JSON
//! patch, and server-side apply (approximated as a strategic merge of the applied config).
//!
//! Strategic merge here knows the merge keys of the list fields our kinds use (`containers`,
//! `env`, `volumes`, ... by `name`; `volumeMounts` by `mountPath`; `ports` by `containerPort`
//! or `port`; `conditions` by `type`; `ownerReferences` by `uid`), honours `$patch: delete`,
//! `$patch: replace` and `$deleteFromPrimitiveList/...`, and ignores `$setElementOrder` and
//! `$retainKeys`. Every other list is replaced, as in a JSON merge patch.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The PATCH flavours, chosen by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body (JSON; apply bodies may be YAML) into a JSON value.
pub fn parse_body(kind: PatchType, body: &[u8]) -> Result<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_err) if kind == PatchType::Apply => {
            serde_yaml::from_slice::<Value>(body).map_err(|e| {
                Error::bad_request(format!("error decoding YAML: {e} (as JSON: {json_err})"))
            })
        }
        Err(e) => Err(Error::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a patch of the given type to a copy of `target` and returns the result.
pub fn apply_patch(kind: PatchType, target: &Value, patch: &Value) -> Result<Value> {
    let mut doc = target.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(Error::bad_request("merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err(Error::bad_request("patch must be a JSON object"));
            }
            strategic_merge(&mut doc, patch);
        }
        PatchType::Json => {
            let mut ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| Error::bad_request(format!("invalid JSON patch: {e}")))?;
            // As in the Kubernetes API server, `test` for null passes on a missing field
            // (kube-runtime's finalizer helper relies on it).
            let mut failed_null_test = None;
            ops.0.retain(|op| match op {
                json_patch::PatchOperation::Test(t) if t.value.is_null() => {
                    if doc.pointer(t.path.as_str()).is_some_and(|v| !v.is_null()) {
                        failed_null_test = Some(t.path.to_string());
                    }
                    false
                }
                _ => true,
            });
            if let Some(path) = failed_null_test {
                return Err(Error::invalid(format!("the server rejected our request due to an error in our request: test failed: {path} is not null")));
            }
            json_patch::patch(&mut doc, &ops).map_err(|e| match e.kind {
                json_patch::PatchErrorKind::TestFailed => Error::invalid(format!(
                    "the server rejected our request due to an error in our request: {e}"
                )),
                _ => Error::invalid(format!(
                    "the server rejected our request due to an error in our request: {e}"
                )),
            })?;
        }
    }
    Ok(doc)
}

fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "ports" => {
            if items.iter().all(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    };
    Some(key)
}

fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

/// Removes strategic-merge directives from a value that is being inserted as a whole.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge of `patch` into `target` (see the module docs for what is supported).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = strip_directives(patch);
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if is_directive(key) {
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match (target_map.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => {
                strategic_merge(existing, value)
            }
            (Some(Value::Array(existing)), Value::Array(items)) => {
                let all_objects = items.iter().chain(existing.iter()).all(Value::is_object);
                match merge_key(key, items).filter(|_| all_objects) {
                    Some(mk) => merge_list(existing, items, mk),
                    None => *existing = items.iter().map(strip_directives).collect(),
                }
            }
            _ => {
                target_map.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        let pos = id.and_then(|id| existing.iter().position(|e| e.get(key) == Some(id)));
        match (pos, delete) {
            (Some(p), true) => {
                existing.remove(p);
            }
            (None, true) => {}
            (Some(p), false) => strategic_merge(&mut existing[p], item),
            (None, false) => existing.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls_and_replaces_lists() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let r = apply_patch(PatchType::Merge, &t, &json!({"b": {"c": null}, "l": [3]})).unwrap();
        assert_eq!(r, json!({"a": 1, "b": {"d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [
            {"name": "a", "image": "x:1", "args": ["--p"]},
            {"name": "b", "image": "y:1"}]}});
        let p = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "x:2"}, {"name": "b", "$patch": "delete"}]}});
        let r = apply_patch(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(
            r,
            json!({"spec": {"containers": [{"name": "a", "image": "x:2", "args": ["--p"]}]}})
        );
    }

    #[test]
    fn strategic_merge_primitive_list_delete_and_replace() {
        let t = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"x": {"y": 1}}});
        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"x": {"$patch": "replace", "z": 2}}});
        let r = apply_patch(PatchType::Strategic, &t, &p).unwrap();
        assert_eq!(
            r,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"x": {"z": 2}}})
        );
    }

    #[test]
    fn json_patch_test_op_failure_is_invalid() {
        let t = json!({"metadata": {"finalizers": ["f"]}});
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["g"]}]);
        assert_eq!(
            apply_patch(PatchType::Json, &t, &p).unwrap_err().code(),
            422
        );
        let missing_is_null = json!([{"op": "test", "path": "/metadata/x", "value": null}, {"op": "add", "path": "/metadata/x", "value": 1}]);
        assert_eq!(
            apply_patch(PatchType::Json, &t, &missing_is_null).unwrap()["metadata"]["x"],
            1
        );
        let p = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "f"},
            {"op": "remove", "path": "/metadata/finalizers/0"}]);
        assert_eq!(
            apply_patch(PatchType::Json, &t, &p).unwrap(),
            json!({"metadata": {"finalizers": []}})
        );
        assert_eq!(
            apply_patch(PatchType::Json, &t, &json!({"op": "x"}))
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn apply_body_may_be_yaml() {
        let v = parse_body(PatchType::Apply, b"a: 1\nb: [x]\n").unwrap();
        assert_eq!(v, json!({"a": 1, "b": ["x"]}));
        assert_eq!(
            parse_body(PatchType::Merge, b"a: 1").unwrap_err().code(),
            400
        );
    }
}
