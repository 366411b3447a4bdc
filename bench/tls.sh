#!/usr/bin/env bash
# TLS benchmark: what TLS costs the console (output throughput, keystroke
# echo latency) and the API (request latency), against plain TCP on
# loopback, in one run, side by side.
#
#   sudo bash bench/tls.sh       # build, measure, print, rewrite the tls
#                                # section of docs/benchmarks.md
#
# One network namespace, one daemon state dir and one booted VM (QEMU
# backend). Each round restarts the daemon, alternately plain (the loopback
# default) and with `--tls on` (VMs outlive the daemon, so the same VM and
# tmux session serve both), then measures:
#   console: `fcm console` in a pty, BENCH_MB MiB of base64 printed by the
#            guest (throughput) and BENCH_KEYS single keystrokes (echo);
#   API:     200 sequential `GET /vms` requests from python3, a new
#            connection each (the daemon answers Connection: close, so a
#            TLS handshake per request, as every `fcm` command pays);
#   CLI:     20 runs of `fcm ls` (process start, TLS, pin check).
# Only loopback traffic in the script's own namespace. Everything it
# started is killed by PID on exit, also on failure.
#
# Knobs: BENCH_MB (20), BENCH_KEYS (40), BENCH_ROUNDS (2), FCM_BIN, FCM_ASSETS.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MB=${BENCH_MB:-20}
KEYS=${BENCH_KEYS:-40}
ROUNDS=${BENCH_ROUNDS:-2}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
FCM=${FCM_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/fcm}
DOC=$ROOT/docs/benchmarks.md

[ "$(id -u)" = 0 ] || { echo "run as root (it makes a network namespace)" >&2; exit 2; }
if [ -z "${FCM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
for f in vmlinux.bin initrd.img base-rootfs.img; do
    [ -f "$ASSETS/$f" ] || { echo "missing $ASSETS/$f (run scripts/setup.sh)" >&2; exit 2; }
done

NS=fcmb-tls-$$
TMP=$(mktemp -d /var/tmp/fcm-bench-tls-XXXXXX)
STATE=$TMP/state
DAEMON_PID=

stop_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=
    fi
}
cleanup() {
    local rc=$?
    set +e
    stop_daemon
    for p in "$STATE"/*/qemu.pid "$STATE"/*/firecracker.pid; do
        [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$TMP"
    [ "$rc" = 0 ] || echo "bench/tls.sh: failed (exit $rc); cleaned up" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$TMP/home/.ssh" "$STATE"
ssh-keygen -q -t ed25519 -N "" -C bench -f "$TMP/home/.ssh/id_ed25519"

# start_daemon [--tls on]
start_daemon() {
    stop_daemon
    ip netns exec "$NS" "$FCM" daemon --state-dir "$STATE" --backend qemu --no-caddy \
        --kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
        --rootfs "$ASSETS/base-rootfs.img" "$@" >>"$TMP/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 100); do
        ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && return 0
        sleep 0.1
    done
    echo "daemon did not come up: $(tail -5 "$TMP/daemon.log")" >&2
    exit 1
}

FP=$("$FCM" daemon --print-fingerprint --state-dir "$STATE")
TOKEN_FILE=$STATE/.token
# env_of MODE: the client environment of a mode, one VAR=value a line.
env_of() {
    echo "HOME=$TMP/home"
    echo "FCM_STATE_DIR=$STATE"
    if [ "$1" = tls ]; then
        echo "FCM_HOST=https://127.0.0.1:7777"
        echo "FCM_FINGERPRINT=$FP"
    fi
}
fcm() {
    local mode=$1
    shift
    mapfile -t E < <(env_of "$mode")
    ip netns exec "$NS" env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM -u FCM_FINGERPRINT "${E[@]}" "$FCM" "$@"
}

start_daemon
echo "booting a VM..." >&2
VM_JSON=$(fcm plain create --json)
NAME=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])' <<<"$VM_JSON")
echo "VM $NAME is up" >&2

cat >"$TMP/api.py" <<'PY'
"""200 sequential GET /vms, a new connection each: latency in ms."""
import http.client, json, ssl, statistics, sys, time
mode, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # a benchmark: the pin is fcm's business
lat = []
for _ in range(n):
    t = time.perf_counter()
    c = (http.client.HTTPSConnection("127.0.0.1", 7777, context=ctx, timeout=10) if mode == "tls"
         else http.client.HTTPConnection("127.0.0.1", 7777, timeout=10))
    c.request("GET", "/vms", headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    c.close()
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(json.dumps({"api_ms_p50": statistics.median(lat), "api_ms_p95": lat[int(n * 0.95) - 1]}))
PY

TOKEN=$(cat "$TOKEN_FILE")
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for mode in plain tls; do
        if [ "$mode" = tls ]; then start_daemon --tls on; else start_daemon; fi
        echo "round $round, $mode: console..." >&2
        mapfile -t E < <(env_of "$mode")
        ARGV=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM -u FCM_FINGERPRINT "${E[@]}" "$FCM" console "$NAME")
        CON=$(ip netns exec "$NS" python3 "$ROOT/bench/terminal_drive.py" "{\"argv\": $ARGV, \"mb\": $MB, \"keys\": $KEYS}")
        echo "round $round, $mode: API..." >&2
        API=$(ip netns exec "$NS" python3 "$TMP/api.py" "$mode" "$TOKEN" 200)
        LS=""
        for _ in $(seq 20); do
            t0=$(date +%s%N)
            fcm "$mode" ls >/dev/null
            t1=$(date +%s%N)
            LS+="$(((t1 - t0) / 1000)) "
        done
        python3 - "$mode" "$CON" "$API" "$LS" >>"$RESULTS" <<'PY'
import json, statistics, sys
mode, con, api, ls = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4].split()
r = {"mode": mode, **con, **api, "ls_ms_p50": statistics.median(int(x) for x in ls) / 1000}
print(json.dumps(r))
PY
        tail -1 "$RESULTS" >&2
    done
done
stop_daemon

TABLE=$(python3 - "$RESULTS" "$MB" "$KEYS" "$ROUNDS" <<'PY'
import json, platform, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
mb, keys, rounds = int(sys.argv[2]), sys.argv[3], sys.argv[4]
def best(mode, k, f=min):
    return f(r[k] for r in rows if r["mode"] == mode)
thr = lambda m: mb / best(m, "throughput_s")
metrics = [
    ("console output throughput, MiB/s (higher is better)", thr("plain"), thr("tls")),
    ("console echo latency p50, ms", best("plain", "echo_ms_p50"), best("tls", "echo_ms_p50")),
    ("console echo latency p95, ms", best("plain", "echo_ms_p95"), best("tls", "echo_ms_p95")),
    ("API `GET /vms` latency p50, ms (new connection each)", best("plain", "api_ms_p50"), best("tls", "api_ms_p50")),
    ("API `GET /vms` latency p95, ms", best("plain", "api_ms_p95"), best("tls", "api_ms_p95")),
    ("`fcm ls` wall time p50, ms", best("plain", "ls_ms_p50"), best("tls", "ls_ms_p50")),
]
cpu = "?"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip()
        break
print("| metric | plain (loopback) | TLS (`--tls on`) | TLS / plain |")
print("|---|---:|---:|---:|")
for name, a, b in metrics:
    print("| %s | %.2f | %.2f | %.2f |" % (name, a, b, b / a))
print()
print("Best of %s rounds per mode, the modes alternating (the daemon restarted between them; "
      "same VM and tmux session). Console: %s MiB of base64 printed by the guest, %s single "
      "keystrokes each timed until drawn back. API: 200 sequential requests from python3, a "
      "new TCP (and TLS) connection each, as the daemon closes after each answer. Guest under "
      "QEMU TCG on %s, %s, a shared 2-core machine. Measured %s. Raw rounds:"
      % (rounds, mb, keys, cpu, platform.machine(), time.strftime("%Y-%m-%d")))
print()
for r in rows:
    print("- %s: %s" % (r["mode"], ", ".join("%s %.2f" % (k, v) for k, v in r.items() if k != "mode")))
PY
)
echo
echo "$TABLE"

python3 - "$DOC" "$TABLE" <<'PY'
import os, sys, tempfile
path, table = sys.argv[1], sys.argv[2]
start, end = "<!-- tls:begin -->", "<!-- tls:end -->"
section = "%s\n## TLS: what it costs the console and the API\n\nMade by `bench/tls.sh`.\n\n%s\n%s" % (start, table, end)
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
if start in text and end in text:
    a, b = text.index(start), text.index(end) + len(end)
    text = text[:a] + section + text[b:]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".benchmarks.")
with os.fdopen(fd, "w") as f:
    f.write(text)
os.chmod(tmp, 0o644)
os.replace(tmp, path)
PY
echo "wrote the TLS section of $DOC" >&2
