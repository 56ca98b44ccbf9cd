//! Starting, probing and stopping the benchmarked servers (registry nodes, etcd, ZooKeeper) on
//! loopback, on the workspace's test kit (clean environment, listening line, drained output,
//! logs).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use testkit::{Process, Spawn};

pub use testkit::poll_until;

/// One server process started by the benchmark.
pub struct ServerProcess {
    pub name: String,
    process: Process,
}

impl ServerProcess {
    /// Starts `spawn`; a registry node (`Spawn::listening`) has printed its listening line
    /// when this returns.
    pub fn spawn(spawn: Spawn) -> Result<Self> {
        let process = spawn.start()?;
        Ok(Self {
            name: process.name().to_owned(),
            process,
        })
    }

    /// The registry node's `listening` event.
    pub fn listening_line(&self) -> &serde_json::Value {
        self.process.listening()
    }

    fn pid(&self) -> Option<u32> {
        self.process
            .pid()
            .and_then(|p| u32::try_from(p.as_raw()).ok())
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid()?, field)
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.process.exited() {
            Some(status) => bail!(
                "{} exited ({status}); log: {}",
                self.name,
                tail(self.process.log_path())
            ),
            None => Ok(()),
        }
    }

    /// SIGKILL, like a crash, and waits for the process to be gone.
    pub fn kill(mut self) {
        self.process.kill();
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub fn stop(mut self, grace: Duration) {
        self.process.stop(grace);
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
