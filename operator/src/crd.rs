//! The `RegistryCluster` custom resource: spec, status and the CRD generated from them.

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "sofaregistry.dev";
pub const VERSION: &str = "v1alpha1";
/// Port of the data listener on every data pod (docs/INTERNAL.md).
pub const DATA_PORT: u16 = 9622;
pub const DEFAULT_SESSION_PORT: u16 = 9603;

/// Longest cluster name: `<name>-session` (the longest StatefulSet name) stays within the
/// 52 characters a StatefulSet name may have.
pub const MAX_NAME_LENGTH: usize = 44;
const NAME_PATTERN_RULE: &str = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
const NAME_PATTERN_MESSAGE: &str = "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and ending with a letter or digit): it names the cluster's Services";
const NAME_LENGTH_RULE: &str = "self.metadata.name.size() <= 44";
const NAME_LENGTH_MESSAGE: &str = "metadata.name must be at most 44 characters: the StatefulSet <name>-session must leave room for its pods' controller-revision-hash label";

/// An image reference as container runtimes parse it (the distribution reference grammar):
/// an optional registry host (`[a-zA-Z0-9-.]` labels, optional port), lower-case path
/// components separated by `/`, an optional tag and an optional digest. The API server
/// accepts any non-blank string as a container image, so a typo would otherwise be stored
/// and only show up as pods that never start.
pub const IMAGE_PATTERN: &str = concat!(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
);

/// A SOFARegistry-style service registry: session nodes that clients talk to, data nodes
/// that hold the sharded, replicated datums, and the membership that ties them together.
// Several printcolumn() share key names, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sofaregistry.dev",
    version = "v1alpha1",
    kind = "RegistryCluster",
    plural = "registryclusters",
    shortname = "regc",
    namespaced,
    status = "RegistryClusterStatus",
    derive = "PartialEq",
    doc = "A service registry cluster: session and data StatefulSets with operator-managed data-node membership.",
    // Objects are named after the cluster: the client Service `<name>` and the headless
    // Services `<name>-session|-data` are DNS-1035 labels, and a StatefulSet's pods carry
    // `controller-revision-hash: <statefulset>-<hash of up to 10 characters>`, a label value
    // of at most 63 characters, so `<name>-session` may have at most 52.
    validation = kube::core::Rule::new(NAME_PATTERN_RULE).message(NAME_PATTERN_MESSAGE),
    validation = kube::core::Rule::new(NAME_LENGTH_RULE).message(NAME_LENGTH_MESSAGE),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Data",
        type_ = "integer",
        json_path = ".status.readyDataReplicas"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "integer",
        json_path = ".status.readySessionReplicas"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.membership.epoch"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RegistryClusterSpec {
    /// Container image that provides the `registry-node` binary as its entrypoint: an image
    /// reference (`[registry[:port]/]path[:tag][@digest]`, path lower-case).
    #[schemars(length(min = 1, max = 512), pattern(IMAGE_PATTERN))]
    pub image: String,
    /// Image pull policy of the node containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Session nodes: client sessions, publishers, subscribers and push.
    #[serde(default)]
    pub session: SessionSpec,
    /// Data nodes: the sharded, replicated datums.
    #[serde(default)]
    pub data: DataSpec,
    /// Copies of each datum (primary + backups), capped at the number of data nodes.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 7))]
    pub replication_factor: u32,
    /// Points per data node on the consistent-hash ring. Changing it restarts every node.
    #[serde(default = "default_virtual_nodes")]
    #[schemars(range(min = 1, max = 10000))]
    pub virtual_nodes: u32,
    /// Push debounce on session nodes; applied to running nodes without a restart.
    #[serde(default = "default_push_delay_millis")]
    #[schemars(range(min = 0, max = 60000))]
    pub push_delay_millis: u32,
    /// Pause every push (for mass restarts); when cleared, every subscriber catches up.
    /// Applied to running nodes without a restart.
    #[serde(default)]
    pub stop_push: bool,
    /// A key of a Secret in this namespace holding the bearer token for the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<TokenSecretRef>,
    /// Access rules of the public API (README "Access rules"): static tokens (hex
    /// SHA-256) and which principals (`token:NAME`, `serviceaccount:NS/NAME`, checked with
    /// TokenReview) may publish and subscribe to which dataId patterns and who is admin.
    /// Rendered into the Secret `<name>-access`, mounted by the session pods; changes apply
    /// without a restart. With it, everything not granted is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<registry_types::access::AccessDoc>,
    /// TLS for every node: the public API over HTTPS, and mutual TLS on the internal
    /// listeners, between nodes and from the operator (SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Node selector for every node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of every node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of every node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra labels on every node pod (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on every node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    #[serde(default = "default_session_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Port of the public HTTP API (container and client Service).
    #[serde(default = "default_session_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            replicas: default_session_replicas(),
            resources: None,
            port: default_session_port(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    #[serde(default = "default_data_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            replicas: default_data_replicas(),
            resources: None,
        }
    }
}

/// The certificate every node uses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret in this namespace in the cert-manager layout: `tls.crt` (the certificate
    /// chain), `tls.key` (its key) and `ca.crt` (the CA that every node's and the
    /// operator's certificate chains to). Mounted into every node pod; a renewed Secret is
    /// used without a restart. The certificate serves the public API too, so list the
    /// client Service's DNS names in it.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Where the API token lives: `key` of Secret `name` in the cluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_replication_factor() -> u32 {
    3
}
fn default_virtual_nodes() -> u32 {
    1000
}
fn default_push_delay_millis() -> u32 {
    200
}
fn default_session_replicas() -> u32 {
    2
}
fn default_data_replicas() -> u32 {
    3
}
fn default_session_port() -> u16 {
    DEFAULT_SESSION_PORT
}
fn default_token_key() -> String {
    "token".to_owned()
}

/// What the operator last observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub data_replicas: u32,
    #[serde(default)]
    pub ready_data_replicas: u32,
    #[serde(default)]
    pub updated_data_replicas: u32,
    #[serde(default)]
    pub session_replicas: u32,
    #[serde(default)]
    pub ready_session_replicas: u32,
    #[serde(default)]
    pub updated_session_replicas: u32,
    /// The data-node membership the operator publishes to every node.
    #[serde(default)]
    pub membership: Membership,
}

/// The published data-node membership. `epoch` strictly increases with every change of the
/// ring or of the leaving set; nodes ignore a document with an older epoch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The data pod's name.
    pub name: String,
    /// `podIP:9622`: the node's identity on the ring.
    pub address: String,
    pub state: MemberState,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MemberState {
    /// In the ring, still fetching the datums it owns.
    Joining,
    /// In the ring and synced.
    Active,
    /// Out of the ring, handing its datums over before it is stopped.
    Leaving,
}

impl RegistryCluster {
    /// A minimal cluster, for tests and examples.
    pub fn example(name: &str, namespace: &str, image: &str) -> RegistryCluster {
        let mut rc = RegistryCluster::new(
            name,
            RegistryClusterSpec {
                image: image.to_owned(),
                image_pull_policy: None,
                session: SessionSpec::default(),
                data: DataSpec::default(),
                replication_factor: default_replication_factor(),
                virtual_nodes: default_virtual_nodes(),
                push_delay_millis: default_push_delay_millis(),
                stop_push: false,
                token_secret_ref: None,
                access: None,
                tls: None,
                node_selector: None,
                tolerations: None,
                affinity: None,
                pod_labels: None,
                pod_annotations: None,
            },
        );
        rc.metadata.namespace = Some(namespace.to_owned());
        rc
    }

    /// Builder-style helpers for tests.
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.metadata.uid = Some(uid.to_owned());
        self
    }
    pub fn with_data_replicas(mut self, n: u32) -> Self {
        self.spec.data.replicas = n;
        self
    }
    pub fn with_session_replicas(mut self, n: u32) -> Self {
        self.spec.session.replicas = n;
        self
    }
    pub fn with_token(mut self, secret: &str, key: &str) -> Self {
        self.spec.token_secret_ref = Some(TokenSecretRef {
            name: secret.to_owned(),
            key: key.to_owned(),
        });
        self
    }
    pub fn with_tls(mut self, secret_name: &str) -> Self {
        self.spec.tls = Some(TlsSpec {
            secret_name: secret_name.to_owned(),
        });
        self
    }
    pub fn with_status(mut self, status: RegistryClusterStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// The CRD as YAML, exactly what `crdgen` writes to `crds/registrycluster.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&RegistryCluster::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p operator --bin crdgen`; do not edit.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/registrycluster.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crd_yaml().expect("crd serializes"),
            "crds/registrycluster.yaml is stale: run `cargo run -p operator --bin crdgen`"
        );
    }

    #[test]
    fn crd_has_names_subresource_columns_defaults_and_ranges() {
        let crd = serde_json::to_value(RegistryCluster::crd()).unwrap();
        assert_eq!(crd["spec"]["group"], "sofaregistry.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "regc");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Ready", "Data", "Sessions", "Epoch", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["replicationFactor"]["default"], 3);
        assert_eq!(spec["replicationFactor"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(spec["virtualNodes"]["default"], 1000);
        assert_eq!(spec["pushDelayMillis"]["maximum"].as_f64(), Some(60000.0));
        assert_eq!(
            spec["data"]["properties"]["replicas"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(spec["data"]["default"]["replicas"], 3);
        assert_eq!(spec["session"]["default"]["port"], 9603);
        let required = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"]
            .as_array()
            .unwrap();
        assert_eq!(required, &vec![serde_json::json!("image")]);
    }

    fn cel_verdict(name: &str) -> Result<(), String> {
        let crd = serde_json::to_value(RegistryCluster::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut object =
            serde_json::to_value(RegistryCluster::example(name, "ns", "img:1")).unwrap();
        object["metadata"]["name"] = serde_json::json!(name);
        kube::core::cel::Validator::new()
            .validate(schema, &object, None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_crd_refuses_names_its_objects_could_not_carry() {
        let longest = format!("r{}", "e".repeat(MAX_NAME_LENGTH - 1));
        for ok in ["reg", "a", "my-registry-2", longest.as_str()] {
            assert_eq!(cel_verdict(ok), Ok(()), "{ok}");
        }
        let too_long = format!("{longest}x");
        for (bad, why) in [
            (too_long.as_str(), "at most 44"),
            ("1reg", "DNS-1035"),
            ("reg.prod", "DNS-1035"),
            ("reg-", "DNS-1035"),
            ("Reg", "DNS-1035"),
        ] {
            let err = cel_verdict(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        // The longest name still yields valid names for everything derived from it.
        let names = crate::resources::Names(&longest);
        use crate::resources::NodeRole;
        for role in [NodeRole::Data, NodeRole::Session] {
            assert!(names.statefulset(role).len() <= 52);
            assert!(names.headless(role).len() <= 63);
            assert!(names.pod(role, 99).len() <= 63);
        }
        assert!(names.config().len() <= 253 && names.node_account().len() <= 253);
    }

    #[test]
    fn the_image_pattern_takes_references_and_refuses_typos() {
        let pattern = regex::Regex::new(IMAGE_PATTERN).unwrap();
        for ok in [
            "registry-node:v1",
            "sofaregistry/registry-node:0.1.0",
            "registry.example.com:5000/team/registry-node:1.2.3-rc.1",
            "localhost/registry_node",
            "ghcr.io/org/registry-node@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "",
            "sofaregistry/Registry-Node:1",
            "registry node:1",
            " registry-node:1",
            "registry-node:",
            "registry-node:1:2",
            "-registry-node",
            "registry-node:1\n",
        ] {
            assert!(!pattern.is_match(bad), "{bad:?}");
        }
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: RegistryClusterSpec =
            serde_json::from_value(serde_json::json!({"image": "registry-node:1"})).unwrap();
        assert_eq!(spec.data.replicas, 3);
        assert_eq!(spec.session.replicas, 2);
        assert_eq!(spec.session.port, 9603);
        assert_eq!(spec.replication_factor, 3);
        assert_eq!(spec.push_delay_millis, 200);
        assert!(!spec.stop_push);
    }
}
