package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		code = checkLeaks(10 * time.Second)
	}
	os.Exit(code)
}

// checkLeaks is goleak.VerifyTestMain with a longer deadline: memberlist's
// Shutdown does not wait for a probe in flight, which ends by itself within
// the probe interval scaled by the node's awareness (2 s and more with the
// fast profile, once a peer failed), past goleak's own retries.
func checkLeaks(within time.Duration) int {
	deadline := time.Now().Add(within)
	for {
		err := goleak.Find()
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "goleak: goroutines still running %s after the tests: %v\n", within, err)
			return 1
		}
	}
}

var (
	v1 = agenttest.Build("1.0.0", 1, 1)
	v2 = agenttest.Build("2.0.0", 1, 2)
	v3 = agenttest.Build("3.0.0", 3, 3)
)

func TestClusterConvergesAndServesControlAPI(t *testing.T) {
	nodes := agenttest.StartCluster(t, 5, v1)

	c := api.NewClient(nodes[2].Agent.SocketPath())
	members, err := c.Members(context.Background(), "")
	require.NoError(t, err)
	require.Len(t, members, 5)
	for _, m := range members {
		assert.Equal(t, "alive", m.Status)
		assert.Equal(t, "1.0.0", m.Version)
		assert.Equal(t, 1, m.ProtocolMax)
		assert.NotEmpty(t, m.HTTPAddr, "the peer HTTP address is advertised")
	}

	info, err := c.Info(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "node3", info.Node.Name)
	assert.Equal(t, 5, info.Cluster.Size)
	assert.Equal(t, 1, info.Cluster.ActiveProtocol)

	_, err = c.Members(context.Background(), "dead")
	assert.ErrorContains(t, err, `status "dead": want one of alive, leaving, left, failed`)

	st, err := os.Stat(nodes[0].Agent.SocketPath())
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "only the agent's owner may use the control socket")
}

func TestMixedVersionsPeerAndIncompatibleIsRefused(t *testing.T) {
	nodes := agenttest.StartCluster(t, 2, v1)
	for i := 3; i <= 4; i++ {
		cfg := agenttest.Config(t, "v2-"+string(rune('a'+i)))
		cfg.Join = []string{nodes[0].Agent.Cluster().LocalAddr()}
		n, err := agenttest.Start(t, cfg, agenttest.Options(t, v2))
		require.NoError(t, err)
		nodes = append(nodes, n)
	}
	agenttest.WaitAlive(t, nodes, 4)
	assert.Equal(t, 1, nodes[3].Agent.Cluster().ProtocolRange().Max, "a v1 member keeps the active protocol at 1")

	cfg := agenttest.Config(t, "v3")
	cfg.Join = []string{nodes[2].Agent.Cluster().LocalAddr()}
	_, err := agenttest.Start(t, cfg, agenttest.Options(t, v3))
	require.Error(t, err)
	assert.True(t, errors.Is(err, cluster.ErrIncompatibleProtocol), "got %v", err)
	assert.Contains(t, err.Error(), "3-3")
	assert.Contains(t, err.Error(), "cluster range 1-1")

	for _, n := range nodes {
		assert.Equal(t, "", agenttest.StatusOf(n, "v3"), "%s must not know the refused node", n.Name)
		assert.Equal(t, 4, agenttest.CountStatus(n, "alive"))
	}
}

func TestOldVersionRefusedOnceClusterSwitchedProtocol(t *testing.T) {
	nodes := agenttest.StartCluster(t, 3, v2)
	require.Equal(t, 2, nodes[0].Agent.Cluster().ProtocolRange().Max)

	cfg := agenttest.Config(t, "old")
	cfg.Join = []string{nodes[0].Agent.Cluster().LocalAddr()}
	_, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.ErrorIs(t, err, cluster.ErrIncompatibleProtocol)
	assert.Contains(t, err.Error(), "active protocol 2")
}

func TestRetryJoinWaitsForTheCluster(t *testing.T) {
	// The seed's address must be known before it is up: a first run binds
	// port 0 and the second, in the same data dir, gets that port back.
	seedCfg := agenttest.Config(t, "seed")
	first, err := agenttest.Start(t, seedCfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	seedAddr := first.Agent.Cluster().LocalAddr()
	require.NoError(t, first.Agent.Close())

	late := agenttest.Config(t, "late")
	late.RetryJoin = []string{seedAddr}
	lateNode, err := agenttest.Start(t, late, agenttest.Options(t, v1))
	require.NoError(t, err, "retry-join does not fail start")

	seed, err := agenttest.Start(t, seedCfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	require.Equal(t, seedAddr, seed.Agent.Cluster().LocalAddr(), "the restarted seed is back at its port (unless another process took it in between)")
	agenttest.WaitAlive(t, []*agenttest.Node{seed, lateNode}, 2)
}

func TestRetryJoinStopsOnIncompatibleProtocol(t *testing.T) {
	nodes := agenttest.StartCluster(t, 2, v1)
	cfg := agenttest.Config(t, "v3")
	cfg.RetryJoin = []string{nodes[0].Agent.Cluster().LocalAddr()}
	n, err := agenttest.Start(t, cfg, agenttest.Options(t, v3))
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- n.Agent.Run(context.Background(), nil, nil) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, cluster.ErrIncompatibleProtocol, "the agent stops instead of retrying forever")
	case <-time.After(10 * time.Second):
		t.Fatal("agent kept retrying an incompatible cluster")
	}
}

func TestLeaveAndSignals(t *testing.T) {
	nodes := agenttest.StartCluster(t, 3, v1)

	// A client's `peerd leave`: the others see "left" and Run returns nil.
	done := make(chan error, 1)
	go func() { done <- nodes[1].Agent.Run(context.Background(), nil, nil) }()
	require.NoError(t, api.NewClient(nodes[1].Agent.SocketPath()).Leave(context.Background()))
	require.NoError(t, waitErr(t, done))
	require.Eventually(t, func() bool { return agenttest.StatusOf(nodes[0], "node2") == "left" }, 10*time.Second, 10*time.Millisecond)
	// It said so before it went: should Serf take the leave for a failure
	// (a race of the leave intent with a push/pull sync), the tag still
	// tells the others it left.
	for _, m := range nodes[0].Agent.Cluster().Members() {
		if m.Name == "node2" {
			assert.Equal(t, "1", m.Tags[cluster.TagLeaving], "node2's last tags, as node1 saw them")
		}
	}

	// SIGTERM leaves gracefully too.
	signals := make(chan os.Signal, 1)
	go func() { done <- nodes[2].Agent.Run(context.Background(), signals, nil) }()
	signals <- syscall.SIGTERM
	require.NoError(t, waitErr(t, done))
	require.Eventually(t, func() bool { return agenttest.StatusOf(nodes[0], "node3") == "left" }, 10*time.Second, 10*time.Millisecond)
}

func TestReloadChangesTags(t *testing.T) {
	nodes := agenttest.StartCluster(t, 2, v1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 1)
	done := make(chan error, 1)
	reloaded := nodes[1].Config
	reloaded.Tags = map[string]string{"zone": "b"}
	go func() {
		done <- nodes[1].Agent.Run(ctx, signals, func() (daemon.Config, error) { return reloaded, nil })
	}()
	signals <- syscall.SIGHUP
	require.Eventually(t, func() bool {
		for _, m := range nodes[0].Agent.Cluster().Members() {
			if m.Name == "node2" {
				return m.Tags["zone"] == "b" && m.Version == "1.0.0"
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.ErrorIs(t, waitErr(t, done), context.Canceled)
}

func TestDifferentGossipKeyCannotJoin(t *testing.T) {
	k1, _ := cluster.GenerateKey()
	k2, _ := cluster.GenerateKey()
	cfg := agenttest.Config(t, "a")
	cfg.Encrypt = k1
	a, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err)

	cfg = agenttest.Config(t, "b")
	cfg.Encrypt = k2
	cfg.Join = []string{a.Agent.Cluster().LocalAddr()}
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gossip key")

	cfg = agenttest.Config(t, "c")
	cfg.Encrypt = k1
	cfg.Join = []string{a.Agent.Cluster().LocalAddr()}
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err, "the right key joins")
}

func TestStartErrors(t *testing.T) {
	a := agenttest.StartCluster(t, 1, v1)[0]

	cfg := agenttest.Config(t, "dup")
	cfg.Socket = a.Agent.SocketPath()
	_, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	assert.ErrorContains(t, err, "another agent is serving socket")

	cfg = agenttest.Config(t, "busy")
	cfg.HTTPAddr = a.Agent.HTTPAddr()
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	assert.ErrorContains(t, err, "stop the process using it, or choose another port with --http-addr")

	cfg = agenttest.Config(t, "busy2")
	cfg.Bind = a.Agent.Cluster().LocalAddr()
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	assert.ErrorContains(t, err, "choose another port with --bind")

	cfg = agenttest.Config(t, "nodir")
	f, err := os.CreateTemp("", "pdfile")
	require.NoError(t, err)
	f.Close()
	defer os.Remove(f.Name())
	cfg.DataDir = f.Name() + "/data"
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	assert.ErrorContains(t, err, "choose another --data-dir")

	cfg = agenttest.Config(t, "nobody-home")
	cfg.Join = []string{refusingAddr(t)}
	_, err = agenttest.Start(t, cfg, agenttest.Options(t, v1))
	assert.ErrorContains(t, err, "join 127.0.0.1:")
}

// TestPortZeroIsReported: an agent given port 0 for gossip and HTTP reports
// the ports it bound (info, the addresses file, the advertised HTTP tag),
// and gets them back when it restarts in the same data dir.
func TestPortZeroIsReported(t *testing.T) {
	cfg := agenttest.Config(t, "zero") // 127.0.0.1:0 for both
	n, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	info, err := api.NewClient(n.Agent.SocketPath()).Info(context.Background())
	require.NoError(t, err)
	got := info.Addrs
	assert.Equal(t, os.Getpid(), got.PID)
	assert.Equal(t, n.Agent.SocketPath(), got.Socket)
	assert.Equal(t, n.Agent.Cluster().BoundAddr(), got.Gossip)
	assert.Equal(t, got.Gossip, got.GossipAdvertise)
	assert.Equal(t, info.Node.Addr, got.GossipAdvertise)
	assert.NotContains(t, []string{got.Gossip, got.HTTP}, "127.0.0.1:0")
	assert.Equal(t, n.Agent.HTTPAddr(), got.HTTP)
	assert.Equal(t, got.HTTP, info.Node.HTTPAddr, "the advertised HTTP tag carries the bound port")
	name, err := peerHealth(got.HTTP)
	require.NoError(t, err)
	assert.Equal(t, "zero", name)

	file, err := api.ReadAddrs(cfg.DataDir)
	require.NoError(t, err)
	assert.Equal(t, got, file, "the addresses file says what info says")

	// Over the peer API (anyone on the network) the local details are left out.
	resp, err := http.Get("http://" + got.HTTP + "/v1/info")
	require.NoError(t, err)
	defer resp.Body.Close()
	var peer api.Info
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&peer))
	assert.Equal(t, api.Addrs{Gossip: got.Gossip, GossipAdvertise: got.GossipAdvertise, HTTP: got.HTTP}, peer.Addrs)

	// A restart gets the same ports back while they are free...
	require.NoError(t, n.Agent.Close())
	again, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	assert.Equal(t, got.Gossip, again.Agent.Cluster().BoundAddr())
	assert.Equal(t, got.HTTP, again.Agent.HTTPAddr())

	// ...and others when they are taken.
	require.NoError(t, again.Agent.Close())
	hold, err := net.Listen("tcp", got.HTTP)
	require.NoError(t, err)
	defer hold.Close()
	holdGossip, err := net.Listen("tcp", got.Gossip)
	require.NoError(t, err)
	defer holdGossip.Close()
	moved, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	assert.NotEqual(t, got.Gossip, moved.Agent.Cluster().BoundAddr())
	assert.NotEqual(t, got.HTTP, moved.Agent.HTTPAddr())
	file, err = api.ReadAddrs(cfg.DataDir)
	require.NoError(t, err)
	assert.Equal(t, moved.Agent.HTTPAddr(), file.HTTP, "the file follows")
}

// TestBindDefaults: with a bind port of 0 and no --http-addr, the peer HTTP
// port is picked too (not 7947, where a second such agent would collide).
func TestBindDefaults(t *testing.T) {
	cfg := agenttest.Config(t, "defaults")
	cfg.HTTPAddr = ""
	assert.Equal(t, "127.0.0.1:0", cfg.HTTPAddress())
	cfg.Bind = "127.0.0.1:7946"
	assert.Equal(t, "127.0.0.1:7947", cfg.HTTPAddress())

	cfg.Bind, cfg.Advertise = "0.0.0.0:0", "10.0.0.1:7946"
	assert.ErrorContains(t, cfg.Validate(), "--advertise 10.0.0.1:7946 names port 7946, but --bind 0.0.0.0:0 lets the kernel pick the port")
}

func peerHealth(addr string) (string, error) {
	resp, err := http.Get("http://" + addr + "/v1/health")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var h api.Health
	err = json.NewDecoder(resp.Body).Decode(&h)
	return h.Node, err
}

func waitErr(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop")
		return nil
	}
}

// refusingAddr is a loopback address where a TCP connection is refused for
// as long as the test runs: the port is bound, so nothing else can take it,
// but nothing listens.
func refusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
