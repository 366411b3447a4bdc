#!/usr/bin/env bash
# Soak benchmark: the soak test (tests/soak.rs) run long, against this
# build and a baseline build side by side, with its figures written to
# docs/benchmarks.md (section "soak") and plotted in docs/soak.svg.
#
#   sudo bash bench/soak.sh
#
# Each side is the same harness (the test binary) driving its own release
# build of fcm (FCM_TEST_BIN) with its own daemon in its own network
# namespace; both run at the same time, so both see the same machine. Per
# side: VMS VMs (QEMU, MEMORY MiB), one worker thread each through create,
# exec, cp, pause, resume, checkpoint, restore, stop, start, destroy; the
# daemon SIGKILLed KILLS times (every ~OPS_PER_KILL operations) during the
# first CHAOS_CYCLES cycles, then one warm-up cycle and CYCLES measured
# cycles on the last daemon; the daemon's RSS, threads and descriptors are
# sampled every second. A side that fails (a leak, lost data, a failure no
# kill explains) is reported as such in the doc; each side's whole log is
# kept in target/bench-soak-<side>.log.
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespaces, worktree and temp dir.
#
# Knobs: VMS (6), MEMORY (128), KILLS (6), OPS_PER_KILL (60), CHAOS_CYCLES (4),
# CYCLES (14), BASE (the merge-base with main; "none" to run this build
# alone), WRITE_DOC (1), FCM_ASSETS (/var/lib/firecracker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VMS=${VMS:-6}
MEMORY=${MEMORY:-128}
KILLS=${KILLS:-6}
OPS_PER_KILL=${OPS_PER_KILL:-60}
CHAOS_CYCLES=${CHAOS_CYCLES:-4}
CYCLES=${CYCLES:-14}
BASE=${BASE:-$(git merge-base HEAD main 2>/dev/null || echo none)}
WRITE_DOC=${WRITE_DOC:-1}
export FCM_ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$FCM_ASSETS"

TMP=$(mktemp -d /var/tmp/fcm-bench-soak.XXXXXX)
WT=$TMP/base-src
declare -A RUNNER=()

cleanup() {
	local rc=$?
	set +e
	for side in "${!RUNNER[@]}"; do
		local pid=${RUNNER[$side]}
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		# The harness names its namespace after its pid.
		ip netns del "fcmt-soak-$((pid % 100000))" 2>/dev/null
	done
	kill_all_ours
	local f d
	for f in "$TMP"/*/fcm-test-*/state/*/cgroups; do
		[ -f "$f" ] || continue
		while read -r d; do
			case $d in /sys/fs/cgroup/*) rmdir "$d" 2>/dev/null ;; esac
		done <"$f"
	done
	git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/soak.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building this build (release) and the soak harness"
cargo build --release --quiet
NEW_BIN=$ROOT/target/release/fcm
HARNESS=$(cargo test --test soak --no-run --message-format=json 2>/dev/null |
	"${PYTHON:-python3}" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "soak" and m.get("executable"):
        print(m["executable"])')
[ -x "$HARNESS" ] || die "no soak test binary"
NEW_REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo "+changes")
SIDES=(new)
if [ "$BASE" != none ]; then
	log "building $BASE (release)"
	BASE_BIN=$(build_base "$BASE" "$WT")
	SIDES=(base new)
fi

# run SIDE BIN: the harness against BIN, in the background.
run() {
	local side=$1 bin=$2
	mkdir -p "$TMP/$side"
	FCM_TEST_BIN=$bin FCM_TEST_TMPDIR=$TMP/$side FCM_SOAK_REPORT=$TMP/$side/report.json \
		FCM_SOAK_VMS=$VMS FCM_SOAK_MEMORY=$MEMORY FCM_SOAK_KILLS=$KILLS \
		FCM_SOAK_OPS_PER_KILL=$OPS_PER_KILL FCM_SOAK_CHAOS_CYCLES=$CHAOS_CYCLES \
		FCM_SOAK_CYCLES=$CYCLES RUST_BACKTRACE=0 \
		"$HARNESS" --exact soak_many_operations_on_many_vms_with_daemon_kills_leaks_nothing \
		--nocapture >"$TMP/$side/soak.log" 2>&1 &
	RUNNER[$side]=$!
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)
log "soak: ${SIDES[*]} side by side, $VMS VMs each ($MEMORY MiB), $KILLS kills, $CHAOS_CYCLES+1+$CYCLES cycles"
run new "$NEW_BIN"
[ "$BASE" != none ] && run base "$BASE_BIN"
declare -A RESULT=()
for side in "${SIDES[@]}"; do
	if wait "${RUNNER[$side]}"; then RESULT[$side]=passed; else RESULT[$side]=failed; fi
	unset "RUNNER[$side]"
	# Kept after the temp dir goes: the whole story of a failure.
	mkdir -p "$ROOT/target"
	cp "$TMP/$side/soak.log" "$ROOT/target/bench-soak-$side.log"
	log "$side: ${RESULT[$side]} ($(grep -c . "$TMP/$side/soak.log") log lines)"
	grep '^soak:' "$TMP/$side/soak.log" | tail -20 >&2 || true
done
ELAPSED=$(($(date +%s) - STARTED))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

for side in "${SIDES[@]}"; do
	[ -f "$TMP/$side/report.json" ] || {
		echo "--- $side: no report; its log is target/bench-soak-$side.log; its end:" >&2
		tail -40 "$TMP/$side/soak.log" >&2
		die "the $side side wrote no report"
	}
	# The failure's own words, for the doc.
	grep -E "panicked|^(leaks|data lost|failures no kill)|^  left|^ right" "$TMP/$side/soak.log" |
		head -20 >"$TMP/$side/why.txt" || true
done

SECTION=$("${PYTHON:-python3}" "$ROOT/bench/soak_render.py" \
	--tmp "$TMP" --sides "${SIDES[*]}" --svg "$ROOT/docs/soak.svg" \
	--meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" "cores=$(nproc)" \
	"new=$NEW_REV" "base=$BASE" "vms=$VMS" "memory=$MEMORY" "kills=$KILLS" \
	"chaos=$CHAOS_CYCLES" "cycles=$CYCLES" "elapsed=$ELAPSED" \
	"load_before=$LOAD_BEFORE" "load_after=$LOAD_AFTER" \
	"result_new=${RESULT[new]}" "result_base=${RESULT[base]:-}")
echo "$SECTION"
if [ "$WRITE_DOC" = 1 ]; then
	write_doc_section "$DOC" soak "$SECTION"
	log "wrote the soak section of $DOC and docs/soak.svg"
fi
