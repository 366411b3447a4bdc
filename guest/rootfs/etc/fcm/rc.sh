#!/bin/busybox sh
# fcm guest boot script, run once by busybox init (::sysinit).
#
# Kernel parameters used:
#   ip=<ip>::<gw>:<netmask>:<hostname>:<dev>:<autoconf>   (kernel ip= syntax;
#       the cloud kernel has no IP_PNP, so this script applies it)
#   fcm.dns=<ip>[,<ip>...]   nameservers for /etc/resolv.conf (default 1.1.1.1)
#   ro                       leave / read-only (default: remount it rw)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

# Log to the console with the uptime, as the kernel does.
log() {
	{ read -r up _ </proc/uptime; } 2>/dev/null || up="?"
	echo "fcm-rc[$up]: $*"
}

# Under emulation every exec costs 40-80 ms. This script runs under the static
# busybox sh, which runs its applets (mount, mkdir, chmod...) without an exec;
# the only programs it execs are iproute2's ip (once) and, rarely, ssh-keygen
# and resize2fs (tar, reading the config drive, is an applet).
mounted=" "
refresh_mounts() {
	mounted=" "
	while read -r src mp _ opts _; do
		mounted="$mounted$mp "
		[ "$mp" = / ] && root_opts=$opts root_dev=$src
	done </proc/mounts
}

[ -r /proc/self/stat ] || mount -t proc -o nosuid,nodev,noexec proc /proc
refresh_mounts
mkdir -p /sys /dev /run /tmp
mount_once() { # TYPE DIR OPTIONS
	case "$mounted" in *" $2 "*) return 0 ;; esac
	mount -t "$1" -o "$3" "$1" "$2" || log "warning: cannot mount $1 on $2"
}
mount_once sysfs /sys nosuid,nodev,noexec
mount_once devtmpfs /dev mode=0755,nosuid
mount_once tmpfs /run mode=0755,nosuid,nodev,size=20%
mount_once tmpfs /tmp mode=1777,nosuid,nodev,size=50%
mkdir -p /dev/pts /dev/shm /run/sshd /run/fcm/www
mount_once devpts /dev/pts gid=5,mode=0620,ptmxmode=0666,nosuid,noexec
mount_once tmpfs /dev/shm mode=1777,nosuid,nodev
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
: >/run/utmp
log "mounts done"

read -r cmdline </proc/cmdline
ipconf=
dns=1.1.1.1
want_ro=
for arg in $cmdline; do
	case "$arg" in
		ip=*) ipconf=${arg#ip=} ;;
		fcm.dns=*) dns=${arg#fcm.dns=} ;;
		ro) want_ro=1 ;;
		rw) want_ro= ;;
	esac
done

case ",$root_opts," in
	*,ro,*) [ -n "$want_ro" ] || mount -o remount,rw / || log "warning: cannot remount / read-write" ;;
esac

# --- grow / to the size of its disk -------------------------------------------
# fcm makes a VM's disk by copying base-rootfs.img and extending the file
# (sparse) to the size asked for; 'fcm resize' extends it further. Grow the
# ext4 file system online to fill the device, but exec resize2fs only when the
# device is larger than the file system by more than 16 MiB (resize2fs may
# leave a small last block group unused; without the margin it would run at
# every boot for nothing). The check costs no exec: the device size comes
# from sysfs, the file system size from the superblock (busybox od).
grow_root() {
	case "$root_dev" in /dev/?*) ;; *) return 0 ;; esac
	[ -r "/sys/class/block/${root_dev#/dev/}/size" ] || return 0
	read -r sectors <"/sys/class/block/${root_dev#/dev/}/size" || return 0
	# ext4 superblock at byte 1024, as 32-bit words: 1 s_blocks_count_lo,
	# 6 s_log_block_size, 14 s_magic (low 16 bits), 24 s_feature_incompat,
	# 84 s_blocks_count_hi (valid with the 64bit feature, 0x80).
	# shellcheck disable=SC2046 # word splitting wanted
	set -- $(od -A n -v -t u4 -j 1024 -N 344 "$root_dev" 2>/dev/null)
	[ $# -eq 86 ] || { log "resize: cannot read the superblock of $root_dev"; return 0; }
	[ $((${15} & 65535)) -eq 61267 ] || return 0 # 0xEF53: not ext2/3/4
	bsize=$((1024 << $7))
	fs_blocks=$2
	[ $((${25} & 128)) -ne 0 ] && fs_blocks=$((fs_blocks + (${85} << 32)))
	dev_blocks=$((sectors * 512 / bsize))
	[ $(((dev_blocks - fs_blocks) * bsize)) -gt $((16 << 20)) ] || return 0
	{ read -r t0 _ </proc/uptime; } 2>/dev/null || t0=0.00
	if out=$(resize2fs "$root_dev" 2>&1); then
		{ read -r t1 _ </proc/uptime; } 2>/dev/null || t1=$t0
		# elapsed centiseconds (the 1 prefix keeps a fraction like 05 decimal)
		t0=$((${t1%.*} * 100 + 1${t1#*.} - ${t0%.*} * 100 - 1${t0#*.}))
		log "resize: grew / on $root_dev from $((fs_blocks * bsize >> 20)) MiB to $((dev_blocks * bsize >> 20)) MiB online in $((t0 / 100)).$((t0 / 10 % 10))$((t0 % 10)) s"
	else
		log "warning: resize2fs $root_dev failed: $(echo "$out" | tr '\n' ' ')"
	fi
}
[ -n "$want_ro" ] || grow_root

# --- entropy ---------------------------------------------------------------
# Nothing to do: Linux 6.1 has its CRNG ready at once when the CPU has RDRAND
# (any real CPU; QEMU TCG with -cpu max) or a virtio-rng/entropy device is
# there (the initramfs loads virtio-rng), and within seconds from CPU jitter
# otherwise, so sshd does not stall. Mixing in a saved seed would not credit
# entropy anyway.

# --- hostname + network from ip= ------------------------------------------
mask_to_prefix() { # 255.255.255.0 -> 24
	prefix=0
	oldifs=$IFS
	IFS=.
	for octet in $1; do
		case "$octet" in
			255) prefix=$((prefix + 8)) ;; 254) prefix=$((prefix + 7)) ;;
			252) prefix=$((prefix + 6)) ;; 248) prefix=$((prefix + 5)) ;;
			240) prefix=$((prefix + 4)) ;; 224) prefix=$((prefix + 3)) ;;
			192) prefix=$((prefix + 2)) ;; 128) prefix=$((prefix + 1)) ;;
		esac
	done
	IFS=$oldifs
	echo "$prefix"
}

addr='' gw='' mask='' host='' dev=''
if [ -n "$ipconf" ]; then
	case "$ipconf" in
		off | none | dhcp | on | any | bootp | rarp | both)
			log "ip=$ipconf: only static ip=<ip>::<gw>:<mask>:<host>:<dev>:off|on is supported" ;;
		*)
			oldifs=$IFS
			IFS=:
			# shellcheck disable=SC2086
			set -- $ipconf
			IFS=$oldifs
			addr=$1 gw=$3 mask=$4 host=$5 dev=$6
			;;
	esac
fi
[ -n "$dev" ] || dev=eth0
[ -n "$mask" ] || mask=255.255.255.0

if [ -n "$host" ]; then
	echo "$host" >/proc/sys/kernel/hostname
	echo "$host" >/etc/hostname
elif [ -s /etc/hostname ]; then
	read -r host </etc/hostname && echo "$host" >/proc/sys/kernel/hostname
fi
read -r host </proc/sys/kernel/hostname

# Keep the hostname resolvable (sudo, tmux, python) without DNS: rewrite the
# 127.0.1.1 line of /etc/hosts, keep every other line.
if [ -n "$host" ]; then
	hosts=
	while IFS= read -r line; do
		case "$line" in 127.0.1.1[[:space:]]*) ;; *) hosts="$hosts$line
" ;; esac
	done </etc/hosts
	printf '%s127.0.1.1\t%s\n' "$hosts" "$host" >/etc/hosts
fi

# One 'ip -batch' for lo and eth0: address, up, default route.
{
	echo "link set lo up"
	if [ -n "$addr" ]; then
		tries=50 # virtio_net was loaded by the initramfs; give it up to 5 s
		while [ ! -e "/sys/class/net/$dev" ] && [ "$tries" -gt 0 ]; do
			sleep 0.1
			tries=$((tries - 1))
		done
		if [ -e "/sys/class/net/$dev" ]; then
			echo "address add $addr/$(mask_to_prefix "$mask") dev $dev"
			echo "link set $dev up"
			[ -n "$gw" ] && echo "route replace default via $gw dev $dev"
		else
			log "error: network device $dev not found; no network" >&2
		fi
	fi
} >/run/fcm/net.batch
# iproute2 (the busybox ip applet has no -batch).
/usr/bin/ip -batch /run/fcm/net.batch || log "warning: network set-up failed: $(tr '\n' ';' </run/fcm/net.batch)"
[ -n "$addr" ] && log "$dev $addr/$(mask_to_prefix "$mask") gw ${gw:-none} host $host"

# resolv.conf: a real file (replacing e.g. a dangling symlink into /run).
resolv="# written at boot by /etc/fcm/rc.sh (kernel parameter fcm.dns=)"
oldifs=$IFS
IFS=,
for ns in $dns; do resolv="$resolv
nameserver $ns"; done
IFS=$oldifs
[ -L /etc/resolv.conf ] && rm -f /etc/resolv.conf
echo "$resolv" >/etc/resolv.conf

# --- identity from the config drive ------------------------------------------
# fcm attaches a small read-only drive after the disk (docs/guest.md, "The
# config drive"): a tar archive whose first member, fcm-config, says
# "fcm-config 1", then the SSH host key pair and authorized_keys. Its content
# is data: the four known members are extracted (busybox tar, no exec) into a
# private directory on /run and copied into place as plain files; nothing
# from the drive is run or sourced. sshd reads /run/fcm/authorized_keys beside
# ~/.ssh/authorized_keys (sshd_config.d/fcm.conf), so the user's own edits to
# the latter survive. Without a drive (a VM made before config drives) the
# image's own keys stay in use.
# The read-only virtio disks but /: fcm's drives (found once: no fork).
ro_drives=
for ro in /sys/block/vd*/ro; do
	flag=
	read -r flag <"$ro" 2>/dev/null
	[ "$flag" = 1 ] || continue
	dev=${ro%/ro}
	dev=/dev/${dev##*/}
	[ "$dev" != "$root_dev" ] && ro_drives="$ro_drives $dev"
done

config_drive() {
	for dev in $ro_drives; do
		cfg=/run/fcm/config
		rm -rf "$cfg" && mkdir -m 0700 "$cfg" || return 1
		if ! tar -x -f "$dev" -C "$cfg" fcm-config ssh_host_ed25519_key \
			ssh_host_ed25519_key.pub authorized_keys 2>/dev/null; then
			# The agent drive is read-only too (agent_drive below).
			continue
		fi
		magic=
		read -r magic <"$cfg/fcm-config"
		for f in ssh_host_ed25519_key ssh_host_ed25519_key.pub authorized_keys; do
			[ -f "$cfg/$f" ] && [ ! -L "$cfg/$f" ] || magic=bad
		done
		if [ "$magic" != "fcm-config 1" ]; then
			log "warning: $dev: not an fcm config drive (format 1)"
			continue
		fi
		umask 077
		if ! { cat "$cfg/ssh_host_ed25519_key" >/etc/ssh/ssh_host_ed25519_key &&
			cat "$cfg/authorized_keys" >/run/fcm/authorized_keys; }; then
			log "warning: cannot install the identity from $dev"
		fi
		umask 022
		cat "$cfg/ssh_host_ed25519_key.pub" >/etc/ssh/ssh_host_ed25519_key.pub
		chmod 0600 /etc/ssh/ssh_host_ed25519_key /run/fcm/authorized_keys
		rm -rf "$cfg"
		log "identity from the config drive $dev"
		return 0
	done
	return 1
}
config_drive

# --- the agent ---------------------------------------------------------------
# fcm attaches a third read-only drive holding its agent (docs/agent.md): a
# tar archive whose first member, fcm-agent-drive, says "fcm-agent-drive 1",
# then the static fcm-agent. It is copied to /run/fcm, where
# /etc/fcm/agent.sh (respawned by init) runs it. The host brings this
# program as it brings the kernel; a newer fcm brings a newer one at the
# next boot.
agent_drive() {
	for dev in $ro_drives; do
		d=/run/fcm/agent-drive
		rm -rf "$d" && mkdir -m 0700 "$d" || return 1
		tar -x -f "$dev" -C "$d" fcm-agent-drive fcm-agent 2>/dev/null || continue
		magic=
		read -r magic <"$d/fcm-agent-drive"
		if [ "$magic" = "fcm-agent-drive 1" ] && [ -f "$d/fcm-agent" ] && [ ! -L "$d/fcm-agent" ]; then
			cat "$d/fcm-agent" >/run/fcm/fcm-agent.new && chmod 0700 /run/fcm/fcm-agent.new &&
				mv -f /run/fcm/fcm-agent.new /run/fcm/fcm-agent
			rm -rf "$d"
			log "fcm-agent from the agent drive $dev"
			return 0
		fi
		rm -rf "$d"
	done
	return 1
}
agent_drive

# --- SSH host key ------------------------------------------------------------
# The config drive brings one; an image booted without one may have its own.
# If there is none, make one (ed25519 only: RSA keygen takes seconds under
# emulation).
have_key=
for k in /etc/ssh/ssh_host_*_key; do [ -f "$k" ] && have_key=1; done
if [ -z "$have_key" ]; then
	log "no SSH host key in the image; generating an ed25519 one"
	ssh-keygen -q -t ed25519 -N '' -C "root@$host" -f /etc/ssh/ssh_host_ed25519_key
fi
# sshd ignores keys that others can read; files written from outside may be loose.
chmod go-rwx /etc/ssh/ssh_host_*_key /root/.ssh /root/.ssh/authorized_keys 2>/dev/null

# --- placeholder web page on :8000 -------------------------------------------
case "$host" in
	*[!A-Za-z0-9.-]*) html_host=$(printf '%s' "$host" | sed 's/&/\&amp;/g; s/</\&lt;/g; s/>/\&gt;/g') ;;
	*) html_host=$host ;;
esac
printf '%s\n' '<!doctype html>' \
	"<html><head><meta charset=\"utf-8\"><title>$html_host</title></head>" \
	"<body><h1>Hello from $html_host</h1>" \
	'<p>This fcm microVM is up. Replace this page by serving your app on port 8000.</p>' \
	'</body></html>' >/run/fcm/www/index.html

log "boot done"
