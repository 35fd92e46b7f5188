package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/internal/durable"
)

// addrsPath is where a ready agent records the addresses it bound (see
// api.AddrsFile): harnesses that start agents with port 0 read their ports
// there, and the next start in the same data dir tries the same ports first.
func (a *Agent) addrsPath() string { return filepath.Join(a.cfg.DataDir, api.AddrsFile) }

// previousAddrs are the addresses the last run in this data dir bound, or
// none. The file is the agent's own, in its 0700 data dir; a damaged one
// only means the ports are picked afresh.
func previousAddrs(path string) api.Addrs {
	var prev api.Addrs
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &prev)
	}
	return prev
}

// portOf is addr's port, or 0 when it has none usable.
func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0
	}
	return n
}

// listenHTTP binds the peer HTTP address. For port 0 it tries prefer, the
// port of the last run, first: a restart then keeps its address (peers learn
// a new one from the tag, but an operator's scrape config would not).
func listenHTTP(addr string, prefer int) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && port == "0" && prefer > 0 {
		if ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(prefer))); err == nil {
			return ln, nil
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer HTTP address %s is not available: %w; %s (port 0 picks a free one)", addr, err, cluster.BindHint(err, "--http-addr"))
	}
	return ln, nil
}

// addrs are the addresses this agent bound.
func (a *Agent) addrs() api.Addrs {
	return api.Addrs{
		PID:             os.Getpid(),
		Gossip:          a.cluster.BoundAddr(),
		GossipAdvertise: a.cluster.LocalAddr(),
		HTTP:            a.httpAddr,
		Socket:          a.cfg.SocketPath(),
	}
}

// writeAddrs records the bound addresses once the agent serves. It is
// replaced atomically, so a reader sees the last run's file or this one's.
func (a *Agent) writeAddrs() error {
	b, err := json.MarshalIndent(a.addrs(), "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(a.addrsPath(), append(b, '\n'), 0o600)
}
