#!/usr/bin/env bash
# Vendors xterm.js for the web console (ui/vendor/): pinned versions of
# @xterm/xterm and @xterm/addon-fit from npm (`npm pack`), each tarball's
# SHA-512 checked against the integrity the registry publishes for it and
# against the one pinned here. The files are committed: building fcm
# needs no npm; run this only to move to another version.
set -euo pipefail

XTERM_VERSION=6.0.0
XTERM_INTEGRITY=sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg==
FIT_VERSION=0.11.0
FIT_INTEGRITY=sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g==

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/ui/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch PACKAGE VERSION PINNED_INTEGRITY: unpacks into $work/PACKAGE-name
fetch() {
	local pkg=$1 version=$2 pinned=$3 published tarball got dir
	published=$(npm view "$pkg@$version" dist.integrity)
	if [ "$published" != "$pinned" ]; then
		echo "vendor-xterm: $pkg@$version: the registry says $published, pinned $pinned" >&2
		exit 1
	fi
	tarball=$(cd "$work" && npm pack --silent "$pkg@$version")
	got="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
	if [ "$got" != "$pinned" ]; then
		echo "vendor-xterm: $pkg@$version: the tarball's integrity is $got, expected $pinned" >&2
		exit 1
	fi
	dir="$work/${pkg##*/}"
	mkdir -p "$dir"
	tar -xzf "$work/$tarball" -C "$dir" --strip-components=1
}

fetch @xterm/xterm "$XTERM_VERSION" "$XTERM_INTEGRITY"
fetch @xterm/addon-fit "$FIT_VERSION" "$FIT_INTEGRITY"

mkdir -p "$out"
install -m 0644 "$work/xterm/lib/xterm.js" "$out/xterm.js"
install -m 0644 "$work/xterm/css/xterm.css" "$out/xterm.css"
install -m 0644 "$work/xterm/LICENSE" "$out/xterm.LICENSE"
install -m 0644 "$work/addon-fit/lib/addon-fit.js" "$out/addon-fit.js"
install -m 0644 "$work/addon-fit/LICENSE" "$out/addon-fit.LICENSE"
# Source maps are left out; drop their comments so browsers do not ask for them.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/xterm.js" "$out/addon-fit.js"
printf '@xterm/xterm %s %s\n@xterm/addon-fit %s %s\n' \
	"$XTERM_VERSION" "$XTERM_INTEGRITY" "$FIT_VERSION" "$FIT_INTEGRITY" >"$out/VERSIONS"
echo "vendor-xterm: $(ls "$out" | tr '\n' ' ')into $out" >&2
