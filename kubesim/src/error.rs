//! The crate's error type and its Kubernetes `Status` JSON form.

use serde_json::{json, Value};

/// Everything that can go wrong in the simulator. API errors carry the HTTP code and the
/// Kubernetes `reason` so that clients (kube-rs, kubectl) see what a real API server sends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Api {
        code: u16,
        reason: &'static str,
        message: String,
        /// `details` of the Status: `name`, `group`, `kind` (plural resource).
        details: Option<Value>,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn api(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Error::Api {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let gr = qualified(group, resource);
        Error::Api {
            code: 404,
            reason: "NotFound",
            message: format!("{gr} \"{name}\" not found"),
            details: Some(json!({"name": name, "group": group, "kind": resource})),
        }
    }

    pub fn path_not_found(path: &str) -> Self {
        Error::api(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let gr = qualified(group, resource);
        Error::Api {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{gr} \"{name}\" already exists"),
            details: Some(json!({"name": name, "group": group, "kind": resource})),
        }
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let gr = qualified(group, resource);
        Error::Api {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on {gr} \"{name}\": {why}"),
            details: Some(json!({"name": name, "group": group, "kind": resource})),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::api(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::api(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Error::api(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Error::api(415, "UnsupportedMediaType", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Error::api(410, "Expired", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::api(403, "Forbidden", message)
    }

    /// HTTP code of this error as the API answers it.
    pub fn code(&self) -> u16 {
        match self {
            Error::Api { code, .. } => *code,
            _ => 500,
        }
    }

    /// The `Status` object a Kubernetes API server sends for this error.
    pub fn to_status(&self) -> Value {
        let (code, reason, details) = match self {
            Error::Api {
                code,
                reason,
                details,
                ..
            } => (*code, *reason, details.clone()),
            _ => (500, "InternalError", None),
        };
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code,
        });
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}
