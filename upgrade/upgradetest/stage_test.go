package upgradetest

import (
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// storeAt is what a node's version store holds of 2.0.0 at an instant.
type storeAt struct {
	staged  bool   // 2.0.0's binary and digest are there and verify
	current string // the version current names, "" for none
}

func storeOf(n *Node) storeAt {
	_, staged := n.vs.Stored("2.0.0")
	cur, ok, _ := n.vs.Current()
	if !ok {
		return storeAt{staged: staged}
	}
	return storeAt{staged: staged, current: cur.Version}
}

// TestStagedBeforeTheLease: prepare stages the new version in the version
// store while the node serves, so that under the lease the node only
// activates it. A node killed once it is staged (ready, before its lease)
// comes back at the old version with nothing pointing at the staged one,
// and goes on from there; a node killed right after activating comes back
// at the new version and enters its health gate. Both finish the rollout.
func TestStagedBeforeTheLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu      sync.Mutex
			seen    = map[string]map[upgrade.Phase]storeAt{} // node -> phase -> store when it was entered
			killed  = map[string]upgrade.Phase{}
			victims = map[upgrade.Phase]string{}
			back    = map[string]string{} // node -> the version it came back at
			resumed = map[string]upgrade.Phase{}
		)
		kills := make(chan string, 4)
		h := (*Hub)(nil)
		opts := Options{Nodes: 5, Seed: 3, Engine: func(c *upgrade.Config) {
			name := filepath.Base(filepath.Dir(c.DataDir))
			inner := c.Observe
			c.Observe = func(st upgrade.NodeState) {
				inner(st)
				if st.PlanID == "" {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if seen[name] == nil {
					seen[name] = map[upgrade.Phase]storeAt{}
				}
				if _, ok := seen[name][st.Phase]; !ok {
					seen[name][st.Phase] = storeOf(h.Node(name))
				}
				// The first node other than the origin to be staged dies
				// there; the next one to have activated dies before its
				// restart.
				for _, ph := range []upgrade.Phase{upgrade.PhaseReady, upgrade.PhaseRestart} {
					if st.Phase == ph && victims[ph] == "" && name != "node0001" && killed[name] == "" {
						victims[ph], killed[name] = name, ph
						kills <- name // killed off the machine's goroutine
					}
				}
			}
		}}
		h = New(t, opts)
		h.Supervise(kills, func(name string) {
			n := h.Node(name)
			mu.Lock()
			back[name] = n.Version()
			if e := n.Engine(); e != nil {
				resumed[name] = e.State().Phase
			}
			mu.Unlock()
		})

		_, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.0") }), "rollout did not complete: %s", h.Summary())
		assert.Empty(t, h.Rec.Violations())

		mu.Lock()
		defer mu.Unlock()
		require.NotEmpty(t, victims[upgrade.PhaseReady], "a node was killed once staged (the test saw the situation it tests)")
		require.NotEmpty(t, victims[upgrade.PhaseRestart], "a node was killed after activating")
		for name, phases := range seen {
			ready, ok := phases[upgrade.PhaseReady]
			require.True(t, ok, "%s went through ready", name)
			assert.Equal(t, storeAt{staged: true}, ready, "%s: staged before the lease, nothing points at it", name)
			apply := phases[upgrade.PhaseApply]
			assert.Equal(t, storeAt{staged: true}, apply, "%s: offline with 2.0.0 staged, not yet current", name)
			restart := phases[upgrade.PhaseRestart]
			assert.Equal(t, storeAt{staged: true, current: "2.0.0"}, restart, "%s: activated before its restart", name)
		}
		// The node killed once staged came back at 1.0.0 and went on (it
		// asked for its lease and went offline after the restart); the one
		// killed after activating came back at 2.0.0, in its health gate.
		v := victims[upgrade.PhaseReady]
		assert.Equal(t, "1.0.0", back[v], "%s, killed once staged, came back at the old version", v)
		assert.Equal(t, upgrade.PhaseReady, resumed[v])
		w := victims[upgrade.PhaseRestart]
		assert.Equal(t, "2.0.0", back[w], "%s, killed after activating, came back at the new version", w)
		assert.Equal(t, upgrade.PhaseHealth, resumed[w])
		assert.Equal(t, "2.0.0", h.Node(v).Version())
		assert.Equal(t, "2.0.0", storeOf(h.Node(v)).current)
	})
}
