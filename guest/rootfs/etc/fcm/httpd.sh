#!/bin/busybox sh
# Respawned by init: placeholder web page on port 8000 (index.html by rc.sh).
[ -d /run/fcm/www ] || mkdir -p /run/fcm/www
busybox httpd -f -p 8000 -h /run/fcm/www
rc=$?
echo "fcm: httpd exited with status $rc; restarting in 1s" >&2
sleep 1
