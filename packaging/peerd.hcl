# peerd agent configuration (HCL). Every key matches an agent flag with '_'
# for '-'; flags and PEERD_* environment variables override what is here.

# This node's unique name in the cluster (default: the hostname).
# node = "node-1"

# Gossip address (TCP and UDP) and, if other nodes must use another, the
# address they reach this node at. Port 0 picks a free port, kept across
# restarts while free; data_dir/addrs.json says which.
bind = "0.0.0.0:7946"
# advertise = "10.0.0.5:7946"

# Where the agent keeps its cluster snapshot and control socket.
data_dir = "/var/lib/peerd"

# Join these nodes at start; retry_join keeps trying with backoff instead of
# failing when none answers yet.
# join       = ["10.0.0.1:7946"]
# retry_join = ["10.0.0.1:7946", "10.0.0.2:7946"]

# First wait between retry_join attempts (it doubles), and the longest.
# retry_join_interval     = "1s"
# retry_join_max_interval = "30s"

# Gossip encryption (required): one key for every node of the cluster. Make
# it once with `peerd keygen` and set it here on each node (or PEERD_ENCRYPT
# in the environment file); the agent refuses to start without one. It seeds
# the keyring file at the first start; after that the file wins, and keys are
# rotated at runtime with `peerd keyring install|use|remove`.
# encrypt = "..."
# keyring_file = "/var/lib/peerd/keyring.json"
# insecure_gossip = false   # true: no encryption, anyone can join (tests only)

# Tags other nodes see, e.g. for `peerd upgrade --by-tag zone`.
# tags = { zone = "a" }

# Peer HTTP API (default: bind host, port 7947; port 0 when bind's is 0).
# http_addr = "0.0.0.0:7947"

# Control API socket for the client commands (default: data_dir/peerd.sock).
# socket = "/var/lib/peerd/peerd.sock"

# Gossip timings: lan, wan, local, fast (loopback demos and tests only), or
# local-large (many agents sharing one host).
# gossip_profile = "lan"

log_level = "info"
# log_json = true

# Upgrades: accept artifacts signed by these minisign public keys; without
# one, allow_unsigned accepts unsigned artifacts (demos and tests only).
# trust_key      = ["/etc/peerd/release.pub"]
# allow_unsigned = false
#
# allow_outage accepts rollout plans made with --allow-outage, whose waves
# may take every member offline (a one-node cluster). Without it a node
# refuses such a plan: no member can impose an outage on it.
# allow_outage = false

# After a self-upgrade: "reexec" in place (same PID), or "supervisor": exit
# 75 for systemd or Nomad to start the new version.
# restart = "reexec"

# An upgraded node must also pass these checks before its wave is done: a
# shell command that exits 0, and a URL that answers 2xx.
# health_cmd = "/usr/local/bin/app-healthy"
# health_url = "http://127.0.0.1:8080/healthz"

# Managed applications: peerd supervises each one (restarts it with backoff,
# logs its output under its name, stops it on shutdown, keeps it running
# across peerd's own re-exec) and tells it its peers: every alive node that
# runs it, as JSON [{"name","addr","version"}] in an env var at start and in
# a file rewritten on every change, followed by a signal. Restart the agent
# to change this block (SIGHUP does not).
# app "kv" {
#   command = ["/usr/local/bin/kv", "--listen", "0.0.0.0:8080", "--data-dir", "data",
#              "--peers-file", "peers.json"]     # run in /var/lib/peerd/apps/kv
#   version = "1.0.0"                             # what peers are told it runs
#   address = ":8080"                             # peers reach it at this node's address, port 8080
#   env     = { KV_NAME = "node-1" }
#   # listen: sockets peerd binds once and keeps open across every restart and
#   # upgrade of the app (and its own re-exec), passed to each instance as
#   # fds 3... by systemd's protocol (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES):
#   # clients wait in the backlog during an upgrade instead of being refused.
#   # tcp://, tcp4:// or tcp6://HOST:PORT; port 0 picks one, which becomes the
#   # app's address when address is not given or has port 0. kv serves on the
#   # first one passed and ignores --listen then.
#   # listen  = ["tcp://0.0.0.0:8080"]
#   health {
#     http     = "http://127.0.0.1:8080/health"   # or: cmd = ["/usr/local/bin/kv-check"]
#     interval = "2s"
#   }
#   peers {
#     env    = "KV_PEERS"
#     file   = "peers.json"
#     signal = "SIGHUP"
#   }
# }
