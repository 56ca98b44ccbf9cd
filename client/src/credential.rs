//! The bearer credential of every call: none, a fixed token (`--token`), or a token file
//! (`--token-file`) read again when it changes: a Kubernetes projected ServiceAccount token
//! is rotated by the kubelet (swapped in place well before it expires), so the file is read
//! at most once per [`RELOAD_INTERVAL`] and the newest token is sent. A file that cannot be
//! read later (mid-swap) keeps the last token it held.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Error;

/// A token file is read again at most this often.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A token file holds at most this many bytes.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// What is sent as `Authorization: Bearer`.
#[derive(Clone, Default)]
pub enum Credential {
    #[default]
    None,
    Token(Arc<str>),
    File(Arc<TokenFile>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Token(_) => f.write_str("Token(…)"),
            Credential::File(t) => write!(f, "File({})", t.path.display()),
        }
    }
}

impl Credential {
    /// From a token and a token file (at most one of them).
    pub fn new(token: Option<&str>, token_file: Option<&Path>) -> Result<Credential, Error> {
        match (token.filter(|t| !t.is_empty()), token_file) {
            (Some(_), Some(_)) => Err(Error::Config(
                "give a token or a token file, not both".into(),
            )),
            (Some(t), None) => Ok(Credential::Token(t.into())),
            (None, Some(path)) => Ok(Credential::File(Arc::new(TokenFile::open(path)?))),
            (None, None) => Ok(Credential::None),
        }
    }

    /// The token to send now.
    pub fn current(&self) -> Option<Arc<str>> {
        match self {
            Credential::None => None,
            Credential::Token(t) => Some(t.clone()),
            Credential::File(f) => Some(f.current()),
        }
    }
}

/// A token file and the token it last held.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<(Arc<str>, Instant)>,
}

fn read_token(path: &Path) -> Result<Arc<str>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "{} bytes; a token file holds at most {MAX_TOKEN_FILE_BYTES}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(token.into())
}

impl TokenFile {
    /// Reads the file; an unreadable or empty one is a configuration error.
    pub fn open(path: &Path) -> Result<TokenFile, Error> {
        let token = read_token(path)
            .map_err(|e| Error::Config(format!("cannot use token file {}: {e}", path.display())))?;
        Ok(TokenFile {
            path: path.to_owned(),
            state: Mutex::new((token, Instant::now())),
        })
    }

    /// The newest token of the file (read again when the last read is a second old).
    pub fn current(&self) -> Arc<str> {
        let mut state = self.state.lock();
        if state.1.elapsed() >= RELOAD_INTERVAL {
            state.1 = Instant::now();
            match read_token(&self.path) {
                Ok(t) => state.0 = t,
                Err(e) => tracing::warn!(
                    path = %self.path.display(),
                    "token file unreadable, sending the last token it held: {e}"
                ),
            }
        }
        state.0.clone()
    }

    #[cfg(test)]
    fn age(&self, by: Duration) {
        let mut state = self.state.lock();
        state.1 = Instant::now().checked_sub(by).unwrap_or(state.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let cred = Credential::new(None, Some(&path)).unwrap();
        assert_eq!(cred.current().as_deref(), Some("first"));
        // Rotated in place (write a new file, rename over the old one, as the kubelet does).
        std::fs::write(dir.path().join("new"), "second").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        let Credential::File(f) = &cred else {
            panic!("a file credential")
        };
        f.age(RELOAD_INTERVAL);
        assert_eq!(cred.current().as_deref(), Some("second"));
        // Gone for a moment: the last token stays.
        std::fs::remove_file(&path).unwrap();
        f.age(RELOAD_INTERVAL);
        assert_eq!(cred.current().as_deref(), Some("second"));
    }

    #[test]
    fn bad_token_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(Credential::new(None, Some(&empty)).is_err());
        assert!(Credential::new(None, Some(&dir.path().join("missing"))).is_err());
        assert!(Credential::new(Some("t"), Some(&empty)).is_err());
        assert_eq!(
            Credential::new(Some("t"), None)
                .unwrap()
                .current()
                .as_deref(),
            Some("t")
        );
        assert!(Credential::new(None, None).unwrap().current().is_none());
    }
}
