#!/bin/busybox sh
# fcm guest clean stop, run by busybox init (::shutdown) on reboot, poweroff,
# halt and Ctrl-Alt-Del. Stops every process, flushes and remounts the disk
# read-only, then *reboots*: the guest runs with reboot=k, so the reboot makes
# Firecracker (and QEMU with -no-reboot) exit. That is how a VM stops.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() {
	{ read -r up _ </proc/uptime; } 2>/dev/null || up="?"
	echo "fcm-shutdown[$up]: $*"
}
say "stopping processes"

# User processes other than init, this script and the subshell running this
# function (kernel threads and zombies have no /proc/PID/exe).
others() {
	read -r self _ </proc/self/stat
	for d in /proc/[0-9]*; do
		pid=${d#/proc/}
		case "$pid" in 1 | "$$" | "$self") continue ;; esac
		[ -e "$d/exe" ] && echo "$pid"
	done
}

kill -TERM -1 2>/dev/null
tries=30 # 3 s grace, then SIGKILL
while [ -n "$(others)" ] && [ "$tries" -gt 0 ]; do
	sleep 0.1
	tries=$((tries - 1))
done
left=$(others)
if [ -n "$left" ]; then
	say "killing what ignored SIGTERM:$(for p in $left; do printf ' %s(%s)' "$p" "$(cat "/proc/$p/comm" 2>/dev/null)"; done)"
	kill -KILL -1 2>/dev/null
	sleep 0.2
fi

sync
say "unmounting file systems"
for m in /tmp /run /dev/shm /dev/pts; do
	/bin/busybox umount "$m" 2>/dev/null
done
if /bin/busybox mount -o remount,ro / && grep -q '^[^ ]* / [^ ]* ro[, ]' /proc/mounts; then
	say "/ is read-only"
else
	say "warning: cannot remount / read-only; it was synced"
fi
/bin/busybox umount -a -r 2>/dev/null
sync
say "rebooting (the VMM exits)"
exec /bin/busybox reboot -f
