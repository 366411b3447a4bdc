#!/usr/bin/env bash
# Boot the fcm guest for real under QEMU (microvm, TCG) inside a throw-away
# network namespace, and check what fcm relies on:
#   SSH as root with a key injected by debugfs, the injected host key, tmux,
#   the placeholder page on :8000, a clean stop by 'reboot' (QEMU exits), and
#   that a file written before the stop survives a reboot;
#   runtimes: python3 >= $MIN_PYTHON, 'python3 -m venv' + 'pip install' of a
#   local wheel (built here, no index), ruby, bundler ('bundle install
#   --local' of a path gem, 'bundle exec');
#   a growable disk: the image file is extended to $GROW_SIZE (sparse
#   truncate, as 'fcm create --disk' / 'fcm resize' do) between boot 1 and 2;
#   the guest must grow / at boot ('df /' sees the size), keep the files,
#   and not resize again on boot 3.
#
# usage: scripts/test-guest-boot.sh [ASSETS]   (default $FCM_ASSETS or /var/lib/firecracker)
# env:   KEEP=1 keeps the temp dir (serial logs) for inspection.
#        GROW_SIZE (4G; 0 skips the disk growth checks), MIN_PYTHON (3.14),
#        RUNTIMES=0 skips the python/pip/ruby/bundler checks.
#        GUEST_CMD: a shell command to run in the guest after boot 1 (its
#        output is shown), e.g. to time something there.
#        QEMU_CPU (max), QEMU_MACHINE (microvm), APPEND_EXTRA (more kernel
#        parameters), SSH_EXTRA_OPTS (e.g. "-o KexAlgorithms=curve25519-sha256")
#        to try variants.
#
# Network rule: the bridge fcm0 (172.16.0.1/24), the tap and the VM
# (172.16.0.50) exist only inside the namespace this script creates, which is
# deleted on exit, as are the QEMU processes it started (killed by PID).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

ASSETS=${1:-${FCM_ASSETS:-/var/lib/firecracker}}
NS=fcmtest-$$
TAP=tap_fcmtest
VM_IP=172.16.0.50
GW_IP=172.16.0.1
VM_NAME=cosmic-nova
VM_MAC=06:00:AC:10:00:32
BOOT_DEADLINE=${BOOT_DEADLINE:-90}
GROW_SIZE=${GROW_SIZE:-4G}
MIN_PYTHON=${MIN_PYTHON:-3.14}
RUNTIMES=${RUNTIMES:-1}

require_root
for f in vmlinux.bin initrd.img base-rootfs.img; do
	[ -s "$ASSETS/$f" ] || die "$ASSETS/$f is missing (run scripts/build-guest.sh)"
done
for c in qemu-system-x86_64 debugfs ssh ssh-keygen curl ip e2fsck socat python3 truncate; do
	command -v "$c" >/dev/null || die "$c is not installed (run scripts/setup.sh)"
done

TMP=$(mktemp -d /var/tmp/fcm-boottest.XXXXXX)
QEMU_PID=
cleanup() {
	local rc=$?
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		sleep 0.5
		kill -9 "$QEMU_PID" 2>/dev/null || true
	fi
	ip netns del "$NS" 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
		log "logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# set -e ends the script silently otherwise (e.g. an ssh that failed).
trap 'log "error: line $LINENO failed (status $?): $BASH_COMMAND"' ERR

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
in_ns() { ip netns exec "$NS" "$@"; }

# --- namespace: bridge + tap ---------------------------------------------------
log "creating network namespace $NS (bridge fcm0 $GW_IP/24, $TAP)"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add fcm0 type bridge
ip -n "$NS" addr add "$GW_IP/24" dev fcm0
ip -n "$NS" link set fcm0 up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip -n "$NS" link set "$TAP" master fcm0
ip -n "$NS" link set "$TAP" up

# --- keys and a per-VM copy of the image --------------------------------------
ssh-keygen -q -t ed25519 -N '' -C fcm-test-client -f "$TMP/client_key"
ssh-keygen -q -t ed25519 -N '' -C "root@$VM_NAME" -f "$TMP/host_key"
cp "$TMP/client_key.pub" "$TMP/authorized_keys"
echo "$VM_IP $(cut -d' ' -f1,2 "$TMP/host_key.pub")" >"$TMP/known_hosts"
cp --sparse=always "$ASSETS/base-rootfs.img" "$TMP/rootfs.img"

# The debugfs recipe documented in docs/guest.md: debugfs 'write' refuses to
# replace an existing file, so 'rm' first ('rm' and 'mkdir' of something
# already there / missing just print an error and go on).
cat >"$TMP/inject.debugfs" <<EOF
mkdir /root/.ssh
set_inode_field /root/.ssh mode 040700
set_inode_field /root/.ssh uid 0
set_inode_field /root/.ssh gid 0
rm /root/.ssh/authorized_keys
write $TMP/authorized_keys /root/.ssh/authorized_keys
set_inode_field /root/.ssh/authorized_keys mode 0100600
set_inode_field /root/.ssh/authorized_keys uid 0
set_inode_field /root/.ssh/authorized_keys gid 0
rm /etc/ssh/ssh_host_ed25519_key
write $TMP/host_key /etc/ssh/ssh_host_ed25519_key
set_inode_field /etc/ssh/ssh_host_ed25519_key mode 0100600
set_inode_field /etc/ssh/ssh_host_ed25519_key uid 0
set_inode_field /etc/ssh/ssh_host_ed25519_key gid 0
rm /etc/ssh/ssh_host_ed25519_key.pub
write $TMP/host_key.pub /etc/ssh/ssh_host_ed25519_key.pub
set_inode_field /etc/ssh/ssh_host_ed25519_key.pub mode 0100644
set_inode_field /etc/ssh/ssh_host_ed25519_key.pub uid 0
set_inode_field /etc/ssh/ssh_host_ed25519_key.pub gid 0
EOF
debugfs -w -f "$TMP/inject.debugfs" "$TMP/rootfs.img" >"$TMP/debugfs.log" 2>&1
# debugfs exits 0 even when a command fails: check the result.
debugfs -R 'stat /root/.ssh/authorized_keys' "$TMP/rootfs.img" 2>/dev/null |
	grep -q 'Mode:  0600' || die "debugfs did not write /root/.ssh/authorized_keys (see $TMP/debugfs.log)"
debugfs -R 'cat /etc/ssh/ssh_host_ed25519_key.pub' "$TMP/rootfs.img" 2>/dev/null |
	cmp -s - "$TMP/host_key.pub" || die "debugfs did not write the host key (see $TMP/debugfs.log)"
e2fsck -fn "$TMP/rootfs.img" >/dev/null 2>&1 || die "rootfs copy is inconsistent after debugfs"

# --- QEMU ------------------------------------------------------------------------
# Under TCG the guest TSC ticks at the host TSC rate, and the guest's own PIT
# calibration of it fails now and then (then boot hangs): tell it the rate.
TSC_KHZ=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
CMDLINE="console=ttyS0 reboot=k panic=1 tsc_early_khz=$TSC_KHZ root=/dev/vda rw ip=$VM_IP::$GW_IP:255.255.255.0:$VM_NAME:eth0:on${APPEND_EXTRA:+ $APPEND_EXTRA}"
start_vm() { # $1: log suffix; sets QEMU_PID and T0
	rm -f "$TMP/qemu.pid"
	T0=$(now)
	# The command line documented in docs/guest.md.
	in_ns qemu-system-x86_64 \
		-name "fcm-test-$1" \
		-M "${QEMU_MACHINE:-microvm,x-option-roms=off,rtc=on,acpi=on}" \
		-accel tcg -cpu "${QEMU_CPU:-max}" -m 512 -smp 1 \
		-nodefaults -no-user-config -display none -no-reboot \
		-device i8042 \
		-chardev "file,id=con,path=$TMP/serial-$1.log,append=on" -serial chardev:con \
		-kernel "$ASSETS/vmlinux.bin" -initrd "$ASSETS/initrd.img" \
		-append "$CMDLINE" \
		-drive "id=root,file=$TMP/rootfs.img,format=raw,if=none,cache=writeback" \
		-device virtio-blk-device,drive=root \
		-netdev "tap,id=net0,ifname=$TAP,script=no,downscript=no" \
		-device "virtio-net-device,netdev=net0,mac=$VM_MAC" \
		-qmp "unix:$TMP/qmp.sock,server=on,wait=off" \
		-pidfile "$TMP/qemu.pid" -daemonize
	QEMU_PID=$(cat "$TMP/qemu.pid")
}

# SSH_EXTRA_OPTS is split into words on purpose.
# shellcheck disable=SC2206
SSH=(ssh -i "$TMP/client_key" -o "UserKnownHostsFile=$TMP/known_hosts" -o StrictHostKeyChecking=yes
	-o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR ${SSH_EXTRA_OPTS:-} "root@$VM_IP")

wait_ssh() { # $1: log suffix; sets T_PORT (sshd banner) and T_SSH (login works)
	local deadline=$(($(date +%s) + BOOT_DEADLINE))
	# First a TCP connect to :22 (sshd is listening), then a real login. Keep
	# the connect timeout short: until the guest has set up eth0, ARP goes
	# unanswered and a connect() would hang for seconds.
	until in_ns timeout 0.3 bash -c "exec 3<>/dev/tcp/$VM_IP/22" 2>/dev/null; do
		kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited during boot; serial log: $TMP/serial-$1.log"
		[ "$(date +%s)" -lt "$deadline" ] || die "sshd not listening within ${BOOT_DEADLINE}s; serial log: $TMP/serial-$1.log"
		sleep 0.1
	done
	T_PORT=$(elapsed "$T0")
	until in_ns "${SSH[@]}" true 2>/dev/null; do
		kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited during boot; serial log: $TMP/serial-$1.log"
		[ "$(date +%s)" -lt "$deadline" ] || die "no SSH within ${BOOT_DEADLINE}s; serial log: $TMP/serial-$1.log"
		sleep 0.2
	done
	T_SSH=$(elapsed "$T0")
}

wait_exit() { # $1: seconds
	local deadline=$(($(date +%s) + $1))
	while kill -0 "$QEMU_PID" 2>/dev/null; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
	QEMU_PID=
}

# make_wheel DIR: a tiny pure-Python wheel (guest/tests/make-tiny-wheel.py).
make_wheel() {
	python3 "$(dirname "${BASH_SOURCE[0]}")/../guest/tests/make-tiny-wheel.py" "$1"
}

# check_runtimes: python3 version, venv + pip install of a local wheel, ruby,
# bundler with a local path gem. Sets PY_VER, RUBY_VER, BUNDLER_VER.
check_runtimes() {
	local t wheel
	PY_VER=$(in_ns "${SSH[@]}" "python3 -c 'import platform; print(platform.python_version())'")
	in_ns "${SSH[@]}" "python3 -c 'import sys; sys.exit(sys.version_info < tuple(map(int, \"$MIN_PYTHON\".split(\".\"))))'" ||
		die "guest python3 is $PY_VER, want >= $MIN_PYTHON"
	log "python3 $PY_VER (>= $MIN_PYTHON)"

	t=$(now)
	wheel=$(make_wheel "$TMP")
	in_ns "${SSH[@]}" 'cat > /root/fcm_tiny-1.0-py3-none-any.whl' <"$wheel" || die "cannot copy the wheel into the guest"
	in_ns "${SSH[@]}" 'set -e; python3 -m venv /root/venv
		/root/venv/bin/pip install -q --no-index --disable-pip-version-check /root/fcm_tiny-1.0-py3-none-any.whl
		/root/venv/bin/python -c "import fcm_tiny; print(fcm_tiny.hello())"' >"$TMP/pip.log" 2>&1 ||
		die "python3 -m venv / pip install of a local wheel failed: $(tail -5 "$TMP/pip.log")"
	grep -qx fcm-wheel-ok "$TMP/pip.log" || die "the wheel's module did not run: $(cat "$TMP/pip.log")"
	log "python3 -m venv + pip install of a local wheel work ($(elapsed "$t")s)"

	RUBY_VER=$(in_ns "${SSH[@]}" "ruby -e 'print RUBY_VERSION'") || die "ruby does not run"
	BUNDLER_VER=$(in_ns "${SSH[@]}" 'bundle -v') || die "bundle -v failed"
	BUNDLER_VER=${BUNDLER_VER##* }
	t=$(now)
	in_ns "${SSH[@]}" 'set -e; rm -rf /root/bundletest; mkdir -p /root/bundletest/fcmtiny/lib; cd /root/bundletest
		printf "%s\n" "module FcmTiny; OK = \"fcm-bundler-ok\"; end" > fcmtiny/lib/fcmtiny.rb
		printf "%s\n" "Gem::Specification.new do |s|" "  s.name = \"fcmtiny\"" "  s.version = \"1.0\"" \
			"  s.summary = \"fcm test\"" "  s.authors = [\"fcm\"]" "  s.files = [\"lib/fcmtiny.rb\"]" "end" > fcmtiny/fcmtiny.gemspec
		printf "%s\n" "gem \"fcmtiny\", path: \"./fcmtiny\"" > Gemfile # no gem server: offline
		bundle install --local --quiet
		bundle exec ruby -e "require \"fcmtiny\"; puts FcmTiny::OK"' >"$TMP/bundle.log" 2>&1 ||
		die "bundler could not install/exec a local path gem: $(tail -5 "$TMP/bundle.log")"
	grep -qx fcm-bundler-ok "$TMP/bundle.log" || die "bundle exec did not load the gem: $(cat "$TMP/bundle.log")"
	log "ruby $RUBY_VER, bundler $BUNDLER_VER: bundle install --local + bundle exec work ($(elapsed "$t")s)"
}

log "boot 1: starting QEMU in $NS"
start_vm boot1
wait_ssh boot1
T_SSH1=$T_SSH
log "boot 1: sshd listening after ${T_PORT}s, SSH login works after ${T_SSH1}s (from QEMU start)"

log "guest says:"
in_ns "${SSH[@]}" 'uname -a; tmux -V; python3 -V; ruby -v; bundle -v; hostname; ip -4 -br addr show eth0; ip route show default; cat /etc/resolv.conf | grep nameserver; ps -o pid,comm -p 1 2>/dev/null || cat /proc/1/comm; df -h / | tail -1' |
	sed 's/^/    /' >&2
in_ns "${SSH[@]}" 'tmux new-session -d -s t "sleep 30" && tmux ls && tmux kill-server' >/dev/null ||
	die "tmux cannot start a session in the guest"

# / must not be resized on a disk the size of the image (the no-op case).
grep -q 'fcm-rc.*resize:' "$TMP/serial-boot1.log" && die "boot 1 resized / on an image-sized disk: $(grep 'fcm-rc.*resize:' "$TMP/serial-boot1.log")"
SIZE1_KB=$(in_ns "${SSH[@]}" "df -k / | awk 'NR == 2 { print \$2 }'")

if [ -n "${GUEST_CMD:-}" ]; then
	log "GUEST_CMD says:"
	in_ns "${SSH[@]}" "$GUEST_CMD" 2>&1 | sed 's/^/    /' >&2 || true
fi

PY_VER=- RUBY_VER=- BUNDLER_VER=-
if [ "$RUNTIMES" = 1 ]; then
	check_runtimes
fi

page=$(in_ns curl -fsS --max-time 5 "http://$VM_IP:8000/") || die "nothing on http://$VM_IP:8000/"
grep -q "<h1>Hello from $VM_NAME</h1>" <<<"$page" || die "unexpected page on :8000: $page"
log "port 8000 serves: $(grep -o '<h1>.*</h1>' <<<"$page")"

marker="fcm-persist-$$-$(date +%s)"
in_ns "${SSH[@]}" "echo $marker > /root/persist.txt" || die "cannot write a file in the guest"
log "boot 1: wrote /root/persist.txt, stopping with 'reboot'"
T_STOP=$(now)
in_ns "${SSH[@]}" 'reboot' || true
wait_exit 30 || die "QEMU did not exit within 30s after 'reboot' in the guest"
T_STOP=$(elapsed "$T_STOP")
log "boot 1: QEMU exited ${T_STOP}s after 'reboot'"
grep -q 'fcm-shutdown.*rebooting' "$TMP/serial-boot1.log" || die "the guest did not run its clean-stop script"
e2fsck -fn "$TMP/rootfs.img" >/dev/null 2>&1 || die "rootfs is not clean after the stop"
debugfs -R 'cat /root/persist.txt' "$TMP/rootfs.img" 2>/dev/null | grep -qx "$marker" ||
	die "/root/persist.txt is not on disk after the stop"

GROWN=-
if [ "$GROW_SIZE" != 0 ]; then
	# What 'fcm create --disk' / 'fcm resize' do to a stopped VM's disk.
	truncate -s "$GROW_SIZE" "$TMP/rootfs.img"
	log "boot 2: same disk, file extended to $GROW_SIZE ($(du -h "$TMP/rootfs.img" | cut -f1) allocated)"
else
	log "boot 2: same disk"
fi
start_vm boot2
wait_ssh boot2
T_SSH2=$T_SSH
log "boot 2: sshd listening after ${T_PORT}s, SSH login works after ${T_SSH2}s (from QEMU start)"
got=$(in_ns "${SSH[@]}" 'cat /root/persist.txt')
[ "$got" = "$marker" ] || die "file written before the stop is missing after reboot (got '$got')"
log "boot 2: /root/persist.txt survived"
if [ "$GROW_SIZE" != 0 ]; then
	line=$(grep 'fcm-rc.*resize:' "$TMP/serial-boot2.log") || die "boot 2 did not grow / (no 'resize:' line on the console)"
	log "boot 2 console: ${line#*: }"
	size2_kb=$(in_ns "${SSH[@]}" "df -k / | awk 'NR == 2 { print \$2 }'")
	dev_kb=$(($(stat -c %s "$TMP/rootfs.img") / 1024))
	# df excludes the fs's own metadata (inode tables, journal): ~2-3 % here.
	if [ "$size2_kb" -le $((dev_kb * 95 / 100)) ] || [ "$size2_kb" -gt "$dev_kb" ]; then
		die "after growing the disk to $GROW_SIZE, df / shows ${size2_kb} KiB (disk ${dev_kb} KiB)"
	fi
	[ "$size2_kb" -gt "$SIZE1_KB" ] || die "df / did not grow ($SIZE1_KB -> $size2_kb KiB)"
	GROWN="$((SIZE1_KB / 1024))MiB->$((size2_kb / 1024))MiB"
	log "boot 2: df / grew from $((SIZE1_KB / 1024)) MiB to $((size2_kb / 1024)) MiB; $(in_ns "${SSH[@]}" 'df -h / | tail -1')"
	marker2="fcm-grown-$$-$(date +%s)"
	# A file bigger than the original file system needs the new space
	# (fallocate: blocks are allocated, no data is written).
	in_ns "${SSH[@]}" "echo $marker2 > /root/grown.txt && fallocate -l $((SIZE1_KB / 1024 + 64))M /root/big.bin && sync" ||
		die "cannot write past the old size of / after growing it"
fi

# What a VMM does for a clean stop without SSH: Ctrl-Alt-Del on the i8042
# keyboard (Firecracker: SendCtrlAltDel; QEMU: QMP send-key).
T_CAD=$(now)
printf '%s\n' '{"execute":"qmp_capabilities"}' \
	'{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}' |
	socat -t 2 - "UNIX-CONNECT:$TMP/qmp.sock" >"$TMP/qmp.log" 2>&1 || die "QMP send-key failed (see $TMP/qmp.log)"
wait_exit 30 || die "QEMU did not exit within 30s after Ctrl-Alt-Del"
T_CAD=$(elapsed "$T_CAD")
grep -q 'fcm-shutdown.*rebooting' "$TMP/serial-boot2.log" || die "Ctrl-Alt-Del did not run the clean-stop script"
log "boot 2: Ctrl-Alt-Del (QMP send-key) stopped it cleanly in ${T_CAD}s"

log "boot 3: checking 'poweroff'"
start_vm boot3
wait_ssh boot3
if [ "$GROW_SIZE" != 0 ]; then
	got=$(in_ns "${SSH[@]}" 'cat /root/grown.txt; stat -c %s /root/big.bin')
	[ "$got" = "$marker2
$(((SIZE1_KB / 1024 + 64) * 1048576))" ] || die "files written after growing / are not intact after a reboot (got '$got')"
	grep -q 'fcm-rc.*resize:' "$TMP/serial-boot3.log" && die "boot 3 resized / again: $(grep 'fcm-rc.*resize:' "$TMP/serial-boot3.log")"
	log "boot 3: files written into the grown / survived; no resize this time"
fi
in_ns "${SSH[@]}" 'poweroff' || true
wait_exit 30 || die "QEMU did not exit within 30s after 'poweroff' in the guest"
log "boot 3: 'poweroff' also made QEMU exit"
e2fsck -fn "$TMP/rootfs.img" >/dev/null 2>&1 || die "rootfs is not clean after 'poweroff'"

echo "OK ssh_ready_boot1=${T_SSH1}s ssh_ready_boot2=${T_SSH2}s stop_by_reboot=${T_STOP}s stop_by_ctrl_alt_del=${T_CAD}s python=$PY_VER ruby=$RUBY_VER bundler=$BUNDLER_VER df_grow=$GROWN"
