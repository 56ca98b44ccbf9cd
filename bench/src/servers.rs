//! Starting, probing and stopping the benchmarked servers (registry nodes, etcd, ZooKeeper) on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

/// One server process started by the benchmark.
pub struct ServerProcess {
    pub name: String,
    child: Child,
    pid: u32,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Spawns `cmd` with stderr (and stdout unless `stdout_piped`) going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, stdout_piped: bool) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let out = if stdout_piped {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            pid,
            log,
        })
    }

    /// Reads stdout lines until one parses as the registry node's `listening` event; later
    /// stdout is drained in the background so the pipe never fills.
    pub async fn listening_line(&mut self, deadline: Duration) -> Result<serde_json::Value> {
        let stdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{}: stdout not piped", self.name))?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(deadline, async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v.get("event").and_then(|e| e.as_str()) == Some("listening") {
                        return Ok::<_, anyhow::Error>(Some(v));
                    }
                }
            }
            Ok(None)
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match found {
            Ok(Ok(Some(v))) => Ok(v),
            Ok(Ok(None)) => bail!(
                "{} exited before printing its listening line; log: {}",
                self.name,
                tail(&self.log)
            ),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!(
                "{} printed no listening line within {deadline:?}; log: {}",
                self.name,
                tail(&self.log)
            ),
        }
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid, field)
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited ({status}); log: {}", self.name, tail(&self.log)),
            None => Ok(()),
        }
    }

    /// SIGKILL, like a crash, and waits for the process to be gone.
    pub async fn kill(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub async fn stop(mut self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The start and the end of a log file, for error messages (the first error line is usually
/// near the start, the last words near the end).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    let cut = |i: usize| {
        (i..=text.len())
            .find(|j| text.is_char_boundary(*j))
            .unwrap_or(text.len())
    };
    if text.len() <= 900 {
        return text.to_string();
    }
    format!(
        "{} […] {}",
        &text[..cut(500)],
        &text[cut(text.len() - 400)..]
    )
}

/// User + system CPU time of a process so far, from /proc/PID/stat (in USER_HZ = 100 ticks/s).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn parse_stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// A `kB` field (`VmRSS`, `VmHWM`) of /proc/PID/status.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&text, field)
}

pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A loopback port that was free a moment ago (for servers that cannot bind port 0 and report it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `probe` until it returns Ok, or fails with its last error at the deadline.
pub async fn poll_until<F, Fut, T>(what: &str, deadline: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(20);
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= end => {
                return Err(e.context(format!("{what} not ready within {deadline:?}")))
            }
            Err(_) => {
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// A directory for server data: on tmpfs (/dev/shm) when present, so that etcd's and
/// ZooKeeper's fsyncs cost what they cost in memory (the registry keeps everything in memory).
pub fn data_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("regbench-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return Ok(d);
        }
    }
    Ok(builder.tempdir()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_fields() {
        let s = "Name:\tetcd\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(51234));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(40000));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_a_name_with_spaces() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_seconds(stat), Some(3.0));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn own_process_has_rss() {
        let rss = status_kib(std::process::id(), "VmRSS").unwrap();
        let hwm = status_kib(std::process::id(), "VmHWM").unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
