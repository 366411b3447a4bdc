#!/usr/bin/env bash
# Crash-safety benchmark: what the journal (records saved before each side
# effect, the .new-/rename directory) and the disk lock (an OFD lock taken
# before each launch) add to `fcm create` and `fcm start`.
#
#   sudo bash bench/crash-safety.sh     # build both, measure, print, rewrite the
#                                       # crash-safety section of docs/benchmarks.md
#
# Side by side in one run: the current code and the code before crash safety
# (BASE, default the commit before it), each its own release build and its
# own daemon in its own network namespace, the runs interleaved (base, new,
# base, new...) so both see the same machine. QEMU backend, no Caddy.
#   create: `fcm create --no-wait` (until the VMM runs), wall time of the CLI.
#   start:  `fcm start --no-wait` of a stopped VM (the stop is not timed).
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespaces, worktree and temp dir.
#
# Knobs: RUNS (8), BASE (c2ee793, the commit before crash safety), NEW (a0146fa,
# the crash-safety commit; "HEAD" for the working tree), WRITE_DOC (1),
# FCM_ASSETS (/var/lib/firecracker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNS=${RUNS:-8}
BASE=${BASE:-c2ee793}
NEW=${NEW:-a0146fa}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"

TAG=$$
TMP=$(mktemp -d /var/tmp/fcm-bench-crash.XXXXXX)
WT=$TMP/base-src
WT_NEW=$TMP/new-src
declare -A DAEMON_PID=()


cleanup() {
	local rc=$?
	set +e
	for k in "${!DAEMON_PID[@]}"; do
		kill "${DAEMON_PID[$k]}" 2>/dev/null
		wait "${DAEMON_PID[$k]}" 2>/dev/null
	done
	kill_all_ours
	for k in base new; do ip netns del "fcmcs-$k-$TAG" 2>/dev/null; done
	git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
	git -C "$ROOT" worktree remove --force "$WT_NEW" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/crash-safety.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building $NEW and $BASE (release)"
if [ "$NEW" = HEAD ]; then
	cargo build --release --quiet
	NEW_BIN=$ROOT/target/release/fcm
else
	git -C "$ROOT" worktree add --detach --quiet "$WT_NEW" "$NEW"
	CARGO_TARGET_DIR=$TMP/target-new cargo build --release --quiet --manifest-path "$WT_NEW/Cargo.toml"
	NEW_BIN=$TMP/target-new/release/fcm
fi
git -C "$ROOT" worktree add --detach --quiet "$WT" "$BASE"
CARGO_TARGET_DIR=$TMP/target-base cargo build --release --quiet --manifest-path "$WT/Cargo.toml"
BASE_BIN=$TMP/target-base/release/fcm

# start_daemon KIND BIN
start_daemon() {
	local kind=$1 bin=$2 ns=fcmcs-$1-$TAG
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	mkdir -p "$TMP/$kind/home/.ssh"
	ssh-keygen -q -t ed25519 -N '' -f "$TMP/$kind/home/.ssh/id_ed25519"
	# A short stop deadline: guests stopped while still booting are killed.
	echo '{"stop_timeout_secs": 3}' >"$TMP/$kind/fcm.json"
	ip netns exec "$ns" "$bin" daemon --config "$TMP/$kind/fcm.json" --state-dir "$TMP/$kind/state" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --backend qemu --no-caddy \
		>"$TMP/$kind/daemon.log" 2>&1 &
	DAEMON_PID[$kind]=$!
	wait_api "$ns" "$TMP/$kind/daemon.log" "the $kind daemon"
}

# cli KIND ARGS...: the kind's fcm CLI in its namespace.
cli() {
	local kind=$1
	shift
	local bin=$NEW_BIN
	[ "$kind" = base ] && bin=$BASE_BIN
	ip netns exec "fcmcs-$kind-$TAG" env HOME="$TMP/$kind/home" \
		FCM_STATE_DIR="$TMP/$kind/state" "$bin" "$@"
}

# ms KIND ARGS...: wall time of one CLI call, in ms.
ms() {
	local t0 t1
	t0=$(date +%s%N)
	cli "$@" >/dev/null 2>>"$TMP/cli.log" || die "fcm ${*:2} failed ($1): $(tail -3 "$TMP/cli.log")"
	t1=$(date +%s%N)
	echo $(((t1 - t0) / 1000000))
}

start_daemon base "$BASE_BIN"
start_daemon new "$NEW_BIN"

declare -A CREATE=([base]="" [new]="") START=([base]="" [new]="")
log "create --no-wait, $RUNS runs each, interleaved"
for i in $(seq "$RUNS"); do
	for kind in base new; do
		CREATE[$kind]+="$(ms "$kind" create --no-wait --name "b$i") "
		# Stopped at once, so guests do not pile up and slow later runs.
		cli "$kind" stop "b$i" >/dev/null 2>>"$TMP/cli.log"
	done
done
log "start --no-wait of a stopped VM, $RUNS runs each, interleaved"
for i in $(seq "$RUNS"); do
	for kind in base new; do
		START[$kind]+="$(ms "$kind" start --no-wait "b$i") "
		cli "$kind" destroy "b$i" >/dev/null 2>>"$TMP/cli.log"
	done
done

# median LIST
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

cb=$(median "${CREATE[base]}") cn=$(median "${CREATE[new]}")
sb=$(median "${START[base]}") sn=$(median "${START[new]}")
TABLE=$(
	cat <<EOF
| What (median of $RUNS, QEMU backend) | before crash safety ($BASE) | with journal + disk lock ($NEW) | Ratio |
|---|---|---|---|
| \`fcm create --no-wait\` (until the VMM runs) | $cb ms | $cn ms | $(ratio "$cn" "$cb") |
| \`fcm start --no-wait\` (stopped → VMM runs) | $sb ms | $sn ms | $(ratio "$sn" "$sb") |
EOF
)
echo "$TABLE"
echo "raw create ms: base ${CREATE[base]}/ new ${CREATE[new]}" >&2
echo "raw start ms:  base ${START[base]}/ new ${START[new]}" >&2

if [ "$WRITE_DOC" = 1 ]; then
	SECTION=$(
		cat <<EOF
<!-- crash-safety:begin -->
## Crash safety: what the journal and the disk lock cost

\`bash bench/crash-safety.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores. Both builds run side by
side in one run (each its own daemon in its own namespace, runs interleaved).
The new code saves the record before each side effect (create: the
\`.new-<id>\` directory renamed into place, a save with the host key, the
running state; start: \`starting\`, then \`running\`), and takes an OFD lock on
the disk before each launch, handed to the VMM.

$TABLE

Raw (ms): create base ${CREATE[base]}/ new ${CREATE[new]}; start base ${START[base]}/ new ${START[new]}.
<!-- crash-safety:end -->
EOF
	)
	write_doc_section "$DOC" crash-safety "$SECTION"
	log "wrote the crash-safety section of $DOC"
fi
