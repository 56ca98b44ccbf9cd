//! How a container becomes a command line: image-to-binary mapping, environment (downward
//! API, ConfigMap/Secret references), `$(VAR)` expansion, and wildcard-address rewriting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Expands `$(VAR)` as the kubelet does: defined variables are substituted, `$$` escapes
/// a `$`, anything else is left as written.
pub fn expand(input: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(close) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + close];
                    if let Some(v) = env.get(name) {
                        out.push_str(v);
                        i += close + 3;
                        continue;
                    }
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Every pod shares the host's network stack, so a wildcard bind (`0.0.0.0:9603`) would
/// collide between pods: the kubelet narrows it to the pod's own IP.
pub fn rewrite_wildcard(input: &str, pod_ip: &str) -> String {
    input.replace("0.0.0.0", pod_ip)
}

fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn image_repo(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => without_digest,
    }
}

/// Looks an image up in the map: the full reference, then without tag, then its last
/// path segment without tag (`ghcr.io/x/registry-node:1.0` → `registry-node`).
pub fn lookup_image<'a, V>(map: &'a BTreeMap<String, V>, image: &str) -> Option<&'a V> {
    map.get(image)
        .or_else(|| map.get(image_repo(image)))
        .or_else(|| map.get(image_name(image)))
}

/// The program and arguments of a container: `command[0]` if given (mapped when it names
/// a mapped image's binary, else an absolute path or a `PATH` lookup), otherwise the
/// binary the image maps to; then the rest of `command` and `args`.
pub fn program_and_args(
    map: &BTreeMap<String, PathBuf>,
    container: &Value,
) -> Result<(PathBuf, Vec<String>), String> {
    let strings = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = strings("command");
    let args = strings("args");
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match command.split_first() {
        Some((first, rest)) => {
            let base = Path::new(first)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or(first);
            let program = if let Some(p) = map.get(first.as_str()).or_else(|| map.get(base)) {
                p.clone()
            } else if lookup_image(map, image)
                .is_some_and(|p| p.file_name().and_then(|f| f.to_str()) == Some(base))
            {
                lookup_image(map, image).cloned().unwrap_or_default()
            } else if Path::new(first).is_absolute() && Path::new(first).exists() {
                PathBuf::from(first)
            } else if let Some(found) = find_in_path(first) {
                found
            } else {
                return Err(format!(
                    "executable {first:?} not found (image {image:?}; map it with --image-map)"
                ));
            };
            Ok((program, rest.iter().cloned().chain(args).collect()))
        }
        None => match lookup_image(map, image) {
            Some(p) => Ok((p.clone(), args)),
            None => Err(format!(
                "image {image:?} is not mapped to a local binary (use --image-map NAME=PATH)"
            )),
        },
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Parses `IMAGE=PATH` entries (`--image-map`): each PATH must be a file; paths are made
/// absolute.
pub fn parse_image_map(entries: &[String]) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut map = BTreeMap::new();
    for e in entries {
        let Some((image, path)) = e.split_once('=') else {
            return Err(format!("--image-map {e:?}: expected IMAGE=PATH"));
        };
        let path = PathBuf::from(path);
        if image.is_empty() || !path.is_file() {
            return Err(format!(
                "--image-map {e:?}: {} is not a file",
                path.display()
            ));
        }
        map.insert(
            image.to_string(),
            path.canonicalize()
                .map_err(|err| format!("--image-map {e:?}: {err}"))?,
        );
    }
    Ok(map)
}

/// Source of ConfigMap and Secret values: (kind, namespace, name, key) → value.
pub type RefLookup<'a> = dyn Fn(&str, &str, &str, &str) -> Option<String> + 'a;

fn field_ref(pod: &Value, path: &str, pod_ip: &str) -> Option<String> {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).map(str::to_string);
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return pod
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return pod
            .pointer("/metadata/annotations")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        "spec.nodeName" => s("/spec/nodeName").or(Some("kubesim".into())),
        "spec.serviceAccountName" => s("/spec/serviceAccountName").or(Some("default".into())),
        _ => None,
    }
}

/// The environment of a container, in order: `POD_NAME`, `POD_NAMESPACE`, `POD_IP`, then
/// `envFrom`, then `env` (later entries see earlier ones in `$(VAR)`).
pub fn container_env(
    pod: &Value,
    container: &Value,
    pod_ip: &str,
    lookup: &RefLookup<'_>,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut order: Vec<String> = Vec::new();
    let mut env: HashMap<String, String> = HashMap::new();
    let set = |order: &mut Vec<String>, env: &mut HashMap<String, String>, k: String, v: String| {
        if !env.contains_key(&k) {
            order.push(k.clone());
        }
        env.insert(k, v);
    };
    for (k, v) in [
        ("POD_NAME", field_ref(pod, "metadata.name", pod_ip)),
        (
            "POD_NAMESPACE",
            field_ref(pod, "metadata.namespace", pod_ip),
        ),
        ("POD_IP", Some(pod_ip.to_string())),
    ] {
        set(&mut order, &mut env, k.to_string(), v.unwrap_or_default());
    }
    for source in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = source
            .get("prefix")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (kind, field) in [("configmaps", "configMapRef"), ("secrets", "secretRef")] {
            let Some(r) = source.get(field) else { continue };
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
            match lookup(kind, ns, name, "") {
                Some(all) => {
                    let map: BTreeMap<String, String> =
                        serde_json::from_str(&all).unwrap_or_default();
                    for (k, v) in map {
                        set(&mut order, &mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => return Err(format!("{kind} {name:?} not found")),
            }
        }
    }
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            expand(v, &env)
        } else if let Some(from) = e.get("valueFrom") {
            if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                field_ref(pod, path, pod_ip)
                    .ok_or_else(|| format!("unsupported fieldRef {path:?} in env {name}"))?
            } else if let Some((kind, r)) = from
                .get("configMapKeyRef")
                .map(|r| ("configmaps", r))
                .or_else(|| from.get("secretKeyRef").map(|r| ("secrets", r)))
            {
                let rname = r.get("name").and_then(Value::as_str).unwrap_or_default();
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                match lookup(kind, ns, rname, key) {
                    Some(v) => v,
                    None if r.get("optional").and_then(Value::as_bool) == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "{kind} {rname:?} key {key:?} not found (env {name})"
                        ))
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut order, &mut env, name.to_string(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = env.get(&k).cloned().unwrap_or_default();
            (k, rewrite_wildcard(&v, pod_ip))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubelet_style_expansion() {
        let env: HashMap<String, String> = [("POD_IP".to_string(), "127.1.2.3".to_string())].into();
        assert_eq!(
            expand("--advertise-addr $(POD_IP):9622", &env),
            "--advertise-addr 127.1.2.3:9622"
        );
        assert_eq!(
            expand("$(MISSING) $$(POD_IP) $", &env),
            "$(MISSING) $(POD_IP) $"
        );
        assert_eq!(
            rewrite_wildcard("0.0.0.0:9603", "127.1.2.3"),
            "127.1.2.3:9603"
        );
    }

    #[test]
    fn images_map_to_binaries() {
        let map: BTreeMap<String, PathBuf> =
            [("registry-node".to_string(), PathBuf::from("/bin/rn"))].into();
        let c = json!({"image": "ghcr.io/acme/registry-node:0.1.0", "args": ["--role", "data"]});
        assert_eq!(
            program_and_args(&map, &c).unwrap(),
            (
                PathBuf::from("/bin/rn"),
                vec!["--role".to_string(), "data".to_string()]
            )
        );
        let c = json!({"image": "registry-node", "command": ["/usr/local/bin/registry-node", "--x"], "args": ["y"]});
        assert_eq!(
            program_and_args(&map, &c).unwrap(),
            (
                PathBuf::from("/bin/rn"),
                vec!["--x".to_string(), "y".to_string()]
            )
        );
        assert!(program_and_args(&map, &json!({"image": "nginx"}))
            .unwrap_err()
            .contains("not mapped"));
        let c = json!({"image": "busybox", "command": ["sh", "-c", "true"]});
        assert!(program_and_args(&map, &c).unwrap().0.ends_with("sh"));
    }

    #[test]
    fn downward_api_and_refs() {
        let pod = json!({"metadata": {"name": "p-0", "namespace": "ns", "labels": {"app": "a"}}});
        let c = json!({"env": [
            {"name": "ADDR", "value": "$(POD_IP):1"},
            {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "BIND", "value": "0.0.0.0:80"}]});
        let lookup = |kind: &str, ns: &str, name: &str, key: &str| {
            (kind == "secrets" && ns == "ns" && name == "s" && key == "token")
                .then(|| "t0k".to_string())
        };
        let env: HashMap<String, String> = container_env(&pod, &c, "127.9.9.9", &lookup)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["ADDR"], "127.9.9.9:1");
        assert_eq!(env["ME"], "p-0");
        assert_eq!(env["POD_NAMESPACE"], "ns");
        assert_eq!(env["APP"], "a");
        assert_eq!(env["TOKEN"], "t0k");
        assert_eq!(env["BIND"], "127.9.9.9:80");
        let missing = json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]});
        assert!(container_env(&pod, &missing, "127.9.9.9", &lookup).is_err());
    }
}
