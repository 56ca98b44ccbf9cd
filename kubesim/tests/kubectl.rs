//! kubectl (the real binary) against the simulator: apply, get with printer columns, scale,
//! delete with cascade.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kubesim::{Simulator, SimulatorConfig};
use testkit::eventually;

/// `KUBECTL` (scripts/test points it at the project's kubectl 1.37), else `kubectl` on PATH.
fn kubectl_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL").map(PathBuf::from) {
        assert!(path.is_file(), "KUBECTL={} is not a file", path.display());
        return Some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        cmd.env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        let out = match stdin {
            Some(input) => {
                let file = self
                    .cache
                    .join(format!("input-{}.yaml", args.join("-").replace('/', "_")));
                std::fs::write(&file, input).unwrap();
                cmd.arg("-f").arg(&file).output()
            }
            None => cmd.output(),
        }
        .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], input: Option<&str>) -> String {
        let (ok, out, err) = self.run(args, input);
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }
}

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sleepers
spec:
  replicas: 3
  serviceName: sleepers
  selector:
    matchLabels: {app: sleepers}
  template:
    metadata:
      labels: {app: sleepers}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: busybox
        command: ["sleep", "3600"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_scales_and_deletes() {
    let Some(bin) = kubectl_bin() else {
        // CI runs scripts/test, which provides kubectl: there, a missing one is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "no kubectl in CI: run the tests through scripts/test"
        );
        // Written to the real stderr (not the captured one) so that the skip is seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!! SKIPPED: kubectl_applies_gets_scales_and_deletes: no kubectl on PATH (install it or set KUBECTL) !!!!!\n");
        return;
    };
    let sim = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let k = Kubectl {
        bin,
        kubeconfig,
        cache: dir.path().join("cache"),
    };
    std::fs::create_dir_all(&k.cache).unwrap();

    let k = std::sync::Arc::new(k);
    let run = |args: Vec<&'static str>, input: Option<String>| {
        let k = k.clone();
        async move {
            tokio::task::spawn_blocking(move || k.ok(&args, input.as_deref()))
                .await
                .unwrap()
        }
    };

    // The repository's CRD, then a custom resource, read back through its short name.
    let out = run(
        vec!["apply", "--validate=false"],
        Some(repo_file("crds/registrycluster.yaml")),
    )
    .await;
    assert!(out.contains("registryclusters.sofaregistry.dev"), "{out}");
    let regc = "apiVersion: sofaregistry.dev/v1alpha1\nkind: RegistryCluster\nmetadata:\n  name: demo\nspec: {}\n";
    run(vec!["apply", "--validate=false"], Some(regc.to_string())).await;
    let table = run(vec!["get", "regc"], None).await;
    let header = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        header,
        ["NAME", "READY", "DATA", "SESSIONS", "EPOCH", "AGE"],
        "{table}"
    );
    assert!(table.contains("demo"), "{table}");

    // A StatefulSet: apply, re-apply (strategic merge patch), scale, delete with cascade.
    run(
        vec!["apply", "--validate=false"],
        Some(STATEFULSET.to_string()),
    )
    .await;
    let jsonpath = |field: &'static str| {
        let k = k.clone();
        async move {
            let arg = format!("jsonpath={{{field}}}");
            tokio::task::spawn_blocking(move || {
                k.run(&["get", "statefulset", "sleepers", "-o", &arg], None)
                    .1
            })
            .await
            .unwrap()
        }
    };
    eventually("3 ready sleepers", Duration::from_secs(60), || async {
        (jsonpath(".status.readyReplicas").await == "3").then_some(())
    })
    .await;
    let pods = run(vec!["get", "pods", "-l", "app=sleepers"], None).await;
    assert_eq!(
        pods.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{pods}"
    );
    run(
        vec!["apply", "--validate=false"],
        Some(STATEFULSET.replace("replicas: 3", "replicas: 4")),
    )
    .await;
    eventually("4 ready sleepers", Duration::from_secs(60), || async {
        (jsonpath(".status.readyReplicas").await == "4").then_some(())
    })
    .await;
    let out = run(
        vec!["scale", "statefulset", "sleepers", "--replicas=1"],
        None,
    )
    .await;
    assert!(out.contains("scaled"), "{out}");
    eventually("1 sleeper left", Duration::from_secs(60), || async {
        (jsonpath(".status.replicas").await == "1" && sim.pods().len() == 1).then_some(())
    })
    .await;
    run(vec!["delete", "statefulset", "sleepers"], None).await;
    eventually("pods collected", Duration::from_secs(60), || async {
        sim.pods().is_empty().then_some(())
    })
    .await;
    let (ok, _, err) = k.run(&["get", "statefulset", "sleepers"], None);
    assert!(!ok && err.contains("NotFound"), "{err}");
    run(vec!["delete", "regc", "demo"], None).await;
}
