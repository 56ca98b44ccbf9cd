//! Server processes under test: a registry node (or kubesim, an operator, a peer server of the
//! bench) started with a clean environment, its `listening` line read, the rest of its output
//! drained into a log that is kept when the test fails, and signals to stop, pause or kill it.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{binary, Error};

/// How long a node may take to print its listening line on a loaded machine.
pub const LISTENING_WITHIN: Duration = Duration::from_secs(60);

/// How to start a process; kept by the [`Process`] so that it can start it again.
#[derive(Debug, Clone)]
pub struct Spawn {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Set (`Some`) or removed (`None`) after the cleaning.
    envs: Vec<(OsString, Option<OsString>)>,
    log: Option<PathBuf>,
    listening: Option<Duration>,
    /// Hand stdout to the test line by line ([`Process::next_line`]) instead of logging it.
    lines: bool,
}

impl Spawn {
    /// `program`, with stdout and stderr going to a log and no listening line expected.
    pub fn new(name: &str, program: impl AsRef<Path>) -> Spawn {
        Spawn {
            name: name.to_owned(),
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            log: None,
            listening: None,
            lines: false,
        }
    }

    /// The registry-node binary (built when missing or stale), expected to print its
    /// listening line, logging at `REGISTRY_TEST_LOG` (default `info`).
    pub fn registry_node(name: &str) -> Spawn {
        let log = std::env::var("REGISTRY_TEST_LOG").unwrap_or_else(|_| "info".into());
        Spawn::new(name, binary::REGISTRY_NODE.path())
            .env("RUST_LOG", log)
            .listening(LISTENING_WITHIN)
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spawn {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable in the child's environment (applied after the cleaning, see
    /// [`Spawn::start`]).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spawn {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes a variable from the child's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Spawn {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    /// Appends the output to `path` instead of a log file of the process's own.
    pub fn log(mut self, path: impl AsRef<Path>) -> Spawn {
        self.log = Some(path.as_ref().to_path_buf());
        self
    }

    /// Waits up to `within` for a stdout line `{"event":"listening",…}` when starting.
    pub fn listening(mut self, within: Duration) -> Spawn {
        self.listening = Some(within);
        self
    }

    /// Hands every stdout line to the test ([`Process::next_line`]), for a command-line
    /// client whose output is what is tested; stderr still goes to the log. Not with
    /// [`Spawn::listening`].
    pub fn stdout_lines(mut self) -> Spawn {
        self.lines = true;
        self
    }

    /// The arguments, as given.
    pub fn arguments(&self) -> impl Iterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// Starts the process. Every `REGISTRY_*` variable of the test's environment is removed
    /// from the child's (the node reads them as flag fallbacks, so a developer's shell must not
    /// change what a test starts); then the variables given with [`Spawn::env`] are set.
    pub fn start(self) -> Result<Process, Error> {
        let (log, log_dir) = match &self.log {
            Some(path) => (path.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("testkit-{}-", self.name))
                    .tempdir()
                    .map_err(|e| Error::Spawn {
                        name: self.name.clone(),
                        source: e,
                    })?;
                (dir.path().join(format!("{}.log", self.name)), Some(dir))
            }
        };
        let mut process = Process {
            spawn: self,
            child: None,
            listening: Value::Null,
            lines: None,
            log,
            log_dir,
        };
        process.launch()?;
        Ok(process)
    }
}

/// A running (or exited) child process; SIGKILLed when dropped. When the test fails (the
/// thread is panicking), the end of its log is printed and the log is kept.
#[derive(Debug)]
pub struct Process {
    spawn: Spawn,
    child: Option<Child>,
    listening: Value,
    log: PathBuf,
    log_dir: Option<tempfile::TempDir>,
    /// stdout, a line at a time, when started with [`Spawn::stdout_lines`].
    /// (Behind a mutex so that a `Process`, and what holds one, stays `Sync`.)
    lines: Option<std::sync::Mutex<mpsc::Receiver<String>>>,
}

impl Process {
    fn launch(&mut self) -> Result<(), Error> {
        let name = &self.spawn.name;
        let spawn_error = |source| Error::Spawn {
            name: name.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_error)?;
        let mut cmd = Command::new(&self.spawn.program);
        cmd.args(&self.spawn.args).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("REGISTRY_")) {
                cmd.env_remove(key);
            }
        }
        for (key, value) in &self.spawn.envs {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let stdout = match self.spawn.listening {
            _ if self.spawn.lines => Stdio::piped(),
            Some(_) => Stdio::piped(),
            None => Stdio::from(file.try_clone().map_err(spawn_error)?),
        };
        cmd.stdout(stdout)
            .stderr(Stdio::from(file.try_clone().map_err(spawn_error)?));
        let mut child = cmd.spawn().map_err(spawn_error)?;
        self.listening = Value::Null;
        if let Some(within) = self.spawn.listening.filter(|_| !self.spawn.lines) {
            let stdout = child.stdout.take().expect("stdout is piped");
            match read_listening_line(stdout, file, within) {
                Ok(line) => self.listening = line,
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::NotListening {
                        name: name.clone(),
                        why,
                        log: self.log.clone(),
                        tail: self.log_tail(30),
                    });
                }
            }
        }
        if self.spawn.lines {
            let stdout = child.stdout.take().expect("stdout is piped");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            self.lines = Some(std::sync::Mutex::new(rx));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The next stdout line of a process started with [`Spawn::stdout_lines`], or `None`
    /// when none comes within `within` (or stdout ended).
    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.lines
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(within)
            .ok()
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.spawn.name
    }

    /// How it was started.
    pub fn spawn(&self) -> &Spawn {
        &self.spawn
    }

    /// The listening line (`Null` for a process started without one).
    pub fn listening(&self) -> &Value {
        &self.listening
    }

    /// The address of the listening line's `field` (`"http"`, `"data"`, `"url"`).
    pub fn listening_addr(&self, field: &str) -> Option<&str> {
        self.listening.get(field)?.as_str()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` while the process runs.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILL, no goodbye; returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: asks for a graceful stop (see [`Process::exited`], [`Process::wait_exit`]).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers).
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// The exit status once the process has ended (it is then no longer running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits up to `within` for the process to end.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if !self.is_running() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL when it has not ended within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.terminate();
        let status = self.wait_exit(grace);
        self.kill();
        status
    }

    /// Kills the process and starts it again with the same arguments, appending to the same
    /// log. A node that listened on port 0 comes back on the address it had
    /// (`--http-addr`/`--data-addr` are pinned to its listening line); while the kernel has
    /// not released the port yet, starting is retried for a few seconds.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        for (flag, field) in [("--http-addr", "http"), ("--data-addr", "data")] {
            let Some(addr) = self.listening_addr(field).map(OsString::from) else {
                continue;
            };
            if let Some(pos) = self.spawn.args.iter().position(|a| a == flag) {
                if let Some(value) = self.spawn.args.get_mut(pos + 1) {
                    *value = addr;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => return other,
            }
        }
    }

    /// The log file (stderr, and stdout after the listening line).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "==== {} (log {}) ====\n{}",
                self.spawn.name,
                self.log.display(),
                self.log_tail(40)
            );
            if let Some(dir) = self.log_dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// Reads stdout until the listening line, then keeps copying it into the log in the
/// background so that the child never blocks on a full pipe.
fn read_listening_line(
    stdout: impl std::io::Read + Send + 'static,
    mut log: File,
    within: Duration,
) -> Result<Value, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v["event"] == "listening" && tx.is_some() => {
                    let _ = tx.take().map(|tx| tx.send(v));
                }
                _ => {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
            }
        }
    });
    match rx.recv_timeout(within) {
        Ok(line) => Ok(line),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no listening line within {within:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("exited before printing its listening line".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Spawn {
        Spawn::new("sh", "/bin/sh").args(["-c", script])
    }

    #[tokio::test]
    async fn reads_the_listening_line_and_logs_the_rest() {
        let mut p = sh(r#"echo starting; echo '{"event":"listening","http":"127.0.0.1:1"}'; echo after; echo err >&2; exec sleep 30"#)
            .listening(Duration::from_secs(10))
            .start()
            .unwrap();
        assert_eq!(p.listening_addr("http"), Some("127.0.0.1:1"));
        crate::eventually("log lines", Duration::from_secs(10), || async {
            let log = p.log_tail(10);
            log.contains("starting") && log.contains("after") && log.contains("err")
        })
        .await;
        p.kill();
        assert!(!p.is_running());
    }

    #[test]
    fn an_exit_before_listening_is_an_error_with_the_log() {
        let err = sh("echo broken flag >&2; exit 2")
            .listening(Duration::from_secs(10))
            .start()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exited before printing its listening line")
                && text.contains("broken flag"),
            "{text}"
        );
    }

    #[test]
    fn registry_variables_do_not_reach_the_child() {
        std::env::set_var("REGISTRY_TESTKIT_PROBE", "leaked");
        let mut p = sh("echo \"probe=${REGISTRY_TESTKIT_PROBE:-unset} given=$REGISTRY_GIVEN\"")
            .env("REGISTRY_GIVEN", "yes")
            .start()
            .unwrap();
        assert!(p
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
        assert_eq!(p.log_tail(1), "probe=unset given=yes");
    }

    #[test]
    fn stdout_lines_reach_the_test_and_stderr_the_log() {
        let p = sh("echo one; echo two; echo oops >&2; exec sleep 30")
            .stdout_lines()
            .start()
            .unwrap();
        let within = Duration::from_secs(10);
        assert_eq!(p.next_line(within).as_deref(), Some("one"));
        assert_eq!(p.next_line(within).as_deref(), Some("two"));
        assert_eq!(p.next_line(Duration::from_millis(50)), None);
        assert!(p.log_tail(5).contains("oops"));
    }

    #[test]
    fn pause_resume_and_terminate() {
        // The listening line comes once the trap is set, so the SIGTERM cannot beat it.
        let mut p =
            sh(r#"trap 'exit 7' TERM; echo '{"event":"listening"}'; while :; do sleep 0.05; done"#)
                .listening(Duration::from_secs(10))
                .start()
                .unwrap();
        p.pause();
        p.resume();
        let status = p.stop(Duration::from_secs(10)).expect("exits on SIGTERM");
        assert_eq!(status.code(), Some(7));
    }
}
