#!/usr/bin/env bash
# A managed application on a local peerd fleet: five agents declare the
# example replicated store kv (contrib/examples/kv) without having it;
# `peerd install kv` installs kv 1.0.0 wave by wave; then, while a client
# writes to random instances, `peerd upgrade kv --to 2.0.0` upgrades it wave
# by wave (v2 speaks wire protocol 2 to v2 peers and 1 to v1 peers). At the
# end every acknowledged write is on every instance. Every process this
# script starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

demo_name=demo-app
. contrib/demo/lib.sh
n=5

echo "==> building peerd, and kv 1.0.0 (wire 1) and 2.0.0 (wire 1-2)"
make -s build OUT="$work/peerd" VERSION=1.0.0 &
go build -ldflags "-X main.version=1.0.0" -o "$work/kv-1.0.0" ./contrib/examples/kv &
go build -ldflags "-X main.version=2.0.0" -o "$work/kv-2.0.0" ./contrib/examples/kv &
wait
peerd="$work/peerd"

sock() { echo "$work/node$1/data/peerd.sock"; }
# Where node N's kv reports the address it bound (each start may bind another).
kvaddr_file() { echo "$work/node$1/data/apps/kv/addr"; }

# One gossip key for every agent: without one an agent refuses to start.
export PEERD_ENCRYPT
PEERD_ENCRYPT=$("$peerd" keygen)

start() { # index [join address]
	local i=$1 node="node$1"
	mkdir -p "$work/$node"
	# Port 0 everywhere: the agents report their ports in addrs.json, and kv
	# reports its own to peerd through the file PEERD_APP_ADDR_FILE names.
	cat > "$work/$node/peerd.hcl" <<HCL
app "kv" {
  # "kv" is not a file here: nothing is installed until peerd install.
  command = ["kv", "--listen", "127.0.0.1:0", "--name", "$node", "--data-dir", "data",
             "--peers-file", "peers.json", "--anti-entropy-interval", "300ms"]
  address = "127.0.0.1:0"
  health { http = "/health" }
  peers {
    env    = "KV_PEERS"
    file   = "peers.json"
    signal = "SIGHUP"
  }
}
HCL
	local args=(agent --node "$node" --config "$work/$node/peerd.hcl" --bind 127.0.0.1:0
		--http-addr 127.0.0.1:0 --data-dir "$work/$node/data" --gossip-profile fast
		--log-level warn --allow-unsigned)
	[ $# -gt 1 ] && args+=(--join "$2")
	"$peerd" "${args[@]}" 2>>"$work/$node.log" &
	pids+=($!)
}

echo "==> starting $n agents that declare app \"kv\" (not installed yet)"
start 1
seed=$(agent_addr "$work/node1/data" "${pids[0]}" gossip_advertise)
for i in $(seq 2 $n); do start "$i" "$seed"; done
all_alive() { [ "$("$peerd" members --socket "$(sock 1)" --status alive | tail -n +2 | wc -l)" = "$n" ]; }
wait_for "$n alive members" all_alive
all_declared() { [ "$("$peerd" apps --socket "$(sock 1)" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = "$n" ]; }
wait_for "$n nodes declaring kv" all_declared
"$peerd" apps --socket "$(sock 1)"
echo
echo "==> peerd install kv --artifact kv-1.0.0 --version 1.0.0 --batch 2 --min-healthy 1s"
"$peerd" install kv --socket "$(sock 1)" --artifact "$work/kv-1.0.0" --version 1.0.0 --batch 2 --min-healthy 1s
echo
"$peerd" apps --socket "$(sock 1)"

addr_files=()
for i in $(seq 1 $n); do addr_files+=("$(kvaddr_file "$i")"); done
echo
echo "==> a client writes to random kv instances throughout the upgrade"
python3 - "$work/acked" "${addr_files[@]}" <<'PY' &
import os, random, sys, time, urllib.request
out, files = sys.argv[1], sys.argv[2:]
stop = out + ".stop"
with open(out, "w") as f:
    i = 0
    while not os.path.exists(stop):
        i += 1
        try:
            # Read each time: an upgraded instance listens on a new port.
            addr = open(random.choice(files)).read().strip()
        except OSError:
            time.sleep(0.02)
            continue  # that instance is restarting
        key, val = "k%05d" % i, "written-on-%s" % addr
        try:
            req = urllib.request.Request("http://%s/kv/%s" % (addr, key), data=val.encode(), method="PUT")
            urllib.request.urlopen(req, timeout=2).read()
            f.write("%s %s\n" % (key, val)); f.flush()
        except Exception:
            pass  # that instance is restarting: not acknowledged
        time.sleep(0.02)
PY
writer=$!
pids+=($writer)

# node3 starts the upgrade: wait until gossip told it the install is over.
installed() { "$peerd" upgrade kv status --socket "$(sock 3)" --json | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["state"] != "complete")'; }
wait_for "node3 to see the install complete" installed
echo "==> peerd upgrade kv --to 2.0.0 --artifact kv-2.0.0 --batch 2 --min-healthy 1s   (run on node3)"
"$peerd" upgrade kv --socket "$(sock 3)" --to 2.0.0 --artifact "$work/kv-2.0.0" --batch 2 --min-healthy 1s
touch "$work/acked.stop"
wait "$writer"
echo
"$peerd" apps --socket "$(sock 1)"
echo
echo "==> every acknowledged write is on every instance"
python3 - "$work/acked" "${addr_files[@]}" <<'PY'
import sys, time, urllib.request
acked = dict(line.split(" ", 1) for line in open(sys.argv[1]).read().split("\n") if line)
acked = {k: v for k, v in acked.items()}
addrs = [open(f).read().strip() for f in sys.argv[2:]]
deadline = time.time() + 60
for addr in addrs:
    while True:
        missing = 0
        for k, v in acked.items():
            try:
                got = urllib.request.urlopen("http://%s/kv/%s" % (addr, k), timeout=2).read().decode()
            except Exception:
                got = None
            if got != v:
                missing += 1
        if missing == 0:
            break
        if time.time() > deadline:
            sys.exit("demo: %s still misses %d of %d writes" % (addr, missing, len(acked)))
        time.sleep(0.3)
print("%d writes acknowledged during the upgrade; all %d instances hold every one" % (len(acked), len(addrs)))
PY
echo
echo "==> stopping the agents (SIGTERM: each stops its kv and leaves)"
cleanup
trap - EXIT
echo "done"
