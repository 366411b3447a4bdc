#!/usr/bin/env bash
# Agent benchmark: what fcm-agent changes, this tree against BASE (before
# the agent and the guest seam: every host-to-guest operation an SSH
# login), side by side in one run, each daemon in its own namespace with a
# VM of its own (512 MiB); while one is measured, the other VM is paused.
#
#   sudo bash bench/agent.sh      # build both, measure, print, rewrite the
#                                 # agent section of docs/benchmarks.md
#
# Measured (RUNS each, p50 and p95, wall time from starting the client):
#   exec rtt:   `fcm exec vm -- true`, against `ssh root@vm true` (a fresh
#               login, the daemon's key) and `true` started inside the guest
#               (Python's subprocess: the floor of any exec under TCG)
#   resume:     `fcm resume` (after a pause), then the first `fcm exec`
#               answered
#   checkpoint: `fcm checkpoint` of the running VM (freeze, memory, disk
#               copy, thaw, clock)
#   cp:         100 MiB in and out (`fcm cp`), against `scp` (daemon's key)
#   create:     `fcm create` until it answers (the agent's hello here, the
#               SSH banner for BASE)
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespaces, worktree and temp dir.
#
# Knobs: RUNS (10), BASE (2126a9c), WRITE_DOC (1), FCM_ASSETS, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNS=${RUNS:-10}
BASE=${BASE:-2126a9c}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"
[ -x "$ASSETS/fcm-agent" ] || die "$ASSETS/fcm-agent missing (run scripts/build-agent.sh)"

TAG=$$
TMP=$(mktemp -d /var/tmp/fcm-bench-agent.XXXXXX)
WT=$TMP/base-src
declare -A DAEMON_PID=()

cleanup() {
	local rc=$?
	set +e
	for k in "${!DAEMON_PID[@]}"; do
		kill "${DAEMON_PID[$k]}" 2>/dev/null && wait "${DAEMON_PID[$k]}" 2>/dev/null
	done
	kill_all_ours
	for k in new base; do ip netns del "fcmag-$k-$TAG" 2>/dev/null; done
	git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/agent.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building this tree and $BASE (release)"
cargo build --release --quiet
NEW_BIN=$TARGET/release/fcm
BASE_BIN=$(build_base "$BASE" "$WT")

bin_of() { [ "$1" = new ] && echo "$NEW_BIN" || echo "$BASE_BIN"; }
ns_of() { echo "fcmag-$1-$TAG"; }
state_of() { echo "$TMP/$1/state"; }

start_daemon() {
	local k=$1 ns
	ns=$(ns_of "$k")
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	mkdir -p "$TMP/$k/home/.ssh"
	ssh-keygen -q -t ed25519 -N '' -f "$TMP/$k/home/.ssh/id_ed25519"
	local extra=()
	[ "$k" = new ] && extra=(--agent "$ASSETS/fcm-agent")
	ip netns exec "$ns" "$(bin_of "$k")" daemon --state-dir "$(state_of "$k")" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --backend qemu --no-caddy "${extra[@]}" \
		>"$TMP/$k/daemon.log" 2>&1 &
	DAEMON_PID[$k]=$!
	wait_api "$ns" "$TMP/$k/daemon.log" "the $k daemon"
}

cli() {
	local k=$1
	shift
	ip netns exec "$(ns_of "$k")" env HOME="$TMP/$k/home" FCM_STATE_DIR="$(state_of "$k")" \
		"$(bin_of "$k")" "$@"
}

# secs K CMD...: wall time of one command in K's namespace, in seconds.
secs() {
	local k=$1 t0 t1
	shift
	t0=$(date +%s%N)
	ip netns exec "$(ns_of "$k")" env HOME="$TMP/$k/home" FCM_STATE_DIR="$(state_of "$k")" \
		"$@" >/dev/null 2>>"$TMP/err.log" || die "$* failed: $(tail -3 "$TMP/err.log")"
	t1=$(date +%s%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f\n", (b - a) / 1e9}'
}

# pct FILE: "p50 / p95" of a column of seconds, in ms.
pct() {
	python3 - "$1" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
print(f"{q(0.5) * 1000:.0f} / {q(0.95) * 1000:.0f} ms")
PY
}

for k in base new; do
	start_daemon "$k"
done

declare -A CREATE=()
for k in base new; do
	log "$k: create (512 MiB)"
	for other in base new; do
		[ "$other" = "$k" ] || cli "$other" pause b >/dev/null 2>&1 || true
	done
	CREATE[$k]=$(secs "$k" "$(bin_of "$k")" create --name b --memory 512)
done

ID_NEW=$(cli new ls --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
IP_NEW=$(cli new ls --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['ip'])")
SSH_NEW=(ssh -F none -i "$(state_of new)/ssh/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes
	-o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$(state_of new)/$ID_NEW/known_hosts"
	-o LogLevel=ERROR "root@$IP_NEW")

measure() {
	local k=$1 other
	other=$([ "$k" = new ] && echo base || echo new)
	cli "$other" pause b >/dev/null 2>&1 || true
	cli "$k" resume b >/dev/null 2>&1 || true
	sleep 2
	log "$k: exec, $RUNS runs"
	secs "$k" "$(bin_of "$k")" exec b -- true >/dev/null
	: >"$TMP/$k-exec"
	for _ in $(seq "$RUNS"); do secs "$k" "$(bin_of "$k")" exec b -- true >>"$TMP/$k-exec"; done
	log "$k: resume to the first exec, $RUNS runs"
	: >"$TMP/$k-resume"
	for _ in $(seq "$RUNS"); do
		cli "$k" pause b >/dev/null
		secs "$k" bash -c "'$(bin_of "$k")' resume b --no-wait && '$(bin_of "$k")' exec b -- true" >>"$TMP/$k-resume"
	done
	log "$k: checkpoint, $RUNS runs"
	: >"$TMP/$k-checkpoint"
	for i in $(seq "$RUNS"); do
		secs "$k" "$(bin_of "$k")" checkpoint b --name "c$i" >>"$TMP/$k-checkpoint"
		cli "$k" checkpoint rm b "c$i" >/dev/null
	done
	log "$k: cp of 100 MiB each way, 3 runs"
	head -c 104857600 /dev/urandom >"$TMP/100m"
	: >"$TMP/$k-cp-in" && : >"$TMP/$k-cp-out"
	for _ in 1 2 3; do
		secs "$k" "$(bin_of "$k")" cp -q "$TMP/100m" b:/root/100m >>"$TMP/$k-cp-in"
		secs "$k" "$(bin_of "$k")" cp -q b:/root/100m "$TMP/$k-100m.back" >>"$TMP/$k-cp-out"
	done
	cmp "$TMP/100m" "$TMP/$k-100m.back" || die "$k: cp changed the bytes"
}

measure base
measure new

log "ssh and scp (a fresh login each), and the guest's own cost of starting true"
: >"$TMP/ssh-exec" && : >"$TMP/scp-in" && : >"$TMP/scp-out"
for _ in $(seq "$RUNS"); do secs new "${SSH_NEW[@]}" true >>"$TMP/ssh-exec"; done
SCP_OPTS=(-F none -i "$(state_of new)/ssh/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes
	-o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$(state_of new)/$ID_NEW/known_hosts")
for _ in 1 2 3; do
	secs new scp -q "${SCP_OPTS[@]}" "$TMP/100m" "root@$IP_NEW:/root/100m.scp" >>"$TMP/scp-in"
	secs new scp -q "${SCP_OPTS[@]}" "root@$IP_NEW:/root/100m.scp" "$TMP/100m.scp" >>"$TMP/scp-out"
done
cli new exec b -- python3 -c '
import subprocess, time
for _ in range(30):
    t = time.monotonic(); subprocess.run(["true"]); print(f"{time.monotonic() - t:.4f}")
' >"$TMP/floor"

sec() { awk -v s="$1" 'BEGIN {printf "%.2f s", s}'; }
VERSION=$(git -C "$ROOT" rev-parse --short HEAD)
SECTION="<!-- agent:begin -->
## fcm-agent against SSH

\`bench/agent.sh\` ($(date -u +%Y-%m-%d), $VERSION against $BASE, QEMU TCG, a 512 MiB VM per daemon,
p50 / p95 of $RUNS runs, wall time from starting the client):

| | $BASE (SSH) | this tree (fcm-agent) | goal |
|---|---|---|---|
| \`fcm exec vm -- true\` | $(pct "$TMP/base-exec") | $(pct "$TMP/new-exec") | ≤ 100 ms p50 |
| \`ssh root@vm true\` (fresh login) | $(pct "$TMP/ssh-exec") | | |
| \`true\` started inside the guest (the floor) | | $(pct "$TMP/floor") | |
| \`fcm resume\` to the first exec answered | $(pct "$TMP/base-resume") | $(pct "$TMP/new-resume") | ≤ 0.6 s |
| \`fcm checkpoint\` (512 MiB) | $(pct "$TMP/base-checkpoint") | $(pct "$TMP/new-checkpoint") | ≤ 1.0 s |
| \`fcm cp\` 100 MiB in | $(pct "$TMP/base-cp-in") | $(pct "$TMP/new-cp-in") | |
| \`fcm cp\` 100 MiB out | $(pct "$TMP/base-cp-out") | $(pct "$TMP/new-cp-out") | |
| \`scp\` 100 MiB in / out | $(pct "$TMP/scp-in") / $(pct "$TMP/scp-out") | | |
| \`fcm create\` until it answers | $(sec "${CREATE[base]}") (SSH banner) | $(sec "${CREATE[new]}") (agent's hello) | |
<!-- agent:end -->"
echo "$SECTION"
if [ "$WRITE_DOC" = 1 ]; then
	write_doc_section "$DOC" agent "$SECTION"
	log "wrote the agent section of $DOC"
fi
