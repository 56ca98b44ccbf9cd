//! The operator's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("RegistryCluster has no namespace")]
    MissingNamespace,
    #[error("token secret {name} has no key {key}")]
    TokenSecretMissing { name: String, key: String },
    #[error("TLS secret {name}: {message}")]
    TlsSecret { name: String, message: String },
    #[error("cluster credentials: {0}")]
    Credentials(String),
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The API server refused an object the operator applies (invalid, forbidden, ...).
    #[error("applying {kind} {name}: {message}")]
    Apply {
        kind: String,
        name: String,
        message: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Short PascalCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::MissingNamespace => "InvalidObject",
            Error::TokenSecretMissing { .. } => "TokenSecretMissing",
            Error::TlsSecret { .. } => "TlsSecretInvalid",
            Error::Credentials(_) => "CredentialsInvalid",
            Error::Node { .. } => "NodeUnreachable",
            Error::Serialization(_) => "SerializationError",
            Error::Apply { .. } => "ApplyFailed",
        }
    }

    /// An apply the API server answered with an error status: worth telling the user in
    /// the cluster's status (a connection failure is not: the status write would fail too).
    pub fn refused_by_api_server(&self) -> bool {
        matches!(
            self,
            Error::Apply {
                source: kube::Error::Api(_),
                ..
            }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
