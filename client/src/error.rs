//! The crate's one error type, with the API's error codes (API.md) as a typed enum.

use serde::Deserialize;
use std::fmt;

/// The `code` of an API error body, as API.md lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthorized,
    NotFound,
    Conflict,
    PayloadTooLarge,
    Unavailable,
    /// A code this client does not know (a newer server), or a status without a code.
    Other(String),
}

impl ErrorCode {
    /// The code from an error body; falls back to the HTTP status when there is no code
    /// (a proxy's answer, or a body that is not the API's error shape).
    pub fn from_wire(code: Option<&str>, status: u16) -> ErrorCode {
        match code {
            Some("invalid_argument") => ErrorCode::InvalidArgument,
            Some("unauthorized") => ErrorCode::Unauthorized,
            Some("not_found") => ErrorCode::NotFound,
            Some("conflict") => ErrorCode::Conflict,
            Some("payload_too_large") => ErrorCode::PayloadTooLarge,
            Some("unavailable") => ErrorCode::Unavailable,
            Some(other) => ErrorCode::Other(other.to_owned()),
            None => match status {
                400 => ErrorCode::InvalidArgument,
                401 => ErrorCode::Unauthorized,
                404 => ErrorCode::NotFound,
                409 => ErrorCode::Conflict,
                413 => ErrorCode::PayloadTooLarge,
                503 => ErrorCode::Unavailable,
                other => ErrorCode::Other(format!("http_{other}")),
            },
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status (API.md's error shape when it could be read).
    #[error("{url}: {code} ({status}): {message}")]
    Api {
        url: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// The node could not be reached, or the connection broke.
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    /// The node did not answer within the configured timeout.
    #[error("{url}: no answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    /// The node answered something that is not what API.md promises.
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
    /// None of the configured URLs could serve the request.
    #[error("no registry node reachable (tried {tried}): {last}")]
    NoNodeReachable { tried: String, last: Box<Error> },
    /// The operation did not complete within the client's operation timeout (no session
    /// could be established in time).
    #[error("not done within {timeout_ms} ms: {message}")]
    OperationTimeout { timeout_ms: u64, message: String },
    /// The client holds no publisher or subscriber with this registerId.
    #[error("no publisher or subscriber with registerId {register_id:?} is held by this client")]
    NotHeld { register_id: String },
    /// The client was closed (or its background task ended).
    #[error("the registry client is closed")]
    Closed,
    /// The client's own configuration or arguments are unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::NoNodeReachable { last, .. } => last.code(),
            _ => None,
        }
    }

    /// True for failures that say nothing about the request itself (node down, slow,
    /// data layer unavailable): trying again, possibly elsewhere, may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { code, status, .. } => {
                matches!(code, ErrorCode::Unavailable) || *status >= 500
            }
            Error::Transport { .. } | Error::Timeout { .. } | Error::NoNodeReachable { .. } => true,
            Error::OperationTimeout { .. } => true,
            Error::Protocol { .. } | Error::NotHeld { .. } | Error::Closed | Error::Config(_) => {
                false
            }
        }
    }

    /// True when this node cannot serve right now (unreachable, slow, broken, or without
    /// its data layer), so that another URL should be tried.
    pub(crate) fn is_node_failure(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } | Error::Protocol { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self.code(), Some(ErrorCode::NotFound))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

/// Builds the error for a non-2xx answer from its status and body.
pub(crate) fn api_error(url: &str, status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => Error::Api {
            url: url.to_owned(),
            status,
            code: ErrorCode::from_wire(Some(&parsed.error.code), status),
            message: parsed.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                format!("HTTP {status}")
            } else {
                truncate(text, 300)
            };
            Error::Api {
                url: url.to_owned(),
                status,
                code: ErrorCode::from_wire(None, status),
                message,
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_maps_to_typed_code() {
        let body = br#"{"error":{"code":"conflict","message":"registerId r1 is used by another session"}}"#;
        let err = api_error("http://n1", 409, body);
        match &err {
            Error::Api {
                code,
                status,
                message,
                ..
            } => {
                assert_eq!(*code, ErrorCode::Conflict);
                assert_eq!(*status, 409);
                assert!(message.contains("registerId"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Some(&ErrorCode::Conflict));
    }

    #[test]
    fn every_api_code_is_known() {
        for (code, expected) in [
            ("invalid_argument", ErrorCode::InvalidArgument),
            ("unauthorized", ErrorCode::Unauthorized),
            ("not_found", ErrorCode::NotFound),
            ("conflict", ErrorCode::Conflict),
            ("payload_too_large", ErrorCode::PayloadTooLarge),
            ("unavailable", ErrorCode::Unavailable),
        ] {
            let parsed = ErrorCode::from_wire(Some(code), 200);
            assert_eq!(parsed, expected);
            assert_eq!(parsed.as_str(), code);
        }
        assert_eq!(
            ErrorCode::from_wire(Some("teapot"), 418),
            ErrorCode::Other("teapot".into())
        );
    }

    #[test]
    fn body_without_error_shape_falls_back_to_status() {
        let err = api_error("http://n1", 503, b"<html>bad gateway</html>");
        assert_eq!(err.code(), Some(&ErrorCode::Unavailable));
        assert!(err.is_retryable());
        assert!(err.is_node_failure());
        let err = api_error("http://n1", 502, b"");
        assert_eq!(err.code(), Some(&ErrorCode::Other("http_502".into())));
        assert!(err.is_node_failure());
        assert!(err.to_string().contains("HTTP 502"));
        let err = api_error("http://n1", 401, b"nope");
        assert_eq!(err.code(), Some(&ErrorCode::Unauthorized));
        assert!(!err.is_retryable());
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(400);
        let err = api_error("http://n1", 500, body.as_bytes());
        let Error::Api { message, .. } = err else {
            panic!("not an api error")
        };
        assert!(message.len() < 310);
        assert!(message.ends_with('…'));
    }
}
