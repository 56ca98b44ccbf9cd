"""Dockerfiles: parsed and checked (no Docker engine runs here to build them)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from functools import lru_cache

import pytest
from dockerfile_parse import DockerfileParser

import deploylib

DOCKER = deploylib.ROOT / "docker"

# image file -> ({binary: its cargo package}, the entrypoint binary, ports)
IMAGES = {
    "registry-node.Dockerfile": ({"registry-node": "registry-node",
                                  "registryctl": "registry-client"},
                                 "registry-node", {"9603", "9622"}),
    "operator.Dockerfile": ({"operator": "operator", "crdgen": "operator"}, "operator",
                            {"8080"}),
}


@lru_cache(maxsize=1)
def workspace_bins() -> dict[str, set[str]]:
    """package name -> its binary targets, from cargo metadata (no build, no network)."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline", "--locked"],
        cwd=deploylib.ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    meta = json.loads(out)
    return {p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]}
            for p in meta["packages"]}


def stages(parser: DockerfileParser) -> list[dict]:
    """[{name, base, instructions}] in file order."""
    result: list[dict] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append({"name": name, "base": words[0], "instructions": []})
        elif result:
            result[-1]["instructions"].append(ins)
    return result


def test_every_dockerfile_is_checked():
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == set(IMAGES)


@pytest.mark.parametrize("filename", sorted(IMAGES))
def test_dockerfile(filename):
    bin_packages, entry_bin, ports = IMAGES[filename]
    bins = set(bin_packages)
    parser = DockerfileParser(str(DOCKER / filename))
    all_stages = stages(parser)
    assert len(all_stages) >= 2, "multi-stage: a build stage and a small runtime stage"
    build, runtime = all_stages[0], all_stages[-1]
    args = {ins["value"].split("=", 1)[0]: ins["value"].split("=", 1)[1]
            for ins in parser.structure if ins["instruction"] == "ARG" and "=" in ins["value"]}

    # The build stage: cargo build of this package's binaries, release, locked.
    assert build["base"].startswith("rust:"), build["base"]
    rust = re.sub(r"\$\{?RUST_VERSION\}?", args.get("RUST_VERSION", ""), build["base"])
    rust_version = re.match(r"rust:(\d+)\.(\d+)", rust)
    assert rust_version, f"pin the Rust toolchain: {build['base']}"
    msrv = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)',
                     (deploylib.ROOT / "Cargo.toml").read_text())
    assert tuple(map(int, rust_version.groups())) >= tuple(map(int, msrv.groups())), \
        "the builder's Rust is older than the workspace's rust-version"
    runs = " ".join(i["value"] for i in build["instructions"] if i["instruction"] == "RUN")
    cargo = runs[runs.index("cargo build"):].split("&&")[0]
    words = shlex.split(cargo)
    assert "--release" in words and "--locked" in words, cargo
    packages = {words[i + 1] for i, w in enumerate(words) if w == "-p"}
    assert packages == set(bin_packages.values()), packages
    built = {words[i + 1] for i, w in enumerate(words) if w == "--bin"}
    assert built == bins, f"builds {built}, must ship {bins}"
    for name, package in bin_packages.items():
        assert name in workspace_bins().get(package, set()), \
            f"{name} is not a binary of the workspace package {package}"

    # The runtime stage: small base, non-root, ports, the binaries and the entrypoint.
    assert re.match(r"(gcr\.io/distroless/|debian:[a-z0-9.]+-slim|cgr\.dev/)", runtime["base"]), \
        f"runtime image is not a small one: {runtime['base']}"
    copies = [i["value"] for i in runtime["instructions"] if i["instruction"] == "COPY"]
    copied = " ".join(c for c in copies if c.startswith(f"--from={build['name']}"))
    for name in bins:
        assert re.search(rf"/{re.escape(name)}\b", copied), f"{name} is not copied: {copies}"
    users = [i["value"] for i in runtime["instructions"] if i["instruction"] == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"
    exposed = set(" ".join(i["value"] for i in runtime["instructions"]
                           if i["instruction"] == "EXPOSE").split())
    assert exposed == ports, exposed
    (entrypoint,) = [i["value"] for i in runtime["instructions"]
                     if i["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [f"/usr/local/bin/{entry_bin}"], "exec form, the binary"


def test_registry_node_image_listens_beyond_loopback():
    """The binary's defaults bind 127.0.0.1; in a container they must bind every interface."""
    parser = DockerfileParser(str(DOCKER / "registry-node.Dockerfile"))
    env = parser.envs
    assert env["REGISTRY_HTTP_ADDR"] == "0.0.0.0:9603"
    assert env["REGISTRY_DATA_ADDR"] == "0.0.0.0:9622"


def test_dockerignore_keeps_build_output_out_of_the_context():
    ignored = (deploylib.ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and ".git/" in ignored
    assert "Cargo.lock" not in ignored, "--locked builds need Cargo.lock"
