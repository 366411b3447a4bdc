#!/bin/busybox sh
# Respawned by init: OpenSSH in the foreground, logging to the console.
# (busybox sh runs its applets without exec; every exec counts under emulation.)
[ -d /run/sshd ] || mkdir -m 0755 /run/sshd
/usr/sbin/sshd -D -e
rc=$?
echo "fcm: sshd exited with status $rc; restarting in 1s" >&2
sleep 1
