#!/usr/bin/env bash
# Cluster benchmark (docs/cluster.md): what forwarding costs, and where
# placement puts VMs, in one run.
#
#   sudo bash bench/cluster.sh    # build, measure, print, rewrite the
#                                 # cluster section of docs/benchmarks.md
#
# Drives bench/cluster_harness.rs (a cargo bench target on the cluster
# harness of tests/cluster.rs, tests/common/cluster.rs): three hosts (network namespaces on a
# bridge), a 3-member etcd, the real daemons. One VM on h1; then, BENCH_N
# times each, alternating: `fcm ls --json`, `fcm exec --json vm -- true` and
# the streamed `fcm exec vm -- true` sent to h0 (which forwards or relays the
# exec to h1; ls reads etcd) and to h1 (the owner) directly. Then BENCH_CREATES creates of BENCH_VM_MIB MiB sent to
# h0 with hosts offering memory in the ratio 1:2:3, and where each landed.
# Only traffic inside the test's namespaces; everything is cleaned up by
# the harness, also on failure.
#
# Knobs: BENCH_N (20), BENCH_CREATES (30), BENCH_VM_MIB (128), FCM_BIN
# (default: a release build of this tree).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
DOC=$ROOT/docs/benchmarks.md
[ "$(id -u)" = 0 ] || die "run as root (it makes network namespaces)"
command -v etcd >/dev/null || die "etcd missing (apt-get install etcd-server)"
FCM=${FCM_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/fcm}
if [ -z "${FCM_BIN:-}" ]; then
	(cd "$ROOT" && cargo build --release --quiet)
fi
TMP=$(mktemp -d /var/tmp/fcm-bench-cluster-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
log "measuring (3 hosts, etcd, forwarding, then ${BENCH_CREATES:-30} creates)"
(cd "$ROOT" && FCM_TEST_BIN=$FCM FCM_BENCH_OUT=$TMP/out.md \
	cargo bench --quiet --bench cluster_harness >&2)
[ -s "$TMP/out.md" ] || die "the benchmark wrote no table"
build=release
[ -n "${FCM_BIN:-}" ] && build="given ($FCM_BIN)"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
section="<!-- cluster:begin -->
## Cluster: forwarding and placement

Made by \`bench/cluster.sh\` (fcm build: $build).

$(cat "$TMP/out.md")

Each wall time is a whole \`fcm\` command (process start, TLS to the host with its pinned certificate, the request), ${BENCH_N:-20} runs each, the two ways alternating. Through another host, \`exec --json\` is forwarded to the owner (a second TLS connection, the owner's record and host looked up in etcd), the streamed \`exec\` relayed to it byte for byte (the same look-up and connection, then a thread each way); \`ls\` is served by the host asked either way (its own VMs from disk, the others' from etcd). Placement picks the live host with the most free memory (capacity minus the memory of the VMs it holds), read from etcd at each create. Three hosts as network namespaces of one machine ($cpu, shared, 2 cores), guests under QEMU TCG. Measured $(date -u +%Y-%m-%d).
<!-- cluster:end -->"
write_doc_section "$DOC" cluster "$section"
printf '%s\n' "$section"
