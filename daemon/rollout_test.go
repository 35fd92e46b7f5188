package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/daemon/api"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleet starts n supervised agents, each with its own copy of a fake v1
// binary, all joined to the first one.
func fleet(t *testing.T, n int, from buildinfo.Info, mutate func(*daemon.Config)) []*agenttest.Supervised {
	t.Helper()
	var out []*agenttest.Supervised
	for i := 1; i <= n; i++ {
		cfg := agenttest.Config(t, fmt.Sprintf("node%d", i))
		cfg.AllowUnsigned = true
		if i > 1 {
			cfg.Join = []string{out[0].Node().Agent.Cluster().LocalAddr()}
		}
		if mutate != nil {
			mutate(&cfg)
		}
		exe := agenttest.FakeBinary(t, t.TempDir(), from)
		out = append(out, agenttest.Supervise(t, cfg, exe, agenttest.Options(t, from)))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, s := range out {
			assert.Equal(c, n, agenttest.CountStatus(s.Node(), "alive"))
		}
	}, 10*time.Second, 10*time.Millisecond)
	return out
}

func trigger(t *testing.T, s *agenttest.Supervised, artifactPath string, req upgrade.TriggerRequest) (upgrade.TriggerResult, error) {
	t.Helper()
	c := api.NewClient(s.Node().Agent.SocketPath())
	up, err := c.UploadArtifact(context.Background(), artifactPath)
	require.NoError(t, err)
	req.ArtifactSHA256 = up.SHA256
	return c.Trigger(context.Background(), req)
}

// waitState waits until the rollout is in state want and also passes the
// extra checks (e.g. a failed node, back up, reports its reason).
func waitState(t *testing.T, s *agenttest.Supervised, want string, also ...func(*assert.CollectT, upgrade.Status)) upgrade.Status {
	t.Helper()
	var st upgrade.Status
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		st, err = api.NewClient(s.Node().Agent.SocketPath()).RolloutStatus(context.Background())
		if !assert.NoError(c, err) || !assert.Equal(c, want, st.State, "%+v", st) {
			return
		}
		for _, f := range also {
			f(c, st)
		}
	}, 60*time.Second, 20*time.Millisecond)
	return st
}

func TestRolloutUpgradesEveryNodeWaveByWave(t *testing.T) {
	nodes := fleet(t, 5, v1, nil)
	art := agenttest.FakeBinary(t, t.TempDir(), v2)

	// Sample the waves offline while the rollout runs: never two at once.
	// Each node's own tag says where it is now; one node's gossiped view
	// of the others may lag (under load it showed a node still restarting
	// after the next wave had its lease).
	stop := make(chan struct{})
	violations := make(chan string, 100)
	var sawOffline atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				close(violations)
				return
			case <-time.After(5 * time.Millisecond):
			}
			waves := map[int]bool{}
			for _, n := range nodes {
				m := n.Node().Agent.Cluster().LocalMember()
				if pr, ok := upgrade.ParseProgress(m.Tags[upgrade.TagRollout]); ok && pr.Phase.Offline() {
					waves[pr.Wave] = true
				}
			}
			if len(waves) > 0 {
				sawOffline.Add(1)
			}
			if len(waves) > 1 {
				violations <- fmt.Sprint(waves)
			}
		}
	}()

	res, err := trigger(t, nodes[2], art, upgrade.TriggerRequest{
		Version: "2.0.0",
		Options: plan.Options{Batch: 2, MinHealthy: 100 * time.Millisecond, Deadline: 30 * time.Second},
	})
	require.NoError(t, err)
	require.Len(t, res.Waves, 3, "5 nodes in batches of 2")

	_, err = trigger(t, nodes[2], art, upgrade.TriggerRequest{
		Version: "2.0.0", Options: plan.Options{Batch: 1, Deadline: time.Minute},
	})
	require.ErrorContains(t, err, "a rollout is already running: plan "+res.PlanID[:8], "a second trigger names the running plan")

	st := waitState(t, nodes[0], upgrade.StateComplete)
	close(stop)
	for v := range violations {
		t.Errorf("two waves offline at once: %s", v)
	}
	assert.Positive(t, sawOffline.Load(), "the sampler saw a wave offline")
	assert.Equal(t, 5, st.Done)
	for _, s := range nodes {
		assert.Equal(t, 1, s.Restarts(), "%s restarted once into the new binary", s.Node().Name)
		assert.Equal(t, "2.0.0", s.Node().Agent.Cluster().LocalMember().Version)
		agent := s.Node().Agent
		cur, ok, err := agent.Versions().Current()
		require.NoError(t, err)
		require.True(t, ok, "the new version is in the version store")
		info, err := os.ReadFile(cur.Path)
		require.NoError(t, err)
		assert.Contains(t, string(info), "fake peerd 2.0.0")
		launcher, err := os.ReadFile(agent.Launcher())
		require.NoError(t, err)
		assert.Contains(t, string(launcher), "fake peerd 1.0.0", "the launcher (the package's file) is never written")
		prev, err := agent.Versions().Previous()
		require.NoError(t, err)
		assert.True(t, prev.Base, "a rollback returns to the launcher")
	}
	require.Eventually(t, func() bool { return nodes[0].Node().Agent.Cluster().ProtocolRange().Max == 2 },
		10*time.Second, 10*time.Millisecond, "every node speaks 2 now")

	// An older version is refused unless it is a rollback (asked on a node
	// that has seen the rollout finish: gossip takes a moment).
	waitState(t, nodes[1], upgrade.StateComplete)
	_, err = trigger(t, nodes[1], agenttest.FakeBinary(t, t.TempDir(), v1), upgrade.TriggerRequest{
		Version: "1.0.0", Options: plan.Options{Batch: 1, Deadline: time.Minute},
	})
	require.ErrorContains(t, err, "older than the running 2.0.0")

	// Every member speaks 2 now: a rollback to 1.0.0 would split the cluster.
	_, err = api.NewClient(nodes[1].Node().Agent.SocketPath()).Trigger(context.Background(), upgrade.TriggerRequest{
		Rollback: true, Options: plan.Options{Batch: 2, Deadline: 30 * time.Second},
	})
	require.ErrorContains(t, err, "cannot roll back to 1.0.0: every member now speaks protocol 2")
}

func TestRollbackReturnsToTheKeptBinary(t *testing.T) {
	v15 := agenttest.Build("1.5.0", 1, 1)
	nodes := fleet(t, 3, v1, nil)
	opts := plan.Options{Batch: 1, MinHealthy: 100 * time.Millisecond, Deadline: 30 * time.Second}
	_, err := trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), v15), upgrade.TriggerRequest{Version: "1.5.0", Options: opts})
	require.NoError(t, err)
	waitState(t, nodes[1], upgrade.StateComplete) // as the node that triggers next sees it

	// `peerd upgrade rollback`: a new progressive plan back to the kept binary.
	rb, err := api.NewClient(nodes[1].Node().Agent.SocketPath()).Trigger(context.Background(), upgrade.TriggerRequest{Rollback: true, Options: opts})
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", rb.Plan.Version)
	assert.True(t, rb.Plan.Rollback)
	waitState(t, nodes[2], upgrade.StateComplete, func(c *assert.CollectT, st upgrade.Status) {
		assert.Equal(c, rb.PlanID, st.PlanID)
	})
	for _, s := range nodes {
		assert.Equal(t, "1.0.0", s.Node().Agent.Cluster().LocalMember().Version, "%s rolled back", s.Node().Name)
		assert.Equal(t, 2, s.Restarts())
	}
}

func TestRolloutRefusesBadArtifactsBeforeAnyNodeGoesOffline(t *testing.T) {
	nodes := fleet(t, 3, v1, nil)
	opts := plan.Options{Batch: 1, MinHealthy: 0, Deadline: 30 * time.Second}

	_, err := trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), v2), upgrade.TriggerRequest{Version: "2.1.0", Options: opts})
	require.ErrorContains(t, err, "reports version 2.0.0, not 2.1.0")

	_, err = trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), v3), upgrade.TriggerRequest{Version: "3.0.0", Options: opts})
	require.ErrorContains(t, err, "does not include the cluster's active protocol 1")

	other := v2
	other.Arch = "riscv64"
	_, err = trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), other), upgrade.TriggerRequest{Version: "2.0.0", Options: opts})
	require.ErrorContains(t, err, "is for linux/riscv64")

	_, err = trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), v2), upgrade.TriggerRequest{Version: "2.0.0", Options: plan.Options{Batch: 3, Deadline: time.Minute}})
	require.ErrorContains(t, err, "would take all 3 members offline")

	st, err := api.NewClient(nodes[0].Node().Agent.SocketPath()).RolloutStatus(context.Background())
	require.NoError(t, err)
	assert.Equal(t, upgrade.StateNone, st.State, "no plan was made")
	for _, s := range nodes {
		assert.Equal(t, 0, s.Restarts())
	}
}

func TestUnhealthyNewVersionRollsBackOnlyTheFailingNodeAndHalts(t *testing.T) {
	// The health check fails on every node, but it only runs on upgraded
	// nodes: the first wave's node rolls back and the rollout halts there.
	nodes := fleet(t, 4, v1, func(c *daemon.Config) { c.HealthCmd = "echo broken >&2; exit 1" })
	res, err := trigger(t, nodes[0], agenttest.FakeBinary(t, t.TempDir(), v2), upgrade.TriggerRequest{
		Version: "2.0.0",
		Options: plan.Options{Batch: 1, MinHealthy: 100 * time.Millisecond, Deadline: 2 * time.Second},
	})
	require.NoError(t, err)
	first := res.Waves[0].Nodes[0]

	st := waitState(t, nodes[0], upgrade.StateHalted, func(c *assert.CollectT, st upgrade.Status) {
		if assert.Len(c, st.Failed, 1) {
			assert.Equal(c, first, st.Failed[0].Name)
			assert.Contains(c, st.Failed[0].Reason, "broken", "the reason comes from the node once it is back")
		}
	})
	assert.Contains(t, st.Hint, "peerd upgrade resume")

	for _, s := range nodes {
		n := s.Node()
		require.Eventually(t, func() bool { return s.Node().Agent.Cluster().LocalMember().Version == "1.0.0" }, 20*time.Second, 10*time.Millisecond)
		_, stored, err := n.Agent.Versions().Current()
		require.NoError(t, err)
		assert.False(t, stored, "%s runs its launcher again: nothing current in the version store", n.Name)
		if n.Name == first {
			assert.Equal(t, 2, s.Restarts(), "into v2, then back to v1")
			state, err := upgrade.LoadState(filepath.Join(n.Config.DataDir, "rollout", "state.json"))
			require.NoError(t, err)
			assert.Equal(t, []string{"2.0.0"}, state.RolledBackFrom, "remembers not to retry on its own")
		} else {
			assert.Equal(t, 0, s.Restarts(), "%s: later waves untouched", n.Name)
		}
	}
}

// TestDryRunPlanRunsAsPreviewed: the plan a dry run prints is the plan
// --plan ID runs, same ID and same waves; a preview that another plan
// overtook is refused rather than run with other waves.
func TestDryRunPlanRunsAsPreviewed(t *testing.T) {
	v15 := agenttest.Build("1.5.0", 1, 1)
	nodes := fleet(t, 5, v1, nil)
	art := agenttest.FakeBinary(t, t.TempDir(), v15)
	opts := plan.Options{Batch: 2, MinHealthy: 100 * time.Millisecond, Deadline: 30 * time.Second}
	preview, err := trigger(t, nodes[1], art, upgrade.TriggerRequest{Version: "1.5.0", Options: opts, DryRun: true})
	require.NoError(t, err)
	require.True(t, preview.DryRun)
	stale, err := trigger(t, nodes[1], art, upgrade.TriggerRequest{Version: "1.5.0", Options: opts, DryRun: true})
	require.NoError(t, err)
	st, err := api.NewClient(nodes[1].Node().Agent.SocketPath()).RolloutStatus(context.Background())
	require.NoError(t, err)
	assert.Equal(t, upgrade.StateNone, st.State, "a dry run starts nothing")

	c := api.NewClient(nodes[1].Node().Agent.SocketPath())
	_, err = api.NewClient(nodes[2].Node().Agent.SocketPath()).Trigger(context.Background(), upgrade.TriggerRequest{PlanID: preview.PlanID})
	require.ErrorContains(t, err, "was previewed on this node", "a preview is kept where it was made")

	res, err := c.Trigger(context.Background(), upgrade.TriggerRequest{PlanID: preview.PlanID[:12]})
	require.NoError(t, err)
	assert.Equal(t, preview.PlanID, res.PlanID, "the plan run is the plan shown")
	assert.Equal(t, preview.Waves, res.Waves, "with the waves shown")
	done := waitState(t, nodes[0], upgrade.StateComplete)
	assert.Equal(t, preview.PlanID, done.PlanID)
	for i, w := range done.Waves {
		var names []string
		for _, n := range w.Nodes {
			names = append(names, n.Name)
		}
		assert.Equal(t, preview.Waves[i].Nodes, names, "wave %d ran the nodes previewed", i+1)
	}

	// The second preview was numbered like the first: a plan ran since.
	waitState(t, nodes[1], upgrade.StateComplete)
	_, err = c.Trigger(context.Background(), upgrade.TriggerRequest{PlanID: stale.PlanID})
	require.ErrorContains(t, err, "out of date")
	require.ErrorContains(t, err, "run the dry run again")
}
