//! `meta.k8s.io/v1` Table answers (what `kubectl get` asks for) and the small JSONPath
//! subset used by printer columns and scale paths.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Evaluates a printer-column JSONPath: `.a.b`, `.a[0].b`, `.a[*].b`,
/// `.a[?(@.type=="Ready")].status`. Returns every match.
pub fn eval_path(obj: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut current = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            current = current
                .iter()
                .filter_map(|v| v.get(field).cloned())
                .collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = find_bracket_end(r) else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = current.iter().flat_map(|v| index(v, inner)).collect();
        } else {
            return Vec::new();
        }
    }
    current
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ')' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn index(v: &Value, inner: &str) -> Vec<Value> {
    let Some(items) = v.as_array() else {
        let key = inner.trim_matches(['\'', '"']);
        return v.get(key).cloned().into_iter().collect();
    };
    if inner == "*" {
        return items.clone();
    }
    if let Ok(i) = inner.parse::<i64>() {
        let i = if i < 0 { items.len() as i64 + i } else { i };
        return usize::try_from(i)
            .ok()
            .and_then(|i| items.get(i))
            .cloned()
            .into_iter()
            .collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let Some((lhs, rhs)) = filter.split_once("==") else {
            return Vec::new();
        };
        let field = lhs.trim().trim_start_matches('@');
        let want = rhs.trim().trim_matches(['\'', '"']);
        return items
            .iter()
            .filter(|item| {
                eval_path(item, field).first().is_some_and(|v| match v {
                    Value::String(s) => s == want,
                    other => format!("{other}") == want,
                })
            })
            .cloned()
            .collect();
    }
    Vec::new()
}

/// Human age of an RFC 3339 timestamp, as kubectl prints it (`5s`, `3m`, `2h`, `4d`).
pub fn age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cell(v: Option<&Value>, type_: &str) -> Value {
    match v {
        None | Some(Value::Null) => json!("<none>"),
        Some(Value::String(s)) if type_ == "date" => json!(age(s)),
        Some(Value::String(s)) => json!(s),
        Some(n @ Value::Number(_)) => n.clone(),
        Some(b @ Value::Bool(_)) => b.clone(),
        Some(other) => json!(other.to_string()),
    }
}

struct Column {
    name: &'static str,
    type_: &'static str,
    priority: i64,
    value: fn(&Value) -> Value,
}

fn s(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn builtin_columns(rt: &ResourceType) -> Vec<Column> {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => vec![
            Column {
                name: "Ready",
                type_: "string",
                priority: 0,
                value: |o| {
                    let cs = o
                        .pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let total = o
                        .pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    let ready = cs
                        .iter()
                        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                        .count();
                    json!(format!("{ready}/{total}"))
                },
            },
            Column {
                name: "Status",
                type_: "string",
                priority: 0,
                value: |o| {
                    if o.pointer("/metadata/deletionTimestamp").is_some() {
                        json!("Terminating")
                    } else {
                        json!(s(o, "/status/phase"))
                    }
                },
            },
            Column {
                name: "Restarts",
                type_: "integer",
                priority: 0,
                value: |o| {
                    json!(o
                        .pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .map_or(0, |cs| cs
                            .iter()
                            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                            .sum::<i64>()))
                },
            },
            Column {
                name: "IP",
                type_: "string",
                priority: 1,
                value: |o| json!(s(o, "/status/podIP")),
            },
        ],
        ("apps", "statefulsets") | ("apps", "deployments") => vec![Column {
            name: "Ready",
            type_: "string",
            priority: 0,
            value: |o| {
                let ready = o
                    .pointer("/status/readyReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let want = o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                json!(format!("{ready}/{want}"))
            },
        }],
        ("", "services") => vec![
            Column {
                name: "Type",
                type_: "string",
                priority: 0,
                value: |o| json!(s(o, "/spec/type")),
            },
            Column {
                name: "Cluster-IP",
                type_: "string",
                priority: 0,
                value: |o| json!(s(o, "/spec/clusterIP")),
            },
        ],
        ("", "namespaces") => vec![Column {
            name: "Status",
            type_: "string",
            priority: 0,
            value: |o| json!(s(o, "/status/phase")),
        }],
        _ => Vec::new(),
    }
}

/// Builds a Table of `objects` for `rt` (CRD printer columns, or a few built-in columns).
pub fn to_table(
    rt: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    include_object: &str,
) -> Value {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let mut rows_cells: Vec<Vec<Value>> = objects
        .iter()
        .map(|o| vec![json!(s(o, "/metadata/name"))])
        .collect();
    if rt.printer_columns.is_empty() {
        let cols = builtin_columns(rt);
        for c in &cols {
            defs.push(json!({"name": c.name, "type": c.type_, "format": "", "description": "", "priority": c.priority}));
        }
        defs.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
        for (o, row) in objects.iter().zip(rows_cells.iter_mut()) {
            for c in &cols {
                row.push((c.value)(o));
            }
            row.push(json!(age(&s(o, "/metadata/creationTimestamp"))));
        }
    } else {
        for c in &rt.printer_columns {
            defs.push(json!({"name": c.name, "type": c.type_, "format": "", "description": c.description, "priority": c.priority}));
        }
        for (o, row) in objects.iter().zip(rows_cells.iter_mut()) {
            for c in &rt.printer_columns {
                let found = eval_path(o, &c.json_path);
                row.push(cell(found.first(), &c.type_));
            }
        }
    }
    let rows: Vec<Value> = objects
        .iter()
        .zip(rows_cells)
        .map(|(o, cells)| {
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let o = json!({"status": {"ready": 2, "conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]},
            "spec": {"list": [1, 2, 3]}});
        assert_eq!(eval_path(&o, ".status.ready"), vec![json!(2)]);
        assert_eq!(
            eval_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(eval_path(&o, ".spec.list[1]"), vec![json!(2)]);
        assert_eq!(eval_path(&o, ".spec.list[*]").len(), 3);
        assert!(eval_path(&o, ".nope.x").is_empty());
    }

    #[test]
    fn crd_table_uses_printer_columns() {
        let crd = json!({"metadata": {"name": "widgets.e.com"}, "spec": {"group": "e.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]}]}});
        let rt = crate::resources::crd_types(&crd).unwrap().remove(0);
        let t = to_table(
            &rt,
            &[json!({"metadata": {"name": "w1"}, "spec": {"size": 3}})],
            json!({}),
            "Metadata",
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 3);
        assert_eq!(t["rows"][0]["cells"], json!(["w1", 3, "<none>"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
