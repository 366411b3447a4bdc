#!/usr/bin/env bash
# Web console benchmark: keystroke echo latency (p50/p95) in the browser
# terminal (Chromium, headless, via playwright-core: the page's xterm.js
# over the /ui/ws WebSocket) against `fcm console` in a pty
# (bench/terminal_drive.py), same VM, same tmux session, alternating
# rounds. Sets up its own network namespace, daemon (QEMU backend) and VM,
# cleans all of it up on exit, and writes its table into docs/benchmarks.md
# between <!-- ui:start --> and <!-- ui:end -->.
#
# Usage: sudo bench/ui.sh    (env: BENCH_KEYS=100 BENCH_ROUNDS=3 FCM_BIN FCM_ASSETS)
# Needs what scripts/test.sh installs: chromium, and playwright-core in
# /var/lib/fcm-test-tools/ui-js.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
KEYS=${BENCH_KEYS:-100}
ROUNDS=${BENCH_ROUNDS:-3}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
FCM=${FCM_BIN:-$ROOT/target/release/fcm}

[ "$(id -u)" = 0 ] || die "run as root (it makes a network namespace)"
if [ -z "${FCM_BIN:-}" ]; then
	(cd "$ROOT" && cargo build --release --quiet)
fi
need_assets "$ASSETS"
[ -x /usr/bin/chromium ] || die "chromium missing (scripts/test.sh installs it)"
[ -f /var/lib/fcm-test-tools/ui-js/node_modules/playwright-core/package.json ] ||
	die "playwright-core missing (scripts/test.sh installs it)"

NS=fcmb-ui-$$
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
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
mkdir -p "$TMP/home/.ssh" "$STATE"
ssh-keygen -q -t ed25519 -N "" -C bench -f "$TMP/home/.ssh/id_ed25519"
agent=()
[ -f "$ASSETS/fcm-agent" ] && agent=(--agent "$ASSETS/fcm-agent")
ip netns exec "$NS" "$FCM" daemon --state-dir "$STATE" --backend qemu --no-caddy --templates off \
	--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
	--rootfs "$ASSETS/base-rootfs.img" "${agent[@]}" >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
DIE_TAIL=$TMP/daemon.log wait_api "$NS" "$TMP/daemon.log" "the daemon"

fcm() {
	ip netns exec "$NS" env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM \
		HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$FCM" "$@"
}
log "booting a VM"
VM_JSON=$(fcm create --json)
NAME=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])' <<<"$VM_JSON")
TOKEN=$(cat "$STATE/.token")
log "VM $NAME is up; $ROUNDS rounds of $KEYS keystrokes: browser, then fcm console"

CLI_CFG=$(python3 - "$FCM" "$NAME" "$STATE" "$TMP/home" "$KEYS" <<'PY'
import json, sys
fcm, name, state, home, keys = sys.argv[1:]
print(json.dumps({"argv": ["env", "-u", "FCM_TOKEN", "-u", "FCM_HOST", "HOME=" + home,
                           "FCM_STATE_DIR=" + state, fcm, "console", name],
                  "mb": 1, "keys": int(keys)}))
PY
)
: >"$TMP/browser.jsonl"
: >"$TMP/cli.jsonl"
for r in $(seq "$ROUNDS"); do
	log "round $r: browser"
	ip netns exec "$NS" env FCM_UI_URL=http://127.0.0.1:7777/ui/ FCM_TOKEN="$TOKEN" FCM_VM="$NAME" \
		BENCH_KEYS="$KEYS" node "$ROOT/bench/ui_echo.mjs" | tail -1 >>"$TMP/browser.jsonl"
	sleep 1
	log "round $r: fcm console"
	ip netns exec "$NS" python3 "$ROOT/bench/terminal_drive.py" "$CLI_CFG" | tail -1 >>"$TMP/cli.jsonl"
	sleep 1
done

PROFILE=release
case "$FCM" in */debug/*) PROFILE="debug (unoptimised)" ;; esac
TABLE=$(python3 - "$TMP/browser.jsonl" "$TMP/cli.jsonl" "$KEYS" "$ROUNDS" "$PROFILE" <<'PY'
import json, platform, statistics, sys, time
bfile, cfile, keys, rounds, profile = sys.argv[1:]
browser = [json.loads(l) for l in open(bfile) if l.strip()]
cli = [json.loads(l) for l in open(cfile) if l.strip()]
def pct(v, p):
    v = sorted(v)
    return v[max(0, int(len(v) * p) - 1)] if p < 1 else v[-1]
b_rounds = [(statistics.median(r["echo_ms"]), pct(r["echo_ms"], 0.95)) for r in browser]
c_rounds = [(r["echo_ms_p50"], r["echo_ms_p95"]) for r in cli]
b50, b95 = min(x[0] for x in b_rounds), min(x[1] for x in b_rounds)
p_rounds = [(statistics.median(r["parsed_ms"]), pct(r["parsed_ms"], 0.95)) for r in browser]
p50, p95 = min(x[0] for x in p_rounds), min(x[1] for x in p_rounds)
c50, c95 = min(x[0] for x in c_rounds), min(x[1] for x in c_rounds)
cpu = "?"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip()
        break
print("| metric | browser (`/ui/`, xterm.js over WebSocket) | `fcm console` (pty) | browser / console |")
print("|---|---:|---:|---:|")
print("| echo latency p50, ms (lower is better) | %.2f | %.2f | %.2f |" % (b50, c50, b50 / c50))
print("| echo latency p95, ms (lower is better) | %.2f | %.2f | %.2f |" % (b95, c95, b95 / c95))
print("| browser, to the parse only (no frame wait): p50 / p95, ms | %.2f / %.2f | | |" % (p50, p95))
print()
print("Every round: p50 browser %s / console %s ms; p95 browser %s / console %s ms."
      % (", ".join("%.1f" % x[0] for x in b_rounds), ", ".join("%.1f" % x[0] for x in c_rounds),
         ", ".join("%.1f" % x[1] for x in b_rounds), ", ".join("%.1f" % x[1] for x in c_rounds)))
print()
print("%s single keystrokes per round, each timed until it is drawn back: in the browser, "
      "from the key's keydown to the first animation frame after xterm.js parsed the echo "
      "(performance.now() in the page; headless Chromium via playwright-core); for `fcm console`, "
      "from the write to its pty until the byte is read back (bench/terminal_drive.py). Best of "
      "%s alternating rounds, the same VM and tmux session `main`, the daemon's %s build. Guest "
      "under QEMU TCG on %s, %s. Measured %s."
      % (keys, rounds, profile, cpu, platform.machine(), time.strftime("%Y-%m-%d")))
PY
)
echo
echo "$TABLE"

DOC=$ROOT/docs/benchmarks.md
python3 - "$DOC" "$TABLE" <<'PY'
import os, sys, tempfile
path, table = sys.argv[1], sys.argv[2]
start, end = "<!-- ui:start -->", "<!-- ui:end -->"
section = "%s\n## Web console\n\nMade by `bench/ui.sh`.\n\n%s\n%s" % (start, table, end)
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
log "wrote the Web console section of $DOC"
