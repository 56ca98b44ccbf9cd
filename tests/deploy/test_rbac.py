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
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
    "Lease": ("coordination.k8s.io", "leases"),
    "Event": ("events.k8s.io", "events"),
}

# Calls the registry nodes make themselves (not the operator): the session pods' TokenReview
# of ServiceAccount tokens (registry-node/src/access/token_review.rs). The chart's
# `<release>-node-tokenreview` ClusterRole, bound to node ServiceAccounts only.
NODE_CALLS = {
    ("authentication.k8s.io", "tokenreviews", "create"),
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

# kube::Api method -> (subresource suffix, verbs it needs)
API_METHODS = {
    "get": ("", ["get"]),
    "get_opt": ("", ["get"]),
    "get_metadata": ("", ["get"]),
    "list": ("", ["list"]),
    "list_metadata": ("", ["list"]),
    "watch": ("", ["watch"]),
    "create": ("", ["create"]),
    "replace": ("", ["update"]),
    "delete": ("", ["delete"]),
    "delete_collection": ("", ["deletecollection"]),
    # Server-side apply creates a missing object: the API server then also checks create.
    "patch": ("", ["patch", "create"]),
    "patch_metadata": ("", ["patch"]),
    "get_status": ("/status", ["get"]),
    "patch_status": ("/status", ["patch"]),
    "replace_status": ("/status", ["update"]),
    "get_scale": ("/scale", ["get"]),
    "patch_scale": ("/scale", ["patch"]),
    "replace_scale": ("/scale", ["update"]),
    "evict": ("/eviction", ["create"]),
}
LEASE_NAME = "registry-operator"  # the chart's default leaderElection.leaseName


def operator_sources() -> dict[Path, str]:
    files = sorted(OPERATOR_SRC.rglob("*.rs"))
    assert files, f"no Rust sources under {OPERATOR_SRC}"
    # Unit tests build fake clients and objects; only the code that runs counts.
    return {f: re.split(r"^#\[cfg\(test\)\]", f.read_text(), flags=re.MULTILINE)[0]
            for f in files}


def kind_of(type_name: str, where: str) -> tuple[str, str]:
    assert type_name in KINDS, f"{where} uses Api<{type_name}>: add it to KINDS in {__file__}"
    return KINDS[type_name]


def builder_kinds() -> dict[str, str]:
    """Builder function in operator/src/resources.rs -> the kind it returns."""
    source = (OPERATOR_SRC / "resources.rs").read_text()
    return dict(re.findall(r"pub fn (\w+)\s*\([^)]*\)\s*->\s*(\w+)\s*\{", source))


def calls_in_code() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every API call the operator's code makes."""
    calls: set[tuple[str, str, str]] = set()
    builders = builder_kinds()
    for path, source in operator_sources().items():
        where = f"operator/src/{path.relative_to(OPERATOR_SRC).as_posix()}"
        applied = {builders[b] for b in re.findall(
            r"\bapply\s*\(\s*[^;]*?resources::(\w+)\s*\(", source, re.DOTALL) if b in builders}
        # A handle's name is scoped to its function: `let pods: Api<Pod> = ...; pods.list(..)`.
        for body in re.split(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?fn\s", source,
                             flags=re.MULTILINE):
            handles = re.findall(r"let\s+(?:mut\s+)?(\w+)\s*:\s*Api<\s*(?:[\w:]+::)?(\w+)\s*>", body)
            for var, type_name in handles:
                methods = re.findall(rf"\b{var}\s*\.\s*(\w+)\s*\(", body)
                if type_name == "K":
                    # The generic server-side-apply helper: every object handed to it.
                    assert applied, f"{where}: a generic Api<K> whose kinds cannot be found"
                    kinds = applied
                else:
                    kinds = {type_name}
                for kind in kinds:
                    group, resource = kind_of(kind, where)
                    for method in methods:
                        if method in API_METHODS:
                            suffix, verbs = API_METHODS[method]
                            calls.update((group, resource + suffix, v) for v in verbs)
                # Handles given to a controller or watcher are listed and watched.
                if re.search(rf"(?:Controller::new|\.owns|\.watches|watcher)\s*\(\s*{var}\b", body):
                    group, resource = kind_of(type_name, where)
                    calls.update({(group, resource, "list"), (group, resource, "watch")})
        if re.search(r"\bRecorder::new\b", source):
            calls.update({("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch")})
        if re.search(r"\bLeaseManager(?:Builder)?::new\b", source):
            calls.update(("coordination.k8s.io", "leases", v) for v in ("get", "create", "patch"))
    return calls


def documented_resources() -> str:
    """The operator's section of docs/INTERNAL.md, where its API calls are listed."""
    text = deploylib.INTERNAL_MD.read_text()
    match = re.search(r"^##+ [^\n]*(?:API calls|RBAC|Kubernetes API)[^\n]*\n(.*?)(?=^## |\Z)",
                      text, re.MULTILINE | re.DOTALL)
    assert match, "docs/INTERNAL.md has no section listing the operator's Kubernetes API calls"
    return match.group(1)


def required_calls() -> list[Call]:
    calls = []
    for group, resource, verb in sorted(calls_in_code()):
        is_lease = resource == "leases"
        calls.append(Call(group, resource, verb,
                          name=LEASE_NAME if is_lease and verb != "create" else None,
                          in_operator_namespace=is_lease))
    assert len(calls) >= 10, f"found too few API calls in the operator's code: {calls}"
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


SCENARIOS = {
    "default": ({}, None),
    "namespaced": ({"watchNamespace": "apps"}, "apps"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_grants_every_operator_call(scenario):
    values, watch_ns = SCENARIOS[scenario]
    objects = deploylib.objects_of(deploylib.render(values))
    watched_rules, own_rules = grants(objects, deploylib.NAMESPACE, watch_ns)
    missing = []
    for call in required_calls():
        rules = own_rules if call.in_operator_namespace else watched_rules
        if not any(rule_allows(r, call) for r in rules):
            missing.append(f"{call.verb} {call.group or 'core'}/{call.resource}")
    assert not missing, f"the chart's RBAC does not grant: {missing}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_grants_nothing_more(scenario):
    values, _ = SCENARIOS[scenario]
    objects = deploylib.objects_of(deploylib.render(values))
    needed = {c.key() for c in required_calls()} | GRANTED_WITHOUT_A_CALL \
        | set(node_role_rules()) | NODE_CALLS
    extra = []
    for rule in (r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]):
        for part in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[part], f"wildcard in {part}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if (group, resource, verb) not in needed:
                        extra.append(f"{verb} {group or 'core'}/{resource}")
    assert not extra, f"the chart grants calls the operator never makes: {extra}"


def test_docs_list_every_resource_the_operator_calls():
    section = documented_resources()
    for resource in sorted({c.resource for c in required_calls()}):
        assert resource in section, \
            f"docs/INTERNAL.md does not list the operator's calls on {resource}"


def test_code_scan_finds_the_known_calls():
    """The scanner must see what the operator is known to do, or it proves nothing."""
    calls = calls_in_code()
    for expected in [
        ("sofaregistry.dev", "registryclusters", "list"),
        ("sofaregistry.dev", "registryclusters", "watch"),
        ("sofaregistry.dev", "registryclusters/status", "patch"),
        ("apps", "statefulsets", "patch"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "patch"),
    ]:
        assert expected in calls, expected


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_operator_never_holds_the_nodes_token_review_right(scenario):
    values, watch_ns = SCENARIOS[scenario]
    objects = deploylib.objects_of(deploylib.render(values))
    watched, own = grants(objects, deploylib.NAMESPACE, watch_ns)
    for group, resource, verb in NODE_CALLS:
        call = Call(group, resource, verb)
        assert not any(rule_allows(r, call) for r in watched + own), (group, resource, verb)
