#!/usr/bin/env bash
# E2B API benchmark: the E2B Python SDK against fcm's own CLI on the same
# daemon, side by side:
#   - Sandbox.create() to its first commands.run("true") answered, against
#     `fcm create` then `fcm exec VM -- true` (ROUNDS each, alternately);
#   - commands.run("true") in a running sandbox, against `fcm exec VM --
#     true` in a running VM (RUNS each; p50 and p95);
#   - a write then a read of MIB MiB of random bytes: files.write/read
#     against `fcm cp` up and down.
#
#   sudo bash bench/e2b.sh      # build, measure, print, rewrite the e2b
#                               # section of docs/benchmarks.md
#
# One daemon (QEMU backend under TCG, fcm-agent, its template for warm
# creates, no Caddy) in its own network namespace, release build. The SDK is
# the pinned one scripts/test.sh installs (/var/lib/fcm-test-tools/e2b-venv).
# SDK times are taken inside Python (its start-up not counted); fcm's by the
# shell around each CLI run (the CLI's start-up counted: what a user waits).
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespace and removes its temp dir.
#
# Knobs: ROUNDS (5), RUNS (30), MIB (10), WRITE_DOC (1),
# E2B_PYTHON (/var/lib/fcm-test-tools/e2b-venv/bin/python),
# FCM_ASSETS (/var/lib/firecracker), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-5}
RUNS=${RUNS:-30}
MIB=${MIB:-10}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
PY=${E2B_PYTHON:-/var/lib/fcm-test-tools/e2b-venv/bin/python}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"
[ -f "$ASSETS/fcm-agent" ] || die "$ASSETS/fcm-agent missing (run scripts/setup.sh)"
"$PY" -c 'import e2b' 2>/dev/null || die "no E2B SDK at $PY (scripts/test.sh installs it)"

TAG=$$
NS=fcme2b-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-e2b.XXXXXX)
DAEMON_PID=""

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/e2b.sh: failed (exit $rc); cleaned up" >&2
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
sdk() {
	ip netns exec "$NS" env E2B_API_URL=http://127.0.0.1:7777 E2B_SANDBOX_URL=http://127.0.0.1:7777 \
		E2B_API_KEY="$(cat "$STATE/.token")" "$PY" "$ROOT/bench/e2b_drive.py" "$@"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p95() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.95+0.999); if (i>NR) i=NR; print a[i]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
json_field() { python3 -c "import json,sys; v=json.load(sys.stdin)['$1']; print(' '.join(str(round(x)) for x in v) if isinstance(v, list) else round(v))"; }

log "waiting for the template (warm creates)"
for _ in $(seq 600); do
	grep -q 'fcm daemon: template .* ready' "$TMP/daemon.log" && break
	grep -q 'no template, creates boot cold' "$TMP/daemon.log" && die "no template: $(grep 'no template' "$TMP/daemon.log")"
	sleep 0.5
done
grep -q 'fcm daemon: template .* ready' "$TMP/daemon.log" || die "no template within 300 s"

log "create to the first command: $ROUNDS rounds, alternately"
SDK_CREATE=()
FCM_CREATE=()
for i in $(seq "$ROUNDS"); do
	SDK_CREATE+=("$(sdk create 2>>"$TMP/sdk.log" | json_field create_to_first_run_ms)") || die "SDK create failed: $(tail -3 "$TMP/sdk.log")"
	t0=$(now_ms)
	cli create --name "c-$i" >/dev/null 2>>"$TMP/cli.log" || die "create c-$i failed"
	cli exec "c-$i" -- true >/dev/null 2>>"$TMP/cli.log" || die "exec in c-$i failed"
	FCM_CREATE+=($(($(now_ms) - t0)))
	cli destroy "c-$i" >/dev/null 2>>"$TMP/cli.log"
done

log "$RUNS commands and $MIB MiB each way, SDK"
OUT=$(sdk runs "$RUNS" "$MIB" 2>>"$TMP/sdk.log") || die "SDK runs failed: $(tail -3 "$TMP/sdk.log")"
read -r -a SDK_RUN <<<"$(echo "$OUT" | json_field run_ms)"
SDK_WRITE=$(echo "$OUT" | json_field write_ms)
SDK_READ=$(echo "$OUT" | json_field read_ms)

log "$RUNS commands and $MIB MiB each way, fcm CLI"
cli create --name r >/dev/null 2>>"$TMP/cli.log" || die "create r failed"
cli exec r -- true >/dev/null 2>>"$TMP/cli.log"
FCM_RUN=()
for _ in $(seq "$RUNS"); do
	t0=$(now_ms)
	cli exec r -- true >/dev/null 2>>"$TMP/cli.log" || die "exec failed"
	FCM_RUN+=($(($(now_ms) - t0)))
done
# The same work the SDK asks for (its commands run as `bash -l -c CMD`).
FCM_BASH=()
for _ in $(seq "$RUNS"); do
	t0=$(now_ms)
	cli exec r -- bash -l -c true >/dev/null 2>>"$TMP/cli.log" || die "exec failed"
	FCM_BASH+=($(($(now_ms) - t0)))
done
head -c $((MIB << 20)) /dev/urandom >"$TMP/blob"
t0=$(now_ms)
cli cp "$TMP/blob" r:/root/bench.bin 2>>"$TMP/cli.log" || die "cp up failed"
FCM_WRITE=$(($(now_ms) - t0))
t0=$(now_ms)
cli cp r:/root/bench.bin "$TMP/back" 2>>"$TMP/cli.log" || die "cp down failed"
FCM_READ=$(($(now_ms) - t0))
cmp -s "$TMP/blob" "$TMP/back" || die "fcm cp: the file read back differs"
cli destroy r >/dev/null 2>>"$TMP/cli.log"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

SC=$(median "${SDK_CREATE[@]}")
FC=$(median "${FCM_CREATE[@]}")
SR50=$(median "${SDK_RUN[@]}")
SR95=$(p95 "${SDK_RUN[@]}")
FR50=$(median "${FCM_RUN[@]}")
FR95=$(p95 "${FCM_RUN[@]}")
FB50=$(median "${FCM_BASH[@]}")
FB95=$(p95 "${FCM_BASH[@]}")
TABLE=$(
	cat <<EOF
| | E2B SDK | fcm CLI | SDK / fcm |
|---|---|---|---|
| create to the first command answered (median of $ROUNDS) | $SC ms | $FC ms | $(ratio "$SC" "$FC") |
| each round (ms) | ${SDK_CREATE[*]} | ${FCM_CREATE[*]} | |
| a command (\`true\`) in a running VM, p50 / p95 of $RUNS | $SR50 / $SR95 ms | $FR50 / $FR95 ms | $(ratio "$SR50" "$FR50") |
| the same as the SDK runs it (\`bash -l -c true\`), p50 / p95 of $RUNS | $SR50 / $SR95 ms | $FB50 / $FB95 ms | $(ratio "$SR50" "$FB50") |
| write $MIB MiB | $SDK_WRITE ms | $FCM_WRITE ms | $(ratio "$SDK_WRITE" "$FCM_WRITE") |
| read $MIB MiB | $SDK_READ ms | $FCM_READ ms | $(ratio "$SDK_READ" "$FCM_READ") |
EOF
)
echo "$TABLE"
echo "load $LOAD_BEFORE -> $LOAD_AFTER"

[ "$WRITE_DOC" = 1 ] || exit 0
SDK_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("e2b"))')
section() {
	cat <<EOF
<!-- e2b:begin -->
## E2B API: the E2B Python SDK against fcm's CLI

\`sudo bash bench/e2b.sh\`, $(date -u "+%Y-%m-%d %H:%M") UTC, fcm $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo " + uncommitted src changes"),
$(nproc) cores, QEMU \`microvm\` under TCG, the default size (warm creates from the
daemon's template), one daemon (release build), e2b $SDK_VERSION over plain HTTP on loopback.
Load average before: $LOAD_BEFORE, after: $LOAD_AFTER (a shared machine).

$TABLE

- SDK: \`Sandbox.create()\` then \`commands.run("true")\`; \`commands.run("true")\`;
  \`files.write\` / \`files.read(format="bytes")\` of random bytes; timed inside Python
  (its start-up not counted).
- fcm: \`fcm create\` then \`fcm exec VM -- true\`; \`fcm exec VM -- true\`, and
  \`fcm exec VM -- bash -l -c true\` (what the SDK's \`commands.run\` asks the guest
  for: a login shell); \`fcm cp\` up and down; timed around each CLI run (its start-up
  counted).
- Both reach the guest through the same agent; the SDK's path adds the E2B
  translation (a Connect stream per command, \`bash -l -c\` around it as the SDK asks,
  a multipart upload, a \`mkdir -p\` of the file's directory before a write).
<!-- e2b:end -->
EOF
}
write_doc_section "$DOC" e2b "$(section)"
log "wrote the e2b section of $DOC"
