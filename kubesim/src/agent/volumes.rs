//! A pod's volumes as files, the way a kubelet lays them out: `emptyDir`, `configMap`,
//! `secret`, `downwardAPI` and `projected` (with `serviceAccountToken`, so that the
//! ServiceAccount admission's `kube-api-access-*` volume gives a pod the standard
//! `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`).
//!
//! Volume `NAME` of a pod is the directory `{pod dir}/volumes/NAME`, written atomically as
//! the kubelet does (files are links into `..data`, which is swapped by one rename), so that
//! a process reading a mounted ConfigMap while it changes sees the old or the new document,
//! never half of each. [`Volumes::refresh`] runs again while the pod runs: ConfigMap and
//! Secret changes reach the files, and tokens are renewed at 80% of their life.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;
use parking_lot::Mutex;
use serde_json::Value;

use super::RefCache;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

struct Token {
    value: String,
    renew_at: Instant,
}

/// The volumes of one pod.
pub struct Volumes {
    client: Client,
    pod: Value,
    dir: PathBuf,
    refs: RefCache,
    tokens: Mutex<HashMap<(String, i64), Token>>,
    /// What each volume holds now (path → (bytes, mode)), to write only on change.
    written: Mutex<HashMap<String, Files>>,
    generation: Mutex<u64>,
}

type Files = BTreeMap<String, (Vec<u8>, u32)>;

impl Volumes {
    pub fn new(client: Client, pod: Value, dir: PathBuf, refs: RefCache) -> Self {
        Self {
            client,
            pod,
            dir,
            refs,
            tokens: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            generation: Mutex::new(0),
        }
    }

    fn namespace(&self) -> &str {
        s(&self.pod, "/metadata/namespace")
    }

    /// Fetches what the pod's environment references (so that the container can start
    /// from [`RefCache`]) and writes every volume. An error names what is missing.
    pub async fn refresh(&self) -> Result<(), String> {
        self.fetch_env_refs().await?;
        let volumes = self
            .pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in &volumes {
            let name = s(v, "/name");
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(format!("volume name {name:?} is not valid"));
            }
            let path = self.dir.join("volumes").join(name);
            if v.get("emptyDir").is_some() {
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|e| format!("emptyDir {name}: {e}"))?;
                    // As a kubelet's: writable by whatever user the containers run as.
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
                }
                continue;
            }
            let files = self.volume_files(v).await?;
            self.write(name, &path, files)?;
        }
        Ok(())
    }

    async fn fetch_env_refs(&self) -> Result<(), String> {
        let ns = self.namespace().to_string();
        let containers = self
            .pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &containers {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                for (kind, field) in [
                    ("configmaps", "/valueFrom/configMapKeyRef"),
                    ("secrets", "/valueFrom/secretKeyRef"),
                ] {
                    if let Some(r) = e.pointer(field) {
                        let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                        self.fetch(kind, &ns, s(r, "/name"), optional).await?;
                    }
                }
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for (kind, field) in [("configmaps", "/configMapRef"), ("secrets", "/secretRef")] {
                    if let Some(r) = e.pointer(field) {
                        let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                        self.fetch(kind, &ns, s(r, "/name"), optional).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a ConfigMap or Secret into the cache (values decoded); `None` when it does not
    /// exist (an error unless optional).
    async fn fetch(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let got = if kind == "secrets" {
            Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| {
                    o.map(|s| {
                        let mut m: BTreeMap<String, Vec<u8>> = s
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        m.extend(
                            s.string_data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes())),
                        );
                        m
                    })
                })
        } else {
            Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map(|o| {
                    o.map(|c| {
                        let mut m: BTreeMap<String, Vec<u8>> = c
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()))
                            .collect();
                        m.extend(
                            c.binary_data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0)),
                        );
                        m
                    })
                })
        };
        let got = got.map_err(|e| format!("{kind} {ns}/{name}: {e}"))?;
        self.refs.put(kind, ns, name, got.clone());
        match got {
            None if !optional => Err(format!("{kind} {name:?} not found")),
            other => Ok(other),
        }
    }

    fn mode(v: &Value, default: u32) -> u32 {
        v.get("defaultMode")
            .or_else(|| v.get("mode"))
            .and_then(Value::as_u64)
            .map(|m| m as u32 & 0o7777)
            .unwrap_or(default)
    }

    /// `items` (key → path, mode) applied to a ConfigMap's or Secret's values.
    fn project(
        values: &BTreeMap<String, Vec<u8>>,
        source: &Value,
        mode: u32,
        what: &str,
    ) -> Result<Files, String> {
        let mut files = Files::new();
        match source.get("items").and_then(Value::as_array) {
            Some(items) => {
                for item in items {
                    let key = s(item, "/key");
                    let Some(bytes) = values.get(key) else {
                        if source.get("optional").and_then(Value::as_bool) == Some(true) {
                            continue;
                        }
                        return Err(format!("{what}: key {key:?} not found"));
                    };
                    files.insert(
                        s(item, "/path").to_string(),
                        (bytes.clone(), Self::mode(item, mode)),
                    );
                }
            }
            None => {
                for (k, bytes) in values {
                    files.insert(k.clone(), (bytes.clone(), mode));
                }
            }
        }
        Ok(files)
    }

    async fn volume_files(&self, v: &Value) -> Result<Files, String> {
        let ns = self.namespace().to_string();
        let name = s(v, "/name");
        if let Some(cm) = v.get("configMap") {
            let optional = cm.get("optional").and_then(Value::as_bool) == Some(true);
            let values = self
                .fetch("configmaps", &ns, s(cm, "/name"), optional)
                .await?
                .unwrap_or_default();
            return Self::project(
                &values,
                cm,
                Self::mode(cm, 0o644),
                &format!("volume {name}"),
            );
        }
        if let Some(secret) = v.get("secret") {
            let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
            let values = self
                .fetch("secrets", &ns, s(secret, "/secretName"), optional)
                .await?
                .unwrap_or_default();
            return Self::project(
                &values,
                secret,
                Self::mode(secret, 0o644),
                &format!("volume {name}"),
            );
        }
        if let Some(d) = v.get("downwardAPI") {
            return self.downward(d, Self::mode(d, 0o644));
        }
        if let Some(p) = v.get("projected") {
            let mode = Self::mode(p, 0o644);
            let mut files = Files::new();
            for source in p
                .get("sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(cm) = source.get("configMap") {
                    let optional = cm.get("optional").and_then(Value::as_bool) == Some(true);
                    let values = self
                        .fetch("configmaps", &ns, s(cm, "/name"), optional)
                        .await?
                        .unwrap_or_default();
                    files.extend(Self::project(&values, cm, mode, &format!("volume {name}"))?);
                } else if let Some(secret) = source.get("secret") {
                    let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
                    let values = self
                        .fetch("secrets", &ns, s(secret, "/name"), optional)
                        .await?
                        .unwrap_or_default();
                    files.extend(Self::project(
                        &values,
                        secret,
                        mode,
                        &format!("volume {name}"),
                    )?);
                } else if let Some(d) = source.get("downwardAPI") {
                    files.extend(self.downward(d, mode)?);
                } else if let Some(t) = source.get("serviceAccountToken") {
                    let token = self
                        .token(
                            s(t, "/audience"),
                            t.get("expirationSeconds")
                                .and_then(Value::as_i64)
                                .unwrap_or(3600),
                        )
                        .await?;
                    files.insert(s(t, "/path").to_string(), (token.into_bytes(), mode));
                }
            }
            return Ok(files);
        }
        Err(format!("volume {name}: only emptyDir, configMap, secret, downwardAPI and projected volumes can be run here"))
    }

    fn downward(&self, d: &Value, mode: u32) -> Result<Files, String> {
        let mut files = Files::new();
        for item in d
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = s(item, "/fieldRef/fieldPath");
            let value = match field {
                "metadata.name" => s(&self.pod, "/metadata/name").to_string(),
                "metadata.namespace" => self.namespace().to_string(),
                "metadata.uid" => s(&self.pod, "/metadata/uid").to_string(),
                "metadata.labels" | "metadata.annotations" => {
                    let key = field.trim_start_matches("metadata.");
                    let map = self
                        .pod
                        .pointer(&format!("/metadata/{key}"))
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    map.iter()
                        .map(|(k, v)| format!("{k}=\"{}\"\n", v.as_str().unwrap_or_default()))
                        .collect()
                }
                other => return Err(format!("downwardAPI field {other:?} is not supported here")),
            };
            files.insert(
                s(item, "/path").to_string(),
                (value.into_bytes(), Self::mode(item, mode)),
            );
        }
        Ok(files)
    }

    /// A token of the pod's ServiceAccount from the TokenRequest API, bound to the pod (as a
    /// kubelet asks for it; the node authorizer allows no other), renewed at 80% of its life.
    async fn token(&self, audience: &str, expiration: i64) -> Result<String, String> {
        let key = (audience.to_string(), expiration);
        if let Some(t) = self
            .tokens
            .lock()
            .get(&key)
            .filter(|t| Instant::now() < t.renew_at)
        {
            return Ok(t.value.clone());
        }
        let sa = self
            .pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": if audience.is_empty() { Vec::new() } else { vec![audience.to_string()] },
                "expirationSeconds": expiration,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": s(&self.pod, "/metadata/name"), "uid": s(&self.pod, "/metadata/uid")},
            },
        });
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), self.namespace());
        let answer: Value = api
            .create_subresource("token", sa, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("token of ServiceAccount {}/{sa}: {e}", self.namespace()))?;
        let value = s(&answer, "/status/token").to_string();
        if value.is_empty() {
            return Err(format!(
                "token of ServiceAccount {}/{sa}: empty answer",
                self.namespace()
            ));
        }
        let life = Duration::from_secs(expiration.max(600) as u64);
        self.tokens.lock().insert(
            key,
            Token {
                value: value.clone(),
                renew_at: Instant::now() + life.mul_f64(0.8),
            },
        );
        Ok(value)
    }

    /// Writes `files` into the volume directory atomically, unless they are unchanged.
    fn write(&self, name: &str, path: &Path, files: Files) -> Result<(), String> {
        if self.written.lock().get(name) == Some(&files) && path.join("..data").exists() {
            return Ok(());
        }
        let err = |what: &str, e: std::io::Error| format!("volume {name}: {what}: {e}");
        std::fs::create_dir_all(path).map_err(|e| err("directory", e))?;
        let generation = {
            let mut g = self.generation.lock();
            *g += 1;
            *g
        };
        let data_dir_name = format!("..{generation}");
        let data_dir = path.join(&data_dir_name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let (uid, gid) = self.owner();
        for (rel, (bytes, mode)) in &files {
            if rel.is_empty()
                || rel.starts_with('/')
                || rel.split('/').any(|c| c == ".." || c.starts_with(".."))
            {
                return Err(format!("volume {name}: path {rel:?} leaves the volume"));
            }
            let file = data_dir.join(rel);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err("directory", e))?;
            }
            std::fs::write(&file, bytes).map_err(|e| err(rel, e))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| err(rel, e))?;
            let _ = std::os::unix::fs::chown(&file, uid, gid);
        }
        std::fs::create_dir_all(&data_dir).map_err(|e| err("directory", e))?;
        let tmp = path.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&data_dir_name, &tmp).map_err(|e| err("link", e))?;
        std::fs::rename(&tmp, path.join("..data")).map_err(|e| err("link", e))?;
        let tops: std::collections::BTreeSet<String> = files
            .keys()
            .filter_map(|k| k.split('/').next())
            .map(str::to_string)
            .collect();
        for top in &tops {
            let link = path.join(top);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{top}"), &link).map_err(|e| err("link", e))?;
            }
        }
        for e in std::fs::read_dir(path)
            .map_err(|e| err("directory", e))?
            .flatten()
        {
            let entry = e.file_name().to_string_lossy().to_string();
            let stale_link = !entry.starts_with("..") && !tops.contains(&entry);
            let stale_data = entry.starts_with("..") && entry != "..data" && entry != data_dir_name;
            if stale_link {
                let _ = std::fs::remove_file(e.path());
            } else if stale_data {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        self.written.lock().insert(name.to_string(), files);
        Ok(())
    }

    /// Files belong to the pod's user when every container runs as the same one (as a
    /// kubelet does for tokens), their group is the pod's `fsGroup`.
    fn owner(&self) -> (Option<u32>, Option<u32>) {
        let pod_user = self
            .pod
            .pointer("/spec/securityContext/runAsUser")
            .and_then(Value::as_u64);
        let users: std::collections::BTreeSet<Option<u64>> = self
            .pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                c.pointer("/securityContext/runAsUser")
                    .and_then(Value::as_u64)
                    .or(pod_user)
            })
            .collect();
        let uid = match users.iter().collect::<Vec<_>>().as_slice() {
            [Some(u)] => Some(*u as u32),
            _ => None,
        };
        let gid = self
            .pod
            .pointer("/spec/securityContext/fsGroup")
            .and_then(Value::as_u64)
            .map(|g| g as u32);
        (uid, gid)
    }
}
