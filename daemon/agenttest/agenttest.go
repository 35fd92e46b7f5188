// Package agenttest runs many real agents in one test process: real Serf
// over loopback on free ports, millisecond-scale gossip, a data dir and a
// control socket each. It is the middle tier of peerd's tests, between table
// tests and the integration tests that run real binaries.
package agenttest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Node is one in-process agent.
type Node struct {
	Name   string
	Agent  *daemon.Agent
	Config daemon.Config
}

// Build returns a build identity with the given version and protocol range.
func Build(version string, pmin, pmax int) buildinfo.Info {
	b, _ := buildinfo.Get()
	b.Version, b.ProtocolMin, b.ProtocolMax = version, pmin, pmax
	return b
}

// GossipKey is the gossip key of every test agent in this process: the
// clusters of different tests never meet anyway (each binds its own ports),
// and tests run with encryption on, as production does.
var GossipKey = func() string {
	k, err := cluster.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}()

// Config is an agent config for a test node on loopback with free ports, a
// fresh data dir, and the fast gossip profile.
func Config(t testing.TB, name string) daemon.Config {
	// Unix socket paths are short (108 bytes); t.TempDir embeds the test name.
	dir, err := os.MkdirTemp("", "pd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := daemon.DefaultConfig()
	cfg.Node = name
	cfg.Bind = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.GossipProfile = "fast"
	cfg.Encrypt = GossipKey
	cfg.RetryJoinInterval = 20 * time.Millisecond
	cfg.RetryJoinMaxInterval = 200 * time.Millisecond
	return cfg
}

// Options returns agent options for a test node at the given build, logging
// to the test's log only when PEERD_TEST_LOG is set (Serf is chatty).
func Options(t testing.TB, build buildinfo.Info) daemon.Options {
	var h slog.Handler = slog.DiscardHandler
	if os.Getenv("PEERD_TEST_LOG") != "" {
		h = slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return daemon.Options{Logger: slog.New(h), Build: build}
}

// Start starts an agent and stops it at the end of the test.
func Start(t testing.TB, cfg daemon.Config, opts daemon.Options) (*Node, error) {
	a, err := daemon.New(cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := a.Start(context.Background()); err != nil {
		return nil, err
	}
	t.Cleanup(func() { a.Close() })
	return &Node{Name: cfg.Node, Agent: a, Config: cfg}, nil
}

// StartCluster starts n agents at build, the first one alone and the others
// joining it, and waits until every node sees n alive members. Node names
// are node1..nodeN.
func StartCluster(t testing.TB, n int, build buildinfo.Info) []*Node {
	var nodes []*Node
	for i := 1; i <= n; i++ {
		cfg := Config(t, fmt.Sprintf("node%d", i))
		if i > 1 {
			cfg.Join = []string{nodes[0].Agent.Cluster().LocalAddr()}
		}
		node, err := Start(t, cfg, Options(t, build))
		require.NoError(t, err)
		nodes = append(nodes, node)
	}
	WaitAlive(t, nodes, n)
	return nodes
}

// WaitAlive waits until every given node sees exactly want alive members.
func WaitAlive(t testing.TB, nodes []*Node, want int) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, n := range nodes {
			assert.Equal(c, want, CountStatus(n, "alive"), "alive members seen by %s", n.Name)
		}
	}, 10*time.Second, 10*time.Millisecond)
}

// CountStatus counts the members node sees with the given status.
func CountStatus(node *Node, status string) int {
	n := 0
	for _, m := range node.Agent.Cluster().Members() {
		if m.Status == status {
			n++
		}
	}
	return n
}

// StatusOf is the status node sees for member, or "" if it does not know it.
func StatusOf(node *Node, member string) string {
	for _, m := range node.Agent.Cluster().Members() {
		if m.Name == member {
			return m.Status
		}
	}
	return ""
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
