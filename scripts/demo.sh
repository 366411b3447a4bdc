#!/usr/bin/env bash
# The main job on a fresh machine: set up the host, build fcm, start Caddy
# and the daemon, create a VM that answers SSH, run a command in it and
# fetch its public URL through Caddy. Everything runs inside a network
# namespace of its own ("fcm-demo"), so the host's network is not touched;
# Caddy there signs its certificates with its own internal CA (`tls
# internal` for every site), so no ACME and nothing leaves the machine.
#
#   bash scripts/demo.sh         # as root: set up, start, create, ssh, exec, curl the URL
#   bash scripts/demo.sh down    # stop Caddy, the daemon and VMs, remove the namespace
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NS=fcm-demo
RUN=/var/tmp/fcm-demo
STATE=$RUN/state
FCM=$PWD/target/release/fcm
# URLs are https://<name>.203-0-113-7.sslip.io: a documentation address;
# curl is told to reach Caddy on the namespace's loopback (no DNS asked).
PUBLIC_IP=203.0.113.7
in_ns() { ip netns exec "$NS" "$@"; }

down() {
	for pidfile in "$RUN/daemon.pid" "$RUN/caddy.pid"; do
		if [ -f "$pidfile" ]; then
			kill "$(cat "$pidfile")" 2>/dev/null || true
		fi
	done
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
bash scripts/build-agent.sh
[ -d "$RUN" ] && down
mkdir -p "$RUN/home/.ssh" "$RUN/caddy/fcm.d"
ip netns add "$NS"
in_ns ip link set lo up
ssh-keygen -q -t ed25519 -N "" -f "$RUN/home/.ssh/id_ed25519"

wait_port() { # PORT: wait up to 10 s for a listener on 127.0.0.1:PORT in the namespace
	for _ in $(seq 100); do
		in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "scripts/demo.sh: nothing listens on port $1; see the logs in $RUN" >&2
	exit 1
}

echo "== starting Caddy in namespace $NS (internal CA; log: $RUN/caddy.log)" >&2
cat >"$RUN/caddy/Caddyfile" <<CADDY
{
	admin 127.0.0.1:2019
	default_bind 127.0.0.1
	# tls internal for every site: certificates from Caddy's own local CA
	local_certs
	skip_install_trust
	storage file_system {
		root $RUN/caddy/storage
	}
}
CADDY
cat >"$RUN/fcm.json" <<CONFIG
{
  "state_dir": "$STATE",
  "kernel": "/var/lib/firecracker/vmlinux.bin",
  "initrd": "/var/lib/firecracker/initrd.img",
  "rootfs": "/var/lib/firecracker/base-rootfs.img",
  "agent": "/var/lib/firecracker/fcm-agent",
  "caddy": {
    "caddyfile": "$RUN/caddy/Caddyfile",
    "sites_dir": "$RUN/caddy/fcm.d",
    "admin": "127.0.0.1:2019",
    "public_ip": "$PUBLIC_IP"
  }
}
CONFIG
# Started directly (not through in_ns) so that $! is the program itself:
# ip netns exec execs it.
ip netns exec "$NS" env HOME="$RUN/caddy" XDG_DATA_HOME="$RUN/caddy/data" \
	XDG_CONFIG_HOME="$RUN/caddy/config" \
	caddy run --adapter caddyfile --config "$RUN/caddy/Caddyfile" >"$RUN/caddy.log" 2>&1 &
echo $! >"$RUN/caddy.pid"
wait_port 2019

echo "== starting the daemon in namespace $NS (log: $RUN/daemon.log)" >&2
ip netns exec "$NS" "$FCM" daemon --config "$RUN/fcm.json" >"$RUN/daemon.log" 2>&1 &
echo $! >"$RUN/daemon.pid"
wait_port 7777

cli() { in_ns env HOME="$RUN/home" FCM_STATE_DIR="$STATE" "$FCM" "$@"; }
echo "== fcm create" >&2
start=$(date +%s%N)
cli create | tee "$RUN/create.txt"
end=$(date +%s%N)
name=$(awk '/^created/ {print $2}' "$RUN/create.txt")
url=$(awk '$1 == "url:" {print $2}' "$RUN/create.txt")
echo "== create to SSH-ready: $(((end - start) / 1000000)) ms" >&2
cli ls
echo "== fcm ssh $name -- uname -a" >&2
cli ssh "$name" -- 'uname -a; echo "hello from $(hostname)"'
echo "== fcm exec $name -- df -h /" >&2
cli exec "$name" -- df -h /

host=${url#https://}
ca=$RUN/caddy/storage/pki/authorities/local/root.crt
echo "== $url through Caddy (CA: $ca)" >&2
page=
for _ in $(seq 50); do
	if [ -f "$ca" ] && page=$(in_ns curl -sS --max-time 5 --cacert "$ca" \
		--resolve "$host:443:127.0.0.1" "$url/" 2>"$RUN/curl.err"); then
		break
	fi
	page=
	sleep 0.2
done
if [ -z "$page" ]; then
	echo "scripts/demo.sh: $url did not answer: $(cat "$RUN/curl.err" 2>/dev/null)" >&2
	exit 1
fi
echo "$page" | grep -i -m1 -e '<title>' -e '<h1>' || echo "$page" | head -n 3

cat <<EOT >&2

$url answered through Caddy. Caddy, the daemon and $name run in namespace $NS. Try:
  ip netns exec $NS env HOME=$RUN/home FCM_STATE_DIR=$STATE $FCM console $name
  ip netns exec $NS env HOME=$RUN/home FCM_STATE_DIR=$STATE $FCM exec $name -- uptime
  ip netns exec $NS curl --cacert $ca --resolve $host:443:127.0.0.1 $url/
Remove everything with: bash scripts/demo.sh down
EOT
