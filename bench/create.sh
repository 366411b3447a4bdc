#!/usr/bin/env bash
# Create benchmark: the host's work before the VMM starts, the code before
# the faster create (BASE: ssh-keygen, debugfs, ip processes) against the
# current tree (NEW: key in process, config drive, taps in process).
#
#   sudo bash bench/create.sh     # build both, measure, print, rewrite the
#                                 # create section of docs/benchmarks.md
#
# Side by side in one run: each build its own release binary and its own
# daemon in its own network namespace, runs interleaved (base, new, base,
# new...), on two file systems: ext4 (the disk is a sparse copy) and XFS
# with reflink on a loop device (the disk is a reflink). QEMU backend, no Caddy.
#
# Measured the same way for both: the daemon's qemu_bin is a small bash
# wrapper that writes $EPOCHREALTIME as its first command and execs the real
# QEMU; the client (python, inside the namespace) takes the time just
# before it sends POST /vms. Host work = t(wrapper) - t(request sent), so it
# includes the HTTP request, the wrapper's bash start-up (about 1 ms, for
# both) and everything the daemon does first. NEW's own split comes from
# its log line ("host work before the VMM: ... (reserve, disk, keys, ...)").
# Each VM is destroyed right after its create is timed.
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespaces, unmounts its XFS, removes
# its worktree and temp dir.
#
# Knobs: RUNS (8), BASE (be93b2e, before the faster create), WRITE_DOC (1),
# NEW_CGROUPS (on; off runs NEW's VMMs without their cgroups, to see what
# entering them costs),
# FCM_ASSETS (/var/lib/firecracker), CARGO_TARGET_DIR (target/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNS=${RUNS:-8}
NEW_CGROUPS=${NEW_CGROUPS:-on}
BASE=${BASE:-be93b2e}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs, a loop mount)"
need_assets "$ASSETS"
for p in mkfs.xfs python3 qemu-system-x86_64 ssh-keygen; do
	command -v "$p" >/dev/null || die "$p missing (apt-get install -y xfsprogs python3 qemu-system-x86)"
done
QEMU=$(command -v qemu-system-x86_64)

TAG=$$
TMP=$(mktemp -d /var/tmp/fcm-bench-create.XXXXXX)
WT=$TMP/base-src
XFS=$TMP/xfs
declare -A DAEMON_PID=()


cleanup() {
	local rc=$?
	set +e
	for k in "${!DAEMON_PID[@]}"; do
		kill "${DAEMON_PID[$k]}" 2>/dev/null
		wait "${DAEMON_PID[$k]}" 2>/dev/null
	done
	kill_all_ours
	for k in base-ext4 new-ext4 base-xfs new-xfs; do ip netns del "fcmcr-$k-$TAG" 2>/dev/null; done
	mountpoint -q "$XFS" && umount "$XFS"
	git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/create.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building HEAD (working tree) and $BASE (release)"
cargo build --release --quiet
NEW_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fcm
git -C "$ROOT" worktree add --detach --quiet "$WT" "$BASE"
CARGO_TARGET_DIR=$TMP/target-base cargo build --release --quiet --manifest-path "$WT/Cargo.toml"
BASE_BIN=$TMP/target-base/release/fcm

# The VMs' users (QEMU is sandboxed as them) must reach the wrapper and
# write their time stamp.
chmod 0711 "$TMP"
mkdir -m 0755 "$TMP/tools"
mkdir -m 1777 "$TMP/stamps"
cat >"$TMP/tools/qemu-wrapper" <<EOF
#!/bin/bash
t=\$EPOCHREALTIME
id=
prev=
for a in "\$@"; do [ "\$prev" = -name ] && id=\${a#fcm-}; prev=\$a; done
printf '%s\n' "\$t" >"$TMP/stamps/\$id"
exec $QEMU "\$@"
EOF
chmod 0755 "$TMP/tools/qemu-wrapper"

log "XFS with reflink on a 3 GiB loop device"
truncate -s 3G "$TMP/xfs.img"
mkfs.xfs -q -m reflink=1 "$TMP/xfs.img"
mkdir -p "$XFS"
mount -o loop "$TMP/xfs.img" "$XFS"
cp --sparse=always "$ASSETS/base-rootfs.img" "$XFS/base-rootfs.img"

# start_daemon KIND FS: KIND base|new, FS ext4|xfs.
start_daemon() {
	local kind=$1 fs=$2 bin=$NEW_BIN k=$1-$2 where=$TMP rootfs=$ASSETS/base-rootfs.img
	[ "$kind" = base ] && bin=$BASE_BIN
	[ "$fs" = xfs ] && where=$XFS rootfs=$XFS/base-rootfs.img
	local ns=fcmcr-$k-$TAG
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	mkdir -p "$TMP/$k/home/.ssh" "$where/$k"
	ssh-keygen -q -t ed25519 -N '' -f "$TMP/$k/home/.ssh/id_ed25519"
	if [ "$kind" = new ] && [ "$NEW_CGROUPS" = off ]; then
		echo '{"stop_timeout_secs": 3, "cgroup": {"enabled": false}}' >"$TMP/$k/fcm.json"
	else
		echo '{"stop_timeout_secs": 3}' >"$TMP/$k/fcm.json"
	fi
	ip netns exec "$ns" "$bin" daemon --config "$TMP/$k/fcm.json" --state-dir "$where/$k/state" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" --rootfs "$rootfs" \
		--backend qemu --qemu-bin "$TMP/tools/qemu-wrapper" --no-caddy \
		>"$TMP/$k/daemon.log" 2>&1 &
	DAEMON_PID[$k]=$!
	for _ in $(seq 100); do
		ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && return 0
		sleep 0.1
	done
	die "the $k daemon did not come up: $(tail -5 "$TMP/$k/daemon.log")"
}

state_of() { [ "${1#*-}" = xfs ] && echo "$XFS/$1/state" || echo "$TMP/$1/state"; }

# create K NAME: POST /vms without waiting for SSH; prints "t_sent id".
create() {
	local k=$1 name=$2
	ip netns exec "fcmcr-$k-$TAG" python3 - "$(state_of "$k")/.token" "$name" \
		"$(cat "$TMP/$k/home/.ssh/id_ed25519.pub")" <<'PY'
import json, socket, sys, time
token = open(sys.argv[1]).read().strip()
body = json.dumps({"name": sys.argv[2], "wait_ssh": False, "ssh_public_key": sys.argv[3]}).encode()
req = (f"POST /vms HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
s = socket.create_connection(("127.0.0.1", 7777))
t = time.time()
s.sendall(req)
resp = b""
while chunk := s.recv(65536):
    resp += chunk
head, _, payload = resp.partition(b"\r\n\r\n")
if b" 201 " not in head.split(b"\r\n")[0]:
    sys.exit(f"create failed: {resp[:300]!r}")
print(f"{t:.6f} {json.loads(payload)['id']}")
PY
}

cli() {
	local k=$1 bin=$NEW_BIN
	shift
	[ "${k%%-*}" = base ] && bin=$BASE_BIN
	ip netns exec "fcmcr-$k-$TAG" env HOME="$TMP/$k/home" FCM_STATE_DIR="$(state_of "$k")" "$bin" "$@"
}

# host_ms K NAME: one create, its host work before the VMM in ms (0.1 ms).
host_ms() {
	local k=$1 sent id stamp
	read -r sent id < <(create "$k" "$2") || die "create $2 ($k) failed"
	for _ in $(seq 100); do [ -s "$TMP/stamps/$id" ] && break; sleep 0.05; done
	stamp=$(cat "$TMP/stamps/$id")
	cli "$k" destroy "$2" >/dev/null 2>>"$TMP/cli.log" || die "destroy $2 ($k) failed"
	awk -v a="$sent" -v b="$stamp" 'BEGIN {printf "%.1f", (b - a) * 1000}'
}

for fs in ext4 xfs; do
	for kind in base new; do start_daemon "$kind" "$fs"; done
done

declare -A MS=()
for fs in ext4 xfs; do
	log "$fs: create without waiting for SSH, $RUNS runs each, interleaved"
	for i in $(seq "$RUNS"); do
		for kind in base new; do
			MS[$kind-$fs]+="$(host_ms "$kind-$fs" "b$i") "
		done
	done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.1f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# split FS: NEW's median per step from its log lines.
split() {
	grep -o 'host work before the VMM: .*' "$TMP/new-$1/daemon.log" | python3 -c '
import re, statistics, sys
steps = {}
for line in sys.stdin:
    total = re.match(r"host work before the VMM: ([\d.]+) ms", line)
    steps.setdefault("total (in the daemon)", []).append(float(total.group(1)))
    for name, ms in re.findall(r"([a-z ]+) ([\d.]+) ms", line.split("(", 1)[1]):
        steps.setdefault(name.strip(), []).append(float(ms))
print(", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in steps.items()))'
}

e_b=$(median "${MS[base-ext4]}") e_n=$(median "${MS[new-ext4]}")
x_b=$(median "${MS[base-xfs]}") x_n=$(median "${MS[new-xfs]}")
TABLE=$(
	cat <<EOF
| Host work before the VMM starts (median of $RUNS, QEMU) | before ($BASE) | now | Ratio |
|---|---|---|---|
| ext4 (the disk a sparse copy) | $e_b ms | $e_n ms | $(ratio "$e_n" "$e_b") |
| XFS, reflink (the disk a reflink) | $x_b ms | $x_n ms | $(ratio "$x_n" "$x_b") |
EOF
)
SPLIT_E=$(split ext4)
SPLIT_X=$(split xfs)
echo "$TABLE"
echo "now, per step (medians of the daemon's log lines): ext4: $SPLIT_E"
echo "now, per step: XFS reflink: $SPLIT_X"
for k in base-ext4 new-ext4 base-xfs new-xfs; do echo "raw $k ms: ${MS[$k]}" >&2; done

if [ "$WRITE_DOC" = 1 ]; then
	SECTION=$(
		cat <<EOF
<!-- create:begin -->
## Create: the host's work before the VMM starts

\`bash bench/create.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores (another agent's TCG guests
running beside it). Both builds side by side in one run, each its own daemon in
its own namespace, runs interleaved. Measured the same way for both: from just
before the client sends \`POST /vms\` to the first instruction of a bash wrapper
configured as \`qemu_bin\` (it then execs QEMU). Before: rootfs copy,
\`ssh-keygen\`, \`debugfs -w\` writing the keys into the image (and flushing
it), \`nft\` and four \`ip\` processes for the tap. Now: rootfs copy, the
ed25519 key in process, \`config.img\` (a 12 KiB tar), the tap made with
ioctls and rtnetlink beside one \`nft\`; the disk and drive are synced once
the VMM runs.

$TABLE

Now, per step (medians of the daemon's own log line, \`fcm: <name>: host work
before the VMM: …\`; "reserve" is validation, the table lock and the VM
directory with its record, synced):

- ext4: $SPLIT_E
- XFS reflink: $SPLIT_X

"prep" is the launch's own preparation (disk lock, the VM's cgroups made,
descriptors opened) up to the VMM's fork. The end-to-end figure adds the
request's hand-off and, mostly, the child's move into the VM's cgroups
between fork and exec: on these hosts' cgroup v1 the first task moved into
a cgroup after a quiet moment waits for an RCU grace period (measured here:
6-16 ms for a first write to \`cgroup.procs\`, 0.05 ms for the next ones).
So a create starts that wait in the background as its request arrives (a
no-op move of the daemon into its own cgroup), and the VMM's move moments
later finds it done or nearly (it took the reflink create from 26 ms to the
figure above). With the VMMs' cgroups turned off
(\`NEW_CGROUPS=off bash bench/create.sh\`) the reflink create measured 9.4 ms
end to end (9.0-10.5 ms over 6 runs). fcm keeps each VMM inside its limits
from its first instruction rather than move it in later.

Raw (ms): ext4 before ${MS[base-ext4]}/ now ${MS[new-ext4]}; XFS before ${MS[base-xfs]}/ now ${MS[new-xfs]}.
<!-- create:end -->
EOF
	)
	write_doc_section "$DOC" create "$SECTION"
	log "wrote the create section of $DOC"
fi
