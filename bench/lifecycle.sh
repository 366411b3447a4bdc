#!/usr/bin/env bash
# Lifecycle benchmark: what fcm costs on top of doing the same work by hand.
#
#   sudo bash bench/lifecycle.sh            # build, measure, print a table,
#                                           # rewrite the lifecycle section of docs/benchmarks.md
#
# Side by side in one run, on this machine:
#   1. `fcm create` until the guest's SSH banner answers (QEMU backend) versus a
#      plain shell doing the same: cp --sparse=always of the rootfs, a host key and
#      authorized_keys written with debugfs, a tap on a bridge, the same
#      qemu-system-x86_64 command line, polling for the SSH banner.
#   2. `fcm create --no-wait` with the Firecracker backend (to InstanceStart) versus
#      the same disk/key/tap work plus firecracker --api-sock and curl --unix-socket
#      PUTs of boot-source, drives, machine-config, network-interfaces, InstanceStart.
#   3. The per-VM rootfs copy: fcm::host::disk::copy_rootfs (examples/copy_rootfs.rs)
#      versus cp --sparse=always (and, for context, cp followed by an fsync of the copy).
#   4. `fcm ls --json` with 50 stopped VMs on record versus with none.
#
# Everything with an address (the daemon, bridges, taps, guests) lives in two
# network namespaces this script creates; only loopback and in-namespace traffic.
# On exit, also on failure, it kills what it started by PID, deletes the
# namespaces and removes its temp dir.
#
# Knobs (environment): BOOT_RUNS (5), FC_RUNS (5), COPY_RUNS (10), LS_RUNS (50),
# WRITE_DOC (1; 0 to only print), SKIP_BUILD (0), FCM_ASSETS (/var/lib/firecracker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

BOOT_RUNS=${BOOT_RUNS:-5}
FC_RUNS=${FC_RUNS:-5}
COPY_RUNS=${COPY_RUNS:-10}
LS_RUNS=${LS_RUNS:-50}
LS_VMS=50
WRITE_DOC=${WRITE_DOC:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
KERNEL=$ASSETS/vmlinux.bin
INITRD=$ASSETS/initrd.img
ROOTFS=$ASSETS/base-rootfs.img
FCM=$ROOT/target/release/fcm
COPY=$ROOT/target/release/examples/copy_rootfs
DOC=$ROOT/docs/benchmarks.md

# The daemon's defaults (src/config.rs): bridge, gateway, first pool address, DNS.
GATEWAY=172.16.0.1
NETMASK=255.255.255.0
VM_IP=172.16.0.50
VM_MAC=06:00:ac:10:00:32
DNS=1.1.1.1
CPUS=1
MEM=512

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs)"
for p in qemu-system-x86_64 firecracker debugfs curl ssh-keygen jq ip cargo; do
	command -v "$p" >/dev/null || die "$p not found"
done
for f in "$KERNEL" "$INITRD" "$ROOTFS"; do
	[ -f "$f" ] || die "$f missing (run scripts/setup.sh)"
done

TAG=$$
NS=fcmbench-$TAG   # fcm's daemon
NSB=fcmbase-$TAG   # the hand-made baseline
BR=br0             # the baseline's bridge (fcm's daemon makes its own, fcm0)
TMP=$(mktemp -d /var/tmp/fcm-bench.XXXXXX)
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
	for f in "$TMP"/*/*/qemu.pid "$TMP"/*/*/firecracker.pid "$TMP"/*/qemu.pid "$TMP"/*/firecracker.pid; do
		[ -f "$f" ] && kill_ours "$(cat "$f")"
	done
	# Anything else still running from our temp dir (a VMM mid-launch).
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	ip netns del "$NSB" 2>/dev/null
	if [ "$rc" != 0 ]; then
		for f in "$TMP"/daemon-*.log "$TMP/cli.log"; do
			[ -s "$f" ] && { echo "--- tail of ${f##*/}" >&2; tail -n 20 "$f" >&2; }
		done
	fi
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/lifecycle.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

us_now() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# Milliseconds (one decimal) between two us_now values.
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", (b - a) / 1000 }'; }

# "median min max" of the numbers in a file, one a line.
stats() {
	sort -n "$1" | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "- - -"; exit }
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%.1f %.1f %.1f\n", m, v[1], v[NR] }'
}
median() { stats "$1" | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }'; }
# "ratio | difference" of the medians of two sample files, for a table row.
compare() {
	local a b
	a=$(median "$1")
	b=$(median "$2")
	printf '%s | %s' "$(ratio "$a" "$b")" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%+.1f", a - b }')"
}
cell() { read -r m lo hi < <(stats "$1"); printf '%s (%s–%s)' "$m" "$lo" "$hi"; }

in_ns() { ip netns exec "$NS" "$@"; }
in_nsb() { ip netns exec "$NSB" "$@"; }

# The fcm CLI, inside fcm's namespace, as a user with its own home.
STATE=
cli() {
	in_ns env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$FCM" "$@"
}

start_daemon() { # state-dir backend
	STATE=$1
	mkdir -p "$STATE"
	! in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null || die "port 7777 is taken in $NS"
	# A simple command (not a function) in the background, so that $! is the
	# daemon itself: ip netns exec execs it.
	ip netns exec "$NS" "$FCM" daemon --state-dir "$STATE" --backend "$2" --no-caddy \
		--kernel "$KERNEL" --initrd "$INITRD" --rootfs "$ROOTFS" \
		</dev/null >>"$TMP/daemon-$2.log" 2>&1 &
	DAEMON_PID=$!
	for _ in $(seq 200); do
		[ -f "$STATE/.token" ] && in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && return 0
		kill -0 "$DAEMON_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$TMP/daemon-$2.log" >&2
	die "the $2 daemon did not come up"
}

# Frees the page cache's dirty pages so one run's writeback does not land in the next.
settle() { sync; }

# ------------------------------------------- the baseline, as a plain shell
# These functions run inside the baseline's namespace (ip netns exec bash -c).

# The per-VM disk, keys and tap, the way fcm makes them (src/daemon/manager/create.rs
# `build`, src/host/disk.rs `inject`): a sparse copy, a fresh ed25519 host key, one
# debugfs -w script writing authorized_keys and the host key pair, a tap.
base_prep() { # dir tap name
	local dir=$1 tap=$2 name=$3
	mkdir -p "$dir"
	cp --sparse=always "$ROOTFS" "$dir/rootfs.img"
	ssh-keygen -q -t ed25519 -N "" -C "base-$name" -f "$dir/ssh_host_ed25519_key"
	cat "$USER_PUB" >"$dir/f0"
	cp "$dir/ssh_host_ed25519_key" "$dir/f1"
	cp "$dir/ssh_host_ed25519_key.pub" "$dir/f2"
	local f n gp fm dm script=
	for f in "0 /root/.ssh/authorized_keys 600 700" "1 /etc/ssh/ssh_host_ed25519_key 600 755" \
		"2 /etc/ssh/ssh_host_ed25519_key.pub 644 755"; do
		read -r n gp fm dm <<<"$f"
		script+="mkdir ${gp%/*}
sif ${gp%/*} mode 040$dm
sif ${gp%/*} uid 0
sif ${gp%/*} gid 0
rm $gp
write $dir/f$n $gp
sif $gp mode 0100$fm
sif $gp uid 0
sif $gp gid 0
"
	done
	printf '%s' "$script" >"$dir/cmds"
	debugfs -w -f "$dir/cmds" "$dir/rootfs.img" >/dev/null 2>&1
	rm -f "$dir/f0" "$dir/f1" "$dir/f2" "$dir/cmds" "$dir/ssh_host_ed25519_key"
	echo "$VM_IP $(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")" >"$dir/known_hosts"
	ip tuntap add dev "$tap" mode tap
	ip link set "$tap" master "$BR"
	ip link set "$tap" up
}

# What src/host/vmm/qemu.rs `cmdline_extra` adds under TCG: the host's TSC rate
# (sysfs, else the first "cpu MHz" of /proc/cpuinfo).
qemu_cmdline_extra() {
	local khz
	khz=$(cat /sys/devices/system/cpu/cpu0/tsc_freq_khz 2>/dev/null) ||
		khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
	[ -n "$khz" ] && echo "tsc_early_khz=$khz"
}

base_cmdline() { # name
	echo "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=$VM_IP::$GATEWAY:$NETMASK:$1:eth0:on fcm.dns=$DNS"
}

# The argv of src/host/vmm/qemu.rs `Qemu::args`, one a line.
base_qemu_args() { # dir id name tap
	local dir=$1 id=$2 name=$3 tap=$4
	printf '%s\n' -name "fcm-$id" -M microvm,x-option-roms=off,rtc=on,acpi=on -accel tcg \
		-cpu max -m "$MEM" -smp "$CPUS" -nodefaults -no-user-config -display none -no-reboot -device i8042 \
		-chardev "file,id=con,path=$dir/console.log,append=on" -serial chardev:con \
		-kernel "$KERNEL" -initrd "$INITRD" -append "$(base_cmdline "$name") $(qemu_cmdline_extra)" \
		-drive "id=root,file=$dir/rootfs.img,format=raw,if=none,cache=writeback" \
		-device virtio-blk-device,drive=root \
		-netdev "tap,id=net0,ifname=$tap,script=no,downscript=no" \
		-device "virtio-net-device,netdev=net0,mac=$VM_MAC" \
		-qmp "unix:$dir/qmp.sock,server=on,wait=off" -pidfile "$dir/qemu.pid" -daemonize
}

banner_ready() { # ip
	[ "$(timeout 1 bash -c "exec 3<>/dev/tcp/$1/22 && head -c4 <&3" 2>/dev/null)" = SSH- ]
}

# Prints "prep_done qemu_started ssh_ready" timestamps (us).
base_qemu_boot() { # dir id name tap
	local dir=$1 id=$2 name=$3 tap=$4 t1 t2 deadline
	base_prep "$dir" "$tap" "$name"
	t1=$(us_now)
	local args
	mapfile -t args < <(base_qemu_args "$dir" "$id" "$name" "$tap")
	qemu-system-x86_64 "${args[@]}" >&2
	t2=$(us_now)
	deadline=$((SECONDS + 180))
	# Same cadence as fcm's wait (src/host/ssh.rs): a try, then 200 ms.
	until banner_ready "$VM_IP"; do
		[ "$SECONDS" -lt "$deadline" ] || { echo "no SSH banner" >&2; return 1; }
		sleep 0.2
	done
	echo "$t1 $t2 $(us_now)"
}

fc_put() { # sock path json
	curl -sS --fail-with-body --unix-socket "$1" -X PUT -H 'Accept: application/json' \
		-H 'Content-Type: application/json' -d "$3" "http://localhost$2" >/dev/null
}

# The calls of src/host/vmm/firecracker.rs `launch`; prints "prep_done" timestamp (us).
base_fc_start() { # dir id name tap
	local dir=$1 id=$2 name=$3 tap=$4 t1 sock=$1/firecracker.socket
	base_prep "$dir" "$tap" "$name"
	t1=$(us_now)
	firecracker --api-sock "$sock" --id "$id" </dev/null >>"$dir/console.log" 2>&1 &
	echo $! >"$dir/firecracker.pid"
	local n=0
	until [ -S "$sock" ]; do
		n=$((n + 1))
		[ "$n" -lt 1000 ] || { echo "no API socket" >&2; return 1; }
		sleep 0.005
	done
	fc_put "$sock" /boot-source "{\"kernel_image_path\":\"$KERNEL\",\"boot_args\":\"$(base_cmdline "$name") pci=off\",\"initrd_path\":\"$INITRD\"}"
	fc_put "$sock" /drives/rootfs "{\"drive_id\":\"rootfs\",\"path_on_host\":\"$dir/rootfs.img\",\"is_root_device\":true,\"is_read_only\":false}"
	fc_put "$sock" /machine-config "{\"vcpu_count\":$CPUS,\"mem_size_mib\":$MEM}"
	fc_put "$sock" /network-interfaces/eth0 "{\"iface_id\":\"eth0\",\"guest_mac\":\"$VM_MAC\",\"host_dev_name\":\"$tap\"}"
	fc_put "$sock" /actions '{"action_type":"InstanceStart"}'
	echo "$t1"
}

# Kills a baseline VM and removes its tap and disk.
base_teardown() { # dir tap
	local f
	for f in "$1/qemu.pid" "$1/firecracker.pid"; do
		[ -f "$f" ] && kill_ours "$(cat "$f")"
	done
	in_nsb ip link del "$2" 2>/dev/null || true
	rm -rf "$1"
}

export ROOTFS KERNEL INITRD GATEWAY NETMASK VM_IP VM_MAC DNS CPUS MEM BR TMP
BASE_FUNCS="$(declare -f us_now base_prep qemu_cmdline_extra base_cmdline base_qemu_args banner_ready base_qemu_boot fc_put base_fc_start)"
# Runs one of the functions above inside the baseline namespace.
base_run() { in_nsb bash -c "set -euo pipefail; $BASE_FUNCS; \"\$@\"" bash "$@"; }

# -------------------------------------------------------------------- setup

if [ "$SKIP_BUILD" != 1 ]; then
	log "building fcm and examples/copy_rootfs (release)"
	cargo build --release --quiet
	cargo build --release --quiet --example copy_rootfs
fi
[ -x "$FCM" ] && [ -x "$COPY" ] || die "missing $FCM or $COPY"

ip netns add "$NS"
in_ns ip link set lo up
ip netns add "$NSB"
in_nsb ip link set lo up
# The baseline's bridge, made once like the daemon makes fcm0 once at start-up.
in_nsb ip link add "$BR" type bridge
in_nsb ip addr add "$GATEWAY/24" dev "$BR"
in_nsb ip link set "$BR" up

mkdir -p "$TMP/home/.ssh" "$TMP/res"
ssh-keygen -q -t ed25519 -N "" -C bench -f "$TMP/home/.ssh/id_ed25519"
export USER_PUB=$TMP/home/.ssh/id_ed25519.pub
# Warm the page cache with the guest assets so neither side pays the first read.
cat "$KERNEL" "$INITRD" "$ROOTFS" >/dev/null
R=$TMP/res
T_START=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------- 1. boot to SSH under QEMU (TCG)

log "1/4 boot to SSH, QEMU backend: fcm create vs hand-made ($BOOT_RUNS runs each)"
start_daemon "$TMP/state-qemu" qemu
for i in $(seq "$BOOT_RUNS"); do
	# Alternate who goes first, so a drift in the machine's load hits both.
	order="fcm base"
	[ $((i % 2)) = 0 ] && order="base fcm"
	for who in $order; do
		settle
		if [ "$who" = fcm ]; then
			t0=$(us_now)
			out=$(cli create --json --name "bench-q$i" 2>>"$TMP/cli.log") || die "fcm create failed"
			t3=$(us_now)
			[ "$(jq -r .ssh_ready <<<"$out")" = true ] || die "fcm create: SSH not ready: $out"
			ms=$(ms_between "$t0" "$t3")
			echo "$ms" >>"$R/boot_fcm"
			if [ "$i" = 1 ]; then
				# Keep the daemon's QEMU argv to check the baseline runs the same one.
				id=$(jq -r .id <<<"$out")
				tr '\0' '\n' <"/proc/$(jq -r .pid <<<"$out")/cmdline" | tail -n +2 |
					sed "s#$STATE/$id#DIR#g; s#fcm-$id#fcm-ID#; s#tap_$id#tap_ID#; s#:bench-q$i:#:NAME:#" >"$TMP/argv-fcm"
			fi
			cli destroy "bench-q$i" >/dev/null 2>>"$TMP/cli.log"
		else
			dir=$TMP/base/bq$i
			mkdir -p "$TMP/base"
			t0=$(us_now)
			out=$(base_run base_qemu_boot "$dir" "bq$i" "base-q$i" "tapq$i") ||
				die "baseline QEMU boot $i failed (console: $(tail -c 2000 "$dir/console.log" 2>/dev/null))"
			t4=$(us_now)
			read -r t1 t2 t3 <<<"$out"
			ms=$(ms_between "$t0" "$t4")
			echo "$ms" >>"$R/boot_base"
			echo "$(ms_between "$t0" "$t1") $(ms_between "$t1" "$t2") $(ms_between "$t2" "$t3")" >>"$R/boot_base_split"
			if [ "$i" = 1 ]; then
				base_qemu_args "$dir" bq1 base-q1 tapq1 |
					sed "s#$dir#DIR#g; s#fcm-bq1#fcm-ID#; s#:base-q1:#:NAME:#; s#tapq1#tap_ID#" >"$TMP/argv-base"
			fi
			base_teardown "$dir" "tapq$i"
		fi
		log "  run $i $who: $ms ms"
	done
done
if diff "$TMP/argv-fcm" "$TMP/argv-base" >"$TMP/argv.diff"; then
	ARGV_NOTE="checked in run 1: identical to the daemon's but for paths and names"
else
	ARGV_NOTE="differs from the daemon's: $(tr '\n' ' ' <"$TMP/argv.diff")"
	log "warning: QEMU argv $ARGV_NOTE"
fi

# --------------------------------------- 2. Firecracker to InstanceStart

log "2/4 Firecracker to InstanceStart: fcm create --no-wait vs hand-made ($FC_RUNS runs each)"
stop_daemon
start_daemon "$TMP/state-fc" firecracker
for i in $(seq "$FC_RUNS"); do
	order="fcm base"
	[ $((i % 2)) = 0 ] && order="base fcm"
	for who in $order; do
		settle
		if [ "$who" = fcm ]; then
			t0=$(us_now)
			out=$(cli create --no-wait --json --name "bench-f$i" 2>>"$TMP/cli.log") || die "fcm create (firecracker) failed"
			t2=$(us_now)
			[ "$(jq -r .state <<<"$out")" = running ] || die "fcm create (firecracker) failed: $out"
			ms=$(ms_between "$t0" "$t2")
			echo "$ms" >>"$R/fc_fcm"
			cli destroy "bench-f$i" >/dev/null 2>>"$TMP/cli.log"
		else
			dir=$TMP/base/bf$i
			mkdir -p "$TMP/base"
			t0=$(us_now)
			t1=$(base_run base_fc_start "$dir" "bf$i" "base-f$i" "tapf$i") || die "baseline Firecracker start $i failed"
			t2=$(us_now)
			ms=$(ms_between "$t0" "$t2")
			echo "$ms" >>"$R/fc_base"
			echo "$(ms_between "$t0" "$t1") $(ms_between "$t1" "$t2")" >>"$R/fc_base_split"
			base_teardown "$dir" "tapf$i"
		fi
		log "  run $i $who: $ms ms"
	done
done
stop_daemon

# -------------------------------------------------------- 3. rootfs copy

log "3/4 per-VM rootfs copy: fcm::host::disk::copy_rootfs vs cp --sparse=always ($COPY_RUNS runs each)"
C=$TMP/copy.img
METHOD=
for i in $(seq "$COPY_RUNS"); do
	for who in fcm cp cpsync; do
		rm -f "$C"
		settle
		t0=$(us_now)
		case $who in
		fcm) METHOD=$("$COPY" "$ROOTFS" "$C" | cut -d' ' -f1) ;;
		cp) cp --sparse=always "$ROOTFS" "$C" ;;
		cpsync) cp --sparse=always "$ROOTFS" "$C" && sync "$C" ;;
		esac
		t1=$(us_now)
		ms_between "$t0" "$t1" >>"$R/copy_$who"
	done
done
cmp -s "$ROOTFS" "$C" || die "the copy differs from the base image"
COPY_USED=$(du -m "$C" | cut -f1)
rm -f "$C"
BASE_USED=$(du -m "$ROOTFS" | cut -f1)
BASE_SIZE=$(($(stat -c %s "$ROOTFS") / 1048576))

# ------------------------------------------------------------- 4. fcm ls

# Times `fcm ls --json` LS_RUNS times inside the namespace (without the cost of
# ip netns exec), after 3 untimed runs; one ms value a line.
time_ls() { # out-file
	in_ns env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM HOME="$TMP/home" FCM_STATE_DIR="$STATE" \
		FCM="$FCM" N="$LS_RUNS" bash -c '
		for i in 1 2 3; do "$FCM" ls --json >/dev/null; done
		for i in $(seq "$N"); do
			s=$EPOCHREALTIME; "$FCM" ls --json >/dev/null || exit 1; e=$EPOCHREALTIME
			echo "$(( ${e/./} - ${s/./} ))"
		done' | awk '{ printf "%.2f\n", $1 / 1000 }' >"$1"
}

log "4/4 fcm ls --json: $LS_VMS VMs on record vs none ($LS_RUNS runs each)"
start_daemon "$TMP/state-ls0" qemu
[ "$(cli ls --json | jq length)" = 0 ] || die "expected no VMs"
time_ls "$R/ls_0"
stop_daemon

S50=$TMP/state-ls50
for n in $(seq 0 $((LS_VMS - 1))); do
	id=$(printf 'bench%03d' "$n")
	mkdir -p "$S50/$id"
	ip=172.16.0.$((50 + n))
	cat >"$S50/$id/config.json" <<EOF
{
  "id": "$id",
  "name": "bench-vm-$n",
  "ip": "$ip",
  "state": "stopped",
  "expose": null,
  "backend": "qemu",
  "mac": "$(printf '06:00:ac:10:00:%02x' $((50 + n)))",
  "cpus": 1,
  "memory_mib": 512,
  "tap": "tap_$id",
  "created_at": $(date +%s),
  "pid": null,
  "host_key": null
}
EOF
done
start_daemon "$S50" qemu
[ "$(cli ls --json | jq length)" = "$LS_VMS" ] || die "expected $LS_VMS VMs: $(cli ls --json | head -c 500)"
time_ls "$R/ls_50"
stop_daemon

# ------------------------------------------------------------------ report

T_TOTAL=$((SECONDS - T_START))
read -r bq_prep bq_launch bq_wait < <(
	awk '{ p += $1; l += $2; w += $3 } END { printf "%.0f %.0f %.0f\n", p / NR, l / NR, w / NR }' "$R/boot_base_split")
read -r bf_prep bf_api < <(awk '{ p += $1; a += $2 } END { printf "%.0f %.0f\n", p / NR, a / NR }' "$R/fc_base_split")

TABLE=$(
	echo "| Measurement | fcm: median (min–max) ms | baseline: median (min–max) ms | fcm / baseline | fcm − baseline, ms |"
	echo "|---|---|---|---|---|"
	echo "| Create to SSH banner, QEMU TCG ($BOOT_RUNS runs) | \`fcm create\`: $(cell "$R/boot_fcm") | hand-made shell: $(cell "$R/boot_base") | $(compare "$R/boot_fcm" "$R/boot_base") |"
	echo "| Create to InstanceStart, Firecracker ($FC_RUNS runs) | \`fcm create --no-wait\`: $(cell "$R/fc_fcm") | hand-made shell + curl: $(cell "$R/fc_base") | $(compare "$R/fc_fcm" "$R/fc_base") |"
	echo "| Per-VM rootfs copy ($COPY_RUNS runs) | \`copy_rootfs\` ($METHOD): $(cell "$R/copy_fcm") | \`cp --sparse=always\`: $(cell "$R/copy_cp") | $(compare "$R/copy_fcm" "$R/copy_cp") |"
	echo "| Per-VM rootfs copy, baseline made durable ($COPY_RUNS runs) | \`copy_rootfs\` ($METHOD): same runs | \`cp --sparse=always\` + \`sync FILE\`: $(cell "$R/copy_cpsync") | $(compare "$R/copy_fcm" "$R/copy_cpsync") |"
	echo "| \`fcm ls --json\` ($LS_RUNS runs) | $LS_VMS VMs on record: $(cell "$R/ls_50") | no VMs: $(cell "$R/ls_0") | $(compare "$R/ls_50" "$R/ls_0") |"
)

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEMG=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || COMMIT="$COMMIT + uncommitted src changes"
QEMU_V=$(qemu-system-x86_64 --version | head -1 | awk '{ print $4 }')
FC_V=$(firecracker --version | head -1 | awk '{ print $2 }')
FS=$(findmnt -no FSTYPE -T "$TMP" 2>/dev/null || stat -f -c %T "$TMP")

SECTION=$(
	cat <<EOF
## VM lifecycle: fcm versus the same work by hand

Run with \`sudo bash bench/lifecycle.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), fcm $COMMIT.
Machine: $(nproc) CPUs ($CPU), ${MEMG} GiB, kernel $(uname -r), QEMU $QEMU_V (TCG: no usable
hardware virtualisation here), Firecracker $FC_V, temp files on $FS.
Base rootfs: ${BASE_SIZE} MiB sparse, ${BASE_USED} MiB allocated. The benchmark took ${T_TOTAL} s;
load average before it started: $LOAD_START, after: $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine).

$TABLE

How it was measured:
- Wall-clock time of the whole command (\`EPOCHREALTIME\` around it), fcm and the baseline
  run alternately (fcm first in odd rounds, the baseline first in even ones) with a
  \`sync\` before each run; every VM is destroyed before the next run, so both sides get the
  same address, no other benchmark VM running and a warm page cache (kernel, initrd and
  rootfs read once beforehand). Each side runs in its own network namespace made by the
  script. Other people's work on the machine adds noise; compare within a run.
- Baseline, QEMU: a bash function does what \`fcm create\` does — \`cp --sparse=always\` of the
  rootfs, \`ssh-keygen\` for a host key, one \`debugfs -w -f\` script writing
  \`authorized_keys\` and the host key pair (the same commands as \`fcm::host::disk::inject\`), a tap
  on a bridge (the bridge made once beforehand, as the daemon does at start-up), then
  \`qemu-system-x86_64\` with the daemon's argv ($ARGV_NOTE),
  then the SSH banner polled about as the daemon polls it (a try of at most 1 s, then 200 ms). Its mean
  split: ${bq_prep} ms disk/keys/tap, ${bq_launch} ms QEMU start (\`-daemonize\`), ${bq_wait} ms guest boot to SSH banner.
- Baseline, Firecracker: the same disk/keys/tap work, then \`firecracker --api-sock\`, a poll
  for the socket, and five \`curl --unix-socket\` PUTs (boot-source, drives/rootfs,
  machine-config, network-interfaces/eth0, actions InstanceStart) with the daemon's bodies.
  Mean split: ${bf_prep} ms disk/keys/tap, ${bf_api} ms spawn + API calls. (Here the guest crashes after
  InstanceStart — kvm-pvm — which does not affect this measurement.)
- Copy: \`target/release/examples/copy_rootfs\` (one \`fcm::host::disk::copy_rootfs\` per process)
  versus \`cp --sparse=always\` (coreutils $(cp --version | head -1 | awk '{ print $4 }')) into a fresh file on
  the same filesystem; the copy uses ${COPY_USED} MiB either way. Neither side fsyncs the copy (fcm stopped doing so
  after an earlier run of this benchmark showed that fsync was all of its 3.8x gap); the row
  with \`sync FILE\` after cp shows what a durable copy would cost. In the create rows the
  image is flushed by \`debugfs -w\`, which fsyncs it when it opens it, on both sides.
- \`fcm ls --json\`: client process time inside the namespace, after 3 untimed runs; the
  $LS_VMS VMs are stopped-VM records (\`<state>/<id>/config.json\`) written before the
  daemon started.
EOF
)

printf '\n%s\n\n' "$TABLE"
printf '%s\n' "Baseline QEMU split (mean): ${bq_prep} ms disk/keys/tap, ${bq_launch} ms QEMU start, ${bq_wait} ms boot to SSH"
printf '%s\n' "Baseline Firecracker split (mean): ${bf_prep} ms disk/keys/tap, ${bf_api} ms spawn + API"
printf '%s\n' "QEMU argv: $ARGV_NOTE"
printf '%s\n' "Total: ${T_TOTAL} s"

# Rewrites only the lines between the lifecycle markers (creating the file or
# the section when missing); the rest of the file, other sections included, is
# left as it is.
write_doc() {
	mkdir -p "$(dirname "$DOC")"
	[ -f "$DOC" ] || printf '# Benchmarks\n' >"$DOC"
	printf '%s\n' "$SECTION" >"$TMP/section.md"
	local out=$TMP/benchmarks.md
	if grep -q '^<!-- lifecycle:start -->$' "$DOC" && grep -q '^<!-- lifecycle:end -->$' "$DOC"; then
		awk -v sec="$TMP/section.md" '
			$0 == "<!-- lifecycle:start -->" { print; while ((getline l < sec) > 0) print l; skip = 1; next }
			$0 == "<!-- lifecycle:end -->" { skip = 0 }
			!skip { print }' "$DOC" >"$out"
	else
		{ cat "$DOC"; printf '\n<!-- lifecycle:start -->\n'; cat "$TMP/section.md"; printf '<!-- lifecycle:end -->\n'; } >"$out"
	fi
	cat "$out" >"$DOC"
	log "wrote the lifecycle section of ${DOC#"$ROOT"/}"
}
[ "$WRITE_DOC" = 1 ] && write_doc
exit 0
