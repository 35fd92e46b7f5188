package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startKVNodeListening declares kv with a socket peerd owns
// (listen = ["tcp://127.0.0.1:0"]) and passes to each instance by socket
// activation.
func startKVNodeListening(t testing.TB, name, join string) *kvNode {
	return startKVAgent(t, name, bins["v1"], join, kvApp{bin: bins["kv"], version: "1.0.0", listen: true})
}

// connectLoop opens a new connection to addr every few milliseconds and
// asks kv's /health on it, until stop: how many attempts, how many were
// refused, how many failed otherwise (the first such error kept), and the
// versions that answered.
type connectLoop struct {
	attempts, refused, failed int
	firstErr                  error
	versions                  map[string]int
}

func connectEvery(addr string, stop <-chan struct{}) <-chan connectLoop {
	out := make(chan connectLoop, 1)
	client := &http.Client{
		Timeout:   30 * time.Second, // a connection in the backlog waits for the next instance
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	go func() {
		r := connectLoop{versions: map[string]int{}}
		defer func() { out <- r }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			r.attempts++
			resp, err := client.Get("http://" + addr + "/health")
			if err == nil {
				var h kvHealth
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err = json.Unmarshal(b, &h); err == nil {
					r.versions[h.Version]++
					continue
				}
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				r.refused++
			} else {
				r.failed++
			}
			if r.firstErr == nil {
				r.firstErr = err
			}
		}
	}()
	return out
}

// TestManagedAppUpgradeRefusesNoConnection: kv listens on sockets its
// agent owns; `peerd upgrade kv --to 2.0.0` stops each instance and starts
// the new one while a client connects to each instance's address every few
// milliseconds. No connection is refused: those made while no instance
// runs wait in the backlog and are served by the new one. The run shows
// it saw the restart: every instance's PID changed, and both versions
// answered on the same address.
func TestManagedAppUpgradeRefusesNoConnection(t *testing.T) {
	n1 := startKVNodeListening(t, "l1", "")
	n2 := startKVNodeListening(t, "l2", n1.gossip())
	nodes := []*kvNode{n1, n2}
	waitAlive(t, []*agent{n1.agent, n2.agent}, 2)
	waitPeers(t, nodes, 2)

	addrs := map[string]string{}
	pids := map[string]int{}
	for _, n := range nodes {
		for _, r := range apps(t, n.agent) {
			if r.Node == n.name {
				addrs[n.name] = r.Address
			}
		}
		require.NotEmpty(t, addrs[n.name], "%s advertises the listener's address", n.name)
		assert.Equal(t, addrs[n.name], n.kvAddr(), "kv serves on the socket peerd bound")
		pids[n.name] = n.kvPID()
		require.NotZero(t, pids[n.name])
	}

	stop := make(chan struct{})
	loops := map[string]<-chan connectLoop{}
	for _, n := range nodes {
		loops[n.name] = connectEvery(addrs[n.name], stop)
	}
	appCLI(t, n1, "upgrade", "kv", "--to", "2.0.0", "--artifact", bins["kv2"], "--batch", "1",
		"--min-healthy", "300ms", "--deadline", "1m")
	// Until both instances answered at 2.0.0 on the addresses the loops use.
	eventually(t, 30*time.Second, func() error {
		for _, n := range nodes {
			if v := kvVersion(t, n); v != "2.0.0" {
				return fmt.Errorf("%s: kv %s", n.name, v)
			}
		}
		return nil
	})
	close(stop)

	for _, n := range nodes {
		r := <-loops[n.name]
		t.Logf("%s (%s): %d attempts, %d refused, %d failed otherwise (first error %v), answered by %v; pid %d -> %d",
			n.name, addrs[n.name], r.attempts, r.refused, r.failed, r.firstErr, r.versions, pids[n.name], n.kvPID())
		assert.Zero(t, r.refused, "%s: connections refused during the upgrade", n.name)
		// What the issue promises is no refused connection. A connection
		// accepted by the old instance and then dropped is kv's to answer
		// (it waits for every accepted connection before it exits); one in
		// hundreds would be a regression worth failing for.
		assert.LessOrEqual(t, r.failed*100, r.attempts, "%s: connections not served during the upgrade: %v", n.name, r.firstErr)
		assert.NotZero(t, r.versions["1.0.0"], "%s: the client saw the old instance", n.name)
		assert.NotZero(t, r.versions["2.0.0"], "%s: the client saw the new instance on the same address", n.name)
		assert.NotEqual(t, pids[n.name], n.kvPID(), "%s: the instance was restarted", n.name)
		assert.NotZero(t, n.kvPID())
	}
	assert.Equal(t, upgrade.StateComplete, kvStatus(t, n1).State)
}
