#!/bin/sh
# peerd post-install (deb: postinst configure; rpm: %post).
# A fresh install is not started: an agent needs its cluster's join
# addresses first (edit /etc/peerd/peerd.hcl, then
# `systemctl enable --now peerd`). An upgrade restarts a running agent,
# which leaves the cluster gracefully and comes back at the new version
# (or at a newer one from its version store).
set -e

case "$1" in
configure) # deb: $2 is the version configured before, empty on a fresh install
	deb=yes upgrade=${2:+yes} ;;
[0-9]*) # rpm: the number of installed instances; 2 or more is an upgrade
	deb= upgrade=
	[ "$1" -ge 2 ] && upgrade=yes ;;
*) exit 0 ;;
esac

# The config is readable by the agent's group only (see nfpm.yaml). A local
# override made by the administrator wins.
if [ -n "$deb" ]; then
	for f in /etc/peerd /etc/peerd/peerd.hcl; do
		if ! dpkg-statoverride --list "$f" >/dev/null; then
			mode=0640
			[ -d "$f" ] && mode=0750
			dpkg-statoverride --update --add root peerd "$mode" "$f"
		fi
	done
fi

# The data dir: systemd's StateDirectory= makes it too, but an agent started
# by hand (or by another supervisor) as user peerd needs it as well.
install -d -m 0750 -o peerd -g peerd /var/lib/peerd

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if [ -n "$upgrade" ]; then
		systemctl try-restart peerd.service >/dev/null 2>&1 || true
	fi
fi
exit 0
