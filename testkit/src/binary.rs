//! The workspace's binaries (registry-node, kubesim, operator, registryctl) for tests and the
//! bench: named by an environment variable, or built by cargo next to the running executable.
//!
//! A test of one crate often runs another crate's binary (`cargo test -p kubesim` runs
//! registry-node pods). Cargo builds only the binaries of the package under test, so the kit
//! finds the others next to the running executable (`target/<profile>/`) and, when one is
//! missing or stale, has cargo build it: once per process and binary,
//! `cargo build -p PACKAGE --bin NAME` in the profile of the running executable (cargo's lock
//! on the target directory orders concurrent test processes).
//!
//! Stale means older than a source file it was built from, as listed in the dep-info file
//! cargo writes beside it (`registry-node.d`), or than `Cargo.lock`. The kit checks that
//! itself rather than always asking cargo: `cargo build -p registry-node` unifies the
//! features of shared dependencies differently from the workspace build of `scripts/test`,
//! so it would rebuild half the dependency tree to produce a binary that is already there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::Error;

/// A binary of the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binary {
    /// The cargo package that builds it.
    pub package: &'static str,
    /// The binary's name.
    pub name: &'static str,
    /// The environment variable that names a prebuilt binary instead.
    pub env: &'static str,
}

/// `registry-node`, or `REGISTRY_NODE_BIN`.
pub const REGISTRY_NODE: Binary = Binary {
    package: "registry-node",
    name: "registry-node",
    env: "REGISTRY_NODE_BIN",
};
/// `kubesim`, or `KUBESIM_BIN`.
pub const KUBESIM: Binary = Binary {
    package: "kubesim",
    name: "kubesim",
    env: "KUBESIM_BIN",
};
/// `operator`, or `OPERATOR_BIN`.
pub const OPERATOR: Binary = Binary {
    package: "operator",
    name: "operator",
    env: "OPERATOR_BIN",
};
/// `registryctl`, or `REGISTRYCTL_BIN`.
pub const REGISTRYCTL: Binary = Binary {
    package: "registry-client",
    name: "registryctl",
    env: "REGISTRYCTL_BIN",
};

impl Binary {
    /// The binary's path; panics with cargo's output when it cannot be built.
    pub fn path(&self) -> PathBuf {
        self.try_path().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The binary named by its environment variable, else the one cargo builds (or finds
    /// fresh) in the profile of the running executable.
    pub fn try_path(&self) -> Result<PathBuf, Error> {
        if let Some(path) = std::env::var_os(self.env) {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Binary(format!(
                    "{}={} is not a file",
                    self.env,
                    path.display()
                )))
            };
        }
        // One build per binary and process; tests of one binary asking at once wait for it.
        type Built = Arc<OnceLock<Result<PathBuf, String>>>;
        static BUILT: OnceLock<Mutex<HashMap<Binary, Built>>> = OnceLock::new();
        let once = BUILT
            .get_or_init(Mutex::default)
            .lock()
            .entry(*self)
            .or_default()
            .clone();
        once.get_or_init(|| self.build().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Binary)
    }

    fn build(&self) -> Result<PathBuf, Error> {
        let exe =
            std::env::current_exe().map_err(|e| Error::Binary(format!("current exe: {e}")))?;
        let profile_dir = profile_dir(&exe);
        if let Some(dir) = &profile_dir {
            let path = dir.join(self.name);
            if is_fresh(&path, &workspace_dir().join("Cargo.lock")) {
                return Ok(path);
            }
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace_dir())
            .args([
                "build",
                "--quiet",
                "--message-format=json-render-diagnostics",
            ])
            .args(["-p", self.package, "--bin", self.name]);
        match profile_dir
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
        {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        // Build into the target directory this executable runs from, whatever cargo's default.
        if let Some(target) = profile_dir.as_deref().and_then(Path::parent) {
            cmd.arg("--target-dir").arg(target);
        }
        let out = cmd.output().map_err(|e| {
            Error::Binary(format!(
                "running {} to build {}: {e}",
                Path::new(&cargo).display(),
                self.name
            ))
        })?;
        if !out.status.success() {
            return Err(Error::Binary(format!(
                "`cargo build -p {} --bin {}` failed ({}):\n{}",
                self.package,
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // The last artifact message of the binary names its path.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == self.name)
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .next_back()
            .ok_or_else(|| Error::Binary(format!("cargo built no executable named {}", self.name)))
    }
}

/// `target/<profile>` of an executable in `target/<profile>/` or `target/<profile>/deps/`
/// (tests, benches), `None` when it lives elsewhere.
fn profile_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let dir = match dir.file_name()?.to_str()? {
        "deps" | "examples" => dir.parent()?,
        _ => dir,
    };
    // A profile directory sits in a target directory, which cargo marks.
    dir.parent()?
        .join("CACHEDIR.TAG")
        .is_file()
        .then(|| dir.to_path_buf())
}

/// Whether `binary` exists and is newer than `lock` and every source file its dep-info file
/// lists (a listed file that is gone, moved by a refactoring, makes it stale too).
fn is_fresh(binary: &Path, lock: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else {
        return false;
    };
    let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else {
        return false;
    };
    let Some(sources) = dep_info.strip_prefix(&format!("{}:", binary.display())) else {
        return false;
    };
    let not_newer = |p: &Path| modified(p).is_some_and(|m| m <= built);
    not_newer(lock) && dep_info_paths(sources).iter().all(|p| not_newer(p))
}

/// The paths of a Makefile-style dep-info line (blanks in paths are escaped with `\`).
fn dep_info_paths(line: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

/// The workspace root (the testkit crate lives in it).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_tests_bins_and_strangers() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "").unwrap();
        let debug = target.path().join("debug");
        assert_eq!(
            profile_dir(&debug.join("deps/api-0123")),
            Some(debug.clone())
        );
        assert_eq!(
            profile_dir(&target.path().join("release/bench")),
            Some(target.path().join("release"))
        );
        assert_eq!(profile_dir(Path::new("/usr/bin/true")), None);
    }

    #[test]
    fn fresh_until_a_source_is_newer_or_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (src, spaced, lock, bin) = (
            dir.path().join("main.rs"),
            dir.path().join("a b.rs"),
            dir.path().join("Cargo.lock"),
            dir.path().join("node"),
        );
        for p in [&src, &spaced, &lock] {
            std::fs::write(p, "").unwrap();
        }
        assert!(!is_fresh(&bin, &lock), "no binary");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, "").unwrap();
        assert!(!is_fresh(&bin, &lock), "no dep-info");
        let escaped = spaced.display().to_string().replace(' ', "\\ ");
        std::fs::write(
            bin.with_extension("d"),
            format!("{}: {} {escaped}\n", bin.display(), src.display()),
        )
        .unwrap();
        assert!(is_fresh(&bin, &lock));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&spaced, "changed").unwrap();
        assert!(!is_fresh(&bin, &lock), "a source is newer");
        std::fs::write(&bin, "").unwrap();
        assert!(is_fresh(&bin, &lock));
        std::fs::remove_file(&src).unwrap();
        assert!(!is_fresh(&bin, &lock), "a source is gone");
    }

    #[test]
    fn env_names_a_prebuilt_binary() {
        let missing = Binary {
            package: "none",
            name: "none",
            env: "TESTKIT_TEST_NO_SUCH_BIN",
        };
        std::env::set_var(missing.env, "/nonexistent/none");
        let err = missing.try_path().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/none is not a file"), "{err}");
    }
}
