#!/usr/bin/env bash
# One-shot host set-up for fcm on a fresh Debian 12 machine (run as root).
#
# usage: scripts/setup.sh          (guest artifacts go to $FCM_ASSETS or /var/lib/firecracker)
#
#   1. host packages (apt): QEMU, Caddy, nftables, iproute2, mmdebstrap, buildah, ...
#   2. scripts/install-firecracker.sh   pinned firecracker + jailer in /usr/local/bin
#   3. scripts/build-guest.sh           vmlinux.bin, initrd.img, base-rootfs.img
#   4. scripts/base-image.sh            base-rootfs.img as the image fcm/base (buildah)
#
# Idempotent, and quick when everything is already in place (no apt-get update
# unless a package is missing, nothing rebuilt that exists). It does not
# install Rust or build fcm itself.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

HOST_PACKAGES=(
	qemu-system-x86 caddy nftables iproute2 e2fsprogs openssh-client tmux
	busybox-static mmdebstrap cpio lz4 kmod curl ca-certificates procps socat
	python3 python3-pip python3-venv file gzip tcpdump xfsprogs buildah
)
ASSETS=${FCM_ASSETS:-/var/lib/firecracker}

require_root

log "step 1/4: host packages"
ensure_packages "${HOST_PACKAGES[@]}"
log "host packages present"

log "step 2/4: firecracker + jailer"
"$SCRIPT_DIR/install-firecracker.sh"

log "step 3/4: guest kernel, initramfs and root file system in $ASSETS"
"$SCRIPT_DIR/build-guest.sh" "$ASSETS"

log "step 4/4: the base root file system as the image fcm/base (FROM fcm/base)"
"$SCRIPT_DIR/base-image.sh" "$ASSETS/base-rootfs.img"

if [ -e /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -e /sys/module/kvm_pvm ]; then
	log "hardware virtualisation available: VMs can run under Firecracker"
else
	log "no usable hardware virtualisation (no vmx/svm, or kvm_pvm): VMs run under QEMU -M microvm -accel tcg"
fi
log "done"
