# Shared by the demo scripts (source it): a work dir removed at exit, the
# PIDs of every process the demo starts (stopped at exit, by PID), a wait
# for a condition with a deadline, and the addresses an agent bound.

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

# The agents bind port 0 (the kernel picks free ports, so a demo runs beside
# anything else) and report what they bound in DATA_DIR/addrs.json once
# ready. addrs_field DATA_DIR PID FIELD prints FIELD (gossip_advertise,
# http, ...) when the file is that agent's (the PID matches); agent_addr
# waits for it, within the demo's deadline.
addrs_field() {
	python3 - "$1/addrs.json" "$2" "$3" <<'PY'
import json, sys
try:
    a = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(1)
if a.get("pid") != int(sys.argv[2]):
    sys.exit(1)
print(a[sys.argv[3]])
PY
}
agent_addr() { # data-dir pid field
	wait_for "the agent of $1 (pid $2) to report its addresses" addrs_field "$@"
	addrs_field "$@"
}
