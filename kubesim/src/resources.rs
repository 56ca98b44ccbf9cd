//! The resource types the API serves: built-in kinds plus those of CRDs applied at runtime.

use serde_json::Value;

use crate::error::{Error, Result};

/// Identity of stored objects: a group and a plural resource name (the version is only
/// how objects are served; all versions of a CRD share one store, without conversion).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// A `additionalPrinterColumns` entry of a CRD version.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i64,
}

/// The `scale` subresource paths (StatefulSets, Deployments, CRDs that declare it).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One servable group/version/resource.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Name of the CRD that defined this type (None for built-in kinds).
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_version(&self) -> String {
        self.api_version()
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    scale: bool,
}

#[allow(clippy::too_many_arguments)] // one row of the table of built-in resources
const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    scale: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        status,
        scale,
    }
}

const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        &["ns"],
        true,
        false,
    ),
    b("", "v1", "pods", "Pod", true, &["po"], true, false),
    b("", "v1", "services", "Service", true, &["svc"], true, false),
    b(
        "",
        "v1",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
        false,
    ),
    b(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        &["cm"],
        false,
        false,
    ),
    b("", "v1", "secrets", "Secret", true, &[], false, false),
    b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        false,
    ),
    b("", "v1", "events", "Event", true, &["ev"], false, false),
    b(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        true,
        false,
    ),
    b(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        &["sts"],
        true,
        true,
    ),
    b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        true,
    ),
    b(
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
        &[],
        false,
        false,
    ),
    b(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
        false,
    ),
    // Stored and served; like most local clusters, the simulator does not enforce them.
    b(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        false,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        false,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
        false,
    ),
    b(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        &["ev"],
        false,
        false,
    ),
];

/// All servable resource types.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Self {
        let types = BUILTINS
            .iter()
            .map(|b| ResourceType {
                group: b.group.into(),
                version: b.version.into(),
                plural: b.plural.into(),
                singular: b.kind.to_lowercase(),
                kind: b.kind.into(),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: Vec::new(),
                status: b.status,
                scale: b.scale.then(|| ScalePaths {
                    spec_replicas: ".spec.replicas".into(),
                    status_replicas: ".status.replicas".into(),
                    label_selector: None,
                }),
                printer_columns: Vec::new(),
                crd: None,
            })
            .collect();
        Self { types }
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Any served version of a group/resource (for internal access by stored identity).
    pub fn find_gr(&self, gr: &GroupResource) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == gr.group && t.plural == gr.resource)
    }

    /// The type with this `apiVersion` and `kind` (owner references, GC).
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    /// Groups with their versions, in first-seen order (for `/apis`).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    /// Registers (or re-registers) the served versions of a CRD object.
    pub fn apply_crd(&mut self, crd: &Value) -> Result<()> {
        let types = crd_types(crd)?;
        let name = types
            .first()
            .and_then(|t| t.crd.clone())
            .unwrap_or_default();
        for t in &types {
            let clash = self.types.iter().any(|o| {
                o.crd.as_deref() != Some(name.as_str())
                    && o.group == t.group
                    && o.plural == t.plural
            });
            if clash {
                return Err(Error::invalid(format!(
                    "CustomResourceDefinition {name:?} is invalid: resource {}.{} is already served",
                    t.plural, t.group
                )));
            }
        }
        self.types
            .retain(|t| t.crd.as_deref() != Some(name.as_str()));
        self.types.extend(types);
        Ok(())
    }

    pub fn remove_crd(&mut self, name: &str) {
        self.types.retain(|t| t.crd.as_deref() != Some(name));
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn strings_at(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Validates a CRD object and derives the resource types of its served versions.
pub fn crd_types(crd: &Value) -> Result<Vec<ResourceType>> {
    let name = str_at(crd, "/metadata/name")
        .unwrap_or_default()
        .to_string();
    let bad = |what: &str| {
        Error::invalid(format!(
            "CustomResourceDefinition.apiextensions.k8s.io {name:?} is invalid: {what}"
        ))
    };
    let group = str_at(crd, "/spec/group")
        .filter(|g| !g.is_empty())
        .ok_or_else(|| bad("spec.group: Required value"))?;
    let plural = str_at(crd, "/spec/names/plural")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("spec.names.plural: Required value"))?;
    let kind = str_at(crd, "/spec/names/kind")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("spec.names.kind: Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(bad(&format!("metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({plural}.{group})")));
    }
    let namespaced = match str_at(crd, "/spec/scope") {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(bad(
                "spec.scope: Unsupported value: must be Namespaced or Cluster",
            ))
        }
    };
    let singular = str_at(crd, "/spec/names/singular")
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("spec.versions: Required value"))?;
    let mut types = Vec::new();
    for v in versions {
        let version = str_at(v, "/name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("spec.versions[].name: Required value"))?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "/name").unwrap_or_default().to_string(),
                        type_: str_at(c, "/type").unwrap_or("string").to_string(),
                        json_path: str_at(c, "/jsonPath").unwrap_or_default().to_string(),
                        description: str_at(c, "/description").unwrap_or_default().to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: str_at(s, "/specReplicasPath")
                .unwrap_or(".spec.replicas")
                .to_string(),
            status_replicas: str_at(s, "/statusReplicasPath")
                .unwrap_or(".status.replicas")
                .to_string(),
            label_selector: str_at(s, "/labelSelectorPath").map(str::to_string),
        });
        types.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            namespaced,
            short_names: strings_at(crd, "/spec/names/shortNames"),
            categories: strings_at(crd, "/spec/names/categories"),
            status: v.pointer("/subresources/status").is_some(),
            scale,
            printer_columns,
            crd: Some(name.clone()),
        });
    }
    if types.is_empty() {
        return Err(bad("spec.versions: no served version"));
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]}]}
        })
    }

    #[test]
    fn crd_becomes_servable_and_removable() {
        let mut r = Registry::builtin();
        assert!(r.find("example.com", "v1", "widgets").is_none());
        r.apply_crd(&crd()).unwrap();
        let t = r.find("example.com", "v1", "widgets").unwrap();
        assert!(t.namespaced && t.status && t.scale.is_none());
        assert_eq!(t.short_names, vec!["wg"]);
        assert_eq!(t.printer_columns[0].json_path, ".spec.size");
        assert!(r
            .groups()
            .iter()
            .any(|(g, v)| g == "example.com" && v == &["v1"]));
        r.apply_crd(&crd()).unwrap();
        assert_eq!(
            r.types().iter().filter(|t| t.plural == "widgets").count(),
            1
        );
        r.remove_crd("widgets.example.com");
        assert!(r.find("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn bad_crds_are_invalid() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong");
        assert_eq!(crd_types(&c).unwrap_err().code(), 422);
        let mut c = crd();
        c["spec"]["scope"] = json!("Galaxy");
        assert_eq!(crd_types(&c).unwrap_err().code(), 422);
        let mut c = crd();
        c["spec"]["group"] = json!("apps");
        c["metadata"]["name"] = json!("statefulsets.apps");
        c["spec"]["names"]["plural"] = json!("statefulsets");
        assert_eq!(Registry::builtin().apply_crd(&c).unwrap_err().code(), 422);
    }
}
