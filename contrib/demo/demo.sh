#!/usr/bin/env bash
# A local peerd fleet on loopback: build peerd at 1.0.0 and 2.0.0, start five
# agents at 1.0.0 (each with its own copy of the binary), show the members,
# upgrade the whole cluster to 2.0.0 in waves with live progress, show the
# members again, and stop every agent this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")/../.."

demo_name=demo wait_steps=200
. contrib/demo/lib.sh

echo "==> building peerd 1.0.0 (protocol 1-1) and 2.0.0 (protocol 1-2)"
make -s build OUT="$work/v1/peerd" VERSION=1.0.0 PROTOCOL_MIN=1 PROTOCOL_MAX=1 &
make -s build OUT="$work/v2/peerd" VERSION=2.0.0 PROTOCOL_MIN=1 PROTOCOL_MAX=2 &
wait
peerd="$work/v1/peerd"
# One gossip key for every agent: without one an agent refuses to start.
export PEERD_ENCRYPT
PEERD_ENCRYPT=$("$peerd" keygen)

start() { # index [join address]
	local i=$1 node="node$1"
	mkdir -p "$work/$node"
	cp "$work/v1/peerd" "$work/$node/peerd"
	local args=(agent --node "$node" --bind 127.0.0.1:0 --http-addr 127.0.0.1:0
		--data-dir "$work/$node/data" --gossip-profile fast --log-level warn --allow-unsigned)
	[ $# -gt 1 ] && args+=(--join "$2")
	"$work/$node/peerd" "${args[@]}" 2>>"$work/$node.log" &
	pids+=($!)
}
sock() { echo "$work/node$1/data/peerd.sock"; }

echo "==> starting 5 agents at 1.0.0 on 127.0.0.1 (ports picked by the kernel)"
start 1
seed=$(agent_addr "$work/node1/data" "${pids[0]}" gossip_advertise)
for i in 2 3 4 5; do start "$i" "$seed"; done
all_alive() { [ "$("$peerd" members --socket "$(sock 1)" --status alive | tail -n +2 | wc -l)" = 5 ]; }
wait_for "5 alive members" all_alive

echo "==> peerd members"
"$peerd" members --socket "$(sock 1)"
echo
echo "==> peerd upgrade --to 2.0.0 --artifact v2/peerd --batch 2 --min-healthy 1s   (run on node3)"
"$peerd" upgrade --socket "$(sock 3)" --to 2.0.0 --artifact "$work/v2/peerd" --batch 2 --min-healthy 1s
echo
echo "==> peerd members (every node now runs 2.0.0; the active protocol is 2)"
"$peerd" members --socket "$(sock 1)"
"$peerd" info --socket "$(sock 1)" | grep 'active protocol'
echo
echo "==> stopping the agents (SIGTERM: graceful leave)"
cleanup
trap - EXIT
echo "done"
