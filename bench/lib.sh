# shellcheck shell=bash
# Helpers shared by the benchmarks. Source it after setting TMP (the
# benchmark's temp dir); do not run it.

# kill_ours PID: kills a PID only if its command line mentions $TMP (so a
# recycled PID is never hit).
kill_ours() {
	local pid=$1
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
	if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$TMP"; then
		kill -9 "$pid" 2>/dev/null || true
	fi
}

# kill_all_ours: every process still running from $TMP but this shell.
kill_all_ours() {
	local f p
	for f in $(grep -laF "$TMP" /proc/[0-9]*/cmdline 2>/dev/null); do
		p=${f#/proc/}
		p=${p%/cmdline}
		[ "$p" = $$ ] || kill_ours "$p"
	done
}
