#!/bin/sh
# peerd pre-install (deb: preinst install|upgrade; rpm: %pre).
# Creates the peerd system user and group before the files are unpacked, so
# that /etc/peerd/peerd.hcl can be owned by group peerd. Idempotent.
set -e

if ! getent group peerd >/dev/null; then
	groupadd --system peerd
fi
if ! getent passwd peerd >/dev/null; then
	useradd --system --gid peerd --home-dir /var/lib/peerd --no-create-home \
		--shell /usr/sbin/nologin --comment "peerd agent" peerd
fi
exit 0
