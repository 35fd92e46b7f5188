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
