package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestJoinAndForceLeaveAtRuntime: peerd join and force-leave, through the
// control API of a running agent.
func TestJoinAndForceLeaveAtRuntime(t *testing.T) {
	a, err := agenttest.Start(t, agenttest.Config(t, "a"), agenttest.Options(t, v1))
	require.NoError(t, err)
	b, err := agenttest.Start(t, agenttest.Config(t, "b"), agenttest.Options(t, v1))
	require.NoError(t, err)
	ctx := context.Background()
	cb := api.NewClient(b.Agent.SocketPath())

	_, err = cb.Join(ctx, []string{"a:b:c"})
	assert.ErrorContains(t, err, "is not HOST or HOST:PORT")
	res, err := cb.Join(ctx, []string{a.Agent.Cluster().LocalAddr()})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Contacted)
	agenttest.WaitAlive(t, []*agenttest.Node{a, b}, 2)

	ca := api.NewClient(a.Agent.SocketPath())
	_, err = ca.ForceLeave(ctx, "b")
	assert.ErrorContains(t, err, "member b is alive: only a failed member can be forced to leave")
	_, err = ca.ForceLeave(ctx, "nobody")
	assert.ErrorContains(t, err, `no member named "nobody"`)

	// b stops without leaving: a sees it fail, then forces it out.
	require.NoError(t, b.Agent.Close())
	require.Eventually(t, func() bool { return agenttest.StatusOf(a, "b") == "failed" }, 20*time.Second, 10*time.Millisecond)
	fl, err := ca.ForceLeave(ctx, "b")
	require.NoError(t, err)
	assert.Equal(t, "left", fl.Status)
	require.Eventually(t, func() bool { return agenttest.StatusOf(a, "b") == "left" }, 10*time.Second, 10*time.Millisecond)
}

// TestForget: peerd forget unpins a member's identity key once, says when
// there was none to unpin, and refuses the agent's own name.
func TestForget(t *testing.T) {
	nodes := agenttest.StartCluster(t, 2, v1)
	ctx := context.Background()
	c := api.NewClient(nodes[0].Agent.SocketPath())
	key := nodes[0].Agent.Cluster().PinnedKey("node2")
	require.NotEmpty(t, key, "node1 pinned node2's key on sight")

	res, err := c.Forget(ctx, "node2")
	require.NoError(t, err)
	assert.Equal(t, api.ForgetResult{Node: "node2", Forgotten: true, Key: key}, res)
	// (Not node2 again: a periodic push-pull may have pinned it anew.)
	res, err = c.Forget(ctx, "nobody")
	require.NoError(t, err)
	assert.Equal(t, api.ForgetResult{Node: "nobody"}, res, "no key pinned, nothing to forget")

	_, err = c.Forget(ctx, "node1")
	assert.ErrorContains(t, err, "a node does not forget its own key")
}
