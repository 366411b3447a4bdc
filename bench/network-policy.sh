#!/usr/bin/env bash
# Network-policy benchmark: what the guests' network policy (docs/network.md:
# fcm's `inet` and `bridge` nftables tables, per-VM anti-spoofing chains,
# bridge port isolation) costs a guest's egress throughput.
#
#   sudo bash bench/network-policy.sh   # build, measure, print, rewrite the
#                                       # network-policy section of docs/benchmarks.md
#
# One release build, one daemon in a network namespace, one booted guest
# (QEMU backend, no Caddy), and a stand-in internet: a second namespace
# joined to the daemon's by a veth pair (198.18.0.1 on the far side, the
# daemon's default route), serving a sparse file over HTTP (python3).
# From inside the guest, `curl` downloads the file through the NAT, in two
# modes, interleaved (nat, policy, policy, nat, ...) so both see the same
# machine:
#   policy: what the daemon installs (it is restarted to re-apply it; the
#           VM keeps running and recovery re-adds its rules and isolation);
#   nat:    the table fcm installed before the policy, loaded by hand: the
#           `ip fcm` table with the masquerade and a forward accept (the
#           ruleset of src/host/network.rs before the policy was wired in),
#           the policy's tables deleted and port isolation off.
# One untimed download first warms the page cache and the guest.
#
# Only loopback and in-namespace traffic. On exit, also on failure, it kills
# what it started by PID, deletes its namespaces and temp dir.
#
# Knobs: RUNS (10 per mode), SIZE_MB (200), WRITE_DOC (1), FCM_ASSETS (/var/lib/firecracker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNS=${RUNS:-10}
SIZE_MB=${SIZE_MB:-200}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
PYTHON=/usr/bin/python3

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
need_assets "$ASSETS"
for p in nft ip curl "$PYTHON"; do
	command -v "$p" >/dev/null || die "$p missing"
done

TAG=$$
NS=fcmnp-d-$TAG
INET=fcmnp-i-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-netpol.XXXXXX)
DIE_TAIL=$TMP/daemon.log

DAEMON_PID=
SERVER_PID=

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	ip netns del "$INET" 2>/dev/null
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/network-policy.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fcm
[ -x "$BIN" ] || die "no binary at $BIN"

in_ns() { ip netns exec "$NS" "$@"; }

# The namespaces: the daemon's, and the internet behind a veth.
ip netns add "$NS"
ip netns add "$INET"
ip -n "$NS" link set lo up
ip -n "$INET" link set lo up
ip -n "$NS" link add up0 type veth peer name eth0 netns "$INET"
ip -n "$NS" addr add 198.18.0.2/24 dev up0
ip -n "$NS" link set up0 up
ip -n "$NS" route add default via 198.18.0.1
ip -n "$INET" addr add 198.18.0.1/24 dev eth0
ip -n "$INET" link set eth0 up

mkdir -p "$TMP/www" "$TMP/home/.ssh"
truncate -s "${SIZE_MB}M" "$TMP/www/big.bin"
BYTES=$((SIZE_MB * 1024 * 1024))
# http.server without its reverse lookup of the bound address.
cat >"$TMP/web.py" <<'PY'
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
PY
ip netns exec "$INET" "$PYTHON" "$TMP/web.py" 198.18.0.1 80 "$TMP/www" >"$TMP/web.log" 2>&1 &
SERVER_PID=$!

echo '{"caddy": {"enabled": false}, "stop_timeout_secs": 5}' >"$TMP/fcm.json"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"

start_daemon() {
	# Not through in_ns: $! must be the daemon (ip netns exec execs it).
	ip netns exec "$NS" "$BIN" daemon --config "$TMP/fcm.json" --state-dir "$TMP/state" \
		--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
		--rootfs "$ASSETS/base-rootfs.img" --backend qemu \
		>>"$TMP/daemon.log" 2>&1 &
	DAEMON_PID=$!
	for _ in $(seq 100); do
		in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && return 0
		sleep 0.1
	done
	die "the daemon did not come up: $(tail -5 "$TMP/daemon.log")"
}

stop_daemon() {
	kill "$DAEMON_PID"
	timeout 40 tail --pid="$DAEMON_PID" -f /dev/null || die "the daemon did not stop"
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=
}

cli() {
	in_ns env -u FCM_TOKEN -u FCM_HOST HOME="$TMP/home" FCM_STATE_DIR="$TMP/state" "$BIN" "$@"
}

start_daemon
log "creating a guest"
cli create --name bench-net >/dev/null 2>>"$TMP/cli.log" || die "create failed: $(tail -3 "$TMP/cli.log")"
TAP=$(cli ls --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["tap"])')

mode_nat() {
	in_ns nft -f - <<'NFT'
table inet fcm {}
delete table inet fcm
table bridge fcm {}
delete table bridge fcm
table ip fcm {}
delete table ip fcm
table ip fcm {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "fcm0" accept
		oifname "fcm0" ct state established,related accept
	}
}
NFT
	in_ns ip link set dev "$TAP" type bridge_slave isolated off
	local tables
	tables=$(in_ns nft list tables)
	grep -qx 'table bridge fcm' <<<"$tables" && die "the policy is still installed"
	return 0
}

mode_policy() {
	stop_daemon
	start_daemon
	# Read whole, then searched: grep -q on a pipe can fail it (SIGPIPE).
	local rules link
	rules=$(in_ns nft list table bridge fcm) || die "no bridge table after the restart"
	grep -q "from_$TAP" <<<"$rules" || die "no rules for $TAP after the restart: $rules"
	link=$(in_ns ip -d link show "$TAP")
	grep -q 'isolated on' <<<"$link" || die "$TAP is not isolated: $link"
}

# download: MB/s (MiB) of one download from inside the guest.
download() {
	local out size secs
	out=$(cli ssh bench-net -- "curl -s -m 300 -o /dev/null -w '%{size_download} %{time_total}' http://198.18.0.1/big.bin" 2>>"$TMP/cli.log") ||
		die "download failed: $(tail -3 "$TMP/cli.log")"
	read -r size secs <<<"$out"
	[ "$size" = "$BYTES" ] || die "downloaded $size bytes, not $BYTES"
	awk -v b="$size" -v s="$secs" 'BEGIN {printf "%.1f", b / 1048576 / s}'
}

log "warm-up download (untimed)"
download >/dev/null

declare -A SPEED=([nat]="" [policy]="")
log "$RUNS downloads of $SIZE_MB MiB per mode, interleaved"
for i in $(seq "$RUNS"); do
	order="nat policy"
	[ $((i % 2)) = 0 ] && order="policy nat"
	for mode in $order; do
		"mode_$mode"
		s=$(download)
		SPEED[$mode]+="$s "
		log "run $i $mode: $s MiB/s"
	done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

SPEED[nat]=${SPEED[nat]% } SPEED[policy]=${SPEED[policy]% }
mn=$(median "${SPEED[nat]}") mp=$(median "${SPEED[policy]}")
range() { tr ' ' '\n' <<<"$1" | grep . | sort -n | sed -n '1p;$p' | tr '\n' ' '; }
read -r nlo nhi <<<"$(range "${SPEED[nat]}")"
read -r plo phi <<<"$(range "${SPEED[policy]}")"
if awk -v a="$nlo" -v b="$nhi" -v c="$plo" -v d="$phi" 'BEGIN {exit !(c <= b && a <= d)}'; then
	VERDICT="The two modes' ranges overlap ($nlo-$nhi against $plo-$phi MiB/s): in this run the policy's cost is within the run-to-run spread."
else
	VERDICT="The two modes' ranges do not overlap ($nlo-$nhi against $plo-$phi MiB/s)."
fi
TABLE=$(
	cat <<EOF
| Guest egress, curl of $SIZE_MB MiB from the stand-in internet (median of $RUNS, QEMU TCG) | MiB/s |
|---|---|
| plain NAT (the \`ip fcm\` table fcm used to install, ports not isolated) | $mn |
| the network policy (as the daemon installs it) | $mp |
| ratio policy / NAT | $(ratio "$mp" "$mn") |
EOF
)
echo "$TABLE"
echo "raw MiB/s: nat ${SPEED[nat]} / policy ${SPEED[policy]}" >&2

if [ "$WRITE_DOC" = 1 ]; then
	SECTION=$(
		cat <<EOF
<!-- network-policy:begin -->
## Network policy: what it costs a guest's egress

\`bash bench/network-policy.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores. One guest
(QEMU backend under TCG) downloads a $SIZE_MB MiB file with \`curl\` from a web
server (python3) in a second network namespace behind a veth pair, through
the host's NAT. The two modes alternate in one run: *policy* is what the
daemon installs (restarted each time to re-apply it: \`inet fcm\` with NAT and
the guest filters, \`bridge fcm\` with the VM's anti-spoofing chain, port
isolation); *plain NAT* is the \`ip fcm\` table fcm installed before the
policy, loaded by hand, with the policy's tables deleted and isolation off.

$TABLE

Raw (MiB/s): plain NAT ${SPEED[nat]} / policy ${SPEED[policy]}. $VERDICT
<!-- network-policy:end -->
EOF
	)
	write_doc_section "$DOC" network-policy "$SECTION"
	log "wrote the network-policy section of $DOC"
fi
