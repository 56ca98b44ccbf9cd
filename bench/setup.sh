#!/usr/bin/env bash
# Installs what the benchmark compares against (etcd, ZooKeeper with a JVM); protoc for the
# etcd gRPC client comes as a crate (.cargo/config.toml). Idempotent: installs only what is
# missing.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null || need+=(zookeeper)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The packages may start system services on install; the benchmark starts its own servers on
# random loopback ports, so a system instance is not needed (and is left alone if running).
echo "bench setup: etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), zookeeper $(dpkg-query -W -f '${Version}' zookeeper)"
