#!/usr/bin/env bash
# A local peerd cluster on loopback: build, start three agents, show the
# members, then stop every agent this script started (by PID).
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d "${TMPDIR:-/tmp}/peerd-demo.XXXXXX")
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

make -s build OUT="$work/peerd"
peerd="$work/peerd"

# Free ports from the kernel, so the demo runs beside anything else.
read -r -a ports < <(python3 - <<'PY' 2>/dev/null || echo "27946 27947 27956 27957 27966 27967"
import socket
socks = []
for _ in range(6):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

start() { # name gossip-port http-port [join]
	local args=(agent --node "$1" --bind "127.0.0.1:$2" --http-addr "127.0.0.1:$3"
		--data-dir "$work/$1" --gossip-profile fast --log-level warn)
	[ -n "${4:-}" ] && args+=(--join "$4")
	"$peerd" "${args[@]}" 2>>"$work/$1.log" &
	pids+=($!)
}
wait_for() { # description command...
	local desc=$1; shift
	for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "demo: timed out waiting for $desc" >&2; cat "$work"/*.log >&2; exit 1
}

echo "==> starting 3 agents on 127.0.0.1"
start node1 "${ports[0]}" "${ports[1]}"
wait_for "node1" "$peerd" info --socket "$work/node1/peerd.sock"
start node2 "${ports[2]}" "${ports[3]}" "127.0.0.1:${ports[0]}"
start node3 "${ports[4]}" "${ports[5]}" "127.0.0.1:${ports[0]}"
three_alive() { [ "$("$peerd" members --socket "$work/node1/peerd.sock" --status alive | tail -n +2 | wc -l)" = 3 ]; }
wait_for "3 alive members" three_alive

echo "==> peerd members"
"$peerd" members --socket "$work/node1/peerd.sock"
echo
echo "==> peerd info (node2)"
"$peerd" info --socket "$work/node2/peerd.sock"
echo
echo "==> stopping the agents (SIGTERM: graceful leave)"
cleanup
trap - EXIT
echo "done"
