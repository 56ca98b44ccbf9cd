//! The node agent's pod sandbox, with no API server: a pod in its own network namespace on
//! the agent's bridge (reached from the host at its own address, its wildcard bind its
//! own), running as its securityContext user, its volume bind-mounted, its root read-only;
//! its status Ready from an HTTP readiness probe. Needs root and iproute2 (SKIPPED loudly
//! without them).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubesim::agent::network::PodNetwork;
use kubesim::workload::pod::{Isolation, PodHost, PodSettings, RunningPod};
use serde_json::{json, Value};

#[derive(Default)]
struct Recorder(Mutex<Vec<Value>>);

impl PodHost for Recorder {
    fn write_status(&self, _pod: &Value, status: Value) {
        self.0.lock().unwrap().push(status);
    }
    fn lookup(&self, _kind: &str, _ns: &str, _name: &str, _key: &str) -> Option<String> {
        None
    }
}

const SERVER: &str = r#"
import http.server, json, os
def ro():
    try:
        open('/kube-agent-sandbox-probe', 'w')
        return False
    except OSError:
        return True
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"uid": os.getuid(), "gid": os.getgid(), "greeting": open(os.environ["CONF"] + "/greeting").read(),
                           "readOnlyRoot": ro(), "pod": os.environ.get("POD_NAME")}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

fn skip() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root");
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("no iproute2");
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return Some("no /usr/bin/python3");
    }
    None
}

#[tokio::test]
async fn a_pod_runs_in_its_own_sandbox() {
    if let Some(why) = skip() {
        eprintln!("SKIPPED a_pod_runs_in_its_own_sandbox: {why}");
        return;
    }
    let id = format!("t{:04x}", std::process::id() & 0xffff);
    let net =
        PodNetwork::create(&id, [10, 252, (std::process::id() % 250) as u8]).expect("pod network");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("volumes/conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("greeting"), "hello").unwrap();
    let mount = format!("/tmp/kube-agent-sandbox-{id}");
    let pod = json!({
        "metadata": {"name": "web-0", "namespace": "t", "uid": "u-1"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "web", "image": "python",
                "command": ["/usr/bin/python3", "-c", SERVER],
                "env": [{"name": "CONF", "value": mount}],
                "volumeMounts": [{"name": "conf", "mountPath": mount, "readOnly": true}],
                "securityContext": {"readOnlyRootFilesystem": true},
                "readinessProbe": {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1},
            }],
        },
    });
    let sandbox = net.add_pod().expect("pod sandbox");
    let recorder = Arc::new(Recorder::default());
    let settings = running_settings(&net);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let running = RunningPod::start(
        recorder.clone(),
        settings,
        Some(Isolation {
            netns: sandbox.netns_path(),
        }),
        &pod,
        sandbox.ip,
        dir.path().to_path_buf(),
        http.clone(),
    );
    let start = Instant::now();
    let ready = loop {
        let last = recorder.0.lock().unwrap().last().cloned();
        if let Some(s) = last
            .as_ref()
            .filter(|s| s["conditions"][3]["status"] == "True")
        {
            break s.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not Ready: {last:?}\nlog: {}",
            std::fs::read_to_string(dir.path().join("web.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["podIP"], sandbox.ip.to_string());
    assert_eq!(ready["hostIP"], net.host_ip().to_string());
    assert_ne!(sandbox.ip, Ipv4Addr::LOCALHOST);
    let answer: Value = http
        .get(format!("http://{}:8080/", sandbox.ip))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["uid"], 65532, "runs as runAsUser");
    assert_eq!(answer["gid"], 65532, "runs as runAsGroup");
    assert_eq!(
        answer["greeting"], "hello",
        "the volume is mounted at its mountPath"
    );
    assert_eq!(answer["readOnlyRoot"], true, "readOnlyRootFilesystem holds");
    // A pod whose user would be root while it says runAsNonRoot is refused, as a kubelet does.
    let mut rooted = pod.clone();
    rooted["metadata"]["name"] = json!("rooted-0");
    rooted["spec"]["securityContext"] = json!({"runAsNonRoot": true});
    let rooted_sandbox = net.add_pod().expect("second sandbox");
    let recorder2 = Arc::new(Recorder::default());
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("volumes/conf")).unwrap();
    let refused = RunningPod::start(
        recorder2.clone(),
        running_settings(&net),
        Some(Isolation {
            netns: rooted_sandbox.netns_path(),
        }),
        &rooted,
        rooted_sandbox.ip,
        dir2.path().to_path_buf(),
        http,
    );
    let start = Instant::now();
    loop {
        let last = recorder2.0.lock().unwrap().last().cloned();
        let message = last.as_ref().and_then(|s| {
            s["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .map(str::to_string)
        });
        if let Some(m) = message {
            assert!(m.contains("runAsNonRoot"), "{m}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not refused: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refused.kill();
    running.kill();
    net.remove_pod(&sandbox);
    net.remove_pod(&rooted_sandbox);
    let _ = std::fs::remove_dir(&mount);
}

fn running_settings(net: &PodNetwork) -> PodSettings {
    PodSettings {
        image_map: Default::default(),
        image_users: Default::default(),
        kubeconfig: None,
        probe_period_cap: Duration::from_secs(1),
        max_restart_backoff: Duration::from_secs(1),
        liveness_probes: true,
        host_ip: net.host_ip(),
        base_env: vec![],
        runtime: "test",
    }
}
