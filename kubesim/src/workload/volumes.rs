//! Pod volumes: ConfigMap and Secret volumes projected as files into the pod's directory
//! (refreshed while the pod runs, as the kubelet's volume sync does), `emptyDir` as an
//! empty directory, and each container's mount paths rewritten in its args and env to those
//! directories (every pod process shares this machine's filesystem, so `/etc/...` cannot be
//! mounted for real).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Reads every key of a ConfigMap (`"configmaps"`) or Secret (`"secrets"`, decoded) in a
/// namespace; `None` when the object does not exist.
pub type ObjectData<'a> = dyn Fn(&str, &str, &str) -> Option<BTreeMap<String, String>> + 'a;

/// Where a pod's volume `name` lives on this machine.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// Writes the current content of every ConfigMap, Secret and emptyDir volume of `pod`
/// under `pod_dir/volumes/`. Files are replaced atomically (write, then rename), so a
/// process polling one never reads half a file. A missing object that is not `optional`
/// is an error, as a failed mount is for the kubelet: the container does not start.
pub fn project(pod: &Value, pod_dir: &Path, data: &ObjectData<'_>) -> Result<(), String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for v in &volumes {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("volume name {name:?} is invalid"));
        }
        let dir = volume_dir(pod_dir, name);
        let (kind, source, object) = if let Some(src) = v.get("configMap") {
            ("configmaps", src, src.get("name"))
        } else if let Some(src) = v.get("secret") {
            ("secrets", src, src.get("secretName"))
        } else {
            if v.get("emptyDir").is_some() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("volume {name}: {e}"))?;
            }
            continue;
        };
        let object = object.and_then(Value::as_str).unwrap_or_default();
        let optional = source
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let Some(values) = data(kind, ns, object) else {
            if optional {
                std::fs::create_dir_all(&dir).map_err(|e| format!("volume {name}: {e}"))?;
                continue;
            }
            return Err(format!(
                "MountVolume.SetUp failed for volume {name:?}: {kind} {object:?} not found"
            ));
        };
        let files: Vec<(String, String)> = match source.get("items").and_then(Value::as_array) {
            None => values.into_iter().collect(),
            Some(items) => {
                let mut files = Vec::new();
                for item in items {
                    let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
                    let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                    match values.get(key) {
                        Some(v) => files.push((path.to_string(), v.clone())),
                        None if optional => {}
                        None => return Err(format!("MountVolume.SetUp failed for volume {name:?}: {kind} {object:?} has no key {key:?}")),
                    }
                }
                files
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("volume {name}: {e}"))?;
        for (path, content) in files {
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(format!("volume {name}: item path {path:?} is invalid"));
            }
            let file = dir.join(&path);
            if std::fs::read(&file).is_ok_and(|old| old == content.as_bytes()) {
                continue;
            }
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("volume {name}: {e}"))?;
            }
            let tmp = file.with_extension("kubesim-tmp");
            std::fs::write(&tmp, content.as_bytes())
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(|e| format!("volume {name}: {path}: {e}"))?;
        }
    }
    Ok(())
}

/// `(mountPath, local directory)` of each of the container's volume mounts, longest mount
/// path first (so that nested mounts win).
pub fn mounts(container: &Value, pod_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = m
                .get("mountPath")?
                .as_str()?
                .trim_end_matches('/')
                .to_string();
            let name = m.get("name")?.as_str()?;
            let mut local = volume_dir(pod_dir, name);
            if let Some(sub) = m
                .get("subPath")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                local = local.join(sub);
            }
            (!path.is_empty()).then_some((path, local))
        })
        .collect();
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

/// Rewrites a mount path at the start of any path in `input` (the whole string, or after
/// `=` as in `--flag=/etc/x`) to its local directory.
pub fn rewrite_mounts(input: &str, mounts: &[(String, PathBuf)]) -> String {
    let rewrite = |s: &str| -> Option<String> {
        mounts.iter().find_map(|(path, local)| {
            let rest = s.strip_prefix(path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", local.display()))
        })
    };
    if let Some(r) = rewrite(input) {
        return r;
    }
    if let Some((flag, value)) = input.split_once('=') {
        if let Some(r) = rewrite(value) {
            return format!("{flag}={r}");
        }
    }
    input.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"volumes": [
                {"name": "cfg", "configMap": {"name": "c", "items": [{"key": "doc.json", "path": "doc.json"}]}},
                {"name": "all", "configMap": {"name": "c"}},
                {"name": "maybe", "configMap": {"name": "absent", "optional": true}},
                {"name": "tmp", "emptyDir": {}},
            ]}
        })
    }

    #[test]
    fn projects_config_maps_and_keeps_them_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = std::cell::RefCell::new(String::from("{\"epoch\":1}"));
        let data = |kind: &str, ns: &str, name: &str| -> Option<BTreeMap<String, String>> {
            assert_eq!((kind, ns), ("configmaps", "ns"));
            (name == "c").then(|| {
                BTreeMap::from([
                    ("doc.json".to_string(), content.borrow().clone()),
                    ("other".to_string(), "x".to_string()),
                ])
            })
        };
        project(&pod(), dir.path(), &data).expect("projected");
        let doc = volume_dir(dir.path(), "cfg").join("doc.json");
        assert_eq!(std::fs::read_to_string(&doc).unwrap(), "{\"epoch\":1}");
        assert!(
            !volume_dir(dir.path(), "cfg").join("other").exists(),
            "items select keys"
        );
        assert!(volume_dir(dir.path(), "all").join("other").exists());
        assert!(volume_dir(dir.path(), "tmp").is_dir());
        *content.borrow_mut() = "{\"epoch\":2}".into();
        project(&pod(), dir.path(), &data).expect("projected");
        assert_eq!(std::fs::read_to_string(&doc).unwrap(), "{\"epoch\":2}");
    }

    #[test]
    fn a_missing_config_map_fails_the_mount_unless_optional() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = |_: &str, _: &str, _: &str| None;
        let err = project(&pod(), dir.path(), &none).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        let only_optional = json!({"metadata": {"namespace": "ns"}, "spec": {"volumes": [{"name": "maybe", "configMap": {"name": "absent", "optional": true}}]}});
        project(&only_optional, dir.path(), &none).expect("optional volume");
    }

    #[test]
    fn mount_paths_in_args_point_at_the_projected_files() {
        let dir = Path::new("/state/pods/ns/p");
        let c = json!({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/registry/membership"}, {"name": "tmp", "mountPath": "/etc"}]});
        let m = mounts(&c, dir);
        assert_eq!(
            rewrite_mounts("/etc/registry/membership/doc.json", &m),
            "/state/pods/ns/p/volumes/cfg/doc.json"
        );
        assert_eq!(
            rewrite_mounts("--members-file=/etc/registry/membership/doc.json", &m),
            "--members-file=/state/pods/ns/p/volumes/cfg/doc.json"
        );
        assert_eq!(
            rewrite_mounts("/etc/x", &m),
            "/state/pods/ns/p/volumes/tmp/x"
        );
        assert_eq!(rewrite_mounts("/etcetera", &m), "/etcetera");
        assert_eq!(rewrite_mounts("--role", &m), "--role");
    }
}
