#!/bin/busybox sh
# Respawned by init: fcm-agent (docs/agent.md), copied from the agent drive
# to /run/fcm at boot. Without it (a VM booted without an agent drive) there
# is nothing to run: sleep, so init does not spin, and look again.
# /run/fcm/agent.off holds the agent off (tests put their own program on
# its port then).
if [ -e /run/fcm/agent.off ] || [ ! -x /run/fcm/fcm-agent ]; then
	exec sleep 5
fi
exec /run/fcm/fcm-agent
