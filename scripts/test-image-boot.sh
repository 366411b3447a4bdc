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
#   - a SetIdentity (a new address and route, what a fork sends) works in
#     this image without `ip` (the agent runs the initramfs's busybox);
#   - / was grown online to the disk's size (the host only extends the file);
#   - /etc/resolv.conf was written from fcm.dns=;
#   - a Ctrl-Alt-Del (QMP send-key, what `fcm stop` sends) makes QEMU exit
#     within STOP_DEADLINE seconds, through fcm's init's clean shutdown.
# Then an image made from the base image (as `FROM fcm/base` would be: its
# sshd, tmux, busybox init, booted with fcm.image all the same), whose service
# fails twice before it stays up:
#   - SSH as root with the config drive's key, against its host key (sshd
#     run by fcm's init), and tmux works;
#   - the service was restarted on failure with the backoff (1 s, 2 s) and
#     then stays up (3 runs, the console says so);
#   - the agent's Shutdown (SIGTERM to fcm's init) makes QEMU exit.
# The base image's boot (no fcm.image) is scripts/test-guest-boot.sh.
#
# usage: scripts/test-image-boot.sh [ASSETS]   (default $FCM_ASSETS or /var/lib/firecracker)
#        ASSETS holds vmlinux.bin, initrd.img and fcm-agent (scripts/build-guest.sh,
#        scripts/build-agent.sh).
# env:   KEEP=1 keeps the temp dir (serial logs) for inspection;
#        BASE=0 skips the second case (it needs ASSETS/base-rootfs.img);
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
for c in qemu-system-x86_64 mkfs.ext4 curl ip python3 tar truncate ssh-keygen ssh; do
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
# No ip: SetIdentity must fall back to the initramfs's busybox.
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || [ "$applet" = ip ] || ln -s busybox "$root/bin/$applet"
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
ssh-keygen -q -t ed25519 -N '' -C fcm-test-client -f "$TMP/client_key"
cp "$TMP/client_key.pub" "$TMP/cfg/authorized_keys"
echo "$VM_IP $(cut -d' ' -f1,2 "$TMP/cfg/ssh_host_ed25519_key.pub")" >"$TMP/known_hosts"
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
start_vm() { # DISK CONFIG_DRIVE LOG: boots them as fcm boots an image VM
	rm -f "$TMP/qemu.pid" "$TMP/agent.sock" "$TMP/qmp.sock"
	T0=$(date +%s.%N)
	in_ns qemu-system-x86_64 \
		-name fcm-image-test \
		-M microvm,x-option-roms=off,rtc=on,acpi=on \
		-accel tcg -cpu max -m 256 -smp 1 \
		-nodefaults -no-user-config -display none -no-reboot \
		-device i8042 \
		-chardev "file,id=con,path=$3" -serial chardev:con \
		-kernel "$ASSETS/vmlinux.bin" -initrd "$ASSETS/initrd.img" \
		-append "$CMDLINE" \
		-drive "id=root,file=$1,format=raw,if=none,cache=writeback" \
		-device virtio-blk-device,drive=root \
		-drive "id=config,file=$2,format=raw,if=none,readonly=on" \
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
}
wait_exit() { # SECONDS WHAT: QEMU exits within SECONDS, else fail
	local t deadline
	t=$(date +%s.%N)
	deadline=$(($(date +%s) + $1))
	while kill -0 "$QEMU_PID" 2>/dev/null; do
		[ "$(date +%s)" -lt "$deadline" ] || die "QEMU still runs $1 s after $2"
		sleep 0.1
	done
	QEMU_PID=
	STOP_S=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}
start_vm "$TMP/rootfs.img" "$TMP/config.img" "$TMP/serial.log"
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

# --- SetIdentity in an image without ip: a new address ------------------------------
NEW_IP=172.16.0.52
"$EXEC_CLIENT" "$TMP/agent.sock" --address "$NEW_IP/24" "$GW_IP" || die "SetIdentity failed"
page=$(in_ns curl -fsS --max-time 5 "http://$NEW_IP:8000/index.html") ||
	die "no answer on the new address $NEW_IP after SetIdentity"
in_ns curl -fsS --max-time 2 "http://$VM_IP:8000/index.html" >/dev/null 2>&1 &&
	die "the old address $VM_IP still answers after SetIdentity"
log "SetIdentity moved the VM to $NEW_IP (no ip in the image: /run/fcm/busybox ip)"

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
wait_exit "$STOP_DEADLINE" "Ctrl-Alt-Del"
grep -q "fcm-init\[.*\]: SIGINT (Ctrl-Alt-Del): stopping every process" "$TMP/serial.log" ||
	die "the console does not show fcm's init taking Ctrl-Alt-Del"
grep -q "fcm-init\[.*\]: rebooting" "$TMP/serial.log" || die "fcm's init did not reach its reboot"
log "QEMU exited $STOP_S s after Ctrl-Alt-Del"
log "PASS 1: busybox-only image (fcm's init, service, env, exec defaults, grown /, clean stop)"

if [ "${BASE:-1}" = 0 ]; then
	log "BASE=0: the image from fcm/base is skipped"
	exit 0
fi
[ -s "$ASSETS/base-rootfs.img" ] || die "$ASSETS/base-rootfs.img is missing (BASE=0 skips this case)"

# --- an image from fcm/base: sshd under fcm's init, a service that fails twice ----
cp --sparse=always "$ASSETS/base-rootfs.img" "$TMP/base.img"
truncate -s +256M "$TMP/base.img"
# Fails at its first two runs, then stays up: restarted on failure only.
cat >"$TMP/cfg/fcm-image.json" <<'EOF'
{"cmd":["sh","-c","echo run >>/root/runs; [ $(wc -l </root/runs) -ge 3 ] && exec sleep 100000; exit 1"],"workdir":"/root"}
EOF
drive "$TMP/cfg" "$TMP/config2.img" fcm-config ssh_host_ed25519_key ssh_host_ed25519_key.pub authorized_keys fcm-image.json
start_vm "$TMP/base.img" "$TMP/config2.img" "$TMP/serial2.log"
SSH=(ssh -i "$TMP/client_key" -o "UserKnownHostsFile=$TMP/known_hosts" -o StrictHostKeyChecking=yes
	-o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR "root@$VM_IP")
deadline=$(($(date +%s) + BOOT_DEADLINE))
until in_ns "${SSH[@]}" true 2>/dev/null; do
	kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited during boot (serial log: $TMP/serial2.log)"
	[ "$(date +%s)" -lt "$deadline" ] || die "no SSH within ${BOOT_DEADLINE}s (serial log: $TMP/serial2.log)"
	sleep 0.3
done
log "SSH answered after $(elapsed) s (sshd run by fcm's init, the config drive's keys)"
grep -q "fcm-init\[.*\]: started sshd" "$TMP/serial2.log" || die "the console does not show fcm's init starting sshd"
init=$(in_ns "${SSH[@]}" 'readlink /proc/1/exe; tmux new-session -d -s t "sleep 60" && tmux has-session -t t && echo tmux-ok')
printf '%s\n' "$init" | sed 's/^/    /' >&2
grep -qx /run/fcm/fcm-agent <<<"$init" || die "PID 1 is not fcm's init"
grep -qx tmux-ok <<<"$init" || die "tmux does not work"
# Runs 1 and 2 fail, then 1 s and 2 s of backoff: wait for the third.
deadline=$(($(date +%s) + 30))
until [ "$(in_ns "${SSH[@]}" 'wc -l </root/runs' 2>/dev/null)" = 3 ]; do
	[ "$(date +%s)" -lt "$deadline" ] || die "the service did not reach its third run (serial log: $TMP/serial2.log)"
	sleep 0.5
done
sleep 3
[ "$(in_ns "${SSH[@]}" 'wc -l </root/runs')" = 3 ] || die "the service ran again after it stayed up"
in_ns "${SSH[@]}" 'pgrep -f "^sleep 100000" >/dev/null' || die "the service's last run is not up"
grep -q "fcm-init\[.*\]: service exited with status 1 after .* s; restarting in 1 s" "$TMP/serial2.log" ||
	die "the console does not show the first restart"
grep -q "fcm-init\[.*\]: service exited with status 1 after .* s; restarting in 2 s" "$TMP/serial2.log" ||
	die "the console does not show the backoff doubling"
log "the service failed twice and was restarted (1 s, 2 s), then stayed up"
# The agent's Shutdown (what fcm stop sends first): SIGTERM to fcm's init.
"$EXEC_CLIENT" "$TMP/agent.sock" --shutdown || die "the agent's Shutdown failed"
wait_exit "$STOP_DEADLINE" "the agent's Shutdown"
grep -q "fcm-init\[.*\]: SIGTERM: stopping every process" "$TMP/serial2.log" ||
	die "the console does not show fcm's init taking the agent's Shutdown"
log "QEMU exited $STOP_S s after the agent's Shutdown"
log "PASS 2: image from fcm/base (sshd and tmux under fcm's init, restart on failure with backoff, the agent's Shutdown)"
