#!/usr/bin/env bash
# Imports the base guest root file system (an ext4 image) as the image
# fcm/base in buildah's storage (vfs driver), so a Dockerfile `FROM fcm/base`
# builds with no registry (docs/images.md). The image is labelled
# fcm.base-rootfs=<size>-<mtime> of the rootfs and made again only when that
# changes; the daemon's host::image::ensure_base does the same.
#
#   scripts/base-image.sh [ROOTFS]    (default /var/lib/firecracker/base-rootfs.img)
#   FCM_IMAGES_STORAGE=/dir           the daemon's images.storage, if set
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

require_root
ROOTFS=${1:-/var/lib/firecracker/base-rootfs.img}
[ -f "$ROOTFS" ] || die "no root file system at $ROOTFS (run scripts/build-guest.sh)"
command -v buildah >/dev/null || die "buildah is not installed: apt-get install buildah"

B=(--storage-driver vfs)
if [ -n "${FCM_IMAGES_STORAGE:-}" ]; then
	B=(--root "$FCM_IMAGES_STORAGE" --runroot "$FCM_IMAGES_STORAGE/run" "${B[@]}")
fi
LABEL=fcm.base-rootfs
want=$(stat -c '%s-%.9Y' "$ROOTFS")
have=$(buildah "${B[@]}" inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" fcm/base 2>/dev/null || true)
if [ "$have" = "$want" ]; then
	log "fcm/base is current ($want)"
	exit 0
fi
old_id=$(buildah "${B[@]}" inspect --type image --format '{{.FromImageID}}' fcm/base 2>/dev/null || true)

WORK=$(mktemp -d /var/tmp/fcm-base-image.XXXXXX)
CTR=""
cleanup() {
	if mountpoint -q "$WORK/mnt" 2>/dev/null; then umount "$WORK/mnt" || true; fi
	if [ -n "$CTR" ]; then buildah "${B[@]}" rm "$CTR" >/dev/null 2>&1 || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT
mkdir "$WORK/mnt"
chmod 700 "$WORK"

log "packing $ROOTFS"
mount -o loop,ro "$ROOTFS" "$WORK/mnt"
tar -C "$WORK/mnt" --numeric-owner --xattrs -cf "$WORK/base.tar" .
umount "$WORK/mnt"

log "committing fcm/base"
CTR=$(buildah "${B[@]}" from --name "fcm-build-base-$$" scratch)
buildah "${B[@]}" add "$CTR" "$WORK/base.tar" / >/dev/null
buildah "${B[@]}" config --label "$LABEL=$want" "$CTR"
buildah "${B[@]}" commit --quiet "$CTR" fcm/base >/dev/null
if [ -n "$old_id" ]; then
	# The old base lost its name; it goes unless something uses it.
	buildah "${B[@]}" rmi "$old_id" >/dev/null 2>&1 || true
fi
log "fcm/base made from $ROOTFS ($want)"
