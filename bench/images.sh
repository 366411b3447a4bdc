#!/usr/bin/env bash
# Images benchmark: `fcm image build` against the builder alone on the same
# Dockerfile (the ratio is what fcm's conversion and transport cost), the
# conversion's time per GiB, and `fcm create --image` to the first exec
# answered, warm (from the image's own template) against cold (`--cold`).
#
#   sudo bash bench/images.sh    # build, measure, print, rewrite the images
#                                # section of docs/benchmarks.md
#
# One daemon (QEMU under TCG, fcm-agent, templates on, no Caddy) in its own
# network namespace. The Dockerfile is FROM fcm/base with a RUN apt-get
# install, a COPY, ENV, WORKDIR and CMD (the one tests/images.rs builds).
#   builder:  buildah bud --isolation chroot (vfs storage, as fcm runs it),
#             then the image removed
#   fcm:      fcm image build (context streamed, the same buildah, then the
#             conversion to an ext4 VM image and the store)
# alternately, ROUNDS times. The conversion alone (buildah mount, mkfs.ext4
# -d) is timed on the built image. Then ROUNDS × (warm, cold) creates from
# the image, each until `fcm exec VM -- true` answered, then destroyed.
#
# Only loopback and in-namespace traffic: both builds run inside the
# namespace, and their RUN installs `hello` from a one-package repository
# served there (the .deb fetched with apt-get download, as the set-up
# fetches packages). On exit, also on failure, it kills what it started by
# PID, deletes its namespace, its builder images and temp dir.
#
# Knobs: ROUNDS (3), WRITE_DOC (1), FCM_ASSETS (/var/lib/firecracker),
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
WRITE_DOC=${WRITE_DOC:-1}
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}
DOC=$ROOT/docs/benchmarks.md
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, taps, VMMs, the builder)"
need_assets "$ASSETS"
[ -f "$ASSETS/fcm-agent" ] || die "$ASSETS/fcm-agent missing (run scripts/setup.sh)"
command -v buildah >/dev/null || die "buildah missing (run scripts/setup.sh)"

TAG=$$
NS=fcmim-$TAG
TMP=$(mktemp -d /var/tmp/fcm-bench-images.XXXXXX)
DAEMON_PID=""
B=(buildah --storage-driver vfs)

cleanup() {
	local rc=$?
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	kill_all_ours
	ip netns del "$NS" 2>/dev/null
	for i in $(seq "$ROUNDS"); do "${B[@]}" rmi -f "fcm-bench-$TAG-$i" >/dev/null 2>&1; done
	[ -n "${CTR:-}" ] && "${B[@]}" umount "$CTR" >/dev/null 2>&1 && "${B[@]}" rm "$CTR" >/dev/null 2>&1
	rm -rf "$TMP"
	[ "$rc" = 0 ] || echo "bench/images.sh: failed (exit $rc); cleaned up" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
cargo build --release --quiet
BIN=$TARGET/release/fcm
STATE=$TMP/state
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# fcm/base in the builder's storage (what the set-up does).
bash "$ROOT/scripts/base-image.sh" "$ASSETS/base-rootfs.img" >/dev/null

ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "$TMP/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/home/.ssh/id_ed25519"
ip netns exec "$NS" "$BIN" daemon --state-dir "$STATE" \
	--kernel "$ASSETS/vmlinux.bin" --initrd "$ASSETS/initrd.img" \
	--rootfs "$ASSETS/base-rootfs.img" --agent "$ASSETS/fcm-agent" \
	--backend qemu --no-caddy --templates on >"$TMP/daemon.log" 2>&1 &
DAEMON_PID=$!
DIE_TAIL=$TMP/daemon.log
wait_api "$NS" "$TMP/daemon.log" "the daemon"

cli() { ip netns exec "$NS" env HOME="$TMP/home" FCM_STATE_DIR="$STATE" "$BIN" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The package repository, in the namespace.
mkdir -p "$TMP/repo"
(cd "$TMP/repo" && apt-get download -q hello >/dev/null) || die "apt-get download hello failed"
DEB=$(cd "$TMP/repo" && ls ./*.deb)
{
	dpkg-deb -f "$TMP/repo/$DEB"
	echo "Filename: $DEB"
	echo "Size: $(stat -c %s "$TMP/repo/$DEB")"
	echo "SHA256: $(sha256sum "$TMP/repo/$DEB" | cut -d' ' -f1)"
	echo
} >"$TMP/repo/Packages"
ip netns exec "$NS" python3 -m http.server 8099 --bind 127.0.0.1 --directory "$TMP/repo" >/dev/null 2>&1 &

CTX=$TMP/ctx
mkdir -p "$CTX"
echo '<h1>bench</h1>' >"$CTX/index.html"
cat >"$CTX/Dockerfile" <<'EOF'
FROM fcm/base
RUN echo 'deb [trusted=yes] http://127.0.0.1:8099/ ./' >/etc/apt/sources.list.d/bench.list && apt-get update -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/bench.list -o Dir::Etc::sourceparts=- && apt-get install -y --no-install-recommends hello
COPY index.html /srv/www/index.html
ENV GREETING=hello
WORKDIR /srv/www
CMD ["python3", "-m", "http.server", "8000"]
EOF

BUILDER=()
FCM=()
for i in $(seq "$ROUNDS"); do
	log "round $i: the builder alone"
	t0=$(now_ms)
	ip netns exec "$NS" "${B[@]}" bud --isolation chroot -q -t "fcm-bench-$TAG-$i" "$CTX" >/dev/null 2>>"$TMP/builder.log" || die "buildah bud failed: $(tail -3 "$TMP/builder.log")"
	BUILDER+=($(($(now_ms) - t0)))
	[ "$i" = "$ROUNDS" ] || "${B[@]}" rmi -f "fcm-bench-$TAG-$i" >/dev/null
	log "round $i: fcm image build"
	t0=$(now_ms)
	cli image build "$CTX" -t "bench:$i" >/dev/null 2>>"$TMP/cli.log" || die "fcm image build failed: $(tail -3 "$TMP/cli.log")"
	FCM+=($(($(now_ms) - t0)))
done
BUILDER_MED=$(median "${BUILDER[@]}")
FCM_MED=$(median "${FCM[@]}")

log "the conversion alone (buildah mount, mkfs.ext4 -d) on the built image"
CTR=$("${B[@]}" from -q "fcm-bench-$TAG-$ROUNDS")
MNT=$("${B[@]}" mount "$CTR")
TREE_BYTES=$(du -sb "$MNT" | cut -f1)
SIZE_MIB=$((TREE_BYTES * 125 / 100 / 1048576 + 64))
t0=$(now_ms)
mkfs.ext4 -q -F -L fcm-root -d "$MNT" "$TMP/convert.img" "${SIZE_MIB}M"
sync -f "$TMP/convert.img"
CONVERT_MS=$(($(now_ms) - t0))
"${B[@]}" umount "$CTR" >/dev/null
"${B[@]}" rm "$CTR" >/dev/null
CTR=
rm -f "$TMP/convert.img"
PER_GIB_MS=$((CONVERT_MS * 1073741824 / TREE_BYTES))

log "create --image: warm against cold"
# The first VM of the image has its template made; wait for it.
cli create --cold --image "bench:$ROUNDS" --name first >/dev/null 2>>"$TMP/cli.log" || die "create failed: $(tail -3 "$TMP/cli.log")"
cli destroy first >/dev/null
for _ in $(seq 600); do
	grep -q "template of image bench:$ROUNDS ready" "$TMP/daemon.log" && break
	sleep 0.5
done
grep -q "template of image bench:$ROUNDS ready" "$TMP/daemon.log" || die "no template of the image within 300 s: $(grep -i template "$TMP/daemon.log" | tail -3)"
WARM=()
COLDS=()
for i in $(seq "$ROUNDS"); do
	for side in warm cold; do
		t0=$(now_ms)
		if [ "$side" = warm ]; then
			cli create --image "bench:$ROUNDS" --name "$side-$i" >/dev/null 2>>"$TMP/cli.log" || die "create failed"
		else
			cli create --cold --image "bench:$ROUNDS" --name "$side-$i" >/dev/null 2>>"$TMP/cli.log" || die "create failed"
		fi
		cli exec "$side-$i" -- true >/dev/null 2>>"$TMP/cli.log" || die "exec failed"
		if [ "$side" = warm ]; then WARM+=($(($(now_ms) - t0))); else COLDS+=($(($(now_ms) - t0))); fi
		cli destroy "$side-$i" >/dev/null 2>>"$TMP/cli.log"
	done
done
if grep -q 'warm create failed' "$TMP/daemon.log"; then
	die "a warm create fell back: $(grep 'warm create failed' "$TMP/daemon.log" | head -1)"
fi
WARM_MED=$(median "${WARM[@]}")
COLD_MED=$(median "${COLDS[@]}")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

TABLE=$(
	cat <<EOF
| | median of $ROUNDS | each round (ms) |
|---|---|---|
| \`buildah bud\` alone | $BUILDER_MED ms | ${BUILDER[*]} |
| \`fcm image build\` (the same build, then conversion and store) | $FCM_MED ms | ${FCM[*]} |
| fcm / builder | $(ratio "$FCM_MED" "$BUILDER_MED") | |
| conversion alone (\`mkfs.ext4 -d\` of a $((TREE_BYTES / 1048576)) MiB tree) | $CONVERT_MS ms | $PER_GIB_MS ms per GiB |
| \`fcm create --image\` warm → first exec answered | $WARM_MED ms | ${WARM[*]} |
| \`fcm create --image --cold\` → first exec answered | $COLD_MED ms | ${COLDS[*]} |
| warm / cold | $(ratio "$WARM_MED" "$COLD_MED") | |
EOF
)
echo "$TABLE"
echo "load $LOAD_BEFORE -> $LOAD_AFTER"

section() {
	cat <<EOF
<!-- images:begin -->
## Images: \`fcm image build\` against the builder alone; create from an image, warm against cold

\`sudo bash bench/images.sh\`, $(date -u "+%Y-%m-%d %H:%M") UTC, fcm $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo " + uncommitted src changes"),
$(nproc) cores, buildah $(buildah --version | awk '{print $3}') (vfs storage, chroot isolation), QEMU
\`microvm\` under TCG. Load average before: $LOAD_BEFORE, after: $LOAD_AFTER (a shared
machine: read the ratios).

$TABLE

- The Dockerfile: \`FROM fcm/base\`, \`RUN apt-get update && apt-get install -y hello\` (from a
  one-package repository served in the namespace), \`COPY\`, \`ENV\`, \`WORKDIR\`, \`CMD python3
  -m http.server 8000\`: the one tests/images.rs builds. Both sides run the same buildah on
  the same storage, in the same namespace, alternately.
- What fcm adds to the builder: the context sent as a tar over the API, the pre-scan,
  \`buildah from\` + \`mount\`, \`mkfs.ext4 -d\` of the tree into the VM image (about
  $((SIZE_MIB)) MiB here), \`image.json\`, fsync and rename into the store.
- Create: the first VM of the image boots cold and has the image's template made (booted
  once to agent-ready, saved like a fork's source); then each round a warm create (from
  that template) and a cold one (\`--cold\`: a boot under fcm's init), each until
  \`fcm exec VM -- true\` answered.
<!-- images:end -->
EOF
}

if [ "$WRITE_DOC" = 1 ]; then
	write_doc_section "$DOC" images "$(section)"
	log "wrote the images section of $DOC"
fi
