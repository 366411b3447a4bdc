#!/usr/bin/env bash
# The main job on a fresh machine: set up the host, build fcm, start the
# daemon and create a VM that answers SSH. Everything runs inside a network
# namespace of its own ("fcm-demo"), so the host's network is not touched.
#
#   bash scripts/demo.sh         # as root: set up, start, create, ssh
#   bash scripts/demo.sh down    # stop the daemon and VMs, remove the namespace
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NS=fcm-demo
RUN=/var/tmp/fcm-demo
STATE=$RUN/state
FCM=$PWD/target/release/fcm
in_ns() { ip netns exec "$NS" "$@"; }

down() {
	if [ -f "$RUN/daemon.pid" ]; then
		kill "$(cat "$RUN/daemon.pid")" 2>/dev/null || true
	fi
	for pidfile in "$STATE"/*/qemu.pid "$STATE"/*/firecracker.pid; do
		[ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
	done
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$RUN"
	echo "fcm demo: stopped and removed" >&2
}

if [ "${1:-}" = down ]; then
	down
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "scripts/demo.sh: run as root (sudo bash scripts/demo.sh)" >&2
	exit 2
fi

bash scripts/setup.sh
echo "== building fcm" >&2
cargo build --release --locked
[ -d "$RUN" ] && down
mkdir -p "$RUN/home/.ssh"
ip netns add "$NS"
in_ns ip link set lo up
ssh-keygen -q -t ed25519 -N "" -f "$RUN/home/.ssh/id_ed25519"

echo "== starting the daemon in namespace $NS (log: $RUN/daemon.log)" >&2
# Started directly (not through in_ns) so that $! is the daemon itself:
# ip netns exec execs the program.
ip netns exec "$NS" "$FCM" daemon --state-dir "$STATE" --no-caddy \
	--kernel /var/lib/firecracker/vmlinux.bin --initrd /var/lib/firecracker/initrd.img \
	--rootfs /var/lib/firecracker/base-rootfs.img >"$RUN/daemon.log" 2>&1 &
echo $! >"$RUN/daemon.pid"
for _ in $(seq 100); do
	in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && break
	sleep 0.1
done

cli() { in_ns env HOME="$RUN/home" FCM_STATE_DIR="$STATE" "$FCM" "$@"; }
echo "== fcm create" >&2
start=$(date +%s%N)
cli create | tee "$RUN/create.txt"
end=$(date +%s%N)
name=$(awk '/^created/ {print $2}' "$RUN/create.txt")
echo "== create to SSH-ready: $(( (end - start) / 1000000 )) ms" >&2
cli ls
echo "== fcm ssh $name -- uname -a" >&2
cli ssh "$name" -- 'uname -a; echo "hello from $(hostname)"'
cat <<EOT >&2

The daemon and $name are running in namespace $NS. Try:
  ip netns exec $NS env HOME=$RUN/home FCM_STATE_DIR=$STATE $FCM console $name
  ip netns exec $NS env HOME=$RUN/home FCM_STATE_DIR=$STATE $FCM ls
Remove everything with: bash scripts/demo.sh down
EOT
