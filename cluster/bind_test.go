package cluster

import (
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func startTestNode(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	c, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(context.Background()))
	t.Cleanup(func() { c.Close() })
	return c
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	n, err := strconv.Atoi(p)
	require.NoError(t, err)
	return n
}

// TestBindPortZero: memberlist picks the port, and the node reports the one
// it bound and advertises it.
func TestBindPortZero(t *testing.T) {
	c := startTestNode(t, TestConfig("a"))
	port := portOf(t, c.BoundAddr())
	assert.NotZero(t, port)
	assert.Equal(t, "127.0.0.1:"+strconv.Itoa(port), c.BoundAddr())
	assert.Equal(t, c.BoundAddr(), c.LocalAddr(), "on a loopback bind the advertised address is the bound one")
	// Both halves are really bound: neither TCP nor UDP can be taken again.
	assert.ErrorContains(t, checkBindable(c.BoundAddr()), "is not available")

	// Another node joins at the reported address.
	b := startTestNode(t, TestConfig("b"))
	n, err := b.Join([]string{c.LocalAddr()})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}

// TestPreferPort: with port 0, the preferred port is bound while it is
// free, and a free one is picked when it is not.
func TestPreferPort(t *testing.T) {
	first := startTestNode(t, TestConfig("a"))
	port := portOf(t, first.BoundAddr())
	require.NoError(t, first.Close())

	cfg := TestConfig("a")
	cfg.PreferPort = port
	again := startTestNode(t, cfg)
	assert.Equal(t, port, portOf(t, again.BoundAddr()), "a restart keeps its port")

	// While that node holds the port, another preferring it gets another.
	cfg = TestConfig("b")
	cfg.PreferPort = port
	other := startTestNode(t, cfg)
	assert.NotEqual(t, port, portOf(t, other.BoundAddr()))
	assert.NotZero(t, portOf(t, other.BoundAddr()))

	// A fixed port in use is an error that says what to do, not a fallback.
	cfg = TestConfig("c")
	cfg.BindAddr = again.BoundAddr()
	c, err := New(cfg)
	require.NoError(t, err)
	assert.ErrorContains(t, c.Start(context.Background()), "choose another port with --bind")
}

func TestAdvertisePortWithBindPortZero(t *testing.T) {
	cfg := TestConfig("a")
	cfg.AdvertiseAddr = "127.0.0.1:7000"
	assert.ErrorContains(t, cfg.Validate(), "port 7000 with a bind port of 0")

	// Advertised port 0 is the bound one: picked...
	cfg.AdvertiseAddr = "127.0.0.1:0"
	c := startTestNode(t, cfg)
	assert.Equal(t, c.BoundAddr(), c.LocalAddr())

	// ...or fixed (memberlist itself would advertise port 0).
	cfg.BindAddr, cfg.AdvertiseAddr = "0.0.0.0:7946", "10.0.0.1:0"
	require.NoError(t, cfg.Validate())
	sc := cfg.serfConfig(7946)
	assert.Equal(t, "10.0.0.1", sc.MemberlistConfig.AdvertiseAddr)
	assert.Equal(t, 7946, sc.MemberlistConfig.AdvertisePort)
}

// TestJoinAddressDefaultPort: a join address without a port means the
// default gossip port, not this node's own bind port (memberlist's
// default), which with --bind HOST:0 is some port the cluster never used.
func TestJoinAddressDefaultPort(t *testing.T) {
	assert.Equal(t, []string{"10.0.0.1:7946", "10.0.0.2:8000", "[::1]:7946", "[fe80::1]:9", "node1.example:7946"},
		WithDefaultPort([]string{"10.0.0.1", "10.0.0.2:8000", "::1", "[fe80::1]:9", "node1.example"}))
}

// TestBindHintBlamesOnlyTheCause: "stop the process using it" only for an
// address in use.
func TestBindHintBlamesOnlyTheCause(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	err = checkBindable(ln.Addr().String())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "stop the process using it")

	// 192.0.2.1 (TEST-NET-1) is no address of this host: nothing is sent.
	err = checkBindable("192.0.2.1:7946")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "process using it")
	assert.Contains(t, err.Error(), "not an address of this host")
}
