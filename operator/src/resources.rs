//! Desired Kubernetes objects for a RegistryCluster: Services, StatefulSets, PDBs, the node
//! ConfigMap and RBAC. Pure builders; the reconciler server-side-applies what they return.

use crate::crd::{RegistryCluster, DATA_PORT, GROUP};
use crate::membership::MembershipDoc;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapKeySelector, ConfigMapVolumeSource, Container, ContainerPort,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use registry_trust::{MembershipKey, MembershipSigner};
use registry_types::access::{sha256_hex, AccessDoc, AccessError, AccessRule, StaticToken};
use std::collections::BTreeMap;

pub const MANAGER: &str = "registry-operator";
/// On a StatefulSet: hash of the pod template the operator last applied.
pub const TEMPLATE_HASH_ANNOTATION: &str = "sofaregistry.dev/template-hash";
pub const CLUSTER_LABEL: &str = "sofaregistry.dev/cluster";
pub const ROLE_LABEL: &str = "sofaregistry.dev/role";
pub const CONFIG_PUSH_DELAY: &str = "REGISTRY_PUSH_DELAY_MS";
pub const CONFIG_STOP_PUSH: &str = "REGISTRY_STOP_PUSH";
pub const CONFIG_MEMBERSHIP: &str = "membership.json";
/// Where node pods see the ConfigMap's membership document (`--members-file`).
pub const MEMBERSHIP_MOUNT: &str = "/etc/registry/membership";
const MEMBERSHIP_VOLUME: &str = "membership";
/// Where session pods find the rendered `spec.access` (the `<name>-access` Secret).
pub const ACCESS_MOUNT: &str = "/etc/registry/access";
const ACCESS_VOLUME: &str = "access";
/// The key of the access document in the `<name>-access` Secret.
pub const ACCESS_KEY: &str = "access.yaml";
/// The static token the operator renders into every access document for itself: its
/// admin calls (`/api/v1/admin/push`) need it once the rules deny everything else.
pub const OPERATOR_TOKEN_NAME: &str = "sofaregistry-operator";
/// The user and group of the registry-node image (distroless `nonroot`).
pub const NODE_UID: i64 = 65532;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    Data,
    Session,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Data => "data",
            NodeRole::Session => "session",
        }
    }
}

/// Names of everything a cluster owns.
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    pub fn statefulset(&self, role: NodeRole) -> String {
        format!("{}-{}", self.0, role.as_str())
    }
    /// Headless Service of a role; also the StatefulSet's `serviceName`.
    pub fn headless(&self, role: NodeRole) -> String {
        self.statefulset(role)
    }
    /// The ClusterIP Service clients use.
    pub fn client_service(&self) -> String {
        self.0.to_owned()
    }
    pub fn pdb(&self, role: NodeRole) -> String {
        self.statefulset(role)
    }
    pub fn node_account(&self) -> String {
        format!("{}-node", self.0)
    }
    /// The rendered `spec.access` of the session pods.
    pub fn access(&self) -> String {
        format!("{}-access", self.0)
    }
    pub fn config(&self) -> String {
        format!("{}-node-config", self.0)
    }
    pub fn pod(&self, role: NodeRole, ordinal: u32) -> String {
        format!("{}-{}", self.statefulset(role), ordinal)
    }
}

/// Labels that select a role's pods.
pub fn selector_labels(rc: &RegistryCluster, role: NodeRole) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "registry-node".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), rc.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            role.as_str().to_owned(),
        ),
    ])
}

/// `label=value,...` for listing a role's pods.
pub fn selector_string(rc: &RegistryCluster, role: NodeRole) -> String {
    selector_labels(rc, role)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(rc: &RegistryCluster, role: Option<NodeRole>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "registry-node".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), rc.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        (CLUSTER_LABEL.to_owned(), rc.name_any()),
    ]);
    if let Some(role) = role {
        l.insert(
            "app.kubernetes.io/component".to_owned(),
            role.as_str().to_owned(),
        );
        l.insert(ROLE_LABEL.to_owned(), role.as_str().to_owned());
    }
    l
}

fn owner(rc: &RegistryCluster) -> Vec<OwnerReference> {
    rc.controller_owner_ref(&()).into_iter().collect()
}

fn meta(rc: &RegistryCluster, name: String, role: Option<NodeRole>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rc.namespace(),
        labels: Some(labels(rc, role)),
        owner_references: Some(owner(rc)),
        ..Default::default()
    }
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

/// Headless Service of a role. Not-ready addresses are published because nodes must reach
/// peers that are still joining.
pub fn headless_service(rc: &RegistryCluster, role: NodeRole) -> Service {
    let ports = match role {
        NodeRole::Data => vec![port("data", DATA_PORT)],
        NodeRole::Session => vec![
            port("http", rc.spec.session.port),
            port("internal", SESSION_INTERNAL_PORT),
        ],
    };
    Service {
        metadata: meta(rc, Names(&rc.name_any()).headless(role), Some(role)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(rc, role)),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// The ClusterIP Service clients use to reach session nodes. A client session lives on one
/// session node, so a client's connections must keep landing on the same pod.
pub fn client_service(rc: &RegistryCluster) -> Service {
    Service {
        metadata: meta(
            rc,
            Names(&rc.name_any()).client_service(),
            Some(NodeRole::Session),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            session_affinity: Some("ClientIP".to_owned()),
            selector: Some(selector_labels(rc, NodeRole::Session)),
            ports: Some(vec![port("http", rc.spec.session.port)]),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn pod_disruption_budget(rc: &RegistryCluster, role: NodeRole) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(rc, Names(&rc.name_any()).pdb(role), Some(role)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(rc, role)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Settings nodes read at start (push settings as env) and the current membership document,
/// so that a node started while the operator is away still has a recent ring.
pub fn node_config(rc: &RegistryCluster, membership: &MembershipDoc) -> ConfigMap {
    let doc = serde_json::to_string(membership).unwrap_or_default();
    ConfigMap {
        metadata: meta(rc, Names(&rc.name_any()).config(), None),
        data: Some(BTreeMap::from([
            (
                CONFIG_PUSH_DELAY.to_owned(),
                rc.spec.push_delay_millis.to_string(),
            ),
            (CONFIG_STOP_PUSH.to_owned(), rc.spec.stop_push.to_string()),
            (CONFIG_MEMBERSHIP.to_owned(), doc),
        ])),
        ..Default::default()
    }
}

pub fn node_service_account(rc: &RegistryCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(rc, Names(&rc.name_any()).node_account(), None),
        ..Default::default()
    }
}

/// Read access to this cluster's own RegistryCluster and node ConfigMap: what a node needs
/// to follow its membership from the API instead of (or besides) the operator's push.
pub fn node_role(rc: &RegistryCluster) -> Role {
    let names = Names(&rc.name_any());
    Role {
        metadata: meta(rc, names.node_account(), None),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![GROUP.to_owned()]),
                resources: Some(vec!["registryclusters".to_owned()]),
                resource_names: Some(vec![rc.name_any()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".to_owned()]),
                resource_names: Some(vec![names.config()]),
                verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
                ..Default::default()
            },
        ]),
    }
}

pub fn node_role_binding(rc: &RegistryCluster) -> RoleBinding {
    let names = Names(&rc.name_any());
    RoleBinding {
        metadata: meta(rc, names.node_account(), None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: names.node_account(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: names.node_account(),
            namespace: rc.namespace(),
            ..Default::default()
        }]),
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_config(rc: &RegistryCluster, key: &str) -> EnvVar {
    EnvVar {
        name: key.to_owned(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: Names(&rc.name_any()).config(),
                key: key.to_owned(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `--members-file` pointing at the mounted ConfigMap document: a node (re)started while
/// the operator is away still adopts the current epoch and ring at once.
fn membership_file_args() -> [String; 2] {
    [
        "--members-file".to_owned(),
        format!("{MEMBERSHIP_MOUNT}/{CONFIG_MEMBERSHIP}"),
    ]
}

/// The items of a ConfigMap or Secret volume: each key as a file of its own name.
fn key_paths(keys: &[&str]) -> Vec<KeyToPath> {
    keys.iter()
        .map(|key| KeyToPath {
            key: (*key).to_owned(),
            path: (*key).to_owned(),
            ..Default::default()
        })
        .collect()
}

/// Volume `name` mounted read-only at `path`.
fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The ConfigMap's membership document as a read-only volume (the kubelet keeps the file
/// up to date as the operator rewrites the ConfigMap).
fn membership_volume(rc: &RegistryCluster) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: MEMBERSHIP_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: Names(&rc.name_any()).config(),
            items: Some(key_paths(&[CONFIG_MEMBERSHIP])),
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = read_only_mount(MEMBERSHIP_VOLUME, MEMBERSHIP_MOUNT);
    (volume, mount)
}

/// Where every node pod mounts the Secret of `spec.tls.secretName`.
pub const TLS_MOUNT: &str = "/etc/registry/tls";
const TLS_VOLUME: &str = "tls";
/// The cert-manager layout of a TLS Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";

/// The flags that point a node at the mounted TLS Secret: mutual TLS on the internal
/// listeners for every role, HTTPS on a session node's public listener.
pub fn tls_args(role: NodeRole) -> Vec<String> {
    let file = |key: &str| format!("{TLS_MOUNT}/{key}");
    let mut args = vec![
        "--internal-tls-cert".to_owned(),
        file(TLS_CERT_KEY),
        "--internal-tls-key".to_owned(),
        file(TLS_KEY_KEY),
        "--internal-tls-ca".to_owned(),
        file(TLS_CA_KEY),
    ];
    if role == NodeRole::Session {
        args.extend([
            "--tls-cert".to_owned(),
            file(TLS_CERT_KEY),
            "--tls-key".to_owned(),
            file(TLS_KEY_KEY),
        ]);
    }
    args
}

/// The TLS Secret as a read-only volume (the kubelet replaces the files when the Secret
/// is renewed; the node re-reads them). Readable by the node's group only.
fn tls_volume(rc: &RegistryCluster) -> Option<(Volume, VolumeMount)> {
    let tls = rc.spec.tls.as_ref()?;
    let volume = Volume {
        name: TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls.secret_name.clone()),
            items: Some(key_paths(&[TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY])),
            default_mode: Some(0o440),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = read_only_mount(TLS_VOLUME, TLS_MOUNT);
    Some((volume, mount))
}

/// The rendered access rules as a read-only volume of session pods (the kubelet updates
/// the file when the operator rewrites the Secret; the node reads it again within a second).
fn access_volume(rc: &RegistryCluster) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: ACCESS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(Names(&rc.name_any()).access()),
            items: Some(key_paths(&[ACCESS_KEY])),
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = read_only_mount(ACCESS_VOLUME, ACCESS_MOUNT);
    (volume, mount)
}

/// The operator's own token for a cluster's admin routes, derived from its cluster token
/// (so it needs no Secret of its own and changes when that is regenerated).
pub fn operator_access_token(cluster_token: &str) -> String {
    sha256_hex(format!("sofaregistry-operator-admin:{cluster_token}").as_bytes())
}

/// `spec.access` as the session nodes get it: the user's document plus the operator's own
/// token with the admin right; validated (the error names the field).
pub fn rendered_access(
    rc: &RegistryCluster,
    cluster_token: &str,
) -> Option<Result<AccessDoc, AccessError>> {
    let mut doc = rc.spec.access.clone()?;
    if doc.tokens.iter().any(|t| t.name == OPERATOR_TOKEN_NAME) {
        return Some(Err(AccessError(format!(
            "spec.access.tokens: the name {OPERATOR_TOKEN_NAME:?} is the operator's own"
        ))));
    }
    if let Err(e) = doc.validate() {
        return Some(Err(AccessError(format!("spec.access.{e}"))));
    }
    let token = operator_access_token(cluster_token);
    doc.tokens.push(StaticToken {
        name: OPERATOR_TOKEN_NAME.to_owned(),
        sha256: sha256_hex(token.as_bytes()),
    });
    doc.rules.push(AccessRule {
        principals: vec![format!("token:{OPERATOR_TOKEN_NAME}")],
        admin: true,
        ..AccessRule::default()
    });
    Some(doc.validate().map(|()| doc))
}

/// The `<name>-access` Secret: the rendered document session pods mount.
pub fn access_secret(rc: &RegistryCluster, doc: &AccessDoc) -> Secret {
    let text = serde_json::to_string_pretty(doc).expect("an access document serializes");
    secret(rc, Names(&rc.name_any()).access(), &[(ACCESS_KEY, text)])
}

/// Pod-level security context that the `restricted` Pod Security Standard admits.
pub fn node_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NODE_UID),
        run_as_group: Some(NODE_UID),
        fs_group: Some(NODE_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container-level security context (`restricted`): no privilege escalation, no
/// capabilities, non-root, RuntimeDefault seccomp; the node writes nothing to disk.
pub fn node_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node container's arguments (docs/INTERNAL.md). Push settings are not here: they
/// come from the ConfigMap as env and reach running pods over HTTP, so that changing them
/// restarts nothing.
pub fn node_args(rc: &RegistryCluster, role: NodeRole) -> Vec<String> {
    let mut args = vec!["--role".to_owned(), role.as_str().to_owned()];
    match role {
        NodeRole::Data => args.extend([
            "--data-addr".to_owned(),
            format!("0.0.0.0:{DATA_PORT}"),
            "--advertise-addr".to_owned(),
            format!("$(POD_IP):{DATA_PORT}"),
        ]),
        NodeRole::Session => {
            args.extend([
                "--http-addr".to_owned(),
                format!("0.0.0.0:{}", rc.spec.session.port),
            ]);
            if rc.spec.access.is_some() {
                args.extend([
                    "--access-file".to_owned(),
                    format!("{ACCESS_MOUNT}/{ACCESS_KEY}"),
                ]);
            }
        }
    }
    args.extend(internal_listener_args(role));
    if rc.spec.tls.is_some() {
        args.extend(tls_args(role));
    }
    args.extend(membership_file_args());
    args.extend([
        "--node-name".to_owned(),
        "$(POD_NAME)".to_owned(),
        "--replication-factor".to_owned(),
        rc.spec.replication_factor.to_string(),
        "--virtual-nodes".to_owned(),
        rc.spec.virtual_nodes.to_string(),
    ]);
    args
}

pub fn pod_template(rc: &RegistryCluster, role: NodeRole) -> PodTemplateSpec {
    let (port_name, resources) = match role {
        NodeRole::Data => ("data", rc.spec.data.resources.clone()),
        NodeRole::Session => ("http", rc.spec.session.resources.clone()),
    };
    let mut env = vec![
        env_field("POD_IP", "status.podIP"),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if role == NodeRole::Session {
        env.push(env_config(rc, CONFIG_PUSH_DELAY));
        env.push(env_config(rc, CONFIG_STOP_PUSH));
    }
    if let Some(token) = &rc.spec.token_secret_ref {
        env.push(EnvVar {
            name: "REGISTRY_TOKEN".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: token.name.clone(),
                    key: token.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env.extend(trust_env(rc));
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port_name.to_owned()),
            // The kubelet does not verify the certificate of an HTTPS probe.
            scheme: rc.spec.tls.as_ref().map(|_| "HTTPS".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let mut pod_labels = rc.spec.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(rc, Some(role)));
    let (membership_volume, membership_mount) = membership_volume(rc);
    let mut volumes = vec![membership_volume];
    let mut volume_mounts = vec![membership_mount];
    if role == NodeRole::Session && rc.spec.access.is_some() {
        let (volume, mount) = access_volume(rc);
        volumes.push(volume);
        volume_mounts.push(mount);
    }
    if let Some((volume, mount)) = tls_volume(rc) {
        volumes.push(volume);
        volume_mounts.push(mount);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: rc.spec.pod_annotations.clone(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(Names(&rc.name_any()).node_account()),
            node_selector: rc.spec.node_selector.clone(),
            tolerations: rc.spec.tolerations.clone(),
            affinity: rc.spec.affinity.clone(),
            termination_grace_period_seconds: Some(60),
            security_context: Some(node_pod_security_context()),
            volumes: Some(volumes),
            containers: vec![Container {
                name: "registry-node".to_owned(),
                image: Some(rc.spec.image.clone()),
                image_pull_policy: rc.spec.image_pull_policy.clone(),
                args: Some(node_args(rc, role)),
                env: Some(env),
                ports: Some(container_ports(rc, role)),
                readiness_probe: Some(probe("/readyz", 5)),
                liveness_probe: Some(Probe {
                    failure_threshold: Some(6),
                    ..probe("/healthz", 10)
                }),
                resources,
                security_context: Some(node_container_security_context()),
                volume_mounts: Some(volume_mounts),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A stable hash of a pod template: tells a new template from the one last applied.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    // FNV-1a: tiny, stable across Rust versions (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A role's StatefulSet with the given size and rollout partition.
pub fn statefulset(
    rc: &RegistryCluster,
    role: NodeRole,
    replicas: u32,
    partition: u32,
) -> StatefulSet {
    let names = Names(&rc.name_any());
    let template = pod_template(rc, role);
    let mut metadata = meta(rc, names.statefulset(role), Some(role));
    metadata.annotations = Some(BTreeMap::from([(
        TEMPLATE_HASH_ANNOTATION.to_owned(),
        template_hash(&template),
    )]));
    StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(names.headless(role)),
            // The operator orders membership changes itself; pods may start together.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(rc, role)),
                ..Default::default()
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(partition as i32),
                    ..Default::default()
                }),
            }),
            template,
            ..Default::default()
        },
        status: None,
    }
}

// === impl cluster trust: credentials, the session nodes' internal listener, network policy ===

/// Port of a session node's internal listener (membership, status: SECURITY.md); the data
/// role's internal listener is its data port.
pub const SESSION_INTERNAL_PORT: u16 = 9624;
/// Keys of the Secret nodes read their cluster credentials from.
pub const SECRET_CLUSTER_TOKEN: &str = "cluster-token";
pub const SECRET_MEMBERSHIP_KEY: &str = "membership-key";
/// Key of the operator's own Secret: base64 of the Ed25519 seed that signs membership.
pub const SECRET_SIGNING_SEED: &str = "ed25519-seed";

impl Names<'_> {
    /// What nodes get: the cluster token and the membership public key.
    pub fn cluster_credentials(&self) -> String {
        format!("{}-cluster-credentials", self.0)
    }
    /// What only the operator reads: the membership signing key.
    pub fn membership_signing_key(&self) -> String {
        format!("{}-membership-signing-key", self.0)
    }
    pub fn network_policy(&self) -> String {
        format!("{}-nodes", self.0)
    }
}

fn secret(rc: &RegistryCluster, name: String, data: &[(&str, String)]) -> Secret {
    Secret {
        metadata: meta(rc, name, None),
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The Secret every node of the cluster reads its credentials from (never the signing key).
pub fn cluster_credentials(
    rc: &RegistryCluster,
    cluster_token: &str,
    membership_key: &MembershipKey,
) -> Secret {
    secret(
        rc,
        Names(&rc.name_any()).cluster_credentials(),
        &[
            (SECRET_CLUSTER_TOKEN, cluster_token.to_owned()),
            (SECRET_MEMBERSHIP_KEY, membership_key.to_base64()),
        ],
    )
}

/// The operator's Secret holding the cluster's membership signing key.
pub fn membership_signing_key(rc: &RegistryCluster, signer: &MembershipSigner) -> Secret {
    secret(
        rc,
        Names(&rc.name_any()).membership_signing_key(),
        &[(SECRET_SIGNING_SEED, signer.seed_base64())],
    )
}

fn env_secret(rc: &RegistryCluster, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: Names(&rc.name_any()).cluster_credentials(),
                key: key.to_owned(),
                // A node must never start without them: it would accept any caller.
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cluster credentials as the node's environment (SECURITY.md).
pub fn trust_env(rc: &RegistryCluster) -> Vec<EnvVar> {
    vec![
        env_secret(rc, "REGISTRY_CLUSTER_TOKEN", SECRET_CLUSTER_TOKEN),
        env_secret(rc, "REGISTRY_MEMBERSHIP_KEY", SECRET_MEMBERSHIP_KEY),
    ]
}

/// The internal listener of a role: a data node's data listener, a session node's own.
pub fn internal_port(role: NodeRole) -> (&'static str, u16) {
    match role {
        NodeRole::Data => ("data", DATA_PORT),
        NodeRole::Session => ("internal", SESSION_INTERNAL_PORT),
    }
}

/// Arguments binding a session node's internal listener (the data role's is `--data-addr`).
pub fn internal_listener_args(role: NodeRole) -> Vec<String> {
    match role {
        NodeRole::Data => Vec::new(),
        NodeRole::Session => vec![
            "--internal-addr".to_owned(),
            format!("0.0.0.0:{SESSION_INTERNAL_PORT}"),
        ],
    }
}

/// The container ports of a role: its public or data port, plus a session node's internal one.
pub fn container_ports(rc: &RegistryCluster, role: NodeRole) -> Vec<ContainerPort> {
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    match role {
        NodeRole::Data => vec![port("data", DATA_PORT)],
        NodeRole::Session => vec![
            port("http", rc.spec.session.port),
            port("internal", SESSION_INTERNAL_PORT),
        ],
    }
}

/// Who besides the cluster's own pods may reach its internal ports: the operator's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPeer {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// Ingress to the cluster's pods: the session nodes' public port from anywhere; every
/// other port (data, internal) only from this cluster's registry pods and the operator.
pub fn network_policy(rc: &RegistryCluster, operator: &OperatorPeer) -> NetworkPolicy {
    let cluster_pods = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "registry-node".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), rc.name_any()),
    ]);
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(rc, Names(&rc.name_any()).network_policy(), None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(cluster_pods.clone())),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    // Clients: the public API only (the named port follows spec.session.port).
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::String("http".to_owned())),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    }]),
                    from: None,
                },
                NetworkPolicyIngressRule {
                    ports: None,
                    from: Some(vec![
                        NetworkPolicyPeer {
                            pod_selector: Some(selector(cluster_pods)),
                            ..Default::default()
                        },
                        NetworkPolicyPeer {
                            namespace_selector: Some(selector(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_owned(),
                                operator.namespace.clone(),
                            )]))),
                            pod_selector: Some(selector(operator.pod_labels.clone())),
                            ..Default::default()
                        },
                    ]),
                },
            ]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RegistryCluster;

    fn rc() -> RegistryCluster {
        RegistryCluster::example("reg", "ns1", "registry-node:1").with_uid("u-1")
    }

    #[test]
    fn spec_access_is_rendered_mounted_and_passed_to_session_pods_only() {
        let mut rc = rc();
        assert!(rendered_access(&rc, "ct").is_none());
        assert!(!node_args(&rc, NodeRole::Session).contains(&"--access-file".to_owned()));
        rc.spec.access = Some(
            AccessDoc::parse(
                "rules: [{principals: ['serviceaccount:shop/checkout'], publish: ['com.shop.pay.*']}]",
            )
            .unwrap(),
        );
        let doc = rendered_access(&rc, "ct").unwrap().unwrap();
        // The user's rule, plus the operator's own admin token (by hash only).
        assert_eq!(doc.rules.len(), 2);
        let op = doc
            .tokens
            .iter()
            .find(|t| t.name == OPERATOR_TOKEN_NAME)
            .unwrap();
        assert_ne!(op.sha256, operator_access_token("ct"));
        assert!(doc.rules[1].admin);
        let secret = access_secret(&rc, &doc);
        assert_eq!(secret.metadata.name.as_deref(), Some("reg-access"));
        let text = String::from_utf8(secret.data.unwrap()[ACCESS_KEY].0.clone()).unwrap();
        assert_eq!(
            AccessDoc::parse(&text).unwrap(),
            doc,
            "the node reads what was rendered"
        );

        let args = node_args(&rc, NodeRole::Session);
        let at = args.iter().position(|a| a == "--access-file").unwrap();
        assert_eq!(args[at + 1], "/etc/registry/access/access.yaml");
        assert!(!node_args(&rc, NodeRole::Data).contains(&"--access-file".to_owned()));
        let spec = pod_template(&rc, NodeRole::Session).spec.unwrap();
        let vol = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "access")
            .unwrap();
        assert_eq!(
            vol.secret.unwrap().secret_name.as_deref(),
            Some("reg-access")
        );
        let mounts = spec.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == ACCESS_MOUNT && m.read_only == Some(true)));
        let data = pod_template(&rc, NodeRole::Data).spec.unwrap();
        assert!(!data.volumes.unwrap().iter().any(|v| v.name == "access"));
    }

    #[test]
    fn a_bad_spec_access_is_refused_naming_the_field() {
        let mut rc = rc();
        rc.spec.access = Some(AccessDoc {
            rules: vec![AccessRule {
                principals: vec!["token:ghost".into()],
                admin: true,
                ..AccessRule::default()
            }],
            ..AccessDoc::default()
        });
        let e = rendered_access(&rc, "ct").unwrap().unwrap_err();
        assert!(e.0.starts_with("spec.access.rules[0].principals[0]"), "{e}");
        rc.spec.access = Some(AccessDoc {
            tokens: vec![StaticToken {
                name: OPERATOR_TOKEN_NAME.into(),
                sha256: "a".repeat(64),
            }],
            ..AccessDoc::default()
        });
        assert!(rendered_access(&rc, "ct").unwrap().is_err());
    }

    #[test]
    fn everything_is_owned_by_the_cluster_and_namespaced() {
        let rc = rc();
        let metas = [
            headless_service(&rc, NodeRole::Data).metadata,
            headless_service(&rc, NodeRole::Session).metadata,
            client_service(&rc).metadata,
            pod_disruption_budget(&rc, NodeRole::Data).metadata,
            node_config(
                &rc,
                &rc.status.clone().unwrap_or_default().membership.document(),
            )
            .metadata,
            node_service_account(&rc).metadata,
            node_role(&rc).metadata,
            node_role_binding(&rc).metadata,
            statefulset(&rc, NodeRole::Data, 3, 0).metadata,
        ];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("ns1"));
            let owners = m.owner_references.unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "RegistryCluster");
            assert_eq!(owners[0].uid, "u-1");
            assert_eq!(owners[0].controller, Some(true));
        }
    }

    #[test]
    fn services_are_headless_per_role_plus_one_client_service() {
        let rc = rc();
        let data = headless_service(&rc, NodeRole::Data);
        let spec = data.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].port, 9622);
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/component"],
            "data"
        );
        let client = client_service(&rc);
        assert_eq!(client.metadata.name.as_deref(), Some("reg"));
        let spec = client.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.ports.unwrap()[0].port, 9603);
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/component"],
            "session"
        );
    }

    #[test]
    fn tls_mounts_the_secret_and_points_every_listener_and_probe_at_it() {
        let plain = statefulset(&rc(), NodeRole::Session, 1, 0);
        let plain = plain.spec.template.spec.unwrap();
        assert_eq!(plain.volumes.as_ref().unwrap().len(), 1);
        let probe = plain.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(probe.http_get.unwrap().scheme, None);
        assert!(!plain.containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ")
            .contains("tls"));

        let rc = rc().with_tls("reg-certs");
        for role in [NodeRole::Data, NodeRole::Session] {
            let pod = statefulset(&rc, role, 1, 0).spec.template.spec.unwrap();
            let volume = pod
                .volumes
                .unwrap()
                .into_iter()
                .find(|v| v.name == "tls")
                .unwrap();
            let secret = volume.secret.unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some("reg-certs"));
            let keys: Vec<_> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
            assert_eq!(keys, ["tls.crt", "tls.key", "ca.crt"]);
            let c = &pod.containers[0];
            let mount = c
                .volume_mounts
                .clone()
                .unwrap()
                .into_iter()
                .find(|m| m.name == "tls")
                .unwrap();
            assert_eq!(mount.mount_path, "/etc/registry/tls");
            assert_eq!(mount.read_only, Some(true));
            let args = c.args.clone().unwrap().join(" ");
            assert!(args.contains(
                "--internal-tls-cert /etc/registry/tls/tls.crt --internal-tls-key /etc/registry/tls/tls.key \
                 --internal-tls-ca /etc/registry/tls/ca.crt"
            ), "{args}");
            assert_eq!(
                args.contains(
                    "--tls-cert /etc/registry/tls/tls.crt --tls-key /etc/registry/tls/tls.key"
                ),
                role == NodeRole::Session,
                "{args}"
            );
            for probe in [c.readiness_probe.clone(), c.liveness_probe.clone()] {
                assert_eq!(
                    probe.unwrap().http_get.unwrap().scheme.as_deref(),
                    Some("HTTPS")
                );
            }
        }
    }

    #[test]
    fn data_statefulset_runs_the_data_role_with_the_documented_flags() {
        let rc = rc().with_token("tok", "t");
        let sts = statefulset(&rc, NodeRole::Data, 5, 2);
        assert_eq!(sts.metadata.name.as_deref(), Some("reg-data"));
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("reg-data"));
        assert_eq!(
            spec.update_strategy
                .unwrap()
                .rolling_update
                .unwrap()
                .partition,
            Some(2)
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("reg-node"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry-node:1"));
        let args = c.args.clone().unwrap().join(" ");
        assert_eq!(
            args,
            "--role data --data-addr 0.0.0.0:9622 --advertise-addr $(POD_IP):9622 \
             --members-file /etc/registry/membership/membership.json \
             --node-name $(POD_NAME) --replication-factor 3 --virtual-nodes 1000"
        );
        let env = c.env.clone().unwrap();
        let token = env.iter().find(|e| e.name == "REGISTRY_TOKEN").unwrap();
        let secret = token.value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("tok", "t"));
        assert!(env.iter().any(|e| e.name == "POD_IP"));
        let probe = c.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.port, IntOrString::String("data".into()));
    }

    #[test]
    fn session_statefulset_takes_push_settings_from_the_config_map() {
        let mut rc = rc();
        rc.spec.session.port = 9700;
        let sts = statefulset(&rc, NodeRole::Session, 2, 0);
        let pod = sts.spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap().join(" ");
        assert!(args.starts_with(
            "--role session --http-addr 0.0.0.0:9700 --internal-addr 0.0.0.0:9624 \
             --members-file /etc/registry/membership/membership.json --node-name $(POD_NAME)"
        ));
        assert!(!args.contains("push"));
        let env = c.env.clone().unwrap();
        let delay = env.iter().find(|e| e.name == CONFIG_PUSH_DELAY).unwrap();
        assert_eq!(
            delay
                .value_from
                .clone()
                .unwrap()
                .config_map_key_ref
                .unwrap()
                .name,
            "reg-node-config"
        );
        assert!(env.iter().all(|e| e.name != "REGISTRY_TOKEN"));
    }

    /// What the `restricted` Pod Security Standard checks (pod-security-admission, v1.25+).
    fn assert_restricted(pod: &PodSpec) {
        let psc = pod.security_context.clone().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_ne!(psc.run_as_user, Some(0));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in &pod.containers {
            let sc = c
                .security_context
                .clone()
                .expect("container securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_ne!(sc.privileged, Some(true));
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_ne!(sc.run_as_user, Some(0));
            let caps = sc.capabilities.unwrap();
            assert_eq!(caps.drop.unwrap(), ["ALL"]);
            assert!(caps.add.unwrap_or_default().is_empty());
            assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
            assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()));
        }
        assert_ne!(pod.host_network, Some(true));
        assert_ne!(pod.host_pid, Some(true));
        for v in pod.volumes.iter().flatten() {
            assert!(v.host_path.is_none(), "restricted admits no hostPath");
        }
    }

    #[test]
    fn node_pods_meet_the_restricted_pod_security_standard() {
        for role in [NodeRole::Data, NodeRole::Session] {
            let sts = statefulset(&rc(), role, 3, 0);
            assert_restricted(&sts.spec.template.spec.unwrap());
        }
    }

    #[test]
    fn node_pods_read_the_membership_from_the_mounted_config_map() {
        let rc = rc();
        for role in [NodeRole::Data, NodeRole::Session] {
            let pod = pod_template(&rc, role).spec.unwrap();
            let volume = &pod.volumes.as_ref().unwrap()[0];
            let source = volume.config_map.clone().unwrap();
            assert_eq!(source.name, "reg-node-config");
            let item = &source.items.unwrap()[0];
            assert_eq!(
                (item.key.as_str(), item.path.as_str()),
                (CONFIG_MEMBERSHIP, CONFIG_MEMBERSHIP)
            );
            let c = &pod.containers[0];
            let mount = &c.volume_mounts.as_ref().unwrap()[0];
            assert_eq!(mount.name, volume.name);
            assert_eq!(mount.read_only, Some(true));
            let args = c.args.clone().unwrap();
            let at = args.iter().position(|a| a == "--members-file").unwrap();
            assert_eq!(
                args[at + 1],
                format!("{}/{}", mount.mount_path, item.path),
                "{role:?}: the flag names the mounted file"
            );
        }
        // The key the volume projects is the one the ConfigMap carries.
        let doc = rc.status.clone().unwrap_or_default().membership.document();
        assert!(node_config(&rc, &doc)
            .data
            .unwrap()
            .contains_key(CONFIG_MEMBERSHIP));
    }

    #[test]
    fn push_settings_do_not_change_the_template_but_the_image_does() {
        let a = rc();
        let mut b = rc();
        b.spec.stop_push = true;
        b.spec.push_delay_millis = 900;
        b.spec.data.replicas = 7;
        for role in [NodeRole::Data, NodeRole::Session] {
            assert_eq!(
                template_hash(&pod_template(&a, role)),
                template_hash(&pod_template(&b, role))
            );
        }
        b.spec.image = "registry-node:2".into();
        assert_ne!(
            template_hash(&pod_template(&a, NodeRole::Data)),
            template_hash(&pod_template(&b, NodeRole::Data))
        );
    }

    #[test]
    fn user_pod_knobs_reach_the_pod_but_cannot_override_selector_labels() {
        let mut rc = rc();
        rc.spec.pod_labels = Some(BTreeMap::from([
            ("team".to_owned(), "infra".to_owned()),
            ("app.kubernetes.io/component".to_owned(), "evil".to_owned()),
        ]));
        rc.spec.node_selector = Some(BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]));
        let t = pod_template(&rc, NodeRole::Data);
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "infra");
        assert_eq!(labels["app.kubernetes.io/component"], "data");
        assert_eq!(t.spec.unwrap().node_selector.unwrap()["disk"], "ssd");
    }

    #[test]
    fn pdbs_allow_one_unavailable_and_rbac_is_scoped_to_this_cluster() {
        let rc = rc();
        let pdb = pod_disruption_budget(&rc, NodeRole::Session).spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        let role = node_role(&rc);
        for rule in role.rules.unwrap() {
            assert!(rule
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str())));
            assert!(rule.resource_names.is_some());
        }
        let binding = node_role_binding(&rc);
        assert_eq!(binding.subjects.unwrap()[0].name, "reg-node");
    }

    #[test]
    fn config_map_carries_push_settings_and_membership() {
        let mut rc = rc();
        rc.spec.stop_push = true;
        let doc = MembershipDoc {
            epoch: 3,
            members: vec!["127.0.0.2:9622".into()],
            leaving: vec![],
            signature: None,
            ids: Default::default(),
        };
        let data = node_config(&rc, &doc).data.unwrap();
        assert_eq!(data[CONFIG_STOP_PUSH], "true");
        assert_eq!(data[CONFIG_PUSH_DELAY], "200");
        assert_eq!(
            data[CONFIG_MEMBERSHIP],
            r#"{"epoch":3,"members":["127.0.0.2:9622"]}"#
        );
        assert_eq!(selector_string(&rc, NodeRole::Data),
            "app.kubernetes.io/component=data,app.kubernetes.io/instance=reg,app.kubernetes.io/name=registry-node");
    }

    #[test]
    fn every_node_gets_the_cluster_credentials_and_a_session_node_an_internal_port() {
        let rc = rc();
        for role in [NodeRole::Data, NodeRole::Session] {
            let pod = pod_template(&rc, role).spec.unwrap();
            let c = &pod.containers[0];
            let env = c.env.clone().unwrap();
            for (name, key) in [
                ("REGISTRY_CLUSTER_TOKEN", SECRET_CLUSTER_TOKEN),
                ("REGISTRY_MEMBERSHIP_KEY", SECRET_MEMBERSHIP_KEY),
            ] {
                let var = env.iter().find(|e| e.name == name).unwrap();
                let r = var.value_from.clone().unwrap().secret_key_ref.unwrap();
                assert_eq!(
                    (r.name.as_str(), r.key.as_str()),
                    ("reg-cluster-credentials", key)
                );
                assert_eq!(r.optional, Some(false), "no node starts without {name}");
            }
            assert!(env.iter().all(|e| !e.name.contains("SEED")));
            let ports: Vec<_> = c
                .ports
                .clone()
                .unwrap()
                .into_iter()
                .map(|p| (p.name.unwrap(), p.container_port))
                .collect();
            let (name, number) = internal_port(role);
            assert!(
                ports.contains(&(name.to_owned(), i32::from(number))),
                "{ports:?}"
            );
        }
        let session = headless_service(&rc, NodeRole::Session).spec.unwrap();
        let names: Vec<_> = session
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["http", "internal"]);
        let client = client_service(&rc).spec.unwrap();
        assert!(
            client
                .ports
                .unwrap()
                .iter()
                .all(|p| p.name.as_deref() == Some("http")),
            "clients never get a route to the internal port"
        );
    }

    #[test]
    fn the_network_policy_admits_clients_to_the_public_port_only() {
        let rc = rc();
        let operator = OperatorPeer {
            namespace: "registry-system".into(),
            pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "registry-operator".to_owned(),
            )]),
        };
        let policy = network_policy(&rc, &operator);
        assert_eq!(policy.metadata.name.as_deref(), Some("reg-nodes"));
        let spec = policy.spec.unwrap();
        let cluster = spec.pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(cluster["app.kubernetes.io/instance"], "reg");
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        // From anywhere: only the named public port.
        assert!(rules[0].from.is_none());
        let ports = rules[0].ports.clone().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));
        // Every port: only this cluster's pods and the operator's.
        assert!(rules[1].ports.is_none());
        let from = rules[1].from.clone().unwrap();
        assert_eq!(
            from[0].pod_selector.clone().unwrap().match_labels.unwrap(),
            cluster
        );
        assert!(from[0].namespace_selector.is_none(), "same namespace only");
        let ns = from[1]
            .namespace_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "registry-system");
        assert_eq!(
            from[1].pod_selector.clone().unwrap().match_labels.unwrap(),
            operator.pod_labels
        );
    }
}
