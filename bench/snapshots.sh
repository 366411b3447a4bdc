#!/usr/bin/env bash
# Snapshot benchmark: pause, resume to SSH against a cold start to SSH, and
# checkpoints (time and disk cost), for 256, 512 and 1024 MiB guests.
#
#   sudo bash bench/snapshots.sh     # build, measure, print, rewrite the
#                                    # snapshots section of docs/benchmarks.md
#
# One run per size, side by side in one daemon (QEMU backend under TCG, no
# Caddy, in its own network namespace). Each guest is created (waiting for
# SSH), then:
#   pause:      `fcm pause` (memory state written, VMM gone), wall time
#   resume:     `fcm resume` until SSH answers (includes the clock fix)
#   cold start: `fcm stop`, then `fcm start` until SSH answers
#   checkpoint: `fcm checkpoint` (freeze, save memory, copy disk, thaw, clock)
#   disk cost:  what the checkpoint adds to the file system's used space
#               (df before/after: a reflinked disk shares its extents), and
#               the allocated size fcm reports (shared extents count there)
# The state dir is on a loop-mounted XFS with reflink when mkfs.xfs is
# installed (apt-get install xfsprogs), else in /var/tmp (a sparse copy).
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespace, unmounts and removes its
# temp dir.
#
# Knobs: SIZES ("256 512 1024"), WRITE_DOC (1), FCM_ASSETS (/var/lib/firecracker),
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SIZES=${SIZES:-256 512 1024}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"

TAG=$$
NS=fcmsn-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-snap.XXXXXX)

DAEMON_PID=""
MOUNTED=""

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	for f in $(grep -laF "$TMP" /proc/[0-9]*/cmdline 2>/dev/null); do
		p=${f#/proc/}
		p=${p%/cmdline}
		[ "$p" = $$ ] && continue
		tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$TMP" && kill -9 "$p" 2>/dev/null
	done
	ip netns del "$NS" 2>/dev/null
	[ -n "$MOUNTED" ] && sleep 0.5 && umount "$MOUNTED"
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/snapshots.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --quiet
BIN=$TARGET/release/fcm

STATE=$TMP/state
FS="ext4-or-other (sparse copies)"
if command -v mkfs.xfs >/dev/null; then
	truncate -s 12G "$TMP/xfs.img"
	mkfs.xfs -q -m reflink=1 "$TMP/xfs.img"
	mkdir -p "$TMP/xfs"
	mount -o loop "$TMP/xfs.img" "$TMP/xfs"
	MOUNTED=$TMP/xfs
	STATE=$TMP/xfs/state
	FS="XFS with reflink (loop device)"
fi
log "state dir on $FS"

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$TMP/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"
echo '{"stop_timeout_secs": 20}' >"$TMP/fcm.json"
ip netns exec "$NS" "$BIN" daemon --config "$TMP/fcm.json" --state-dir "$STATE" \
	--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
	--rootfs "$ASSETS/base-rootfs.img" --backend qemu --no-caddy \
	>"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do
	ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && break
	sleep 0.1
done

cli() { ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$BIN" "$@"; }

# ms ARGS...: wall time of one CLI call, in ms.
ms() {
	local t0 t1
	t0=$(date +%s%N)
	cli "$@" >/dev/null 2>>"$TMP/cli.log" || die "fcm $* failed: $(tail -3 "$TMP/cli.log")"
	t1=$(date +%s%N)
	echo $(((t1 - t0) / 1000000))
}
used_kib() { df -k --output=used "$STATE" | tail -1 | tr -d ' '; }
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

ROWS=""
for m in $SIZES; do
	log "guest of $m MiB"
	cli create --name "s$m" --memory "$m" >/dev/null 2>>"$TMP/cli.log" || die "create failed"
	id=$(cli ls --json | python3 -c "import json,sys; print([v['id'] for v in json.load(sys.stdin) if v['name']=='s$m'][0])")
	sleep 2
	pause=$(ms pause "s$m")
	saved=$(du -k --apparent-size "$STATE/$id/paused/memory.state" | cut -f1)
	sleep 1
	resume=$(ms resume "s$m")
	cli stop "s$m" >/dev/null 2>>"$TMP/cli.log"
	cold=$(ms start "s$m")
	sleep 2
	before=$(used_kib)
	ckpt=$(ms checkpoint "s$m")
	after=$(used_kib)
	reported=$(cli checkpoints "s$m" --json | python3 -c "import json,sys; c=json.load(sys.stdin)[0]; print(c['size_bytes'], c['disk_copy'])")
	cli destroy "s$m" >/dev/null 2>>"$TMP/cli.log"
	ROWS+="| $m MiB | $pause ms ($((saved / 1024)) MiB saved) | $resume ms | $cold ms | $(ratio "$resume" "$cold") | $ckpt ms | $(((after - before) / 1024)) MiB | $(mib "${reported% *}") MiB (${reported#* }) |"$'\n'
done

TABLE=$(
	cat <<EOF
| Guest | \`fcm pause\` | \`fcm resume\` to SSH | cold \`fcm start\` to SSH | resume / cold | \`fcm checkpoint\` | checkpoint's real disk cost (df) | size fcm reports (allocated) |
|---|---|---|---|---|---|---|---|
$ROWS
EOF
)
echo "$TABLE"

if [ "$WRITE_DOC" = 1 ]; then
	SECTION=$(
		cat <<EOF
<!-- snapshots:begin -->
## Snapshots: pause, resume, checkpoints

\`bash bench/snapshots.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, one run per size, QEMU
\`microvm\` under TCG (these hosts have no usable KVM), state dir on $FS.
Resume and cold start are timed until the guest's SSH answers (resume also
sets the guest's clock over SSH before it returns). A checkpoint freezes the
guest's root file system over SSH, stops its vCPUs, saves memory, copies the
disk, and lets the guest run on; its real disk cost is the file system's
used space before and after (a reflinked disk shares its blocks until
either side writes them; the allocated size counts shared blocks too).
Resume and checkpoint include the daemon's SSH logins into the guest (the
clock fix; the freeze and thaw), each about a second or two under TCG, which
dominate them here; on a KVM host both shrink to the VMM's own work. One run
on a shared 2-core machine (other builds and tests running): read the
ratios, not the milliseconds.

$TABLE
<!-- snapshots:end -->
EOF
	)
	write_doc_section "$DOC" snapshots "$SECTION"
	log "wrote the snapshots section of $DOC"
fi
