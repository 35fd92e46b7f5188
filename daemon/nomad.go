package daemon

import "net"

// The Nomad task environment the agent reads (contrib/nomad/peerd.nomad.hcl
// is the job that provides it). Port labels are the job's network port
// labels: Nomad exports NOMAD_IP_<label> and NOMAD_PORT_<label> for each.
const (
	NomadSerfPort = "serf"
	NomadHTTPPort = "http"
	// NomadNodeNameEnv carries the Nomad client's node name. Nomad does not
	// export one itself (${node.unique.name} is only interpolated in a job
	// spec), so the job sets it in its env block; should Nomad ever export a
	// variable of this name, it would mean the same thing.
	NomadNodeNameEnv = "NOMAD_NODE_NAME"
	// NomadAllocIDEnv is set in every Nomad task. Without it the agent is
	// not running under Nomad and ignores the other variables, so that a
	// stray NOMAD_NODE_NAME on a host does not rename a systemd-run node.
	NomadAllocIDEnv = "NOMAD_ALLOC_ID"
)

// ApplyNomadEnv fills cfg from a Nomad task's environment, read with
// getenv: Node from NOMAD_NODE_NAME, Bind from NOMAD_IP_serf and
// NOMAD_PORT_serf, HTTPAddr from NOMAD_IP_http and NOMAD_PORT_http. A field
// whose variables are missing is left alone, and outside a Nomad allocation
// (no NOMAD_ALLOC_ID) nothing changes.
//
// The agent applies it on top of the defaults and under everything the
// operator gives (config file, PEERD_* variables, flags), which therefore
// always wins. Bind is the allocation's host IP rather than 0.0.0.0 so that
// memberlist advertises the address Nomad reserved the port on, not one it
// guesses (on a Docker host that guess can be the docker0 bridge). This
// assumes host networking, as the job uses: a mapped port (bridge mode)
// would need an advertise address and a peer HTTP port peers can reach.
func ApplyNomadEnv(cfg *Config, getenv func(string) string) {
	if getenv(NomadAllocIDEnv) == "" {
		return
	}
	if node := getenv(NomadNodeNameEnv); node != "" {
		cfg.Node = node
	}
	if addr := nomadAddr(getenv, NomadSerfPort); addr != "" {
		cfg.Bind = addr
	}
	if addr := nomadAddr(getenv, NomadHTTPPort); addr != "" {
		cfg.HTTPAddr = addr
	}
}

// nomadAddr is the HOST:PORT Nomad allocated for a port label, or "" when
// the task has no such port. Without an IP it binds every interface.
func nomadAddr(getenv func(string) string, label string) string {
	port := getenv("NOMAD_PORT_" + label)
	if port == "" {
		return ""
	}
	ip := getenv("NOMAD_IP_" + label)
	if ip == "" {
		ip = "0.0.0.0"
	}
	return net.JoinHostPort(ip, port)
}
