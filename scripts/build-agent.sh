#!/usr/bin/env bash
# Build fcm-agent, the program in every guest, as a static binary and install it.
#
# usage: scripts/build-agent.sh [DESTDIR]    (default $FCM_ASSETS, else /var/lib/firecracker)
#
# Builds with the gnu target and crt-static (RUSTFLAGS apply to that target
# only, so host builds and build scripts are unaffected), checks with file(1)
# that the result is statically linked (it must run in any root file system:
# musl, busybox-only), strips it (the guest copies it to /run, a tmpfs), and
# installs it as DESTDIR/fcm-agent with mode 0755, only when it changed:
# written to a temp file beside it and renamed over it, so a reader never sees
# half a binary. Prints the installed path and size.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

case "${1:-}" in
	-h | --help)
		sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
esac

DESTDIR=${1:-${FCM_ASSETS:-/var/lib/firecracker}}
TARGET=x86_64-unknown-linux-gnu
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

command -v file >/dev/null || die "file(1) is missing (try: apt-get install file)"
command -v cargo >/dev/null || die "cargo is missing"

log "building fcm-agent (static, $TARGET)"
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build --release --locked -p fcm-agent --target "$TARGET") ||
	die "cargo build failed"
built=$REPO/target/$TARGET/release/fcm-agent
[ -x "$built" ] || die "$built was not built"

kind=$(file -b "$built")
case "$kind" in
	*"statically linked"* | *"static-pie linked"*) ;;
	*) die "$built is not statically linked: $kind" ;;
esac

mkdir -p "$DESTDIR"
tmp=$(mktemp "$DESTDIR/.fcm-agent.XXXXXX")
trap 'rm -f "$tmp"' EXIT
if command -v strip >/dev/null; then
	strip -o "$tmp" "$built" || die "strip failed"
else
	log "strip(1) is missing (binutils): installing it unstripped"
	cp "$built" "$tmp"
fi
chmod 0755 "$tmp"
"$tmp" --version >/dev/null || die "the built agent does not run"

dest=$DESTDIR/fcm-agent
size=$(stat -c %s "$tmp")
if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$(sha256_of "$tmp")" ]; then
	log "$dest: unchanged ($size bytes)"
	exit 0
fi
mv -f "$tmp" "$dest"
trap - EXIT
log "installed $dest ($size bytes, $(sha256_of "$dest" | cut -c1-12))"
echo "$dest"
