//! The operator's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("RegistryCluster has no namespace")]
    MissingNamespace,
    #[error("token secret {name} has no key {key}")]
    TokenSecretMissing { name: String, key: String },
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// Short PascalCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::MissingNamespace => "InvalidObject",
            Error::TokenSecretMissing { .. } => "TokenSecretMissing",
            Error::Node { .. } => "NodeUnreachable",
            Error::Serialization(_) => "SerializationError",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
