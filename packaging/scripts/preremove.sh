#!/bin/sh
# peerd pre-remove (deb: prerm; rpm: %preun).
# On removal (not on upgrade) stop the agent; SIGTERM makes it leave the
# cluster gracefully, so the other nodes see it leave rather than fail.
set -e

case "$1" in
remove|0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl disable --now peerd.service >/dev/null 2>&1 || true
fi
exit 0
