# shellcheck shell=bash
# Helpers shared by the benchmarks. Source it early; the helpers that use
# TMP (the benchmark's temp dir) read it when called. Do not run it.

# die MESSAGE: says it, prefixed with the benchmark's name, and exits 1;
# the tail of the file $DIE_TAIL, when set, goes with it.
die() {
	printf 'bench/%s: %s\n' "${0##*/}" "$*" >&2
	if [ -n "${DIE_TAIL:-}" ] && [ -f "$DIE_TAIL" ]; then
		echo "--- ${DIE_TAIL##*/} (tail) ---" >&2
		tail -15 "$DIE_TAIL" >&2
	fi
	exit 1
}

log() { printf '== %s\n' "$*" >&2; }

# need_assets DIR: the guest kernel, initrd and rootfs are in DIR.
need_assets() {
	local f
	for f in vmlinux.bin initrd.img base-rootfs.img; do
		[ -f "$1/$f" ] || die "$1/$f missing (run scripts/setup.sh)"
	done
}

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

# write_doc_section DOC NAME SECTION: puts SECTION (which starts with
# <!-- NAME:begin --> and ends with <!-- NAME:end -->) in place of DOC's
# text between those markers, or appends it when DOC has none yet.
write_doc_section() {
	local doc=$1 name=$2 section=$3
	if grep -q "<!-- $name:begin -->" "$doc"; then
		"${PYTHON:-python3}" - "$doc" "$name" "$section" <<'PY'
import sys
doc, name, section = sys.argv[1:4]
s = open(doc).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
a = s.index(begin)
b = s.index(end) + len(end)
open(doc, "w").write(s[:a] + section + s[b:])
PY
	else
		printf '\n%s\n' "$section" >>"$doc"
	fi
}

# wait_api NS LOG WHAT: waits (10 s) until the API answers on 127.0.0.1:7777
# in namespace NS, else dies with the tail of LOG, naming WHAT.
wait_api() {
	local ns=$1 logf=$2 what=$3
	for _ in $(seq 100); do
		ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && return 0
		sleep 0.1
	done
	die "$what did not come up: $(tail -5 "$logf")"
}

# build_base REV WT: builds fcm at REV (release) in the worktree WT with
# its own target dir under $TMP; prints the binary's path.
build_base() {
	local rev=$1 wt=$2
	git -C "$ROOT" worktree add --detach --quiet "$wt" "$rev"
	CARGO_TARGET_DIR=$TMP/target-base cargo build --release --quiet --manifest-path "$wt/Cargo.toml" >&2
	echo "$TMP/target-base/release/fcm"
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# median N...: the median of the numbers given as arguments (the lower
# middle one of an even count).
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
