"""manifests/: install.yaml is the chart's output, and every file is a valid object."""

from __future__ import annotations

import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

import deploylib
from deploylib import find

MANIFEST_FILES = sorted(deploylib.MANIFESTS.rglob("*.yaml"))
GEN_MANIFESTS = deploylib.ROOT / "scripts" / "gen-manifests"


def test_manifests_exist():
    names = {p.relative_to(deploylib.MANIFESTS).as_posix() for p in MANIFEST_FILES}
    assert {"install.yaml", "examples/minimal.yaml", "examples/production.yaml"} <= names


@pytest.mark.parametrize("path", MANIFEST_FILES,
                         ids=lambda p: p.relative_to(deploylib.MANIFESTS).as_posix())
def test_manifest_file_is_valid(path, crd):
    docs = deploylib.yaml_docs(path)
    assert docs, f"{path} holds no object"
    for obj in docs:
        try:
            deploylib.validate_object(obj, crd)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
            pytest.fail(f"{path.name}: {obj['kind']}/{obj['metadata']['name']}: "
                        f"{err.message} at {list(err.absolute_path)}")


def test_install_yaml_is_not_stale():
    result = subprocess.run([sys.executable, str(GEN_MANIFESTS), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_staleness_check_sees_a_chart_change(tmp_path):
    """The generator's output follows the chart, so the check above can fail."""
    gen = deploylib.import_script(GEN_MANIFESTS)
    chart = tmp_path / "registry-operator"
    shutil.copytree(deploylib.CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("replicaCount: 2", "replicaCount: 4"))
    committed = (deploylib.MANIFESTS / "install.yaml").read_text()
    assert gen.render_install(deploylib.CHART) == committed
    assert gen.render_install(chart) != committed


def test_install_yaml_holds_the_whole_install():
    objects = deploylib.yaml_docs(deploylib.MANIFESTS / "install.yaml")
    kinds = [o["kind"] for o in objects]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], "namespace and CRD first"
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "Deployment", "Service", "PodDisruptionBudget"):
        assert kind in kinds, kind
    (namespace,) = find(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                               "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], obj["kind"]
    assert find(objects, "CustomResourceDefinition")[0] == deploylib.the_crd()
    text = (deploylib.MANIFESTS / "install.yaml").read_text()
    assert "helm.sh/chart" not in text and "managed-by: Helm" not in text


def test_minimal_example():
    (cluster,) = deploylib.yaml_docs(deploylib.MANIFESTS / "examples" / "minimal.yaml")
    assert cluster["kind"] == "RegistryCluster"
    assert "namespace" not in cluster["metadata"], "examples go to the namespace of -n"


def test_production_example_is_production_shaped():
    docs = deploylib.yaml_docs(deploylib.MANIFESTS / "examples" / "production.yaml")
    (cluster,) = find(docs, "RegistryCluster")
    spec = cluster["spec"]
    assert spec["data"]["replicas"] == 5
    assert spec["session"]["replicas"] >= 2
    for role in ("session", "data"):
        resources = spec[role]["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert resources["limits"]["memory"]
    assert yaml.safe_dump(spec).count("podAntiAffinity") >= 1
    ref = spec["tokenSecretRef"]
    (secret,) = find(docs, "Secret", ref["name"])
    assert ref["key"] in secret.get("stringData", {}) or ref["key"] in secret.get("data", {})
    assert all("namespace" not in d["metadata"] for d in docs), "one namespace, from -n"


@pytest.mark.parametrize("mutation", ["unknown field", "range", "type", "missing image"])
def test_crd_schema_check_can_fail(mutation, crd):
    """RegistryClusters are checked the way the API server and strict kubectl would."""
    (cluster,) = deploylib.yaml_docs(deploylib.MANIFESTS / "examples" / "minimal.yaml")
    deploylib.validate_object(cluster, crd)
    broken = yaml.safe_load(yaml.safe_dump(cluster))
    if mutation == "unknown field":
        broken["spec"]["data"]["replica"] = 3
    elif mutation == "range":
        broken["spec"]["data"]["replicas"] = 0
    elif mutation == "type":
        broken["spec"]["stopPush"] = "yes"
    else:
        del broken["spec"]["image"]
    with pytest.raises(jsonschema.ValidationError):
        deploylib.validate_object(broken, crd)


def test_install_yaml_pods_meet_the_restricted_pod_security_standard():
    # install.yaml's namespace enforces "restricted": every pod it creates must pass.
    workloads = [o for o in deploylib.yaml_docs(deploylib.MANIFESTS / "install.yaml")
                 if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
    assert workloads
    for w in workloads:
        problems = deploylib.restricted_violations(w["spec"]["template"]["spec"])
        assert not problems, f"{w['kind']}/{w['metadata']['name']}: {problems}"
