#!/bin/sh
# peerd post-remove (deb: postrm; rpm: %postun).
# Purge (deb only: rpm has no purge and keeps users, as Fedora's guidelines
# ask) removes the state, the config and the peerd user and group.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi

if [ "$1" = purge ]; then
	if command -v dpkg-statoverride >/dev/null; then
		for f in /etc/peerd /etc/peerd/peerd.hcl; do
			dpkg-statoverride --quiet --remove "$f" >/dev/null 2>&1 || true
		done
	fi
	rm -rf /var/lib/peerd /etc/peerd
	if getent passwd peerd >/dev/null; then
		userdel peerd >/dev/null 2>&1 || true
	fi
	if getent group peerd >/dev/null; then
		groupdel peerd >/dev/null 2>&1 || true
	fi
fi
exit 0
