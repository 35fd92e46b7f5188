package upgradetest

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringPrepareFailsTheNode: input that kills the agent while it
// prepares (here its preflight, standing for a decoder that panics) must
// not kill it on every restart. The node's supervisor restarts it three
// times; the fourth process fails the node instead of preparing again, it
// never goes offline, and the rollout halts there.
//
// It takes about 10 ms of wall time for minutes of the bubble's fake time:
// it does crash the node in prepare. Without the attempt count
// (countPrepareAttempt never failing the node) the victim is killed there
// 600 times in the 10 fake minutes and the test fails.
func TestCrashDuringPrepareFailsTheNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		victim, crashes := "", 0
		crashed := make(chan string, 16)
		opts := Options{Nodes: 5, Seed: 1, Engine: func(c *upgrade.Config) {
			self := c.Target.(*upgrade.Self)
			name := filepath.Base(filepath.Dir(c.DataDir))
			inner := self.Preflight
			self.Preflight = func(ctx context.Context, path string) (buildinfo.Info, error) {
				mu.Lock()
				if victim == "" && name != "node0001" {
					victim = name // the first node to prepare after the origin's checks
				}
				crash := name == victim
				if crash {
					crashes++
				}
				mu.Unlock()
				if !crash {
					return inner(ctx, path)
				}
				crashed <- name // the process dies here: the test kills it
				<-ctx.Done()
				return buildinfo.Info{}, ctx.Err()
			}
		}}
		h := New(t, opts)
		h.Supervise(crashed, nil) // every crashed process is started again

		res, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		failed := h.WaitFor(10*time.Minute, func() bool {
			mu.Lock()
			v := victim
			mu.Unlock()
			if v == "" {
				return false
			}
			e := h.Node(v).Engine()
			return e != nil && e.State().Phase == upgrade.PhaseFailed
		})
		mu.Lock()
		v, n := victim, crashes
		mu.Unlock()
		require.True(t, failed, "%s did not fail after %d crashes in prepare: %s", v, n, h.Summary())
		st := h.Node(v).Engine().State()
		assert.Contains(t, st.Reason, "the agent died during each of the last 3 attempts to prepare this plan")
		assert.Equal(t, 3, n, "three processes crashed in prepare, the fourth failed the node")
		assert.Zero(t, st.PrepareAttempts, "the count ends with the prepare phase")
		assert.Equal(t, "1.0.0", h.Node(v).Version(), "%s never went offline", v)

		// The rollout halts at the failed node's wave: no later wave starts.
		time.Sleep(time.Minute)
		w := slices.IndexFunc(res.Waves, func(w plan.Wave) bool { return slices.Contains(w.Nodes, v) })
		require.GreaterOrEqual(t, w, 0)
		for _, later := range res.Waves[w+1:] {
			for _, name := range later.Nodes {
				assert.Equal(t, "1.0.0", h.Node(name).Version(), "%s, after the failed wave, stayed at 1.0.0", name)
			}
		}
		assert.Empty(t, h.Rec.Violations())
	})
}
