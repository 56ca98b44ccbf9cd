//! The access file (`--access-file`): parsed and compiled at start (a node does not start
//! on a bad one), then read again every second; a changed, valid file replaces the rules at
//! once, a changed, invalid one (or one that cannot be read) is logged and the rules in use
//! are kept. Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink: the
//! path is read anew each time, so that is seen like any other change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use registry_types::access::AccessDoc;
use tokio_util::sync::CancellationToken;

use super::Policy;

/// How often the file is read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The rules of an access file, as last read successfully.
pub struct AccessFile {
    path: PathBuf,
    policy: RwLock<Arc<Policy>>,
    /// The bytes the rules in use came from, or the last bad bytes (so a bad file is
    /// reported once, not every second).
    last_seen: Mutex<Vec<u8>>,
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Replaced,
    /// The file changed but cannot be used; the old rules stay.
    Kept(String),
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > registry_types::access::MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{}: {} bytes; an access file is at most {} bytes",
            path.display(),
            bytes.len(),
            registry_types::access::MAX_DOCUMENT_BYTES
        ));
    }
    Ok(bytes)
}

fn compile(path: &Path, bytes: &[u8]) -> Result<Policy, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let doc = AccessDoc::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
    Policy::new(&doc).map_err(|e| format!("{}: {e}", path.display()))
}

impl AccessFile {
    /// Reads and compiles the file; the error says what is wrong with it.
    pub fn load(path: &Path) -> Result<Arc<AccessFile>, String> {
        let bytes = read(path)?;
        let policy = compile(path, &bytes)?;
        Ok(Arc::new(AccessFile {
            path: path.to_owned(),
            policy: RwLock::new(Arc::new(policy)),
            last_seen: Mutex::new(bytes),
        }))
    }

    /// The rules in use.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }

    /// Reads the file again and adopts it when it changed and is valid.
    pub fn reload(&self) -> Reload {
        let bytes = match read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                // A missing file (a volume being remounted) keeps the rules; said once.
                let mut last = self.last_seen.lock();
                if last.as_slice() == b"\0unreadable" {
                    return Reload::Unchanged;
                }
                *last = b"\0unreadable".to_vec();
                return Reload::Kept(e);
            }
        };
        let mut last = self.last_seen.lock();
        if *last == bytes {
            return Reload::Unchanged;
        }
        let outcome = match compile(&self.path, &bytes) {
            Ok(policy) => {
                *self.policy.write() = Arc::new(policy);
                Reload::Replaced
            }
            Err(e) => Reload::Kept(e),
        };
        *last = bytes;
        outcome
    }

    /// Re-reads the file every [`RELOAD_INTERVAL`] until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        let file = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let f = file.clone();
                let outcome = tokio::task::spawn_blocking(move || f.reload())
                    .await
                    .unwrap_or(Reload::Unchanged);
                match outcome {
                    Reload::Unchanged => {}
                    Reload::Replaced => tracing::info!(
                        path = %file.path.display(),
                        "access file changed: new rules in use"
                    ),
                    Reload::Kept(why) => tracing::error!(
                        path = %file.path.display(),
                        "access file changed but cannot be used; the previous rules stay in use: {why}"
                    ),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Right;
    use registry_types::access::PrincipalName;

    fn rules(publish: &str) -> String {
        format!("rules: [{{principals: ['serviceaccount:a/b'], publish: ['{publish}']}}]")
    }

    #[test]
    fn a_bad_new_file_keeps_the_old_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.yaml");
        std::fs::write(&path, rules("one.*")).unwrap();
        let f = AccessFile::load(&path).unwrap();
        let who = PrincipalName::ServiceAccount {
            namespace: "a".into(),
            name: "b".into(),
        };
        assert!(f.policy().allows(&who, Right::Publish, "one.x"));
        assert_eq!(f.reload(), Reload::Unchanged);

        std::fs::write(&path, "rules: [{principals: ['nobody'], publish: ['x']}]").unwrap();
        match f.reload() {
            Reload::Kept(why) => assert!(why.contains("rules[0].principals[0]"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(f.policy().allows(&who, Right::Publish, "one.x"));
        assert_eq!(f.reload(), Reload::Unchanged, "reported once");

        std::fs::write(&path, rules("two.*")).unwrap();
        assert_eq!(f.reload(), Reload::Replaced);
        assert!(!f.policy().allows(&who, Right::Publish, "one.x"));
        assert!(f.policy().allows(&who, Right::Publish, "two.x"));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(f.reload(), Reload::Kept(_)));
        assert_eq!(f.reload(), Reload::Unchanged);
        assert!(f.policy().allows(&who, Right::Publish, "two.x"));
    }

    #[test]
    fn a_node_does_not_start_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(
            &path,
            r#"{"rules": [{"principals": ["token:x"], "admin": true}]}"#,
        )
        .unwrap();
        let e = AccessFile::load(&path).err().unwrap();
        assert!(e.contains("names no token"), "{e}");
        assert!(AccessFile::load(&dir.path().join("missing")).is_err());
    }
}
