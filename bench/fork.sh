#!/usr/bin/env bash
# Fork benchmark: `fcm fork --count N` of a running VM against N cold
# `fcm create`s of the same size, side by side in one daemon; and warm
# `fcm create` (from the daemon's template) against `fcm create --cold`,
# each to its first exec answered, ROUNDS times alternately.
#
#   sudo bash bench/fork.sh     # build, measure, print, rewrite the fork
#                               # section of docs/benchmarks.md
#
# One daemon (QEMU backend under TCG, fcm-agent, no Caddy) in its own
# network namespace. A source VM of MEMORY MiB is created and runs a
# process; then, alternately by round:
#   fork:  `fcm fork src --count N` (wall time: all N forks running, each
#          with its own identity applied through its agent)
#   cold:  N × `fcm create --memory MEMORY` one after another, each until
#          its guest answers (wall time of the N)
# After each side is up and has settled (SETTLE s), the PSS of each of its
# QEMUs (/proc/PID/smaps_rollup) is summed: what those N VMs add to the
# host's memory (pages the forks share with the fork image and each other
# count once, split among them). Then that side's VMs are destroyed.
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespace and removes its temp dir.
#
# Knobs: PARTS ("fork warm": which to run), ROUNDS (5, warm vs cold),
# COUNT (10), MEMORY (512), SETTLE (10), WRITE_DOC (1),
# FCM_ASSETS (/var/lib/firecracker), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

PARTS=${PARTS:-fork warm}
ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-10}
MEMORY=${MEMORY:-512}
SETTLE=${SETTLE:-10}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"
[ -f "$ASSETS/fcm-agent" ] || die "$ASSETS/fcm-agent missing (run scripts/setup.sh): forks need it"

TAG=$$
NS=fcmfk-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-fork.XXXXXX)
DAEMON_PID=""

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/fork.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --quiet
BIN=$TARGET/release/fcm
STATE=$TMP/state
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$TMP/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"
echo '{"stop_timeout_secs": 20}' >"$TMP/fcm.json"
ip netns exec "$NS" "$BIN" daemon --config "$TMP/fcm.json" --state-dir "$STATE" \
	--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
	--rootfs "$ASSETS/base-rootfs.img" --agent "$ASSETS/fcm-agent" \
	--backend qemu --no-caddy >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
DIE_TAIL=$TMP/daemon.log
wait_api "$NS" "$TMP/daemon.log" "the daemon"

cli() { ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$BIN" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# names_like PREFIX: the names of the listed VMs starting with PREFIX.
names_like() {
	cli ls --json | python3 -c "import json,sys; print(' '.join(v['name'] for v in json.load(sys.stdin) if v['name'].startswith('$1')))"
}
# pss_mib NAME...: the summed PSS of those VMs' QEMUs, in MiB.
pss_mib() {
	local total=0 n id pid kib
	for n in "$@"; do
		id=$(cli ls --json | python3 -c "import json,sys; print([v['id'] for v in json.load(sys.stdin) if v['name']=='$n'][0])")
		pid=$(cat "$STATE/$id/qemu.pid")
		kib=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
		total=$((total + kib))
	done
	echo $((total / 1024))
}

fork_bench() {
log "source VM ($MEMORY MiB)"
cli create --cold --name src --memory "$MEMORY" >/dev/null 2>>"$TMP/cli.log" || die "create src failed"
cli ssh src -- 'setsid sleep 100000 </dev/null >/dev/null 2>&1 &' >/dev/null 2>&1
sleep "$SETTLE"
SRC_PSS=$(pss_mib src)

log "fork --count $COUNT"
t0=$(now_ms)
cli fork src --count "$COUNT" --name f >/dev/null 2>>"$TMP/cli.log" || die "fork failed: $(tail -3 "$TMP/cli.log")"
FORK_MS=$(($(now_ms) - t0))
STOPPED=$(grep -o 'the source stopped for [0-9]* ms' "$TMP/daemon.log" | tail -1 | grep -o '[0-9]*')
sleep "$SETTLE"
# shellcheck disable=SC2046
FORK_PSS=$(pss_mib $(names_like f-))
# shellcheck disable=SC2046
FORK_RSS=$(for n in $(names_like f-); do
	id=$(cli ls --json | python3 -c "import json,sys; print([v['id'] for v in json.load(sys.stdin) if v['name']=='$n'][0])")
	awk '/^Rss:/ {print $2}' "/proc/$(cat "$STATE/$id/qemu.pid")/smaps_rollup"
done | awk '{s+=$1} END {printf "%d", s/1024}')
for n in $(names_like f-); do cli destroy "$n" >/dev/null 2>>"$TMP/cli.log"; done

log "$COUNT cold creates"
t0=$(now_ms)
for i in $(seq "$COUNT"); do
	cli create --cold --name "c-$i" --memory "$MEMORY" >/dev/null 2>>"$TMP/cli.log" || die "create c-$i failed"
done
COLD_MS=$(($(now_ms) - t0))
sleep "$SETTLE"
# shellcheck disable=SC2046
COLD_PSS=$(pss_mib $(names_like c-))
# shellcheck disable=SC2046
COLD_RSS=$(for n in $(names_like c-); do
	id=$(cli ls --json | python3 -c "import json,sys; print([v['id'] for v in json.load(sys.stdin) if v['name']=='$n'][0])")
	awk '/^Rss:/ {print $2}' "/proc/$(cat "$STATE/$id/qemu.pid")/smaps_rollup"
done | awk '{s+=$1} END {printf "%d", s/1024}')
for n in $(names_like c-); do cli destroy "$n" >/dev/null 2>>"$TMP/cli.log"; done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

table() {
	cat <<EOF
| $COUNT VMs of $MEMORY MiB | \`fcm fork src --count $COUNT\` | $COUNT × cold \`fcm create\` | fork / cold |
|---|---|---|---|
| wall time until all run (and answer) | $FORK_MS ms (source stopped $STOPPED ms) | $COLD_MS ms | $(ratio "$FORK_MS" "$COLD_MS") |
| their QEMUs' PSS, summed | $FORK_PSS MiB | $COLD_PSS MiB | $(ratio "$FORK_PSS" "$COLD_PSS") |
| their QEMUs' RSS, summed | $FORK_RSS MiB | $COLD_RSS MiB | $(ratio "$FORK_RSS" "$COLD_RSS") |
EOF
}
TABLE=$(table)
echo "$TABLE"
echo "source VM's PSS before the fork: $SRC_PSS MiB; load $LOAD_BEFORE -> $LOAD_AFTER"

section() {
	cat <<EOF
<!-- fork:begin -->
## Fork: \`fcm fork --count $COUNT\` against $COUNT cold creates

\`sudo bash bench/fork.sh\`, $(date -u "+%Y-%m-%d %H:%M") UTC, fcm $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo " + uncommitted src changes"),
$(nproc) cores, QEMU \`microvm\` under TCG (no usable KVM here), one run of each side in one
daemon. Load average before: $LOAD_BEFORE, after: $LOAD_AFTER (a shared machine: other
engineers' tests ran meanwhile; read the ratios, not the milliseconds).

$TABLE

- The source ($MEMORY MiB, running a process; its own PSS $SRC_PSS MiB before the fork)
  is stopped while its device state is saved, its RAM copied into the sealed fork
  image and its disk copied once; then it runs on. Each fork maps the image
  copy-on-write, loads the devices, gets its identity through its agent (hostname,
  machine id, MAC, address, host key, clock, entropy) and only then goes on the bridge;
  \`fcm fork\` returns once all $COUNT have. Forks are brought up 4 at a time.
- Cold: \`fcm create --memory $MEMORY\` $COUNT times one after another, each until its
  guest answers (TCG boots).
- PSS and RSS from \`/proc/PID/smaps_rollup\` of each VM's QEMU, $SETTLE s after the side
  was up. A page the forks share (from the image, read but not written) counts once in
  their summed PSS; the image itself is held by the forks' QEMUs (no file).
- The issue's goals: fork --count 10 in at most 3 s, its forks' PSS at most 0.3 of cold.
  Compare with the table above; under TCG every fork's QEMU also translates the guest's code
  anew (its own translation cache, counted in its RSS and PSS).
- Not measured here: how many 256 MiB VMs the machine holds forked against cold-booted
  (cold-booting dozens of TCG guests on this shared 2-core machine takes tens of minutes),
  and warm create (its own section below).
<!-- fork:end -->
EOF
}

if [ "$WRITE_DOC" = 1 ]; then
	write_doc_section "$DOC" fork "$(section)"
	log "wrote the fork section of $DOC"
fi
}

# Warm against cold: `fcm create` (restoring the template) and `fcm create
# --cold` (booting), each until `fcm exec VM -- true` has answered.
warm_bench() {
	log "waiting for the template"
	for _ in $(seq 600); do
		grep -q 'fcm daemon: template .* ready' "$TMP/daemon.log" && break
		grep -q 'no template, creates boot cold' "$TMP/daemon.log" && die "no template: $(grep 'no template' "$TMP/daemon.log")"
		sleep 0.5
	done
	grep -q 'fcm daemon: template .* ready' "$TMP/daemon.log" || die "no template within 300 s"
	TEMPLATE_LINE=$(grep -o 'template [0-9a-f]* ready in [0-9.]* s' "$TMP/daemon.log" | tail -1)
	local i t0 name side table
	WARM=()
	COLDS=()
	LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
	for i in $(seq "$ROUNDS"); do
		for side in warm cold; do
			name=$side-$i
			t0=$(now_ms)
			if [ "$side" = warm ]; then
				cli create --name "$name" >/dev/null 2>>"$TMP/cli.log" || die "create $name failed"
			else
				cli create --cold --name "$name" >/dev/null 2>>"$TMP/cli.log" || die "create $name failed"
			fi
			cli exec "$name" -- true >/dev/null 2>>"$TMP/cli.log" || die "exec in $name failed"
			if [ "$side" = warm ]; then WARM+=($(($(now_ms) - t0))); else COLDS+=($(($(now_ms) - t0))); fi
			cli destroy "$name" >/dev/null 2>>"$TMP/cli.log"
		done
	done
	if grep -q 'warm create failed' "$TMP/daemon.log"; then
		die "a warm create fell back: $(grep 'warm create failed' "$TMP/daemon.log" | head -1)"
	fi
	LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
	WARM_MED=$(median "${WARM[@]}")
	COLD_MED=$(median "${COLDS[@]}")
	table=$(
		cat <<EOF
| \`fcm create\` to the first \`fcm exec VM -- true\` answered | median of $ROUNDS | each round (ms) |
|---|---|---|
| warm (from the template) | $WARM_MED ms | ${WARM[*]} |
| cold (\`--cold\`: a boot) | $COLD_MED ms | ${COLDS[*]} |
| warm / cold | $(ratio "$WARM_MED" "$COLD_MED") | |
EOF
	)
	echo "$table"
	echo "$TEMPLATE_LINE; load $LOAD_BEFORE -> $LOAD_AFTER"
	grep 'warm-.*bring-up' "$TMP/daemon.log" | tail -2
	[ "$WRITE_DOC" = 1 ] || return 0
	write_doc_section "$DOC" warm "$(
		cat <<EOF
<!-- warm:begin -->
## Warm create: \`fcm create\` from the template against \`fcm create --cold\`

\`sudo PARTS=warm bash bench/fork.sh\`, $(date -u "+%Y-%m-%d %H:%M") UTC, fcm $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo " + uncommitted src changes"),
$(nproc) cores, QEMU \`microvm\` under TCG, the default size (1 vCPU, 512 MiB, 10 GiB disk),
$ROUNDS rounds alternating warm and cold in one daemon (release build), each VM destroyed
before the next. Load average before: $LOAD_BEFORE, after: $LOAD_AFTER (a shared machine).

$table

- Timed by the client: \`fcm create\` (which returns once the guest takes operations),
  then \`fcm exec VM -- true\` until it has answered.
- Warm: the template (the default-sized VM booted once to agent-ready and saved:
  devices, RAM image, disk; $TEMPLATE_LINE at this daemon's start) is restored like a
  fork: its RAM image mapped copy-on-write, its identity (hostname, machine id, MAC,
  address, host key, clock, entropy) and the user's key applied through its agent while
  its tap is quarantined, then the tap goes on the bridge. A \`--disk\` larger than the
  template's adds a QMP \`block_resize\` and an online \`resize2fs\` (not measured here).
- The issue's goals: warm at most 0.5 s here and at most 0.2 of cold.
<!-- warm:end -->
EOF
	)"
	log "wrote the warm section of $DOC"
}

case " $PARTS " in *" fork "*) fork_bench ;; esac
case " $PARTS " in *" warm "*) warm_bench ;; esac
