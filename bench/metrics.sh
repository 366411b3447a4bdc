#!/usr/bin/env bash
# Metrics benchmark: what the metrics collection costs the daemon, with 20
# VMs running. Side by side in one run, on the same daemon binary and the
# same 20 VMs (warm creates of the smallest size: 1 vCPU, 128 MiB):
#
#   off: the daemon with `metrics.interval_secs` 0 (no sampler), no client;
#   on:  the daemon with the sampler at 2 s (the guests asked their view
#        every 10 s through their agents), a client doing what the web page
#        does (GET /stats every 2 s) and a Prometheus-like scrape of
#        GET /metrics every 15 s.
#
# The daemon is restarted with the other config between phases (its VMs keep
# running; it adopts them), phases interleaved (off, on, off, on...). Each
# phase waits for the daemon's recovery and SETTLE seconds, then reads the
# daemon's CPU time (/proc/<pid>/stat utime+stime) over WINDOW seconds of
# wall time. Reported: daemon CPU ms per VM per minute, each phase's median,
# and the difference (the cost of the sampler and its readers).
#
#   sudo bash bench/metrics.sh    # build, measure, print, rewrite the
#                                 # metrics section of docs/benchmarks.md
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespace and removes its temp dir.
#
# Knobs: VMS (20), ROUNDS (2), WINDOW (60), SETTLE (10), WRITE_DOC (1),
# FCM_ASSETS (/var/lib/firecracker), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VMS=${VMS:-20}
ROUNDS=${ROUNDS:-2}
WINDOW=${WINDOW:-60}
SETTLE=${SETTLE:-10}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"
[ -f "$ASSETS/fcm-agent" ] || die "$ASSETS/fcm-agent missing (run scripts/build-agent.sh)"
for p in curl python3 qemu-system-x86_64 ssh-keygen; do
	command -v "$p" >/dev/null || die "$p missing"
done

TAG=$$
NS=fcmme-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-metrics.XXXXXX)
STATE=$TMP/state
DAEMON_PID=""
CLIENT_PID=""
DIE_TAIL=$TMP/daemon.log

cleanup() {
	local rc=$?
	set +e
	[ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/metrics.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --quiet
BIN=$TARGET/release/fcm

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$TMP/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"
# The smallest VM warm creates make: 1 vCPU, 128 MiB.
for interval in 0 2; do
	cat >"$TMP/fcm-$interval.json" <<EOF
{"stop_timeout_secs": 5, "default_cpus": 1, "default_memory_mib": 128,
 "caddy": {"enabled": false}, "metrics": {"interval_secs": $interval}}
EOF
done

cli() { ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$BIN" "$@"; }
health() { ip netns exec "$NS" curl -s --max-time 5 http://127.0.0.1:7777/health || true; }

# start_daemon INTERVAL: the daemon with the sampler at INTERVAL s (0: off),
# once it has recovered the VMs on record.
start_daemon() {
	ip netns exec "$NS" "$BIN" daemon --config "$TMP/fcm-$1.json" --state-dir "$STATE" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --agent "$ASSETS/fcm-agent" \
		--backend qemu --templates on >>"$TMP/daemon.log" 2>&1 &
	DAEMON_PID=$!
	wait_api "$NS" "$TMP/daemon.log" "the daemon"
	for _ in $(seq 600); do
		health | grep -q '"recovering":false' && return 0
		sleep 0.5
	done
	die "the daemon did not recover its VMs"
}

stop_daemon() {
	kill "$DAEMON_PID"
	wait "$DAEMON_PID" || true
	DAEMON_PID=""
}

# cpu_ticks PID: utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

start_daemon 0
log "waiting for the warm-create template"
for _ in $(seq 600); do
	t=$(health | python3 -c 'import json,sys; print(json.load(sys.stdin).get("template",""))' 2>/dev/null || true)
	[ "$t" = ready ] && break
	case $t in failed*) die "the template failed: $t" ;; esac
	sleep 1
done
[ "$t" = ready ] || die "no template after 10 minutes"
log "$VMS warm creates (1 vCPU, 128 MiB)"
for i in $(seq "$VMS"); do
	cli create --name "m$i" >/dev/null 2>>"$TMP/cli.log" || die "create m$i failed: $(tail -3 "$TMP/cli.log")"
done
running=$(cli ls --json | python3 -c 'import json,sys; print(sum(v["state"] == "running" for v in json.load(sys.stdin)))')
[ "$running" = "$VMS" ] || die "$running of $VMS VMs running"

# The web page and a Prometheus scraper, in the namespace.
TOKEN=$(cat "$STATE/.token")
cat >"$TMP/client.sh" <<EOF
#!/bin/bash
# $TMP: GET /stats every 2 s, GET /metrics every 15 s.
n=0
while :; do
	curl -s -o /dev/null --max-time 10 -H "Authorization: Bearer $TOKEN" http://127.0.0.1:7777/stats
	if [ \$((n % 15)) = 0 ]; then
		curl -s -o /dev/null --max-time 10 -H "Authorization: Bearer $TOKEN" http://127.0.0.1:7777/metrics
	fi
	sleep 2
	n=\$((n + 2))
done
EOF

# measure: daemon CPU ms per VM per minute over WINDOW s.
measure() {
	local a b t0 t1
	sleep "$SETTLE"
	a=$(cpu_ticks "$DAEMON_PID")
	t0=$(date +%s%N)
	sleep "$WINDOW"
	b=$(cpu_ticks "$DAEMON_PID")
	t1=$(date +%s%N)
	awk -v d=$((b - a)) -v hz="$HZ" -v ns=$((t1 - t0)) -v vms="$VMS" \
		'BEGIN { printf "%.1f", d * 1000 / hz / vms / (ns / 60e9) }'
}

OFF=()
ON=()
for r in $(seq "$ROUNDS"); do
	log "round $r/$ROUNDS: sampler off, no client (${WINDOW} s)"
	stop_daemon
	start_daemon 0
	OFF+=("$(measure)")
	log "  off: ${OFF[-1]} ms per VM per minute"
	log "round $r/$ROUNDS: sampler on (2 s), GET /stats every 2 s, /metrics every 15 s (${WINDOW} s)"
	stop_daemon
	start_daemon 2
	ip netns exec "$NS" bash "$TMP/client.sh" >/dev/null 2>&1 &
	CLIENT_PID=$!
	ON+=("$(measure)")
	kill "$CLIENT_PID"
	wait "$CLIENT_PID" 2>/dev/null || true
	CLIENT_PID=""
	log "  on: ${ON[-1]} ms per VM per minute"
done
off=$(median "${OFF[@]}")
on=$(median "${ON[@]}")
diff=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.1f", a - b }')
pct=$(awk -v d="$diff" 'BEGIN { printf "%.3f", d / 600 }')
# The sampler's own count of its passes' wall time, from the last daemon.
passes=$(ip netns exec "$NS" curl -s --max-time 10 -H "Authorization: Bearer $TOKEN" http://127.0.0.1:7777/metrics |
	awk '/^fcm_metrics_sampler_(passes|seconds)_total/ { printf "%s=%s ", $1, $2 }')

SECTION="<!-- metrics:start -->
## Metrics collection cost (bench/metrics.sh)

$(date -u +%Y-%m-%d), $(nproc) cores, QEMU/TCG, release build. $VMS VMs running
(warm creates: 1 vCPU, 128 MiB each), one daemon restarted between phases
(its VMs keep running), $ROUNDS round(s) of $WINDOW s per phase, interleaved.
Daemon CPU time (utime + stime) per VM per minute of wall time:

| phase | daemon CPU, ms per VM per minute (median) | rounds |
|---|---|---|
| sampler off (\`metrics.interval_secs\` 0), no client | $off | ${OFF[*]} |
| sampler every 2 s (guests asked every 10 s), GET /stats every 2 s, GET /metrics every 15 s | $on | ${ON[*]} |
| **difference: what metrics cost** | **$diff** (≈ $pct % of one core per VM) | |

The \"off\" phase is the daemon's own background work (housekeeping every 5 s,
idle-sleep passes every second, agent pings). The difference includes the
sampler's /proc reads, the guest questions through the agents (the daemon's
side of 1 exec per VM per 10 s) and serving the client's requests. Last
daemon's own count: $passes
<!-- metrics:end -->"
echo "$SECTION"
if [ "$WRITE_DOC" = 1 ]; then
	"${PYTHON:-python3}" - "$DOC" "$SECTION" <<'PY'
import sys
doc, section = sys.argv[1:3]
s = open(doc).read()
begin, end = "<!-- metrics:start -->", "<!-- metrics:end -->"
if begin in s:
    a, b = s.index(begin), s.index(end) + len(end)
    s = s[:a] + section + s[b:]
else:
    s = s.rstrip("\n") + "\n\n" + section + "\n"
open(doc, "w").write(s)
PY
	log "wrote the metrics section of docs/benchmarks.md"
fi
