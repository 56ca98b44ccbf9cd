"""The Helm chart: lint, render with every values file, validate, and check its shape."""

from __future__ import annotations

import copy
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

import deploylib
from deploylib import find


def operator_flags_documented() -> set[str]:
    """Flags in the "operator command line" table of docs/INTERNAL.md."""
    text = deploylib.INTERNAL_MD.read_text()
    section = text.split("## operator command line", 1)
    assert len(section) == 2, "docs/INTERNAL.md has no 'operator command line' section"
    body = section[1].split("\n## ", 1)[0]
    flags: set[str] = set()
    for line in body.splitlines():
        if line.startswith("| `--"):
            first_cell = line.split("|")[1]
            flags.update(re.findall(r"--[a-z][a-z-]*", first_cell))
    assert flags, "no flags found in the operator table of docs/INTERNAL.md"
    return flags


def operator_container(objects):
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_lint_strict(values_file):
    report = helm.lint(deploylib.CHART, deploylib.load_values(values_file), strict=True,
                       namespace=deploylib.NAMESPACE, kube_version="v1.25.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_rendered_objects_are_valid(values_file, crd):
    objects = deploylib.objects_of(deploylib.render(deploylib.load_values(values_file)))
    assert len(objects) >= 4
    for obj in objects:
        try:
            deploylib.validate_object(obj, crd)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
            pytest.fail(f"{values_file.name}: {obj['kind']}/{obj['metadata']['name']}: "
                        f"{err.message} at {list(err.absolute_path)}")


def test_rendered_objects_have_unique_names_and_namespaces(values_file):
    objects = deploylib.objects_of(deploylib.render(deploylib.load_values(values_file)))
    keys = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
            for o in objects]
    assert len(keys) == len(set(keys)), keys
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} without a namespace"


def test_the_validator_rejects_unknown_fields(objects_default, crd):
    """A check that cannot fail proves nothing: a typo in a Deployment must be caught."""
    deployment, _ = operator_container(objects_default)
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        deploylib.validate_object(broken, crd)


def test_values_schema_rejects_bad_values():
    bad = [
        {"replicaCount": -1},
        {"replicaCount": "two"},
        {"unknownKey": True},
        {"leaderElection": {"leaseName": "Not_A_Name"}},
        {"metrics": {"port": 70000}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"watchNamespace": "UPPER"},
        {"registryCluster": {"create": "yes"}},
    ]
    with helm.Chart.load(deploylib.CHART) as chart:
        chart.validate_schema({})
        for values in bad:
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(values)


def test_ci_values_files_pass_the_schema(values_file):
    with helm.Chart.load(deploylib.CHART) as chart:
        chart.validate_schema(deploylib.load_values(values_file))


def test_every_value_is_documented():
    """values.yaml keys and values.schema.json properties are the same tree."""
    import json

    schema = json.loads((deploylib.CHART / "values.schema.json").read_text())
    values = deploylib.load_values(deploylib.CHART / "values.yaml")

    def walk(vals, props, prefix=""):
        for key, value in vals.items():
            path = prefix + key
            assert key in props, f"values.yaml key {path} missing from values.schema.json"
            sub = props[key].get("properties")
            if isinstance(value, dict) and sub:
                walk(value, sub, path + ".")
        for key in props:
            assert key in vals, f"schema property {prefix}{key} has no default in values.yaml"

    walk(values, schema["properties"])


def test_default_deployment(objects_default):
    deployment, container = operator_container(objects_default)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    args = container["args"]
    assert "--leader-election=true" in args
    assert "--lease-name=registry-operator" in args
    assert "--metrics-addr=0.0.0.0:8080" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["serviceAccountName"] == find(objects_default, "ServiceAccount")[0]["metadata"]["name"]
    assert container["image"] == "sofaregistry/operator:0.1.0"


def test_operator_pods_meet_the_restricted_pod_security_standard(values_file):
    objects = deploylib.objects_of(deploylib.render(deploylib.load_values(values_file)))
    deployment, _ = operator_container(objects)
    problems = deploylib.restricted_violations(deployment["spec"]["template"]["spec"])
    assert not problems, f"{values_file.name}: {problems}"


def test_the_restricted_check_can_fail(objects_default):
    deployment, _ = operator_container(objects_default)
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    del pod["containers"][0]["securityContext"]["seccompProfile"]
    pod["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    assert deploylib.restricted_violations(pod) == [
        "operator: capabilities do not drop ALL",
        "operator: seccompProfile is not RuntimeDefault",
    ]


def test_operator_args_are_documented_flags(values_file):
    documented = operator_flags_documented()
    objects = deploylib.objects_of(deploylib.render(deploylib.load_values(values_file)))
    _, container = operator_container(objects)
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        assert flag in documented, f"{flag} is not an operator flag in docs/INTERNAL.md"


def test_metrics_service_selects_the_operator_pods(objects_default):
    deployment, container = operator_container(objects_default)
    (service,) = find(objects_default, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_network_policies_are_on_by_default(objects_default):
    """SECURITY.md: the operator gives every cluster a NetworkPolicy; the chart's own one
    leaves only the operator's metrics port reachable."""
    deployment, container = operator_container(objects_default)
    (policy,) = find(objects_default, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    args = container["args"]
    assert "--network-policy=true" in args
    (labels,) = [a.split("=", 1)[1] for a in args if a.startswith("--operator-pod-labels=")]
    pairs = dict(kv.split("=", 1) for kv in labels.split(","))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pairs.items() <= pod_labels.items(), "the operator's policies must admit its own pods"
    assert pairs == deployment["spec"]["selector"]["matchLabels"]


def test_network_policies_can_be_turned_off():
    objects = deploylib.objects_of(deploylib.render({"networkPolicy": {"enabled": False}}))
    assert not find(objects, "NetworkPolicy")
    _, container = operator_container(objects)
    assert "--network-policy=false" in container["args"]


def test_the_operator_may_write_cluster_credentials_and_network_policies(objects_default):
    rules = [r for o in objects_default if o["kind"] == "ClusterRole" for r in o["rules"]]

    def verbs(group, resource):
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"]
                for v in r["verbs"]}

    assert {"get", "create", "patch"} <= verbs("", "secrets")
    assert {"create", "patch"} <= verbs("networking.k8s.io", "networkpolicies")
    assert not {"list", "watch", "delete"} & verbs("", "secrets"), "no reading every Secret"


def test_pdb_keeps_one_operator(objects_default):
    (pdb,) = find(objects_default, "PodDisruptionBudget")
    deployment, _ = operator_container(objects_default)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_defaults_create_no_servicemonitor_and_no_registrycluster(objects_default):
    assert not find(objects_default, "ServiceMonitor")
    assert not find(objects_default, "RegistryCluster")


def test_namespaced_mode_confines_rights_to_one_namespace():
    values = deploylib.load_values(deploylib.CHART / "ci" / "namespaced-values.yaml")
    objects = deploylib.objects_of(deploylib.render(values))
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    assert not find(objects, "ServiceAccount"), "serviceAccount.create=false still made one"
    roles = find(objects, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == ["apps"]
    (binding,) = find(objects, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "registry-operator",
                                    "namespace": deploylib.NAMESPACE}]
    deployment, container = operator_container(objects)
    assert "--namespace=apps" in container["args"]
    assert "--no-leader-election" in container["args"]
    assert deployment["spec"]["replicas"] == 1
    assert not find(objects, "PodDisruptionBudget"), "a PDB of 1 replica blocks node drains"


def test_full_values(crd):
    values = deploylib.load_values(deploylib.CHART / "ci" / "full-values.yaml")
    rendered = deploylib.render(values)
    objects = deploylib.objects_of(rendered)
    deployment, container = operator_container(objects)
    assert deployment["metadata"]["name"] == "regop"
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example.com/sofaregistry/operator:0.1.0-rc1"
    assert "--lease-seconds=30" in container["args"]
    (monitor,) = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (cluster,) = find(objects, "RegistryCluster")
    assert cluster["metadata"]["namespace"] == "registry"
    assert cluster["spec"]["data"]["replicas"] == 5
    assert cluster["spec"]["image"] == "sofaregistry/registry-node:0.1.0", "the default image"
    lease_role = find(objects, "Role", "regop-leader-election")[0]
    assert any(rule.get("resourceNames") == ["regop-leader"] for rule in lease_role["rules"])
    notes = rendered["registry-operator/templates/NOTES.txt"]
    assert "kubectl -n registry get regc registry -w" in notes
    assert "http://registry.registry.svc:9603" in notes


def test_servicemonitor_without_service_is_an_error():
    with pytest.raises(helm.HelmRenderError, match="metrics.service.enabled"):
        deploylib.render({"metrics": {"service": {"enabled": False},
                                      "serviceMonitor": {"enabled": True}}})


def test_notes_tell_what_to_do_next(rendered_default):
    notes = rendered_default["registry-operator/templates/NOTES.txt"]
    for expected in ("rollout status deployment/registry-operator", "kind: RegistryCluster",
                     "get regc registry -w", "registry.default.svc:9603",
                     "Authorization: Bearer", "delete regc"):
        assert expected in notes, expected


def test_chart_crd_is_the_generated_crd():
    chart_crd = deploylib.CHART / "crds" / deploylib.CRD_FILE.name
    assert chart_crd.is_file(), f"{chart_crd} missing: run scripts/gen-manifests"
    assert chart_crd.read_bytes() == deploylib.CRD_FILE.read_bytes(), \
        "charts/registry-operator/crds differs from crds/: run scripts/gen-manifests"
    with helm.Chart.load(deploylib.CHART) as chart:
        assert [c["filename"] for c in chart.crds] == [f"registry-operator/crds/{deploylib.CRD_FILE.name}"]


def test_crd_is_valid_and_names_the_resource(crd):
    deploylib.validate_object(crd, None)
    names = crd["spec"]["names"]
    assert crd["spec"]["group"] == deploylib.GROUP
    assert (names["kind"], names["plural"]) == ("RegistryCluster", "registryclusters")
    assert "regc" in names.get("shortNames", [])
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == deploylib.VERSION]
    assert version["served"] and version["storage"]
    assert "status" in version.get("subresources", {})


def operator_bin():
    import os

    path = os.environ.get("OPERATOR_BIN") or str(deploylib.ROOT / "target" / "debug" / "operator")
    assert os.path.isfile(path), f"{path} missing: scripts/test builds it (cargo build)"
    return path


def test_the_operator_binary_accepts_the_chart_args(values_file, tmp_path):
    """The real binary parses the rendered command line (clap exits 2 on a bad flag); with
    no API server reachable it then stops with a connection error."""
    import subprocess

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n")
    objects = deploylib.objects_of(deploylib.render(deploylib.load_values(values_file)))
    _, container = operator_container(objects)
    args = [a.replace("0.0.0.0:", "127.0.0.1:") for a in container["args"]]
    args = [a if not a.startswith("--metrics-addr") else "--metrics-addr=127.0.0.1:0" for a in args]
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "POD_NAME": "op-0",
           "POD_NAMESPACE": "registry-system", "RUST_LOG": "error", "RUST_BACKTRACE": "0"}
    try:
        result = subprocess.run([operator_bin(), *args], env=env, capture_output=True,
                                text=True, timeout=8)
    except subprocess.TimeoutExpired:
        return  # still running: it parsed its arguments and is retrying the API server
    assert result.returncode != 2 and "Usage:" not in result.stderr, result.stderr
    broken = subprocess.run([operator_bin(), *args, "--no-such-flag"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert broken.returncode == 2, "a bad flag must be a usage error, or this test proves nothing"


def test_node_pods_may_create_token_reviews_and_nothing_else():
    """spec.access with serviceaccount: principals: session pods call the TokenReview API."""
    values = deploylib.load_values(deploylib.CHART / "ci" / "full-values.yaml")
    objects = deploylib.objects_of(deploylib.render(values))
    (role,) = find(objects, "ClusterRole", "regop-node-tokenreview")
    assert role["rules"] == [{"apiGroups": ["authentication.k8s.io"],
                              "resources": ["tokenreviews"], "verbs": ["create"]}]
    (binding,) = find(objects, "ClusterRoleBinding", "regop-node-tokenreview")
    assert binding["roleRef"]["name"] == "regop-node-tokenreview"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "registry-node",
                                    "namespace": "registry"}]
    # By default the role exists (to bind with kubectl) but nobody holds it.
    defaults = deploylib.objects_of(deploylib.render(deploylib.load_values(deploylib.CHART / "values.yaml")))
    assert find(defaults, "ClusterRole", "registry-operator-node-tokenreview")
    assert not find(defaults, "ClusterRoleBinding", "registry-operator-node-tokenreview")
