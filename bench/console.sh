#!/usr/bin/env bash
# Console benchmark: output throughput and keystroke echo latency through
# `fcm console` (client -> daemon terminal port -> ssh -> tmux in the guest)
# versus a direct `ssh -tt ... tmux attach` to the same session of the same VM.
#
# Sets up its own network namespace, daemon (QEMU backend) and VM, cleans all
# of it up on exit, prints a markdown table and writes it into the
# "## Console" section of docs/benchmarks.md (between console:start/end).
#
# Usage: sudo bench/console.sh            (env: BENCH_MB=50 BENCH_KEYS=40
#                                          BENCH_ROUNDS=2 FCM_BIN FCM_ASSETS)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MB=${BENCH_MB:-50}
KEYS=${BENCH_KEYS:-40}
ROUNDS=${BENCH_ROUNDS:-2}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
FCM=${FCM_BIN:-$ROOT/target/release/fcm}

[ "$(id -u)" = 0 ] || { echo "run as root (it makes a network namespace)" >&2; exit 2; }
if [ -z "${FCM_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
for f in vmlinux.bin initrd.img base-rootfs.img; do
    [ -f "$ASSETS/$f" ] || { echo "missing $ASSETS/$f (run scripts/setup.sh)" >&2; exit 2; }
done

NS=fcmb-con-$$
TMP=$(mktemp -d /var/tmp/fcm-bench-XXXXXX)
STATE=$TMP/state
DAEMON_PID=

cleanup() {
    set +e
    if [ -n "$DAEMON_PID" ]; then
        kill "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    for p in "$STATE"/*/qemu.pid "$STATE"/*/firecracker.pid; do
        [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$TMP/home/.ssh" "$STATE"
ssh-keygen -q -t ed25519 -N "" -C bench -f "$TMP/home/.ssh/id_ed25519"

ip netns exec "$NS" "$FCM" daemon --state-dir "$STATE" --backend qemu --no-caddy \
    --kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
    --rootfs "$ASSETS/base-rootfs.img" >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do
    ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && break
    sleep 0.2
done

fcm() {
    ip netns exec "$NS" env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM \
        HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$FCM" "$@"
}
echo "booting a VM..." >&2
VM_JSON=$(fcm create --json)
read -r NAME ID IP < <(python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["name"], v["id"], v["ip"])' <<<"$VM_JSON")
echo "VM $NAME ($IP) is up" >&2

CFG=$(python3 - "$FCM" "$NAME" "$STATE" "$ID" "$IP" "$TMP/home" "$MB" "$KEYS" "$ROUNDS" <<'PY'
import json, sys
fcm, name, state, vid, ip, home, mb, keys, rounds = sys.argv[1:]
print(json.dumps({
    "fcm": ["env", "-u", "FCM_TOKEN", "-u", "FCM_HOST", "HOME=" + home,
            "FCM_STATE_DIR=" + state, fcm, "console", name],
    "ssh": ["ssh", "-tt", "-e", "none", "-i", state + "/ssh/id_ed25519",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "UserKnownHostsFile=" + state + "/" + vid + "/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
            "root@" + ip, "exec tmux -u new-session -A -s main"],
    "mb": int(mb), "keys": int(keys), "rounds": int(rounds),
}))
PY
)
echo "measuring ($ROUNDS rounds of: ${MB} MiB output, $KEYS keystrokes; fcm console then direct ssh)..." >&2
RESULT=$(ip netns exec "$NS" python3 "$ROOT/bench/terminal_drive.py" "$CFG")
echo "raw results: $RESULT" >&2

TABLE=$(python3 - "$RESULT" "$MB" "$KEYS" "$ROUNDS" <<'PY'
import json, platform, statistics, subprocess, sys, time
r, mb, keys, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def best(kind, k, f=min):
    return f(x[k] for x in r[kind])
tf, ts = best("fcm", "throughput_s"), best("ssh", "throughput_s")
rows = [
    ("output throughput, MiB/s (higher is better)", mb / tf, mb / ts, (mb / tf) / (mb / ts)),
    ("echo latency p50, ms (lower is better)", best("fcm", "echo_ms_p50"), best("ssh", "echo_ms_p50"),
     best("fcm", "echo_ms_p50") / best("ssh", "echo_ms_p50")),
    ("echo latency p95, ms (lower is better)", best("fcm", "echo_ms_p95"), best("ssh", "echo_ms_p95"),
     best("fcm", "echo_ms_p95") / best("ssh", "echo_ms_p95")),
]
cpu = "?"
try:
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip()
            break
except OSError:
    pass
print("| metric | `fcm console` | direct `ssh -t … tmux attach` | fcm / ssh |")
print("|---|---:|---:|---:|")
for name, a, b, q in rows:
    print("| %s | %.2f | %.2f | %.2f |" % (name, a, b, q))
def spread(kind, k, scale=lambda v: v):
    v = sorted(scale(x[k]) for x in r[kind])
    return "%.2f-%.2f" % (v[0], v[-1])
mbps = lambda t: mb / t
print()
print("Every round: throughput fcm %s / ssh %s MiB/s; echo p50 fcm %s / ssh %s ms; "
      "p95 fcm %s / ssh %s ms."
      % (spread("fcm", "throughput_s", mbps), spread("ssh", "throughput_s", mbps),
         spread("fcm", "echo_ms_p50"), spread("ssh", "echo_ms_p50"),
         spread("fcm", "echo_ms_p95"), spread("ssh", "echo_ms_p95")))
print()
print("%s MiB of base64 printed into the tmux session (`head -c %sM /dev/zero | base64`), "
      "timed until an end marker arrives; %s single keystrokes, each timed until it is "
      "drawn back. Best of %s rounds per path, run alternately against the same VM and "
      "session. Guest under QEMU TCG (software emulation) on %s, %s; the guest's tmux is "
      "part of both paths. Measured %s."
      % (mb, mb, keys, rounds, cpu, platform.machine(), time.strftime("%Y-%m-%d")))
PY
)

echo
echo "$TABLE"

DOC=$ROOT/docs/benchmarks.md
mkdir -p "$ROOT/docs"
python3 - "$DOC" "$TABLE" <<'PY'
import os, sys, tempfile
path, table = sys.argv[1], sys.argv[2]
start, end = "<!-- console:start -->", "<!-- console:end -->"
section = "%s\n## Console\n\nMade by `bench/console.sh`.\n\n%s\n%s" % (start, table, end)
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
echo "wrote the Console section of $DOC" >&2
