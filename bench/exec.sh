#!/usr/bin/env bash
# Exec benchmark: the streamed `fcm exec` of this tree against the buffered
# exec of BASE (the commit before streaming: one SSH login per exec, the
# JSON answer only at the end, output cut at 1 MiB) and against plain
# `ssh root@<vm> cmd` (the daemon's key, a fresh login each time), all on
# the same VM.
#
#   sudo bash bench/exec.sh      # build both, measure, print, rewrite the
#                                # exec section of docs/benchmarks.md
#
# Measured per run, from starting the client to:
#   first byte: the first byte of `echo hi` on the client's stdout
#   100 MiB:    the end of `head -c 104857600 /dev/zero` (bytes counted;
#               BASE's buffered exec returns only its first 1 MiB)
# RUNS of each (median, and min-max), QEMU under TCG, no Caddy, in a
# network namespace of its own. The VM is made by this tree's daemon; for
# BASE that daemon is stopped and BASE's started on the same state dir (it
# adopts the running VM).
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespace, worktree and temp dir.
#
# Knobs: RUNS (5), BASE (2126a9c), WRITE_DOC (1), FCM_ASSETS, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNS=${RUNS:-5}
BASE=${BASE:-2126a9c}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"

TAG=$$
NS=fcmex-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-exec.XXXXXX)
WT=$TMP/base-src
DAEMON_PID=""
DIE_TAIL=$TMP/daemon.log

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/exec.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building this tree and $BASE (release)"
cargo build --release --quiet
NEW_BIN=$TARGET/release/fcm
BASE_BIN=$(build_base "$BASE" "$WT")

STATE=$TMP/state
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$TMP/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"

start_daemon() {
	ip netns exec "$NS" "$1" daemon --state-dir "$STATE" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --backend qemu --no-caddy \
		>>"$TMP/daemon.log" 2>&1 &
	DAEMON_PID=$!
	wait_api "$NS" "$TMP/daemon.log" "the daemon"
}

stop_daemon() {
	kill "$DAEMON_PID" 2>/dev/null
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=""
}

# timed CMD...: runs CMD in the namespace; prints "first_byte_s total_s bytes".
timed() {
	ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" python3 - "$@" <<'PY'
import subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
first, n = None, 0
while True:
    b = p.stdout.read1(1 << 20)
    if not b:
        break
    if first is None:
        first = time.monotonic() - t0
    n += len(b)
rc = p.wait()
total = time.monotonic() - t0
if rc != 0:
    sys.exit(f"{sys.argv[1:]} exited {rc}")
print(f"{first or total:.4f} {total:.4f} {n}")
PY
}

# stats LABEL FIELD FILE: "median (min-max)" of a column (s), in ms or s.
stats() {
	python3 - "$2" "$3" <<'PY'
import statistics, sys
col = int(sys.argv[1])
v = sorted(float(l.split()[col]) for l in open(sys.argv[2]) if l.strip())
fmt = (lambda x: f"{x * 1000:.0f} ms") if v[-1] < 1 else (lambda x: f"{x:.2f} s")
print(f"{fmt(statistics.median(v))} ({fmt(v[0])}-{fmt(v[-1])})")
PY
}

mib_s() {
	python3 - "$1" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"{statistics.median(int(r[2]) / float(r[1]) / 1048576 for r in rows):.1f} MiB/s, {int(rows[0][2]) / 1048576:.0f} MiB received")
PY
}

log "this tree's daemon: a VM"
start_daemon "$NEW_BIN"
ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$NEW_BIN" create --name bx \
	>/dev/null 2>>"$TMP/daemon.log" || die "create failed"
ID=$(ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$NEW_BIN" ls --json |
	python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
IP=$(ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$NEW_BIN" ls --json |
	python3 -c "import json,sys; print(json.load(sys.stdin)[0]['ip'])")
sleep 3
SSH=(ssh -F none -i "$STATE/ssh/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes
	-o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$STATE/$ID/known_hosts"
	-o LogLevel=ERROR "root@$IP")
HUNDRED=(head -c 104857600 /dev/zero)

for kind in streamed ssh; do
	: >"$TMP/$kind-first" && : >"$TMP/$kind-100"
done
log "streamed exec and ssh, $RUNS runs each"
# A first exec opens the VM's master connection (not counted: a login,
# as the first exec after a create or resume pays).
timed "$NEW_BIN" exec bx -- true >/dev/null
for _ in $(seq "$RUNS"); do
	timed "$NEW_BIN" exec bx -- echo hi >>"$TMP/streamed-first"
	timed "${SSH[@]}" echo hi >>"$TMP/ssh-first"
	timed "$NEW_BIN" exec bx -- "${HUNDRED[@]}" >>"$TMP/streamed-100"
	timed "${SSH[@]}" "${HUNDRED[*]}" >>"$TMP/ssh-100"
done
stop_daemon

log "$BASE's daemon on the same VM: buffered exec, $RUNS runs"
start_daemon "$BASE_BIN"
: >"$TMP/base-first" && : >"$TMP/base-100"
for _ in $(seq "$RUNS"); do
	timed "$BASE_BIN" exec bx -- echo hi >>"$TMP/base-first"
	timed "$BASE_BIN" exec bx -- "${HUNDRED[@]}" >>"$TMP/base-100"
done
stop_daemon

VERSION=$(git -C "$ROOT" rev-parse --short HEAD)
SECTION="<!-- exec:begin -->
## Exec: streamed, buffered, plain ssh

\`bench/exec.sh\` ($(date -u +%Y-%m-%d), $VERSION against $BASE, QEMU TCG guest, $RUNS runs each,
median (min-max), on the same VM; wall time from starting the client):

| | first byte of \`echo hi\` | \`head -c 100M /dev/zero\` to the end | throughput |
|---|---|---|---|
| \`fcm exec\`, streamed (this tree: a session on the VM's master connection) | $(stats x 0 "$TMP/streamed-first") | $(stats x 1 "$TMP/streamed-100") | $(mib_s "$TMP/streamed-100") |
| \`fcm exec\`, buffered ($BASE: an SSH login per exec, the answer at the end) | $(stats x 0 "$TMP/base-first") | $(stats x 1 "$TMP/base-100") | $(mib_s "$TMP/base-100") (cut at 1 MiB) |
| \`ssh root@vm cmd\` (a fresh login, the daemon's key) | $(stats x 0 "$TMP/ssh-first") | $(stats x 1 "$TMP/ssh-100") | $(mib_s "$TMP/ssh-100") |

The streamed exec prints as the command writes (the buffered one prints
nothing until the end, and only the first MiB); its first byte comes
sooner than a fresh login's because the daemon keeps one SSH connection per
VM open. Its throughput is about that of ssh: the TCG guest producing the
bytes is the limit.
<!-- exec:end -->"
echo "$SECTION"
if [ "$WRITE_DOC" = 1 ]; then
	write_doc_section "$DOC" exec "$SECTION"
	log "wrote the exec section of $DOC"
fi
