#!/usr/bin/env bash
# Build the fcm guest artifacts.
#
# usage: scripts/build-guest.sh [--suite SUITE] [--packages "PKG..."] [--size SIZE]
#                               [--force] [OUTDIR]
#        scripts/build-guest.sh --help
#
# Produces, in OUTDIR (default $FCM_ASSETS or /var/lib/firecracker):
#   vmlinux.bin       ELF kernel, extracted from Debian's cloud kernel package
#   initrd.img        gzip cpio: busybox-static + virtio modules of that same kernel
#   base-rootfs.img   sparse ext4 (1 GiB apparent): Debian SUITE (default forky)
#                     minbase + sshd, tmux, python3, ruby..., busybox init
#                     configured from guest/rootfs; grows to its disk at boot
#   kernel-release    the kernel release and package the first two came from
#   rootfs-release    suite, extra packages and key package versions of the rootfs
#
# Cached: an artifact that exists is kept, unless FORCE=1 or its inputs (under
# guest/, the suite, the package lists) changed since it was built here.
# vmlinux.bin and initrd.img are always built together, so the modules match
# the kernel. Every artifact is built in a temp dir and renamed into place, so
# a reader never sees a half-written file.
#
# Environment (the options win): FORCE=1, FCM_GUEST_SUITE (forky),
# FCM_GUEST_PACKAGES (extra packages, none), FCM_ROOTFS_SIZE (1G),
# FCM_KERNEL_META (linux-image-cloud-amd64).
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/build-guest.sh [OPTIONS] [OUTDIR]

Build vmlinux.bin, initrd.img and base-rootfs.img for fcm guests into OUTDIR
(default: $FCM_ASSETS, else /var/lib/firecracker). Runs as root.

Options:
  --suite SUITE       Debian suite of the root file system (default: forky, or
                      $FCM_GUEST_SUITE): e.g. forky (Python 3.14), trixie, sid
  --packages "P1 P2"  extra Debian packages for the root file system, separated
                      by spaces or commas; may be given more than once
                      (default: $FCM_GUEST_PACKAGES, which it replaces)
  --size SIZE         apparent size of base-rootfs.img (default: 1G, or
                      $FCM_ROOTFS_SIZE); VMs grow it at boot to their disk size
  --force             rebuild everything (same as FORCE=1)
  -h, --help          print this help and exit

An artifact that exists is kept unless its inputs changed: a different suite,
package list, size or guest/ file rebuilds base-rootfs.img.
USAGE
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

FORCE=${FORCE:-0}
SUITE=${FCM_GUEST_SUITE:-forky}
EXTRA_PACKAGES=${FCM_GUEST_PACKAGES:-}
ROOTFS_SIZE=${FCM_ROOTFS_SIZE:-1G}
OUTDIR=
while [ $# -gt 0 ]; do
	case "$1" in
		-h | --help) usage; exit 0 ;;
		--suite) [ $# -ge 2 ] || die "--suite needs a value"; SUITE=$2; shift 2 ;;
		--suite=*) SUITE=${1#--suite=}; shift ;;
		--packages | --packages=*)
			if [ "$1" = --packages ]; then
				[ $# -ge 2 ] || die "--packages needs a value"
				v=$2; shift 2
			else
				v=${1#--packages=}; shift
			fi
			# the first --packages replaces $FCM_GUEST_PACKAGES, later ones add
			[ -n "${packages_opt:-}" ] || EXTRA_PACKAGES=
			packages_opt=1
			EXTRA_PACKAGES="$EXTRA_PACKAGES $v" ;;
		--size) [ $# -ge 2 ] || die "--size needs a value"; ROOTFS_SIZE=$2; shift 2 ;;
		--size=*) ROOTFS_SIZE=${1#--size=}; shift ;;
		--force) FORCE=1; shift ;;
		--) shift; break ;;
		-*) usage >&2; die "unknown option $1" ;;
		*) [ -z "$OUTDIR" ] || die "more than one OUTDIR given ($OUTDIR, $1)"; OUTDIR=$1; shift ;;
	esac
done
if [ $# -gt 0 ]; then # after --
	if [ -n "$OUTDIR" ] || [ $# -gt 1 ]; then die "more than one OUTDIR given"; fi
	OUTDIR=$1
fi
OUTDIR=${OUTDIR:-${FCM_ASSETS:-/var/lib/firecracker}}
case "$SUITE" in
	'' | *[!a-z0-9.-]*) die "invalid suite name '$SUITE'" ;;
esac
case "$ROOTFS_SIZE" in
	[1-9]*[0-9KMGT] | [1-9]*[0-9]) ;;
	*) die "invalid --size '$ROOTFS_SIZE' (e.g. 1G, 1536M)" ;;
esac
# Extra packages: spaces or commas, sorted and deduplicated so that only a
# different set (not a different order) rebuilds the rootfs.
set -f # no globbing of the words
# shellcheck disable=SC2086 # split on purpose
read -r -a EXTRA_PACKAGES_LIST <<<"$(printf '%s\n' ${EXTRA_PACKAGES//,/ } | LC_ALL=C sort -u | tr '\n' ' ')" || true
set +f
for p in "${EXTRA_PACKAGES_LIST[@]}"; do
	# a name, optionally with apt's =VERSION or /RELEASE
	case "$p" in
		[a-z0-9]*) case "$p" in *[!a-z0-9.+:=~/-]*) die "invalid package name '$p'" ;; esac ;;
		*) die "invalid package name '$p'" ;;
	esac
done
KERNEL_META=${FCM_KERNEL_META:-linux-image-cloud-amd64}
GUEST_DIR=$(cd "$SCRIPT_DIR/../guest" && pwd)

# Modules the initramfs loads (dependencies are added from modules.dep).
INITRD_MODULES=(virtio_mmio virtio_blk virtio_net virtio_rng virtio_console vmw_vsock_virtio_transport)

# Packages in the guest, on top of minbase. systemd-standalone-sysusers keeps
# openssh-server from pulling in all of systemd (the guest uses busybox init).
# e2fsprogs: resize2fs, with which rc.sh grows / to the size of the disk.
ROOTFS_PACKAGES=(
	systemd-standalone-sysusers
	openssh-server openssh-sftp-server
	bash busybox-static ca-certificates curl iproute2 procps less vim-tiny e2fsprogs
	tmux python3 python3-pip python3-venv ruby ruby-bundler
	"${EXTRA_PACKAGES_LIST[@]}"
)

# Bumped when build_rootfs changes what it does to the tree, so that a cached
# base-rootfs.img from an older recipe is rebuilt.
ROOTFS_RECIPE=2

# apt options for the build only (removed from the image afterwards): a
# testing suite's Release file carries a Valid-Until date, and a mirror that
# is a frozen snapshot serves it expired. Signatures are still checked.
BUILD_APTOPTS=('Acquire::Check-Valid-Until "false"')

# dpkg filters for a small image; they stay in the image for later installs too.
DPKG_FILTERS=(
	'path-exclude=/usr/share/man/*'
	'path-exclude=/usr/share/info/*'
	'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright'
	'path-exclude=/usr/share/locale/*'
	'path-include=/usr/share/locale/locale.alias'
	'path-exclude=/usr/share/lintian/*'
)

require_root
ensure_packages mmdebstrap busybox-static e2fsprogs cpio gzip lz4 kmod file python3 ca-certificates

mkdir -p "$OUTDIR"
STAMPS="$OUTDIR/.fcm-build"
mkdir -p "$STAMPS"
WORK=$(mktemp -d /var/tmp/fcm-guest.XXXXXX)
chmod 0755 "$WORK" # apt-get download runs as _apt
cleanup() {
	rm -rf "$WORK"
	rm -f "$OUTDIR"/.*.tmp.$$
}
trap cleanup EXIT

# inputs_hash NAME: a digest of everything under guest/ and in this script that
# shapes artifact NAME.
inputs_hash() {
	case "$1" in
		kernel)
			{
				echo "${INITRD_MODULES[*]}" "$KERNEL_META"
				sha256sum "$GUEST_DIR/initrd/init"
			} | sha256sum | cut -d' ' -f1 ;;
		rootfs)
			{
				echo "$ROOTFS_RECIPE" "$SUITE" "$ROOTFS_SIZE" "${ROOTFS_PACKAGES[*]}" "${DPKG_FILTERS[*]}" "${BUILD_APTOPTS[*]}"
				(cd "$GUEST_DIR/rootfs" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
				(cd "$GUEST_DIR/rootfs" && find . -printf '%p %m %y %l\n' | LC_ALL=C sort)
			} | sha256sum | cut -d' ' -f1 ;;
	esac
}

# needs_build NAME FILE...: true when a file is missing, FORCE=1, or the inputs
# changed since the recorded build. A file built without a record is kept.
needs_build() {
	local name=$1 f
	shift
	[ "$FORCE" = 1 ] && return 0
	for f in "$@"; do [ -s "$OUTDIR/$f" ] || return 0; done
	if [ -f "$STAMPS/$name.inputs" ] && [ "$(cat "$STAMPS/$name.inputs")" != "$(inputs_hash "$name")" ]; then
		log "$name: inputs (guest/ sources, suite, packages or size) changed since the last build; rebuilding"
		return 0
	fi
	return 1
}

# publish TMPFILE NAME: atomic rename into OUTDIR (same file system).
publish() {
	sync -f "$1" 2>/dev/null || sync
	mv -f "$1" "$OUTDIR/$2"
	sync -f "$OUTDIR" 2>/dev/null || true
	log "wrote $OUTDIR/$2 ($(du -h --apparent-size "$OUTDIR/$2" | cut -f1) apparent, $(du -h "$OUTDIR/$2" | cut -f1) on disk)"
}

# ---------------------------------------------------------------------------
# Kernel package: vmlinux.bin + initrd.img
# ---------------------------------------------------------------------------
fetch_kernel() { # sets KROOT, KVER, KPKG, KPKG_VERSION
	local abi_pkg
	abi_pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }') || true
	if [ -z "$abi_pkg" ]; then
		log "apt does not know $KERNEL_META yet; running apt-get update"
		apt-get update -q >&2 || die "apt-get update failed"
		abi_pkg=$(apt-cache depends "$KERNEL_META" | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
	fi
	[ -n "$abi_pkg" ] || die "cannot resolve the kernel ABI from 'apt-cache depends $KERNEL_META'"
	KVER=${abi_pkg#linux-image-}

	mkdir -p "$WORK/deb"
	chown _apt "$WORK/deb" 2>/dev/null || true
	KPKG=
	for cand in "$abi_pkg-unsigned" "$abi_pkg"; do
		if apt-cache show "$cand" >/dev/null 2>&1; then
			log "downloading kernel package $cand"
			if (cd "$WORK/deb" && apt-get download -q "$cand" >&2); then
				KPKG=$cand
				break
			fi
		fi
	done
	[ -n "$KPKG" ] || die "cannot download $abi_pkg-unsigned or $abi_pkg"
	local deb
	deb=$(ls "$WORK"/deb/*.deb)
	KPKG_VERSION=$(dpkg-deb -f "$deb" Version)
	KROOT="$WORK/kernel"
	dpkg-deb -x "$deb" "$KROOT"
}

build_vmlinux() { # -> $OUTDIR/vmlinux.bin
	local vmlinuz="$KROOT/boot/vmlinuz-$KVER" out="$OUTDIR/.vmlinux.bin.tmp.$$" off
	[ -f "$vmlinuz" ] || die "$KPKG has no /boot/vmlinuz-$KVER"
	# The bzImage payload is LZ4 (legacy frame, magic 02 21 4c 18). Try each
	# occurrence of the magic until one decompresses to an ELF image; lz4
	# complains about the bzImage trailer after the frame, which is harmless.
	for off in $(python3 -c '
import sys
data = open(sys.argv[1], "rb").read()
i = data.find(b"\x02\x21\x4c\x18")
while i >= 0:
    print(i)
    i = data.find(b"\x02\x21\x4c\x18", i + 1)
' "$vmlinuz"); do
		tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$out" 2>/dev/null || true
		if file -b "$out" | grep -q '^ELF 64-bit'; then
			log "vmlinux: LZ4 payload at offset $off of vmlinuz-$KVER"
			publish "$out" vmlinux.bin
			return 0
		fi
	done
	die "no LZ4 payload in $vmlinuz decompressed to an ELF vmlinux (is the kernel still LZ4-compressed?)"
}

build_initrd() { # -> $OUTDIR/initrd.img
	local moddir="" d ir="$WORK/initrd" out="$OUTDIR/.initrd.img.tmp.$$" m line path rel
	for d in "$KROOT/lib/modules/$KVER" "$KROOT/usr/lib/modules/$KVER"; do
		[ -d "$d" ] && moddir=$d && break
	done
	[ -n "$moddir" ] || die "$KPKG has no modules for $KVER"
	local kbase=${moddir%/lib/modules/"$KVER"}
	depmod -b "$kbase" "$KVER"

	mkdir -p "$ir"/{bin,sbin,dev,proc,sys,newroot,etc,lib/modules/"$KVER"}
	local bb
	bb=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -n1)
	if [ -z "$bb" ] || [ ! -x "$bb" ]; then die "busybox-static is not installed"; fi
	file -b "$bb" | grep -q 'statically linked' || die "$bb is not statically linked"
	install -m 0755 "$bb" "$ir/bin/busybox"
	install -m 0755 "$GUEST_DIR/initrd/init" "$ir/init"
	mknod -m 0600 "$ir/dev/console" c 5 1

	# Dependency order from modprobe itself (it reads modules.dep).
	: >"$ir/etc/fcm-modules"
	for m in "${INITRD_MODULES[@]}"; do
		modprobe -d "$kbase" -S "$KVER" --show-depends "$m" >"$WORK/dep.txt" ||
			die "module $m not found in $KPKG"
		while read -r line; do
			case "$line" in
				insmod\ *) path=${line#insmod }; path=${path%% *} ;;
				*) continue ;; # builtin
			esac
			rel=${path#"$moddir"/}
			# busybox insmod wants plain .ko files
			case "$rel" in
				*.ko.xz) dst=${rel%.xz}; decomp="xz -dc" ;;
				*.ko.zst) dst=${rel%.zst}; decomp="zstd -dc" ;;
				*.ko.gz) dst=${rel%.gz}; decomp="gzip -dc" ;;
				*) dst=$rel; decomp="cat" ;;
			esac
			grep -qxF "$dst" "$ir/etc/fcm-modules" && continue
			mkdir -p "$ir/lib/modules/$KVER/$(dirname "$dst")"
			$decomp "$path" >"$ir/lib/modules/$KVER/$dst"
			echo "$dst" >>"$ir/etc/fcm-modules"
		done <"$WORK/dep.txt"
	done
	log "initrd modules: $(sed 's|.*/||; s|\.ko$||' "$ir/etc/fcm-modules" | tr '\n' ' ')"

	(cd "$ir" && find . -print0 | LC_ALL=C sort -z |
		cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9n >"$out"
	publish "$out" initrd.img
}

if needs_build kernel vmlinux.bin initrd.img; then
	fetch_kernel
	log "kernel: $KPKG $KPKG_VERSION ($KVER)"
	build_vmlinux
	build_initrd
	printf 'KERNEL_RELEASE=%s\nKERNEL_PACKAGE=%s\nKERNEL_PACKAGE_VERSION=%s\n' \
		"$KVER" "$KPKG" "$KPKG_VERSION" >"$OUTDIR/.kernel-release.tmp.$$"
	mv -f "$OUTDIR/.kernel-release.tmp.$$" "$OUTDIR/kernel-release"
	inputs_hash kernel >"$STAMPS/kernel.inputs"
else
	log "vmlinux.bin and initrd.img exist; skipping (FORCE=1 rebuilds)"
fi

# ---------------------------------------------------------------------------
# Root file system: base-rootfs.img
# ---------------------------------------------------------------------------
build_rootfs() {
	local r="$WORK/rootfs" out="$OUTDIR/.base-rootfs.img.tmp.$$" opts=() f includes
	for f in "${DPKG_FILTERS[@]}"; do opts+=("--dpkgopt=$f"); done
	for f in "${BUILD_APTOPTS[@]}"; do opts+=("--aptopt=$f"); done
	includes=$(IFS=,; echo "${ROOTFS_PACKAGES[*]}")
	log "mmdebstrap $SUITE (minbase + $includes); takes about a minute"
	mmdebstrap --quiet --variant=minbase --include="$includes" "${opts[@]}" \
		"$SUITE" "$r" >&2 || die "mmdebstrap $SUITE failed (a package in --packages not in $SUITE?)"
	# The build-only apt options must not stay in the guest's apt configuration.
	for f in "${BUILD_APTOPTS[@]}"; do
		grep -vxF "$f;" "$r/etc/apt/apt.conf.d/99mmdebstrap" >"$WORK/99mmdebstrap" || true
		cat "$WORK/99mmdebstrap" >"$r/etc/apt/apt.conf.d/99mmdebstrap"
	done
	[ -s "$r/etc/apt/apt.conf.d/99mmdebstrap" ] || rm -f "$r/etc/apt/apt.conf.d/99mmdebstrap"
	for f in resize2fs python3 ruby bundle; do
		[ -x "$r/usr/bin/$f" ] || [ -x "$r/usr/sbin/$f" ] || die "$f is missing from the guest"
	done
	rootfs_release "$r" >"$WORK/rootfs-release"

	log "configuring the guest (busybox init, sshd, fcm scripts from guest/rootfs)"
	# Overlay guest/rootfs, owned by root, without touching existing directories.
	(cd "$GUEST_DIR/rootfs" && tar -c --owner=0 --group=0 --numeric-owner .) |
		tar -x --no-overwrite-dir -C "$r"
	chmod 0755 "$r"/etc/fcm/*.sh
	chmod 0644 "$r/etc/inittab" "$r/etc/ssh/sshd_config.d/fcm.conf"

	# PID 1 is busybox init. Divert /usr/sbin/init so that a later
	# 'apt install systemd-sysv' inside the guest cannot replace it.
	[ -x "$r/bin/busybox" ] || die "busybox missing from the guest"
	chroot "$r" dpkg-divert --quiet --local --rename --divert /usr/sbin/init.distrib --add /usr/sbin/init
	ln -sfn /bin/busybox "$r/usr/sbin/init"
	# minbase has no reboot/poweroff/halt: they go to busybox, which signals
	# init; /etc/fcm/shutdown.sh then ends every one of them in a reboot.
	for f in reboot poweroff halt; do
		if [ ! -e "$r/usr/sbin/$f" ] || [ -L "$r/usr/sbin/$f" ]; then
			ln -sfn /bin/busybox "$r/usr/sbin/$f"
		fi
	done

	# SSH: no host keys in the image (the host writes one per VM, rc.sh makes
	# one if it did not), root by key only.
	rm -f "$r"/etc/ssh/ssh_host_*
	grep -q '^Include /etc/ssh/sshd_config.d/\*\.conf' "$r/etc/ssh/sshd_config" ||
		die "the guest sshd_config does not include sshd_config.d"
	# The dynamic motd runs a few programs at every login: slow under emulation.
	sed -i 's|^session[[:space:]]\+optional[[:space:]]\+pam_motd\.so[[:space:]]\+motd=/run/motd\.dynamic|# fcm: no dynamic motd (runs scripts at each login)\n# &|' "$r/etc/pam.d/sshd"
	chroot "$r" passwd --quiet --lock root >/dev/null
	install -d -m 0700 -o root -g root "$r/root/.ssh"

	echo fcm-guest >"$r/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tfcm-guest\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' >"$r/etc/hosts"
	rm -f "$r/etc/resolv.conf"
	echo 'nameserver 1.1.1.1' >"$r/etc/resolv.conf"
	echo '# / is mounted by the fcm initramfs (root=); nothing else to mount here.' >"$r/etc/fstab"
	: >"$r/etc/machine-id"

	# Trim caches (apt lists come back with 'apt update' in the guest).
	rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
		"$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/log/*.log "$r"/var/log/apt/* \
		"$r"/tmp/* "$r"/var/tmp/*

	log "guest tree: $(du -sh "$r" | cut -f1); making a $ROOTFS_SIZE ext4 image"
	rm -f "$out"
	truncate -s "$ROOTFS_SIZE" "$out"
	mkfs.ext4 -q -F -L fcm-root -d "$r" "$out" >&2 || die "mkfs.ext4 -d failed"
	e2fsck -fn "$out" >/dev/null 2>&1 || die "the new image fails e2fsck"
	publish "$out" base-rootfs.img
}

# rootfs_release DIR: what the image holds, as KEY=VALUE lines.
rootfs_release() {
	local r=$1
	# shellcheck disable=SC2016 # dpkg-query formats, not shell
	pkgv() { chroot "$r" dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
	echo "ROOTFS_SUITE=$SUITE"
	echo "ROOTFS_EXTRA_PACKAGES=${EXTRA_PACKAGES_LIST[*]}"
	echo "PYTHON_VERSION=$(chroot "$r" python3 -c 'import platform; print(platform.python_version())')"
	echo "PYTHON_PACKAGE_VERSION=$(pkgv python3)"
	echo "PIP_PACKAGE_VERSION=$(pkgv python3-pip)"
	echo "RUBY_VERSION=$(chroot "$r" ruby -e 'print RUBY_VERSION')"
	echo "RUBY_PACKAGE_VERSION=$(pkgv ruby)"
	echo "BUNDLER_PACKAGE_VERSION=$(pkgv ruby-bundler)"
	echo "OPENSSH_PACKAGE_VERSION=$(pkgv openssh-server)"
	echo "E2FSPROGS_PACKAGE_VERSION=$(pkgv e2fsprogs)"
	# shellcheck disable=SC2016
	echo "PACKAGE_COUNT=$(chroot "$r" dpkg-query -W -f='${db:Status-Status}\n' | grep -cx installed)"
}

if needs_build rootfs base-rootfs.img; then
	build_rootfs
	mv -f "$WORK/rootfs-release" "$OUTDIR/rootfs-release"
	sed 's/^/    /' "$OUTDIR/rootfs-release" >&2
	inputs_hash rootfs >"$STAMPS/rootfs.inputs"
else
	log "base-rootfs.img exists; skipping (FORCE=1 rebuilds)"
fi

log "guest artifacts ready in $OUTDIR"
