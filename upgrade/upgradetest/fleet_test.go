package upgradetest

import (
	"flag"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var simNodes = flag.Int("sim.nodes", 0, "run TestSimBench with this many nodes (make bench-sim)")

// rollout runs one rollout of a fleet of n to 2.0.0 with the given
// options and checks it: every node upgraded, each went offline once, and
// the checker saw at most one wave offline at any instant (and saw one).
func rollout(t *testing.T, opts Options, po plan.Options) *Hub {
	h := New(t, opts)
	res, err := h.Trigger("node0001", "2.0.0", po)
	require.NoError(t, err)
	ok := h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.0") })
	require.True(t, ok, "rollout did not complete: %s", h.Summary())
	maxWaves, maxNodes, offline := h.Rec.Stats()
	assert.Empty(t, h.Rec.Violations())
	assert.Equal(t, 1, maxWaves, "exactly one wave offline at a time (and one was seen)")
	assert.LessOrEqual(t, maxNodes, len(res.Waves[0].Nodes), "no more nodes offline than a wave holds")
	assert.Equal(t, opts.Nodes, offline, "every node went offline once")
	sets, queries, asked := h.Traffic()
	t.Logf("%d nodes: fake %s, tag sets %d, queries %d, asked %d", opts.Nodes, time.Since(time.Unix(946684800, 0)), sets, queries, asked)
	return h
}

func TestRolloutInTheHarness(t *testing.T) {
	for _, tc := range []struct {
		nodes int
		po    plan.Options
	}{
		{5, plan.Options{Batch: 1}},
		{50, plan.Options{Batch: 5}},
		{500, plan.Options{MaxUnavailable: "10%"}},
	} {
		t.Run(fmt.Sprint(tc.nodes), func(t *testing.T) {
			if tc.nodes > 100 && (testing.Short() || raceEnabled) {
				// make test runs it again without -race: the detector
				// makes 500 engines in one process take most of CI's time.
				t.Skip("-short or -race")
			}
			synctest.Test(t, func(t *testing.T) {
				tc.po.MinHealthy, tc.po.Deadline = time.Second, 5*time.Minute
				rollout(t, Options{Nodes: tc.nodes, Seed: 1}, tc.po)
			})
		})
	}
}

// TestLostTagUpdates: tag updates that fail outright or never reach some
// peers must not stall the rollout; each node sets its tag again until
// the update is confirmed, and re-asserts it while the plan runs.
func TestLostTagUpdates(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := rollout(t, Options{Nodes: 20, Seed: seed, Faults: Faults{TagFail: 0.2, Loss: 0.1, MaxDelayRounds: 3}},
					plan.Options{Batch: 4, MinHealthy: time.Second, Deadline: 5 * time.Minute})
				sets, queries, asked := h.Traffic()
				t.Logf("fake %s, tag sets %d, queries %d, asked %d", time.Since(time.Unix(946684800, 0)), sets, queries, asked)
				assert.Greater(t, sets, 20*8, "nodes published again what was lost")
			})
		})
	}
}

// TestAbortInterruptsAHungFetch: a node fetching the artifact from a
// frozen peer (SIGSTOP: it accepts, then never answers) stops within a
// second of the operator's abort, and never goes offline.
func TestAbortInterruptsAHungFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 5, Seed: 1})
		// Freeze the origin, the only node that has the artifact, at the
		// instant the first other node begins to prepare.
		first := make(chan string, 1)
		var mu sync.Mutex
		var stuck string
		var after []upgrade.Phase // what the stuck node did next
		h.Rec.OnChange(func(node string, st upgrade.NodeState) {
			mu.Lock()
			defer mu.Unlock()
			if node == stuck {
				after = append(after, st.Phase)
			}
			if stuck == "" && node != "node0001" && st.Phase == upgrade.PhasePrepare {
				stuck = node
				first <- node
				h.Pause("node0001")
			}
		})
		_, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		select {
		case <-first:
		case <-time.After(time.Minute):
			t.Fatalf("no node began to prepare: %s", h.Summary())
		}
		time.Sleep(10 * time.Second)
		require.Equal(t, upgrade.PhasePrepare, h.Node(stuck).Engine().State().Phase, "%s is stuck fetching from the frozen origin", stuck)

		// The operator aborts on a node that knows the plan (others may not
		// have fetched it before the origin froze; the stuck node has).
		other := stuck
		for _, n := range h.Nodes() {
			if e := n.Engine(); n.Name != "node0001" && n.Name != stuck && e != nil && e.State().PlanID != "" {
				other = n.Name
				break
			}
		}
		_, err = h.Node(other).Engine().Control(t.Context(), upgrade.ActionAbort)
		require.NoError(t, err)
		asked := time.Now()
		require.True(t, h.WaitFor(time.Minute, func() bool {
			return h.Node(stuck).Engine().State().Phase == upgrade.PhaseAborted
		}), "abort did not stop %s: %s", stuck, h.Summary())
		assert.Less(t, time.Since(asked), time.Second, "the abort took effect within a second")
		h.Resume("node0001")
		mu.Lock()
		assert.Equal(t, []upgrade.Phase{upgrade.PhaseAborted}, after, "%s went from prepare to aborted, never offline", stuck)
		mu.Unlock()
		assert.Equal(t, "1.0.0", h.Node(stuck).Version())
	})
}

// TestSimBench is make bench-sim: one rollout of -sim.nodes nodes, batch
// 10 %, dwell 1 s of fake time, reported in one line.
func TestSimBench(t *testing.T) {
	if *simNodes == 0 {
		t.Skip("set -sim.nodes=N (make bench-sim)")
	}
	n := *simNodes
	wall, cpu := time.Now(), cpuTime()
	encodes := plan.Encodes()
	var waves, maxWaves int
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: n, Seed: 1})
		res, err := h.Trigger("node0001", "2.0.0", plan.Options{MaxUnavailable: "10%", MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		waves = len(res.Waves)
		require.True(t, h.WaitFor(time.Hour, func() bool { return h.AllAt("2.0.0") }), "rollout did not complete: %s", h.Summary())
		maxWaves, _, _ = h.Rec.Stats()
		require.Empty(t, h.Rec.Violations())
	})
	fmt.Printf("sim: N=%d waves=%d wall=%.1f s max_offline_waves=%d plan_encodes=%d cpu=%.1f s\n",
		n, waves, time.Since(wall).Seconds(), maxWaves, plan.Encodes()-encodes, (cpuTime() - cpu).Seconds())
}

// cpuTime is this process's CPU time so far (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
