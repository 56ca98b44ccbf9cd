"""The README's simulator quickstart, run for real: kubesim, kubectl, the operator binary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import deploylib

# scripts/test points KUBECTL at the project's kubectl 1.37; in CI a missing one fails.
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")
if KUBECTL is None and os.environ.get("CI"):
    raise RuntimeError("no kubectl in CI: run the tests through scripts/test")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="SKIPPED LOUDLY: kubectl is not installed")


def binary(env: str, name: str) -> str:
    path = os.environ.get(env) or str(deploylib.ROOT / "target" / "debug" / name)
    assert os.path.isfile(path), f"{path} missing: scripts/test builds it (cargo build)"
    return path


def poll(what: str, check, deadline_s: float = 240.0, every_s: float = 0.5):
    """Wait until check() returns a true value; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def sim(tmp_path):
    """A kubesim server running registry-node pods; yields the kubectl environment."""
    state = tmp_path / "kubesim"
    state.mkdir()
    kubeconfig = state / "kubeconfig"
    proc = subprocess.Popen(
        [binary("KUBESIM_BIN", "kubesim"), "serve", "--addr", "127.0.0.1:0",
         "--image-map", f"registry-node={binary('REGISTRY_NODE_BIN', 'registry-node')}",
         "--state-dir", str(state), "--kubeconfig-out", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=(state / "kubesim.log").open("w"), text=True)
    try:
        line = proc.stdout.readline()
        assert line, f"kubesim exited: {(state / 'kubesim.log').read_text()[-2000:]}"
        assert json.loads(line)["event"] == "listening"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        yield env, state
    finally:
        stop(proc)


def http_json(method: str, url: str, body=None) -> dict:
    """One JSON request to a registry node; fails the test on a non-2xx answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"{}")


def kubectl(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True,
                            timeout=60)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def test_simulator_quickstart(sim, tmp_path):
    env, state = sim
    root = deploylib.ROOT

    # The kubectl install path: every object of manifests/install.yaml is accepted (the
    # simulator stores the Deployment without running it).
    applied = kubectl(env, "apply", "--validate=false", "-f",
                      str(root / "manifests" / "install.yaml")).stdout
    for kind, name in [("namespace", "registry-system"), ("clusterrole.rbac.authorization.k8s.io", "registry-operator"),
                       ("deployment.apps", "registry-operator"),
                       ("customresourcedefinition.apiextensions.k8s.io",
                        "registryclusters.sofaregistry.dev")]:
        assert f"{kind}/{name} created" in applied, applied

    # The simulator flow of the README: the CRD from the chart, then the examples.
    kubectl(env, "apply", "--validate=false", "-f",
            str(root / "charts" / "registry-operator" / "crds" / "registrycluster.yaml"))
    kubectl(env, "apply", "--validate=false", "-f",
            str(root / "manifests" / "examples" / "minimal.yaml"))
    namespace = tmp_path / "namespace.yaml"
    namespace.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n")
    kubectl(env, "apply", "--validate=false", "-f", str(namespace))
    kubectl(env, "-n", "prod", "apply", "--validate=false", "-f",
            str(root / "manifests" / "examples" / "production.yaml"))
    stored = json.loads(kubectl(env, "-n", "prod", "get", "regc", "registry", "-o", "json").stdout)
    assert stored["spec"]["data"]["replicas"] == 5
    assert kubectl(env, "-n", "prod", "get", "secret", "registry-token").returncode == 0

    operator_log = (state / "operator.log").open("w")
    operator = subprocess.Popen(
        [binary("OPERATOR_BIN", "operator"), "--no-leader-election", "--namespace", "default",
         "--metrics-addr", "127.0.0.1:0"],
        env={**env, "POD_NAMESPACE": "default", "RUST_LOG": "info"},
        stdout=operator_log, stderr=subprocess.STDOUT)
    try:
        def statefulsets():
            out = kubectl(env, "get", "statefulsets", "-o", "json", check=False)
            if out.returncode != 0:
                return None
            items = {s["metadata"]["name"]: s["spec"]["replicas"]
                     for s in json.loads(out.stdout)["items"]}
            return items if items == {"registry-data": 3, "registry-session": 2} else None

        poll("the operator to create the StatefulSets of manifests/examples/minimal.yaml",
             statefulsets)
        poll("the operator to publish a membership epoch", lambda: kubectl(
            env, "get", "regc", "registry", "-o", "jsonpath={.status.membership.epoch}",
            check=False).stdout.strip() not in ("", "0"))

        poll("the cluster to become Ready", lambda: kubectl(
            env, "get", "regc", "registry", "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False).stdout.strip() == "True")
        table = kubectl(env, "get", "regc").stdout.splitlines()
        assert table[0].split() == ["NAME", "READY", "DATA", "SESSIONS", "EPOCH", "AGE"], table
        assert table[1].split()[1:4] == ["True", "3", "2"], table

        # The API on the session pods' IPs, as the README's registryctl steps do: a publish
        # through one session node is seen by a query on the other.
        def pod_url(name):
            ip = kubectl(env, "get", "pod", name, "-o", "jsonpath={.status.podIP}").stdout
            return f"http://{ip.strip()}:9603"

        first, second = pod_url("registry-session-0"), pod_url("registry-session-1")
        session = http_json("POST", f"{first}/api/v1/sessions", {"ttlSeconds": 30})
        http_json("POST", f"{first}/api/v1/sessions/{session['sessionId']}/publishers",
                  {"dataId": "com.example.echo", "data": ["10.1.2.3:8080"]})
        poll("the publish to be visible on the other session node", lambda: http_json(
            "GET", f"{second}/api/v1/data?dataId=com.example.echo")["zones"] == {
                "DEFAULT_ZONE": ["10.1.2.3:8080"]}, deadline_s=30)

        # Scale as the README does; the operator follows the spec.
        kubectl(env, "patch", "regc", "registry", "--type", "merge",
                "-p", '{"spec":{"session":{"replicas":3}}}')
        poll("the session StatefulSet to scale to 3", lambda: kubectl(
            env, "get", "statefulset", "registry-session", "-o", "jsonpath={.spec.replicas}",
            check=False).stdout.strip() == "3")

        # The other namespace is not watched: its cluster was stored and left alone.
        assert kubectl(env, "-n", "prod", "get", "statefulsets", "-o", "name").stdout.strip() == ""

        # Uninstall: deleting the cluster removes what it owns.
        kubectl(env, "delete", "regc", "registry", "--wait=false")
        poll("owned StatefulSets to be garbage-collected", lambda: kubectl(
            env, "get", "statefulsets", "-o", "name", check=False).stdout.strip() == "")
    finally:
        stop(operator)
        operator_log.close()
