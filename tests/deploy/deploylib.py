"""Shared helpers of the deployment tests: rendering the chart, validating objects."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any, Iterable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "registry-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_FILE = ROOT / "crds" / "registrycluster.yaml"
MANIFESTS = ROOT / "manifests"
INTERNAL_MD = ROOT / "docs" / "INTERNAL.md"

RELEASE = "registry-operator"
NAMESPACE = "registry-system"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest the
# validator knows: every object must be valid on both.
KUBE_VERSIONS = ["1.25", kubernetes_validate.latest_version()]

GROUP = "sofaregistry.dev"
VERSION = "v1alpha1"


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict[str, Any] | None = None, chart: Path = CHART,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce on install."""
    with helm.Chart.load(chart) as loaded:
        return loaded.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)


def objects_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in the rendered templates (NOTES.txt excluded)."""
    out: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            out.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return out


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def the_crd() -> dict[str, Any]:
    docs = yaml_docs(CRD_FILE)
    assert len(docs) == 1 and docs[0]["kind"] == "CustomResourceDefinition", CRD_FILE
    return docs[0]


def strict_crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD's openAPIV3Schema as a JSON schema that rejects unknown fields.

    The API server prunes unknown fields of a structural schema, so `kubectl apply`
    with strict field validation rejects them; here they fail too. `nullable` becomes a
    null type, `x-kubernetes-int-or-string` a number-or-string.
    """
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])

    def tighten(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                tighten(item)
            return
        if not isinstance(node, dict):
            return
        for value in node.values():
            tighten(value)
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = node.get("anyOf") or [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in node:
            node["additionalProperties"] = False

    tighten(schema)
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"const": f"{GROUP}/{VERSION}"})
    props.setdefault("kind", {"const": crd["spec"]["names"]["kind"]})
    props.setdefault("metadata", {"type": "object"})
    return schema


def validate_object(obj: dict[str, Any], crd: dict[str, Any] | None) -> None:
    """Raise when obj is not valid: built-in kinds against the Kubernetes schemas in strict
    mode, RegistryClusters against the CRD, ServiceMonitors by their required shape."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    assert api_version and kind, f"object without apiVersion/kind: {obj}"
    name = obj.get("metadata", {}).get("name")
    assert name, f"{kind} without metadata.name"
    if api_version == f"{GROUP}/{VERSION}":
        assert crd is not None, "a RegistryCluster needs the CRD to validate against"
        assert kind == crd["spec"]["names"]["kind"], kind
        jsonschema.validate(obj, strict_crd_schema(crd))
        return
    if api_version.startswith("monitoring.coreos.com/"):
        # No schema ships for the Prometheus Operator's kinds; check what it needs.
        assert kind == "ServiceMonitor", kind
        spec = obj["spec"]
        assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
        assert spec["endpoints"] and all(e.get("port") for e in spec["endpoints"])
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def import_script(path: Path):
    """Import a Python script without a .py suffix (scripts/gen-manifests) as a module."""
    loader = importlib.machinery.SourceFileLoader(path.name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What the "restricted" Pod Security Standard (pod-security-admission) refuses in a
    pod spec, with the container-level settings each also required on its own: a pod
    must pass even if its pod-level securityContext were dropped."""
    problems: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod: runAsNonRoot is not true")
    if psc.get("runAsUser") == 0:
        problems.append("pod: runAsUser 0")
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod: seccompProfile is not RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            problems.append(f"pod: {key}")
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']}: hostPath")
    containers = (pod_spec.get("initContainers") or []) + pod_spec["containers"]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if (sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems
