# shellcheck shell=bash
# Shared helpers for the fcm host scripts. Source it; do not run it.

FCM_SCRIPT_NAME=${FCM_SCRIPT_NAME:-$(basename "$0")}

log() { printf '%s: %s\n' "$FCM_SCRIPT_NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$FCM_SCRIPT_NAME" "$*" >&2; exit 1; }

require_root() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
}

# ensure_packages PKG...: install the Debian packages that are missing, and
# nothing else. Quick (no apt-get update) when all are already installed.
ensure_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]; then
			missing+=("$pkg")
		fi
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return 0
	fi
	log "installing packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2 || die "apt-get update failed"
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
