//! Runs registryctl, the binary of this crate, for its tests: one way for every test binary,
//! so that none of them runs it in an environment of its own. Every `REGISTRY_*` variable
//! of the test's environment is removed (registryctl reads REGISTRY_URL, REGISTRY_TOKEN,
//! REGISTRY_TOKEN_FILE and REGISTRY_CA_FILE; a test gives them explicitly with
//! [`ctl_with`]), as testkit's `Process` does for the processes it starts; stdin is
//! /dev/null, so that nothing waits on the terminal; RUST_LOG is `warn`.

use std::process::{Command, Stdio};

/// The registryctl binary cargo built for these tests.
pub const CTL: &str = env!("CARGO_BIN_EXE_registryctl");

/// What a finished registryctl run left: its exit code (-1 when killed by a signal) and
/// output.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// registryctl with `args`, ready to be run or spawned.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(CTL);
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("REGISTRY_")) {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "warn").stdin(Stdio::null());
    command
}

/// Runs registryctl with `args` to its end.
pub fn ctl(args: &[&str]) -> Run {
    ctl_with(args, &[])
}

/// Runs registryctl with `args` and the environment variables `env` to its end.
pub fn ctl_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = command(args);
    command.envs(env.iter().copied());
    let output = command.output().expect("run registryctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
