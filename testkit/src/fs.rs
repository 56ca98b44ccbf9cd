//! Files replaced the way a Kubernetes volume update replaces them: written beside the file,
//! then renamed over it, so that a process watching the file (an access file, a token file,
//! TLS files, the membership file) never reads half of one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Replaces the file at `path` with `contents`: written to `PATH.tmp`, then renamed over
/// `path` (one rename, atomic within a filesystem). Panics when either step fails.
pub fn replace_file(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    let path = path.as_ref();
    let mut tmp = OsString::from(path);
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.yaml");
        replace_file(&path, "first");
        replace_file(&path, b"second");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["access.yaml"]);
    }
}
