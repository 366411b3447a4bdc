#!/usr/bin/env bash
# Flood benchmark: what a flood of idle unauthenticated connections from
# the user's own address does to the API, before (BASE: a thread per
# connection behind 64 pre-auth slots, 8 per address) and after (this
# tree: one poller per port, thousands of slots, the oldest pushed out),
# side by side in one run; and what keep-alive saves a client that sends
# many requests.
#
#   sudo bash bench/flood.sh     # build both, measure, print, rewrite the
#                                # flood section of docs/benchmarks.md
#
# Measured, from python3 in the daemon's network namespace, against a
# daemon with no VMs (the transport is measured, not the listing):
#   latency: ROUNDS x REQS sequential `GET /vms` with the token, a new
#            connection each (as every `fcm` command opens one), with no
#            flood and during a flood of IDLE idle connections to the API
#            port from 127.0.0.1 (tests/common/flood.py: each one the
#            daemon closes is opened again 0.3 s later). A request counts as
#            answered when it gets its 200 within 5 s; p50/p99 are over the
#            answered ones.
#   keep-alive: KA requests on one connection (HTTP/1.1 keep-alive) against
#            KA requests on a new connection each, plain and TLS (this tree
#            only: BASE closes every connection).
# Only loopback traffic in the script's own namespace. On exit, also on
# failure, it kills what it started by PID, deletes its namespace and its
# temp dir (BASE's sources and build included).
#
# Knobs: ROUNDS (2), REQS (200), IDLE (2000), KA (100), FLOOD_SECS (20), BASE (ec8789d),
#        BASE_BIN (a binary already built from BASE: skips its build),
#        WRITE_DOC (1), FCM_ASSETS, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-2}
REQS=${REQS:-200}
IDLE=${IDLE:-2000}
KA=${KA:-100}
FLOOD_SECS=${FLOOD_SECS:-20}
BASE=${BASE:-ec8789d}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (it makes a network namespace)"

TAG=$$
NS=fcmfl-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-flood.XXXXXX)
WT=$TMP/base-src
DAEMON_PID=""
FLOOD_PID=""
DIE_TAIL=$TMP/daemon.log

stop_daemon() {
	if [ -n "$DAEMON_PID" ]; then
		kill "$DAEMON_PID" 2>/dev/null || true
		wait "$DAEMON_PID" 2>/dev/null || true
		DAEMON_PID=""
	fi
}
cleanup() {
	local rc=$?
	set +e
	[ -n "$FLOOD_PID" ] && kill -9 "$FLOOD_PID" 2>/dev/null
	stop_daemon
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/flood.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building this tree and $BASE (release)"
cargo build --release --quiet
NEW_BIN=$TARGET/release/fcm
NEW_REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo "+changes")
if [ -z "${BASE_BIN:-}" ]; then
	# BASE's sources from git (an archive: no worktree to register), its own target dir.
	mkdir -p "$WT"
	git -C "$ROOT" archive "$BASE" | tar -x -C "$WT"
	CARGO_TARGET_DIR=$TMP/target-base cargo build --release --quiet --locked --manifest-path "$WT/Cargo.toml"
	BASE_BIN=$TMP/target-base/release/fcm
fi
[ -x "$BASE_BIN" ] || die "no binary of $BASE at $BASE_BIN"

ip netns add "$NS"
ip -n "$NS" link set lo up
STATE=$TMP/state
mkdir -p "$STATE"

# start_daemon BIN [ARGS...]
start_daemon() {
	local bin=$1
	shift
	stop_daemon
	ip netns exec "$NS" "$bin" daemon --state-dir "$STATE" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --backend qemu --no-caddy "$@" \
		>>"$TMP/daemon.log" 2>&1 &
	DAEMON_PID=$!
	wait_api "$NS" "$TMP/daemon.log" "the daemon ($bin)"
}

cat >"$TMP/client.py" <<'PY'
"""N sequential GET /vms: a new connection each, or all on one (keep-alive).
Prints one JSON line: answered, p50/p99 of the answered (ms), total seconds."""
import http.client, json, ssl, sys, time
mode, token, n, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "keep"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # a benchmark: the pin is fcm's business
def conn():
    if mode == "tls":
        return http.client.HTTPSConnection("127.0.0.1", 7777, context=ctx, timeout=5)
    return http.client.HTTPConnection("127.0.0.1", 7777, timeout=5)
lat, failed, reused = [], 0, 0
c = conn() if keep else None
t0 = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    try:
        if not keep:
            c = conn()
        c.request("GET", "/vms", headers={"Authorization": "Bearer " + token})
        r = c.getresponse()
        r.read()
        if keep and r.getheader("Connection", "").lower() == "keep-alive":
            reused += 1
        if not keep:
            c.close()
        if r.status != 200:
            failed += 1
            continue
    except (OSError, http.client.HTTPException):
        failed += 1
        if c is not None:
            c.close()
        if keep:
            c = conn()
        continue
    lat.append((time.perf_counter() - t) * 1000)
total = time.perf_counter() - t0
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] if lat else float("nan")
print(json.dumps({"answered": len(lat), "failed": failed, "p50": pick(0.5), "p99": pick(0.99),
                  "mean": sum(lat) / len(lat) if lat else float("nan"), "total_s": total,
                  "kept_alive": reused}))
PY

client() { ip netns exec "$NS" python3 "$TMP/client.py" "$@"; }

RESULTS=$TMP/results.jsonl
: >"$RESULTS"
TOKEN=""
# latency WHICH BIN: the latency rows of one binary, with and without a flood.
latency() {
	local which=$1 bin=$2 quiet flooded figures
	start_daemon "$bin"
	TOKEN=$(cat "$STATE/.token")
	client plain "$TOKEN" 20 new >/dev/null
	quiet=$(client plain "$TOKEN" "$REQS" new)
	ip netns exec "$NS" python3 "$ROOT/tests/common/flood.py" 7777 127.0.0.1 "$IDLE" "$FLOOD_SECS" 400000 idle \
		>"$TMP/flood.out" 2>>"$TMP/flood.err" &
	FLOOD_PID=$!
	# Five seconds for the flood to open its connections (or be refused).
	sleep 5
	local fds
	fds=$(ls "/proc/$DAEMON_PID/fd" | wc -l)
	local threads rss
	threads=$(awk '/^Threads:/ {print $2}' "/proc/$DAEMON_PID/status")
	rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON_PID/status")
	flooded=$(client plain "$TOKEN" "$REQS" new)
	wait "$FLOOD_PID" || true
	FLOOD_PID=""
	figures=$(grep '"end"' "$TMP/flood.out" || echo '{}')
	python3 - "$which" "$quiet" "$flooded" "$figures" "$fds" "$threads" "$rss" >>"$RESULTS" <<'PY'
import json, sys
which, quiet, flooded, figures = sys.argv[1], *map(json.loads, sys.argv[2:5])
print(json.dumps({"kind": "latency", "which": which, "quiet": quiet, "flooded": flooded,
                  "flood": figures, "fds": int(sys.argv[5]), "threads": int(sys.argv[6]),
                  "rss_kib": int(sys.argv[7])}))
PY
	tail -1 "$RESULTS" >&2
	stop_daemon
}

for round in $(seq "$ROUNDS"); do
	log "round $round: $BASE"
	latency base "$BASE_BIN"
	log "round $round: this tree"
	latency new "$NEW_BIN"
done

log "keep-alive"
for mode in plain tls; do
	if [ "$mode" = tls ]; then start_daemon "$NEW_BIN" --tls on; else start_daemon "$NEW_BIN"; fi
	TOKEN=$(cat "$STATE/.token")
	client "$mode" "$TOKEN" 10 keep >/dev/null
	for _ in $(seq "$ROUNDS"); do
		NEWC=$(client "$mode" "$TOKEN" "$KA" new)
		KEPT=$(client "$mode" "$TOKEN" "$KA" keep)
		python3 - "$mode" "$NEWC" "$KEPT" >>"$RESULTS" <<'PY'
import json, sys
print(json.dumps({"kind": "keepalive", "mode": sys.argv[1], "new": json.loads(sys.argv[2]),
                  "kept": json.loads(sys.argv[3])}))
PY
		tail -1 "$RESULTS" >&2
	done
	stop_daemon
done

TABLE=$(python3 - "$RESULTS" "$BASE" "$NEW_REV" "$REQS" "$IDLE" "$KA" "$ROUNDS" "$FLOOD_SECS" <<'PY'
import json, platform, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
base, new, reqs, idle, ka, rounds, secs = sys.argv[2:9]
lat = [r for r in rows if r["kind"] == "latency"]
kal = [r for r in rows if r["kind"] == "keepalive"]
def best(which, phase, key):
    vals = [r[phase][key] for r in lat if r["which"] == which and r[phase]["answered"]]
    return min(vals) if vals else float("nan")
def worst_answered(which, phase):
    return min(r[phase]["answered"] for r in lat if r["which"] == which)
def peak(which, key):
    return max(r["flood"].get(key, 0) for r in lat if r["which"] == which)
def fd(which):
    return max(r["fds"] for r in lat if r["which"] == which)
def th(which):
    return max(r["threads"] for r in lat if r["which"] == which)
def rss(which):
    return max(r["rss_kib"] for r in lat if r["which"] == which) / 1024
def ms(v):
    return "none answered" if v != v else "%.2f" % v
cpu = "?"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip()
        break
out = []
out.append("| `GET /vms`, a new connection each | before (%s) | after (%s) |" % (base, new))
out.append("|---|---:|---:|")
for phase, label in (("quiet", "no flood"), ("flooded", "%s idle connections from 127.0.0.1" % idle)):
    out.append("| %s: answered (worst round, of %s) | %d | %d |" % (label, reqs, worst_answered("base", phase), worst_answered("new", phase)))
    out.append("| %s: p50, ms | %s | %s |" % (label, ms(best("base", phase, "p50")), ms(best("new", phase, "p50"))))
    out.append("| %s: p99, ms | %s | %s |" % (label, ms(best("base", phase, "p99")), ms(best("new", phase, "p99"))))
out.append("| flood: connections held open at once (peak) | %d | %d |" % (peak("base", "peak_open"), peak("new", "peak_open")))
out.append("| flood: connections opened in %s s | %d | %d |" % (secs, peak("base", "opened"), peak("new", "opened")))
out.append("| daemon during the flood: threads | %d | %d |" % (th("base"), th("new")))
out.append("| daemon during the flood: open fds | %d | %d |" % (fd("base"), fd("new")))
out.append("| daemon during the flood: RSS, MiB | %.1f | %.1f |" % (rss("base"), rss("new")))
out.append("")
out.append("| %s sequential `GET /vms` (after) | a new connection each | one kept-alive connection | gain |" % ka)
out.append("|---|---:|---:|---:|")
for mode in ("plain", "tls"):
    rs = [r for r in kal if r["mode"] == mode]
    n = min(r["new"]["total_s"] for r in rs) * 1000
    k = min(r["kept"]["total_s"] for r in rs) * 1000
    kp = min(r["kept"]["p50"] for r in rs)
    np_ = min(r["new"]["p50"] for r in rs)
    kept = min(r["kept"]["kept_alive"] for r in rs)
    out.append("| %s: total, ms | %.1f | %.1f | %.1fx |" % (mode, n, k, n / k))
    out.append("| %s: p50 per request, ms | %.2f | %.2f | %.1fx |" % (mode, np_, kp, np_ / kp))
    out.append("| %s: answers saying keep-alive | - | %d of %s | |" % (mode, kept, ka))
out.append("")
out.append(
    "Best of %s rounds (before and after alternating, each with a fresh daemon and no VMs). "
    "Client: python3 `http.client` in the daemon's network namespace; a request counts as "
    "answered when its 200 came within 5 s, p50/p99 over the answered ones. The flood: "
    "tests/common/flood.py, %s idle connections to the API port from 127.0.0.1, each one the "
    "daemon closes opened again 0.3 s later, measured from 5 s after it starts. Before, the "
    "daemon admits 8 unauthenticated connections per address and refuses the rest with a 503 "
    "(the `fcm` CLI retries those for 15 s); after, it holds them all in one poller thread and cuts each at its 10 s deadline (so the flood opens each twice in 20 s). "
    "%s, %s, a shared 2-core machine. Measured %s." % (rounds, idle, cpu, platform.machine(), time.strftime("%Y-%m-%d")))
print("\n".join(out))
PY
)
echo
echo "$TABLE"

if [ "$WRITE_DOC" = 1 ]; then
	SECTION="<!-- flood:begin -->
## Floods of unauthenticated connections, and keep-alive

Made by \`bench/flood.sh\`.

$TABLE
<!-- flood:end -->"
	write_doc_section "$DOC" flood "$SECTION"
	log "wrote the flood section of $DOC"
fi
