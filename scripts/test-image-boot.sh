#!/usr/bin/env bash
# Boot a VM from a hand-made image for real under QEMU (microvm, TCG) inside a
# throw-away network namespace, the way fcm boots one (docs/guest.md, "Image
# boot"), and check what a user of `fcm create --image` relies on:
#   the image is only busybox-static (/bin/busybox and its applet links, no
#   init, no /etc, no libc); its config (on the config drive, fcm-image.json)
#   has CMD ["httpd","-f","-p","8000","-h","/www"], env GREETING=hi and
#   workdir /www;
#   - the console shows fcm's init (fcm-agent init) starting the service;
#   - the service answers on :8000 from the namespace, with the image's env
#     (a CGI script prints $GREETING) and the address from ip=;
#   - an Exec through the agent's virtio-serial port (agent/examples/exec.rs)
#     runs in the image's workdir with its env (the docker exec defaults);
#   - an orphan is reaped by fcm's init (no zombie left);
#   - / was grown online to the disk's size (the host only extends the file);
#   - /etc/resolv.conf was written from fcm.dns=;
#   - a Ctrl-Alt-Del (QMP send-key, what `fcm stop` sends) makes QEMU exit
#     within STOP_DEADLINE seconds, through fcm's init's clean shutdown.
# The base image's boot (no fcm.image) is scripts/test-guest-boot.sh.
#
# usage: scripts/test-image-boot.sh [ASSETS]   (default $FCM_ASSETS or /var/lib/firecracker)
#        ASSETS holds vmlinux.bin, initrd.img and fcm-agent (scripts/build-guest.sh,
#        scripts/build-agent.sh).
# env:   KEEP=1 keeps the temp dir (serial log) for inspection;
#        BOOT_DEADLINE (90), STOP_DEADLINE (20).
#
# Network rule: the bridge fcm0 (172.16.0.1/24), the tap and the VM
# (172.16.0.51) exist only inside the namespace this script creates, which is
# deleted on exit, as is the QEMU process it started (killed by PID).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

ASSETS=${1:-${FCM_ASSETS:-/var/lib/firecracker}}
NS=fcmimg-$$
TAP=tap_fcmimg
VM_IP=172.16.0.51
GW_IP=172.16.0.1
VM_NAME=busy-box
VM_MAC=06:00:AC:10:00:33
BOOT_DEADLINE=${BOOT_DEADLINE:-90}
STOP_DEADLINE=${STOP_DEADLINE:-20}
IMAGE_SIZE=64M
DISK_SIZE=512M

require_root
for f in vmlinux.bin initrd.img fcm-agent; do
	[ -s "$ASSETS/$f" ] || die "$ASSETS/$f is missing (run scripts/build-guest.sh and scripts/build-agent.sh)"
done
for c in qemu-system-x86_64 mkfs.ext4 curl ip python3 tar truncate ssh-keygen; do
	command -v "$c" >/dev/null || die "$c is not installed (run scripts/setup.sh)"
done
BUSYBOX=/bin/busybox
file -b "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
	die "$BUSYBOX is not busybox-static (apt-get install busybox-static)"

REPO=$(cd "$SCRIPT_DIR/.." && pwd)
log "building the exec client (cargo build -p fcm-agent --example exec)"
(cd "$REPO" && cargo build --locked -q -p fcm-agent --example exec) || die "cargo build of the exec client failed"
EXEC_CLIENT=${CARGO_TARGET_DIR:-$REPO/target}/debug/examples/exec
[ -x "$EXEC_CLIENT" ] || die "$EXEC_CLIENT was not built"

TMP=$(mktemp -d /var/tmp/fcm-imagetest.XXXXXX)
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
		[ $rc -eq 0 ] || [ ! -f "$TMP/serial.log" ] || tail -n 40 "$TMP/serial.log" >&2
	else
		rm -rf "$TMP"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "error: line $LINENO failed (status $?): $BASH_COMMAND"' ERR

in_ns() { ip netns exec "$NS" "$@"; }

# --- the image: busybox only ------------------------------------------------------
root=$TMP/root
mkdir -p "$root/bin" "$root/www/cgi-bin"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo "hello from an image" >"$root/www/index.html"
cat >"$root/www/cgi-bin/env" <<'EOF'
#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "greeting=$GREETING"
echo "uid=$(id -u)"
echo "hostname=$(hostname)"
echo "root_kib=$(df -k / | awk 'NR == 2 { print $2 }')"
echo "resolv=$(grep -c '^nameserver 172.16.0.1$' /etc/resolv.conf)"
EOF
chmod 0755 "$root/www/cgi-bin/env"
mkfs.ext4 -q -L fcm-root -d "$root" "$TMP/rootfs.img" "$IMAGE_SIZE" >/dev/null
# As fcm does: the VM's disk is a copy of the image, extended (sparse).
truncate -s "$DISK_SIZE" "$TMP/rootfs.img"

# --- the config drive and the agent drive (ustar, zero-padded to 4 KiB) --------
mkdir -p "$TMP/cfg"
ssh-keygen -q -t ed25519 -N '' -C "root@$VM_NAME" -f "$TMP/cfg/ssh_host_ed25519_key"
cp "$TMP/cfg/ssh_host_ed25519_key.pub" "$TMP/cfg/authorized_keys"
echo "fcm-config 1" >"$TMP/cfg/fcm-config"
cat >"$TMP/cfg/fcm-image.json" <<'EOF'
{"entrypoint":[],"cmd":["httpd","-f","-p","8000","-h","/www"],"env":["GREETING=hi"],"workdir":"/www","user":null}
EOF
mkdir -p "$TMP/agent"
echo "fcm-agent-drive 1" >"$TMP/agent/fcm-agent-drive"
cp "$ASSETS/fcm-agent" "$TMP/agent/fcm-agent"
drive() { # DIR OUT MEMBER... : a ustar archive of the members, in order
	local dir=$1 out=$2
	shift 2
	tar --format=ustar --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$out" "$@"
	truncate -s "%4096" "$out"
}
drive "$TMP/cfg" "$TMP/config.img" fcm-config ssh_host_ed25519_key ssh_host_ed25519_key.pub authorized_keys fcm-image.json
drive "$TMP/agent" "$TMP/agent.img" fcm-agent-drive fcm-agent

# --- namespace: bridge + tap -----------------------------------------------------
log "creating network namespace $NS (bridge fcm0 $GW_IP/24, $TAP)"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add fcm0 type bridge
ip -n "$NS" addr add "$GW_IP/24" dev fcm0
ip -n "$NS" link set fcm0 up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip -n "$NS" link set "$TAP" master fcm0
ip -n "$NS" link set "$TAP" up

# --- QEMU, with the devices fcm gives a VM (src/host/vmm/qemu/args.rs) ----------
TSC_KHZ=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
CMDLINE="console=ttyS0 reboot=k panic=1 tsc_early_khz=$TSC_KHZ root=/dev/vda rw ip=$VM_IP::$GW_IP:255.255.255.0:$VM_NAME:eth0:on fcm.dns=$GW_IP fcm.image"
log "kernel command line: $CMDLINE"
T0=$(date +%s.%N)
in_ns qemu-system-x86_64 \
	-name fcm-image-test \
	-M microvm,x-option-roms=off,rtc=on,acpi=on \
	-accel tcg -cpu max -m 256 -smp 1 \
	-nodefaults -no-user-config -display none -no-reboot \
	-device i8042 \
	-chardev "file,id=con,path=$TMP/serial.log" -serial chardev:con \
	-kernel "$ASSETS/vmlinux.bin" -initrd "$ASSETS/initrd.img" \
	-append "$CMDLINE" \
	-drive "id=root,file=$TMP/rootfs.img,format=raw,if=none,cache=writeback" \
	-device virtio-blk-device,drive=root \
	-drive "id=config,file=$TMP/config.img,format=raw,if=none,readonly=on" \
	-device virtio-blk-device,drive=config \
	-drive "id=agent,file=$TMP/agent.img,format=raw,if=none,readonly=on" \
	-device virtio-blk-device,drive=agent \
	-device virtio-serial-device \
	-chardev "socket,id=agent,path=$TMP/agent.sock,server=on,wait=off" \
	-device virtserialport,chardev=agent,name=fcm.agent.0 \
	-netdev "tap,id=net0,ifname=$TAP,script=no,downscript=no" \
	-device "virtio-net-device,netdev=net0,mac=$VM_MAC" \
	-qmp "unix:$TMP/qmp.sock,server=on,wait=off" \
	-pidfile "$TMP/qemu.pid" -daemonize
QEMU_PID=$(cat "$TMP/qemu.pid")
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the service answers -----------------------------------------------------------
deadline=$(($(date +%s) + BOOT_DEADLINE))
until page=$(in_ns curl -fsS --max-time 2 "http://$VM_IP:8000/index.html" 2>/dev/null); do
	kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited during boot"
	[ "$(date +%s)" -lt "$deadline" ] || die "no answer on $VM_IP:8000 within ${BOOT_DEADLINE}s"
	sleep 0.3
done
log "the service answered after $(elapsed) s"
[ "$page" = "hello from an image" ] || die "unexpected page: $page"
grep -q "fcm-init\[.*\]: started service (pid [0-9]*): httpd -f -p 8000 -h /www" "$TMP/serial.log" ||
	die "the console does not show fcm's init starting the service"
grep -q "fcm-init\[.*\]: started fcm-agent" "$TMP/serial.log" ||
	die "the console does not show fcm's init starting the agent"

cgi=$(in_ns curl -fsS --max-time 10 "http://$VM_IP:8000/cgi-bin/env") || die "the CGI script failed"
printf '%s\n' "$cgi" | sed 's/^/    /' >&2
grep -qx "greeting=hi" <<<"$cgi" || die "the service did not get the image's env"
grep -qx "uid=0" <<<"$cgi" || die "the service does not run as root (the image has no user)"
grep -qx "hostname=$VM_NAME" <<<"$cgi" || die "the hostname from ip= is not set"
grep -qx "resolv=1" <<<"$cgi" || die "/etc/resolv.conf does not name fcm.dns="
root_kib=$(sed -n 's/^root_kib=//p' <<<"$cgi")
[ "${root_kib:-0}" -gt $((400 * 1024)) ] || die "/ was not grown to the disk ($root_kib KiB)"
grep -q "fcm-init\[.*\]: grew / on /dev/vda from 64 MiB to 512 MiB" "$TMP/serial.log" ||
	die "the console does not show / grown"

# --- exec through the agent: the image's defaults ----------------------------------
out=$("$EXEC_CLIENT" "$TMP/agent.sock" sh -c 'echo "cwd=$(pwd) greeting=$GREETING uid=$(id -u)"') ||
	die "exec through the agent failed: $out"
log "exec: $out"
[ "$out" = "cwd=/www greeting=hi uid=0" ] || die "exec did not get the image's defaults: $out"

# --- orphans are reaped --------------------------------------------------------------
"$EXEC_CLIENT" "$TMP/agent.sock" sh -c '(sleep 1 &); exit 0' || die "exec of the orphan maker failed"
sleep 3
zombies=$("$EXEC_CLIENT" "$TMP/agent.sock" ps -o stat,pid,ppid,comm | awk '$1 ~ /^Z/') ||
	die "exec of ps failed"
[ -z "$zombies" ] || die "zombies left: $zombies"

# --- Ctrl-Alt-Del: a clean stop, QEMU exits ----------------------------------------
log "sending Ctrl-Alt-Del (QMP send-key)"
python3 - "$TMP/qmp.sock" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()  # the greeting
for cmd in ({"execute": "qmp_capabilities"},
            {"execute": "send-key", "arguments": {"keys": [
                {"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]}}):
    f.write(json.dumps(cmd) + "\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            break
    if "error" in reply:
        sys.exit(f"QMP: {reply}")
EOF
t_stop=$(date +%s.%N)
deadline=$(($(date +%s) + STOP_DEADLINE))
while kill -0 "$QEMU_PID" 2>/dev/null; do
	[ "$(date +%s)" -lt "$deadline" ] || die "QEMU still runs ${STOP_DEADLINE}s after Ctrl-Alt-Del"
	sleep 0.1
done
QEMU_PID=
stop_s=$(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
grep -q "fcm-init\[.*\]: SIGINT (Ctrl-Alt-Del): stopping every process" "$TMP/serial.log" ||
	die "the console does not show fcm's init taking Ctrl-Alt-Del"
grep -q "fcm-init\[.*\]: rebooting" "$TMP/serial.log" || die "fcm's init did not reach its reboot"
log "QEMU exited ${stop_s} s after Ctrl-Alt-Del"
log "PASS: image boot (busybox-only image, fcm's init, service, env, grown /, clean stop)"
