"""The chart's RBAC grants every Kubernetes API call the operator makes, and nothing more.

The calls come from two places that must agree: the table of API calls in docs/INTERNAL.md
(the operator's contract) and the operator's source (every `Api<K>` it builds, the
controllers and watchers it runs, its event recorder and its Lease manager).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import deploylib
from deploylib import find

OPERATOR_SRC = deploylib.ROOT / "operator" / "src"

# Rust type -> (API group, resource) for every kind the operator may touch.
KINDS = {
    "RegistryCluster": ("sofaregistry.dev", "registryclusters"),
    "StatefulSet": ("apps", "statefulsets"),
    "Deployment": ("apps", "deployments"),
    "Service": ("", "services"),
    "Pod": ("", "pods"),
    "ConfigMap": ("", "configmaps"),
    "Secret": ("", "secrets"),
    "ServiceAccount": ("", "serviceaccounts"),
    "Endpoints": ("", "endpoints"),
    "Namespace": ("", "namespaces"),
    "Node": ("", "nodes"),
    "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "Lease": ("coordination.k8s.io", "leases"),
    "Event": ("events.k8s.io", "events"),
}

# Granted without a call of their own, and why.
GRANTED_WITHOUT_A_CALL = {
    # An owner reference with blockOwnerDeletion=true (server-side apply of owned objects)
    # is admitted only when the writer may update the owner's finalizers.
    ("sofaregistry.dev", "registryclusters/finalizers", "update"),
}


@dataclass(frozen=True)
class Call:
    group: str
    resource: str  # "pods" or a subresource "registryclusters/status"
    verb: str
    name: str | None = None  # a single named object (the Lease)
    in_operator_namespace: bool = False  # the Lease lives beside the operator

    def key(self):
        return (self.group, self.resource, self.verb)


# ---------------------------------------------------------------- the operator's calls


def documented_calls() -> list[Call]:
    """Rows of the API-call table in docs/INTERNAL.md: | group | resource | verbs | ... |"""
    text = deploylib.INTERNAL_MD.read_text()
    match = re.search(r"^##+ [^\n]*(API calls|RBAC)[^\n]*\n(.*?)(?=^## |\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match, "docs/INTERNAL.md has no section on the operator's API calls"
    calls: list[Call] = []
    for line in match.group(2).splitlines():
        cells = [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or set(cells[0]) <= {"-", ":", " "} or cells[0].lower() in (
                "group", "api group", "apigroup"):
            continue
        group = "" if cells[0] in ('""', "core", "(core)", "") else cells[0]
        resource = cells[1]
        for verb in re.split(r"[,\s]+", cells[2].replace("`", "")):
            if verb:
                is_lease = resource == "leases"
                calls.append(Call(group, resource, verb,
                                  name="registry-operator" if is_lease and verb != "create" else None,
                                  in_operator_namespace=is_lease))
    assert calls, "the API-call table of docs/INTERNAL.md is empty"
    return calls


def operator_sources() -> str:
    files = sorted(OPERATOR_SRC.rglob("*.rs"))
    assert files, f"no Rust sources under {OPERATOR_SRC}"
    return "\n".join(f.read_text() for f in files)


def kinds_in_code(source: str) -> set[str]:
    found = set(re.findall(r"\bApi\s*(?:::)?\s*<\s*(?:[\w:]+::)?(\w+)\s*>", source))
    found |= set(re.findall(r"\b(?:Controller::new|\.owns|\.watches)\s*\(\s*Api::<\s*(?:[\w:]+::)?(\w+)", source))
    return found


def code_implied_calls(source: str) -> list[Call]:
    """Calls that follow from how the code uses kube-runtime and kube-lease-manager."""
    calls: list[Call] = []
    watched = set(re.findall(r"(?:Controller::new|\.owns|\.watches)\s*\(\s*Api::<\s*(?:[\w:]+::)?(\w+)", source))
    # `Controller::new(api, ...)` with a variable: the kinds of every Api a controller or
    # watcher is built over are listed and watched.
    if re.search(r"\bController::new\b", source):
        watched.add("RegistryCluster")
    for kind in watched:
        group, resource = KINDS[kind]
        calls += [Call(group, resource, "list"), Call(group, resource, "watch")]
    if re.search(r"\bRecorder::new\b|\bRecorder\b", source):
        calls += [Call("events.k8s.io", "events", "create"),
                  Call("events.k8s.io", "events", "patch")]
    if re.search(r"\bLeaseManager", source):
        calls += [Call("coordination.k8s.io", "leases", v, in_operator_namespace=True,
                       name=None if v == "create" else "registry-operator")
                  for v in ("get", "create", "patch")]
    return calls


# ---------------------------------------------------------------- what the chart grants


def rule_allows(rule: dict, call: Call) -> bool:
    def has(items, value):
        return "*" in items or value in items

    if not has(rule.get("apiGroups", []), call.group):
        return False
    if not has(rule.get("resources", []), call.resource):
        return False
    if not has(rule.get("verbs", []), call.verb):
        return False
    names = rule.get("resourceNames")
    if names:
        return call.name is not None and call.name in names
    return True


def grants(objects: list[dict], operator_ns: str, watch_ns: str | None):
    """(rules that apply cluster-wide or in the watched namespace, rules in the operator's
    own namespace), for the chart's ServiceAccount."""
    (deployment,) = find(objects, "Deployment")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": operator_ns}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    watched_rules: list[dict] = []
    own_ns_rules: list[dict] = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        if binding["kind"] == "ClusterRoleBinding" or ns == watch_ns:
            watched_rules += role["rules"]
        if binding["kind"] == "ClusterRoleBinding" or ns == operator_ns:
            own_ns_rules += role["rules"]
    return watched_rules, own_ns_rules


def required_calls() -> list[Call]:
    calls = documented_calls()
    documented = {c.key() for c in calls}
    source = operator_sources()
    for kind in kinds_in_code(source):
        assert kind in KINDS, f"the operator uses Api<{kind}>: add it to KINDS in {__file__}"
        group, resource = KINDS[kind]
        assert any(k[0] == group and k[1].split("/")[0] == resource for k in documented), \
            f"the operator's code uses Api<{kind}> but docs/INTERNAL.md lists no call on {resource}"
    for call in code_implied_calls(source):
        assert call.key() in documented, \
            f"the operator's code makes {call.verb} {call.group}/{call.resource}, " \
            "which docs/INTERNAL.md does not list"
    return calls


def test_lease_rights_are_confined_to_the_lease():
    objects = deploylib.objects_of(deploylib.render({}))
    for role in (o for o in objects if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            if "leases" in rule["resources"]:
                assert role["kind"] == "Role", "Lease rights must not be cluster-wide"
                assert role["metadata"]["namespace"] == deploylib.NAMESPACE
                if set(rule["verbs"]) - {"create"}:
                    assert rule.get("resourceNames") == ["registry-operator"], rule


def test_rule_evaluation_can_deny():
    """The checker above must be able to say no."""
    rule = {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get"]}
    assert rule_allows(rule, Call("apps", "statefulsets", "get"))
    assert not rule_allows(rule, Call("apps", "statefulsets", "delete"))
    assert not rule_allows(rule, Call("", "statefulsets", "get"))
    assert not rule_allows(rule, Call("apps", "statefulsets/status", "get"))
    named = {**rule, "resourceNames": ["a"]}
    assert rule_allows(named, Call("apps", "statefulsets", "get", name="a"))
    assert not rule_allows(named, Call("apps", "statefulsets", "get"))


def node_role_rules() -> list[tuple[str, str, str]]:
    """(group, resource, verb) of the Role the operator writes for its nodes, read from
    `node_role` in operator/src/resources.rs."""
    source = (OPERATOR_SRC / "resources.rs").read_text()
    match = re.search(r"pub fn node_role\(.*?\n}\n", source, re.DOTALL)
    assert match, "operator/src/resources.rs has no `pub fn node_role`"
    rules = []
    blocks = match.group(0).split("PolicyRule {")[1:]
    assert blocks, "node_role builds no PolicyRule"
    for block in blocks:
        groups = re.search(r"api_groups:\s*Some\(vec!\[(.*?)\]\)", block, re.DOTALL).group(1)
        group = {"GROUP.to_owned()": deploylib.GROUP, "String::new()": ""}.get(
            groups.strip(), groups.strip().strip('"').split('"')[0])
        resources = re.findall(r'"([a-z/]+)"', re.search(
            r"resources:\s*Some\(vec!\[(.*?)\]\)", block, re.DOTALL).group(1))
        verbs = re.findall(r'"([a-z]+)"', re.search(
            r"verbs:\s*vec!\[(.*?)\]", block, re.DOTALL).group(1))
        assert resources and verbs, block
        rules += [(group, r, v) for r in resources for v in verbs]
    return rules


@pytest.mark.parametrize("values,watch_ns", [({}, None), ({"watchNamespace": "apps"}, "apps")],
                         ids=["default", "namespaced"])
def test_operator_may_grant_the_node_role(values, watch_ns):
    """Kubernetes lets the operator create a Role only with rights it holds itself."""
    objects = deploylib.objects_of(deploylib.render(values))
    watched_rules, _ = grants(objects, deploylib.NAMESPACE, watch_ns)
    node_rules = node_role_rules()
    assert ("sofaregistry.dev", "registryclusters", "watch") in node_rules
    for group, resource, verb in node_rules:
        # The node Role names its objects; holding the right on every object is enough.
        call = Call(group, resource, verb)
        assert any(rule_allows(r, call) for r in watched_rules), \
            f"the node Role grants {verb} {group or 'core'}/{resource}, which the operator lacks"
