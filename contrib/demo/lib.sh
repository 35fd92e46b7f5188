# Shared by the demo scripts (source it): a work dir removed at exit, the
# PIDs of every process the demo starts (stopped at exit, by PID), a wait
# for a condition with a deadline, and free loopback ports.

work=$(mktemp -d "${TMPDIR:-/tmp}/peerd-${demo_name:-demo}.XXXXXX")
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # description command...
	local desc=$1; shift
	for _ in $(seq 1 "${wait_steps:-300}"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "demo: timed out waiting for $desc" >&2; tail -n 20 "$work"/*.log >&2; exit 1
}

# free_ports N prints N ports free on 127.0.0.1, from the kernel, so a demo
# runs beside anything else.
free_ports() {
	python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
