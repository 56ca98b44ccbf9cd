//! One Pod run as local processes, one per container: start, readiness and liveness probes,
//! restarts per `restartPolicy` with backoff, graceful termination, and the Pod status that
//! follows from all of it.
//!
//! Shared by kubesim's kubelet (pods in its own store, all on the host's network) and the
//! node agent (pods of a real API server, each in its own network and mount namespace, see
//! [`Isolation`]). What differs between the two is behind [`PodHost`].

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use super::env::{container_env, expand, program_and_args, rewrite_wildcard};
use super::volumes;
use crate::store::now_rfc3339;

/// What a running pod reports to and reads from.
pub trait PodHost: Send + Sync + 'static {
    /// The pod's `.status` changed to `status` (the whole object); the host stores it.
    fn write_status(&self, pod: &Value, status: Value);
    /// A ConfigMap or Secret value: `kind` is `configmaps` or `secrets`, an empty `key` asks
    /// for every key as a JSON object. `None`: no such object or key.
    fn lookup(&self, kind: &str, namespace: &str, name: &str, key: &str) -> Option<String>;
}

/// A pod in a sandbox of its own, as a container runtime would give it: its own network
/// namespace (so that a wildcard bind is the pod's own), a private mount namespace with the
/// pod's volumes bind-mounted at their `mountPath` (volume `NAME` is the directory
/// `{pod dir}/volumes/NAME`, filled by the caller), a read-only root when
/// `readOnlyRootFilesystem` says so, and the user and groups of its `securityContext`.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// A network namespace file (`/run/netns/NAME`).
    pub netns: PathBuf,
}

/// How pods are run; the same for every pod of one kubelet.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// Image → local binary (see [`super::env::lookup_image`]).
    pub image_map: BTreeMap<String, PathBuf>,
    /// Image → the (uid, gid) its `USER` line names: what a container runs as when its
    /// securityContext names no user (only with [`Isolation`]; otherwise root).
    pub image_users: BTreeMap<String, (u32, u32)>,
    /// Given to every pod process as `KUBECONFIG` unless its env sets one.
    pub kubeconfig: Option<PathBuf>,
    /// Probes run at most this far apart whatever `periodSeconds`/`initialDelaySeconds` say.
    pub probe_period_cap: Duration,
    /// Longest wait before restarting an exited container.
    pub max_restart_backoff: Duration,
    /// Act on liveness probes (restart the container when one fails).
    pub liveness_probes: bool,
    /// `status.hostIP`.
    pub host_ip: Ipv4Addr,
    /// Set in every container's environment before its own `env`.
    pub base_env: Vec<(String, String)>,
    /// Prefix of `containerID`/`imageID` in the status (`kubesim://`).
    pub runtime: &'static str,
}

/// A running (or finished) container process.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerProcess {
    pub name: String,
    pub pid: Option<u32>,
    pub restart_count: u32,
    pub ready: bool,
    pub log: PathBuf,
}

/// A pod being run.
#[derive(Debug, Clone, Serialize)]
pub struct PodProcess {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub containers: Vec<ContainerProcess>,
}

#[derive(Debug, Clone)]
struct ContainerState {
    name: String,
    image: String,
    log: PathBuf,
    pid: Option<u32>,
    restart_count: u32,
    ready: bool,
    started: bool,
    /// Will not run again (restart policy says so, or the pod is terminating).
    finished: bool,
    exit_code: Option<i32>,
    state: Value,
    last_state: Value,
}

struct PodCtx {
    host: Arc<dyn PodHost>,
    settings: PodSettings,
    isolation: Option<Isolation>,
    pod: Value,
    ip: Ipv4Addr,
    dir: PathBuf,
    http: reqwest::Client,
    containers: Mutex<Vec<ContainerState>>,
    /// The last status written (its conditions keep their transition times).
    last_status: Mutex<Value>,
    notify: Notify,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// The client that runs `httpGet` probes. As the kubelet's, it does not verify the
/// certificate of a `scheme: HTTPS` probe (a pod's certificate names its Service, not the
/// IP the probe dials) and goes through no proxy. Both the simulator's kubelet and the
/// node agent of a real control plane probe with it.
pub fn probe_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .build()
}

/// A pod started by [`RunningPod::start`]; dropping it leaves the processes running until
/// [`RunningPod::kill`] or their own exit.
pub struct RunningPod {
    uid: String,
    ctx: Arc<PodCtx>,
    terminate: watch::Sender<Option<Duration>>,
    terminating: bool,
    task: JoinHandle<()>,
}

impl RunningPod {
    /// Starts every container of `pod` (a Pod object as JSON) on `ip`, with its logs and
    /// files under `dir` (must be inside a tokio runtime).
    pub fn start(
        host: Arc<dyn PodHost>,
        settings: PodSettings,
        isolation: Option<Isolation>,
        pod: &Value,
        ip: Ipv4Addr,
        dir: PathBuf,
        http: reqwest::Client,
    ) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        let cname = s(c, "/name").to_string();
                        ContainerState {
                            log: dir.join(format!("{cname}.log")),
                            name: cname,
                            image: s(c, "/image").to_string(),
                            pid: None,
                            restart_count: 0,
                            ready: false,
                            started: false,
                            finished: false,
                            exit_code: None,
                            state: json!({"waiting": {"reason": "ContainerCreating"}}),
                            last_state: json!({}),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ctx = Arc::new(PodCtx {
            host,
            settings,
            isolation,
            pod: pod.clone(),
            ip,
            dir,
            http,
            containers: Mutex::new(containers),
            last_status: Mutex::new(pod.get("status").cloned().unwrap_or(json!({}))),
            notify: Notify::new(),
        });
        let (terminate, term_rx) = watch::channel(None);
        let task = tokio::spawn(run_pod(ctx.clone(), term_rx));
        Self {
            uid: s(pod, "/metadata/uid").to_string(),
            ctx,
            terminate,
            terminating: false,
            task,
        }
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ctx.ip
    }

    /// Starts a graceful stop (SIGTERM, SIGKILL after `grace`); later calls do nothing.
    pub fn terminate(&mut self, grace: Duration) {
        if !self.terminating {
            self.terminating = true;
            let _ = self.terminate.send(Some(grace));
        }
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating
    }

    /// Every container has stopped and will not run again.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// SIGKILLs every process of the pod now and stops running it.
    pub fn kill(&self) {
        self.task.abort();
        for c in self.ctx.containers.lock().iter() {
            if let Some(pid) = c.pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }

    /// SIGKILLs the running processes (they restart per the restart policy); their ids.
    pub fn kill_processes(&self) -> Vec<u32> {
        let pids: Vec<u32> = self
            .ctx
            .containers
            .lock()
            .iter()
            .filter_map(|c| c.pid)
            .collect();
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        pids
    }

    pub fn process(&self) -> PodProcess {
        PodProcess {
            namespace: s(&self.ctx.pod, "/metadata/namespace").to_string(),
            name: s(&self.ctx.pod, "/metadata/name").to_string(),
            uid: self.uid.clone(),
            ip: self.ctx.ip,
            dir: self.ctx.dir.clone(),
            containers: self
                .ctx
                .containers
                .lock()
                .iter()
                .map(|c| ContainerProcess {
                    name: c.name.clone(),
                    pid: c.pid,
                    restart_count: c.restart_count,
                    ready: c.ready,
                    log: c.log.clone(),
                })
                .collect(),
        }
    }
}

async fn run_pod(ctx: Arc<PodCtx>, term: watch::Receiver<Option<Duration>>) {
    let start_time = now_rfc3339();
    let count = ctx.containers.lock().len();
    let mut set = JoinSet::new();
    for idx in 0..count {
        set.spawn(run_container(ctx.clone(), idx, term.clone()));
    }
    let mut volume_sync = tokio::time::interval(VOLUME_SYNC);
    loop {
        write_status(&ctx, &start_time);
        tokio::select! {
            _ = ctx.notify.notified() => {}
            _ = volume_sync.tick(), if ctx.isolation.is_none() => {
                if let Err(message) = ctx.project_volumes() {
                    tracing::warn!(%message, "volume not refreshed");
                }
                continue;
            }
            joined = set.join_next() => if joined.is_none() { break },
        }
    }
    write_status(&ctx, &start_time);
}

/// How often a host-network pod's ConfigMap and Secret volumes are rewritten from the store
/// (a kubelet's sync period plus its cache TTL is about a minute; a change reaching a
/// running pod later than this is normal on a real node too).
const VOLUME_SYNC: Duration = Duration::from_secs(5);

fn write_status(ctx: &PodCtx, start_time: &str) {
    let containers = ctx.containers.lock().clone();
    let status = {
        let mut last = ctx.last_status.lock();
        let status = pod_status(
            &last,
            &containers,
            ctx.ip,
            ctx.settings.host_ip,
            start_time,
            ctx.settings.runtime,
        );
        *last = status.clone();
        status
    };
    ctx.host.write_status(&ctx.pod, status);
}

/// The Pod status that the containers' states add up to; conditions keep the transition
/// time they have in `old` while their status stays the same.
fn pod_status(
    old: &Value,
    containers: &[ContainerState],
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    start_time: &str,
    runtime: &str,
) -> Value {
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let phase = if !containers.is_empty() && containers.iter().all(|c| c.finished) {
        if containers.iter().all(|c| c.exit_code == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if containers.iter().any(|c| c.started) {
        "Running"
    } else {
        "Pending"
    };
    let now = now_rfc3339();
    let condition = |t: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = old
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
            })
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or(json!(now));
        json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "imageID": format!("{runtime}://{}", c.image),
                "containerID": c.pid.map(|p| format!("{runtime}://{p}")),
                "ready": c.ready, "started": c.pid.is_some(), "restartCount": c.restart_count,
                "state": c.state, "lastState": c.last_state,
            })
        })
        .collect();
    let (ip, host_ip) = (ip.to_string(), host_ip.to_string());
    json!({
        "phase": phase,
        "conditions": [condition("PodScheduled", true), condition("Initialized", true), condition("ContainersReady", all_ready), condition("Ready", all_ready)],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": start_time,
        // No qosClass: the API server sets it when the pod is created and refuses any
        // status update that changes it.
        "containerStatuses": statuses,
    })
}

/// The user, groups and mounts a container process takes on in its sandbox, prepared
/// before `fork` (nothing may allocate between `fork` and `exec`).
struct Sandbox {
    netns: OwnedFd,
    read_only_root: bool,
    mounts: Vec<SandboxMount>,
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Vec<nix::unistd::Gid>,
    exec: Option<Exec>,
}

/// A volume bind-mounted into the sandbox. Every source is opened (`O_PATH`, at descriptor
/// `fd`) in the new mount namespace before anything is mounted, and mounted through
/// `/proc/self/fd/{fd}`: a volume mounted over a parent of the pod directory (an emptyDir at
/// `/tmp` while the node's state lives under `/tmp`) must not hide the volumes after it.
struct SandboxMount {
    source: CString,
    fd: i32,
    by_fd: CString,
    target: CString,
    read_only: bool,
}

/// Descriptors the sources are moved to in the child, one per mount.
const MOUNT_FD_BASE: i32 = 600;
const MAX_MOUNTS: usize = 200;

/// The program, opened by the agent, and its argv/envp as C arrays: the child executes the
/// open file (`execveat`), so that a container's user needs no search permission on the
/// directories the binary lives in (a build tree under `/root`, say), as an image's
/// binary needs none on the host's.
struct Exec {
    program: std::fs::File,
    _strings: Vec<CString>,
    argv: Vec<*mut nix::libc::c_char>,
    envp: Vec<*mut nix::libc::c_char>,
}

// SAFETY: the pointers point into `_strings`, owned by the same value and never changed.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

impl Exec {
    fn new(program: &Path, args: &[String], env: &[(String, String)]) -> Result<Self, String> {
        let file = std::fs::File::open(program)
            .map_err(|e| format!("opening {}: {e}", program.display()))?;
        let nul = |s: String| {
            CString::new(s).map_err(|_| "an argument or variable has a NUL byte".to_string())
        };
        let mut argv_strings = vec![cstring(program)?];
        for a in args {
            argv_strings.push(nul(a.clone())?);
        }
        let mut envp_strings = Vec::new();
        for (k, v) in env {
            envp_strings.push(nul(format!("{k}={v}"))?);
        }
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect::<Vec<_>>()
        };
        let (argv, envp) = (ptrs(&argv_strings), ptrs(&envp_strings));
        argv_strings.extend(envp_strings);
        Ok(Self {
            program: file,
            _strings: argv_strings,
            argv,
            envp,
        })
    }
}

fn security_value<'a>(pod: &'a Value, container: &'a Value, key: &str) -> Option<&'a Value> {
    container
        .pointer(&format!("/securityContext/{key}"))
        .or_else(|| pod.pointer(&format!("/spec/securityContext/{key}")))
}

fn cstring(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path {} has a NUL byte", p.display()))
}

impl PodCtx {
    fn container_spec(&self, idx: usize) -> Value {
        self.pod
            .pointer(&format!("/spec/containers/{idx}"))
            .cloned()
            .unwrap_or(json!({}))
    }

    fn update(&self, idx: usize, f: impl FnOnce(&mut ContainerState)) {
        if let Some(c) = self.containers.lock().get_mut(idx) {
            f(c);
        }
        self.notify.notify_one();
    }

    /// The sandbox of container `container`: its mounts (mount points created on the host
    /// when missing, as empty directories or files), and the user it runs as. Refused like a
    /// kubelet refuses it: `runAsNonRoot` when the user would be root (no `runAsUser`, and the
    /// image's user is root, or unknown).
    fn sandbox(&self, isolation: &Isolation, container: &Value) -> Result<Sandbox, String> {
        let netns = std::fs::File::open(&isolation.netns)
            .map_err(|e| format!("network namespace {}: {e}", isolation.netns.display()))?
            .into();
        let image_user =
            super::env::lookup_image(&self.settings.image_users, s(container, "/image")).copied();
        let uid = security_value(&self.pod, container, "runAsUser")
            .and_then(Value::as_u64)
            .map(|u| u as u32)
            .or(image_user.map(|u| u.0));
        let gid = security_value(&self.pod, container, "runAsGroup")
            .and_then(Value::as_u64)
            .map(|g| g as u32)
            .or(image_user.map(|u| u.1));
        if security_value(&self.pod, container, "runAsNonRoot").and_then(Value::as_bool)
            == Some(true)
            && uid.unwrap_or(0) == 0
        {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
        let mut groups: Vec<nix::unistd::Gid> = Vec::new();
        if let Some(g) = gid {
            groups.push(nix::unistd::Gid::from_raw(g));
        }
        if let Some(fs_group) = self
            .pod
            .pointer("/spec/securityContext/fsGroup")
            .and_then(Value::as_u64)
        {
            groups.push(nix::unistd::Gid::from_raw(fs_group as u32));
        }
        for g in self
            .pod
            .pointer("/spec/securityContext/supplementalGroups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
        {
            groups.push(nix::unistd::Gid::from_raw(g as u32));
        }
        let mut mounts = Vec::new();
        for m in container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (name, target) = (s(m, "/name"), s(m, "/mountPath"));
            if name.is_empty() || !target.starts_with('/') || target.split('/').any(|c| c == "..") {
                return Err(format!(
                    "volume mount {name:?} at {target:?} is not an absolute path"
                ));
            }
            let mut source = self.dir.join("volumes").join(name);
            let sub = s(m, "/subPath");
            if !sub.is_empty() {
                if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "volume mount {name:?}: subPath {sub:?} leaves the volume"
                    ));
                }
                source = source.join(sub);
            }
            if !source.exists() {
                return Err(format!(
                    "volume {name:?} is not ready ({} missing)",
                    source.display()
                ));
            }
            let target = PathBuf::from(target);
            if !target.exists() {
                let made = if source.is_dir() {
                    std::fs::create_dir_all(&target)
                } else {
                    target
                        .parent()
                        .map(std::fs::create_dir_all)
                        .unwrap_or(Ok(()))
                        .and_then(|_| std::fs::File::create(&target).map(drop))
                };
                made.map_err(|e| format!("mount point {}: {e}", target.display()))?;
            }
            if mounts.len() >= MAX_MOUNTS {
                return Err(format!("more than {MAX_MOUNTS} volume mounts"));
            }
            let fd = MOUNT_FD_BASE + mounts.len() as i32;
            mounts.push(SandboxMount {
                source: cstring(&source)?,
                fd,
                by_fd: CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL"),
                target: cstring(&target)?,
                read_only: m.get("readOnly").and_then(Value::as_bool) == Some(true),
            });
        }
        let read_only_root = container
            .pointer("/securityContext/readOnlyRootFilesystem")
            .and_then(Value::as_bool)
            == Some(true);
        Ok(Sandbox {
            netns,
            read_only_root,
            mounts,
            uid,
            gid,
            groups,
            exec: None,
        })
    }

    /// Writes the pod's ConfigMap/Secret volumes with their current content (host network
    /// only: a sandboxed pod's volumes are filled by its host).
    fn project_volumes(&self) -> std::result::Result<(), String> {
        let data = |kind: &str, ns: &str, name: &str| -> Option<BTreeMap<String, String>> {
            serde_json::from_str(&self.host.lookup(kind, ns, name, "")?).ok()
        };
        volumes::project(&self.pod, &self.dir, &data)
    }

    fn spawn(&self, idx: usize) -> std::result::Result<tokio::process::Child, String> {
        let container = self.container_spec(idx);
        let ip = self.ip.to_string();
        let (program, args) = program_and_args(&self.settings.image_map, &container)?;
        let lookup = |k: &str, ns: &str, n: &str, key: &str| self.host.lookup(k, ns, n, key);
        let mut env = self.settings.base_env.clone();
        env.extend(container_env(&self.pod, &container, &ip, &lookup)?);
        // Pods on the host's network share its ports: a wildcard bind is narrowed to the pod IP.
        let narrow = |v: String| {
            if self.isolation.is_some() {
                v
            } else {
                rewrite_wildcard(&v, &ip)
            }
        };
        // In a sandbox volumes are bind-mounted at their mountPath; on the host they are files
        // in the pod's directory, and the container's paths to them are rewritten.
        let mounts = if self.isolation.is_some() {
            Vec::new()
        } else {
            self.project_volumes()?;
            volumes::mounts(&container, &self.dir)
        };
        let narrow = |v: String| volumes::rewrite_mounts(&narrow(v), &mounts);
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, narrow(v))).collect();
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let args: Vec<String> = args.iter().map(|a| narrow(expand(a, &env_map))).collect();
        // In a sandbox the pod sees the host's files as an image's (`/` for its WORKDIR and
        // HOME, as distroless images have); on the host network it gets its own directory.
        let home = if self.isolation.is_some() {
            PathBuf::from("/")
        } else {
            self.dir.clone()
        };
        let sandbox = match &self.isolation {
            Some(isolation) => {
                let mut sb = self.sandbox(isolation, &container)?;
                let mut full_env = vec![
                    (
                        "PATH".to_string(),
                        std::env::var("PATH").unwrap_or_default(),
                    ),
                    ("HOME".to_string(), home.display().to_string()),
                ];
                full_env.extend(env.iter().cloned());
                sb.exec = Some(Exec::new(&program, &args, &full_env)?);
                Some(sb)
            }
            None => None,
        };
        let log_path = self
            .containers
            .lock()
            .get(idx)
            .map(|c| c.log.clone())
            .unwrap_or_default();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("log file {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "--- {} {}: starting {} {:?} (pod {}/{}, ip {ip})",
            self.settings.runtime,
            now_rfc3339(),
            program.display(),
            args,
            s(&self.pod, "/metadata/namespace"),
            s(&self.pod, "/metadata/name")
        );
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let workdir = container
            .get("workingDir")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| home.clone());
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .envs(
                self.settings
                    .kubeconfig
                    .iter()
                    .map(|k| ("KUBECONFIG", k.as_os_str())),
            )
            .envs(env)
            .current_dir(workdir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: only async-signal-safe system calls run between fork and exec, on values
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(sb) = &sandbox {
                    enter_sandbox(sb)?;
                }
                // After the user change, which clears it.
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))
    }

    async fn probe_once(&self, probe: &Value, container: &Value) -> bool {
        let timeout = Duration::from_secs(
            probe
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1),
        );
        let port_of = |p: Option<&Value>| -> Option<u16> {
            match p? {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Value::String(name) => container
                    .get("ports")
                    .and_then(Value::as_array)?
                    .iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))?
                    .get("containerPort")?
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok()),
                _ => None,
            }
        };
        if let Some(get) = probe.get("httpGet") {
            let Some(port) = port_of(get.get("port")) else {
                return false;
            };
            let host = get
                .get("host")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| self.ip.to_string());
            let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
            // As the kubelet: `scheme: HTTPS` probes over TLS without verifying the
            // certificate.
            let scheme = match get.get("scheme").and_then(Value::as_str) {
                Some(s) if s.eq_ignore_ascii_case("https") => "https",
                _ => "http",
            };
            let url = format!(
                "{scheme}://{host}:{port}{}{path}",
                if path.starts_with('/') { "" } else { "/" }
            );
            return match self.http.get(&url).timeout(timeout).send().await {
                Ok(r) => r.status().as_u16() >= 200 && r.status().as_u16() < 400,
                Err(_) => false,
            };
        }
        if let Some(tcp) = probe.get("tcpSocket") {
            let Some(port) = port_of(tcp.get("port")) else {
                return false;
            };
            return matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect((self.ip, port)))
                    .await,
                Ok(Ok(_))
            );
        }
        if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
            let argv: Vec<String> = cmd
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let Some((first, rest)) = argv.split_first() else {
                return false;
            };
            let run = tokio::process::Command::new(first)
                .args(rest)
                .env("POD_IP", self.ip.to_string())
                .kill_on_drop(true)
                .status();
            return matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(st)) if st.success());
        }
        false
    }

    fn probe_timing(&self, probe: &Value) -> (Duration, Duration, u64, u64) {
        let secs = |k: &str, d: u64| {
            Duration::from_secs(probe.get(k).and_then(Value::as_u64).unwrap_or(d))
        };
        let period = secs("periodSeconds", 10)
            .min(self.settings.probe_period_cap)
            .max(Duration::from_millis(50));
        let delay = secs("initialDelaySeconds", 0).min(self.settings.probe_period_cap);
        let success = probe
            .get("successThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let failure = probe
            .get("failureThreshold")
            .and_then(Value::as_u64)
            .unwrap_or(3)
            .max(1);
        (period, delay, success, failure)
    }

    /// Probes readiness until cancelled (never returns).
    async fn readiness_loop(&self, idx: usize) {
        let container = self.container_spec(idx);
        let Some(probe) = container.get("readinessProbe").cloned() else {
            self.update(idx, |c| c.ready = true);
            return std::future::pending().await;
        };
        let (period, delay, success_threshold, failure_threshold) = self.probe_timing(&probe);
        tokio::time::sleep(delay).await;
        let (mut successes, mut failures) = (0u64, 0u64);
        loop {
            let ok = self.probe_once(&probe, &container).await;
            let ready_now = self.containers.lock().get(idx).is_some_and(|c| c.ready);
            if ok {
                successes += 1;
                failures = 0;
                if !ready_now && successes >= success_threshold {
                    self.update(idx, |c| c.ready = true);
                }
            } else {
                failures += 1;
                successes = 0;
                if ready_now && failures >= failure_threshold {
                    self.update(idx, |c| c.ready = false);
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Returns when the liveness probe has failed `failureThreshold` times in a row (never
    /// when there is none, or liveness probes are off).
    async fn liveness_failed(&self, idx: usize) {
        let container = self.container_spec(idx);
        let probe = match container.get("livenessProbe") {
            Some(p) if self.settings.liveness_probes => p.clone(),
            _ => return std::future::pending().await,
        };
        let (period, delay, _, failure_threshold) = self.probe_timing(&probe);
        tokio::time::sleep(delay).await;
        let mut failures = 0u64;
        loop {
            if self.probe_once(&probe, &container).await {
                failures = 0;
            } else {
                failures += 1;
                if failures >= failure_threshold {
                    return;
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// In the child, between `fork` and `exec`: joins the pod's network namespace, makes a
/// private mount namespace with the pod's volumes, then drops to the container's user.
fn enter_sandbox(sb: &Sandbox) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&std::ffi::CStr> = None;
    let io = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
    nix::sched::setns(&sb.netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io)?;
    let root = c"/";
    mount(
        none,
        root,
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )
    .map_err(io)?;
    if sb.read_only_root {
        mount(
            none,
            root,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            none,
        )
        .map_err(io)?;
    }
    for m in &sb.mounts {
        // SAFETY: open/dup3/close on NUL-terminated paths prepared before the fork.
        unsafe {
            let fd = nix::libc::open(m.source.as_ptr(), nix::libc::O_PATH | nix::libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd != m.fd {
                let moved = nix::libc::dup3(fd, m.fd, nix::libc::O_CLOEXEC);
                nix::libc::close(fd);
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    for m in &sb.mounts {
        let (target, read_only) = (&m.target, &m.read_only);
        mount(
            Some(m.by_fd.as_c_str()),
            target.as_c_str(),
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(io)?;
        if *read_only {
            mount(
                none,
                target.as_c_str(),
                none,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                none,
            )
            .map_err(io)?;
        }
    }
    if sb.uid.is_some() || sb.gid.is_some() || !sb.groups.is_empty() {
        nix::unistd::setgroups(&sb.groups).map_err(io)?;
    }
    if let Some(g) = sb.gid {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(g)).map_err(io)?;
    }
    if let Some(u) = sb.uid {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(u)).map_err(io)?;
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Some(exec) = &sb.exec {
        use std::os::fd::AsRawFd;
        // SAFETY: NUL-terminated arrays of pointers to NUL-terminated strings, all alive.
        unsafe {
            nix::libc::execveat(
                exec.program.as_raw_fd(),
                c"".as_ptr(),
                exec.argv.as_ptr(),
                exec.envp.as_ptr(),
                nix::libc::AT_EMPTY_PATH,
            );
        }
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn terminated_state(status: &std::process::ExitStatus, started_at: &str) -> (Value, i32) {
    use std::os::unix::process::ExitStatusExt;
    let (code, reason, signal) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, if c == 0 { "Completed" } else { "Error" }, None),
        (None, Some(sig)) => (128 + sig, "Error", Some(sig)),
        (None, None) => (-1, "Error", None),
    };
    let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now_rfc3339()});
    if let Some(sig) = signal {
        t["signal"] = json!(sig);
    }
    (json!({"terminated": t}), code)
}

/// SIGTERM to the process group, SIGKILL when it has not exited within `grace`.
async fn stop(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(st) => st,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            child.wait().await
        }
    }
}

enum Exit {
    /// The process exited on its own (or was killed by someone else).
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The liveness probe failed: to be stopped and restarted.
    Unhealthy,
    /// The pod is terminating.
    Terminate,
}

/// Runs one container: start, probe, restart per policy with backoff, stop on termination.
async fn run_container(ctx: Arc<PodCtx>, idx: usize, mut term: watch::Receiver<Option<Duration>>) {
    let policy = s(&ctx.pod, "/spec/restartPolicy").to_string();
    let pod_grace = Duration::from_secs(
        ctx.pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30),
    );
    let initial_backoff = Duration::from_millis(200);
    let mut backoff = initial_backoff;
    let mut ran_before = false;
    loop {
        if term.borrow_and_update().is_some() {
            ctx.update(idx, |c| c.finished = true);
            return;
        }
        if ran_before {
            ctx.update(idx, |c| c.restart_count += 1);
        }
        let mut child = match ctx.spawn(idx) {
            Ok(child) => child,
            Err(message) => {
                tracing::warn!(pod = s(&ctx.pod, "/metadata/name"), %message, "container not started");
                ctx.update(idx, |c| c.state = json!({"waiting": {"reason": "CreateContainerError", "message": message}}));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = term.changed() => {}
                }
                backoff = (backoff * 2).min(ctx.settings.max_restart_backoff);
                continue;
            }
        };
        ran_before = true;
        let started = Instant::now();
        let started_at = now_rfc3339();
        let pid = child.id();
        ctx.update(idx, |c| {
            c.pid = pid;
            c.started = true;
            c.ready = false;
            c.state = json!({"running": {"startedAt": started_at}});
        });
        let exit = tokio::select! {
            st = child.wait() => Exit::Exited(st),
            _ = ctx.readiness_loop(idx) => Exit::Terminate,
            _ = ctx.liveness_failed(idx) => Exit::Unhealthy,
            _ = term.changed() => Exit::Terminate,
        };
        let status = match exit {
            Exit::Exited(st) => st,
            Exit::Unhealthy => {
                tracing::warn!(
                    pod = s(&ctx.pod, "/metadata/name"),
                    container = idx,
                    "liveness probe failed: restarting"
                );
                stop(&mut child, pid, pod_grace).await
            }
            Exit::Terminate => {
                let grace = term.borrow().unwrap_or(Duration::ZERO);
                let status = stop(&mut child, pid, grace).await;
                let (state, code) = exit_state(&status, &started_at);
                ctx.update(idx, |c| {
                    c.pid = None;
                    c.ready = false;
                    c.finished = true;
                    c.exit_code = Some(code);
                    c.state = state;
                });
                return;
            }
        };
        let (state, code) = exit_state(&status, &started_at);
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        ctx.update(idx, |c| {
            c.pid = None;
            c.ready = false;
            c.exit_code = Some(code);
            c.finished = !restart;
            c.last_state = state.clone();
            c.state = if restart {
                json!({"waiting": {"reason": "CrashLoopBackOff"}})
            } else {
                state
            };
        });
        if !restart {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = initial_backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.changed() => {}
        }
        backoff = (backoff * 2).min(ctx.settings.max_restart_backoff);
    }
}

fn exit_state(
    status: &std::io::Result<std::process::ExitStatus>,
    started_at: &str,
) -> (Value, i32) {
    match status {
        Ok(st) => terminated_state(st, started_at),
        Err(e) => (
            json!({"terminated": {"exitCode": -1, "reason": "Error", "message": e.to_string()}}),
            -1,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(
        ready: bool,
        started: bool,
        finished: bool,
        exit_code: Option<i32>,
    ) -> ContainerState {
        ContainerState {
            name: "c".into(),
            image: "img".into(),
            log: PathBuf::new(),
            pid: started.then_some(7),
            restart_count: 0,
            ready,
            started,
            finished,
            exit_code,
            state: json!({}),
            last_state: json!({}),
        }
    }

    #[test]
    fn status_follows_containers_and_keeps_transition_times() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let host = Ipv4Addr::new(10, 1, 2, 1);
        let pending = pod_status(
            &json!({}),
            &[container(false, false, false, None)],
            ip,
            host,
            "t0",
            "x",
        );
        assert_eq!(pending["phase"], "Pending");
        assert_eq!(pending["podIP"], "10.1.2.3");
        assert_eq!(pending["hostIPs"][0]["ip"], "10.1.2.1");
        let mut old = pending.clone();
        old["conditions"][0]["lastTransitionTime"] = json!("long ago");
        let running = pod_status(
            &old,
            &[container(true, true, false, None)],
            ip,
            host,
            "t0",
            "x",
        );
        assert_eq!(running["phase"], "Running");
        assert_eq!(
            running["conditions"][0]["lastTransitionTime"], "long ago",
            "PodScheduled stayed True"
        );
        assert_eq!(running["conditions"][3]["status"], "True");
        assert_eq!(running["containerStatuses"][0]["containerID"], "x://7");
        let failed = pod_status(
            &running,
            &[container(false, false, true, Some(1))],
            ip,
            host,
            "t0",
            "x",
        );
        assert_eq!(failed["phase"], "Failed");
        let done = pod_status(
            &running,
            &[container(false, false, true, Some(0))],
            ip,
            host,
            "t0",
            "x",
        );
        assert_eq!(done["phase"], "Succeeded");
    }
}
