package upgradetest

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	simSeeds = flag.Int("sim.seeds", 0, "fault schedules TestFaultSchedules runs (default 200, or 20 under -race)")
	simSeed  = flag.Uint64("sim.seed", 0, "run only this fault schedule (replay a failing seed)")
	simBig   = flag.Bool("sim.big", false, "fleets of 50-200 nodes instead of 20-50")
)

// schedule counts what the fault schedules did, across seeds, so the test
// can show it saw the situations it claims to test.
var schedule struct {
	faults, targeted, duringOffline, concurrent, refused, late atomic.Int64
}

// TestFaultSchedules runs seeded fault schedules: a rollout of a fleet of
// 20 to 50 nodes (50 to 200 with -sim.big) with lossy, slow, duplicating
// gossip, some nodes' clocks an hour or a year off, concurrent triggers,
// and, at random instants, partitions and heals, kills and restarts,
// pauses, and late joiners. The recorder checks C1 (no two waves offline)
// and C2 (every offline node covered by a majority's live grants) all the
// while; every rollout must then complete. A failing seed is printed;
// replay it with -sim.seed=N.
func TestFaultSchedules(t *testing.T) {
	n := *simSeeds
	if n == 0 {
		n = 200
		if raceEnabled {
			n = 20 // the race detector makes each one ten times slower
		}
	}
	first := uint64(1)
	if *simSeed != 0 {
		first, n = *simSeed, 1
	}
	for seed := first; seed < first+uint64(n); seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { runSchedule(t, seed) })
		})
	}
	if t.Failed() || n < 20 {
		return
	}
	t.Logf("%d faults (%d aimed at a node going offline), %d while a node was offline; %d concurrent triggers (%d refused); %d late joiners",
		schedule.faults.Load(), schedule.targeted.Load(), schedule.duringOffline.Load(), schedule.concurrent.Load(), schedule.refused.Load(), schedule.late.Load())
	assert.Positive(t, schedule.duringOffline.Load(), "faults struck while nodes were offline")
	assert.Positive(t, schedule.concurrent.Load(), "some schedules triggered twice at once")
	assert.Positive(t, schedule.late.Load(), "some schedules had late joiners")
}

func runSchedule(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	nodes := 20 + rng.IntN(31)
	if *simBig {
		nodes = 50 + rng.IntN(151)
	}
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node%04d", i+1)
	}
	offsets := map[string]time.Duration{}
	for range nodes / 10 {
		skew := []time.Duration{-time.Hour, time.Hour, 365 * 24 * time.Hour}[rng.IntN(3)]
		offsets[names[1+rng.IntN(nodes-1)]] = skew // the origin keeps a good clock
	}
	h := New(t, Options{Nodes: nodes, Seed: seed, Offsets: offsets, Faults: Faults{
		MaxDelayRounds: rng.IntN(4),
		Loss:           0.05 * rng.Float64(),
		Duplicate:      0.05 * rng.Float64(),
		TagFail:        0.05 * rng.Float64(),
	}})
	po := plan.Options{Batch: 1 + rng.IntN(max(1, nodes/5)), MinHealthy: time.Second, Deadline: 5 * time.Minute}

	// The trigger, and maybe a second one at once from another node: at
	// most one plan may win.
	var wg sync.WaitGroup
	var won atomic.Int64
	trigger := func(node string, delay time.Duration) {
		defer wg.Done()
		time.Sleep(delay)
		if _, err := h.Trigger(node, "2.0.0", po); err == nil {
			won.Add(1)
		} else if node != "node0001" {
			schedule.refused.Add(1)
		}
	}
	wg.Add(1)
	go trigger("node0001", 0)
	if rng.IntN(3) == 0 {
		schedule.concurrent.Add(1)
		wg.Add(1)
		go trigger(names[1+rng.IntN(nodes-1)], time.Duration(rng.IntN(500))*time.Millisecond)
	}

	// The faults, each at its instant in the first minute, undone after a
	// while (a partition heals, a killed node restarts, a paused one resumes).
	var faults sync.WaitGroup
	busy := map[string]bool{"node0001": true} // one fault per node; the origin serves the artifact
	late := 0
	for range 3 + rng.IntN(6) {
		at := time.Duration(rng.IntN(60_000)) * time.Millisecond
		victim := names[1+rng.IntN(nodes-1)]
		kind := rng.IntN(4)
		if busy[victim] && kind != 0 && kind != 3 {
			continue
		}
		busy[victim] = true
		var do, undo func()
		var hold time.Duration
		switch kind {
		case 0: // a partition cuts off a minority
			minority := map[string]bool{}
			for len(minority) < 1+rng.IntN(max(1, nodes/2-1)) {
				minority[names[1+rng.IntN(nodes-1)]] = true
			}
			var side []string
			for n := range minority {
				side = append(side, n)
			}
			do, undo, hold = func() { h.Partition(nil, side) }, h.Heal, time.Duration(2+rng.IntN(18))*time.Second
		case 1:
			do, undo, hold = func() { h.Kill(victim) }, func() { h.Restart(victim) }, time.Duration(1+rng.IntN(14))*time.Second
		case 2:
			do, undo, hold = func() { h.Pause(victim) }, func() { h.Resume(victim) }, time.Duration(500+rng.IntN(29_500))*time.Millisecond
		case 3:
			late++
			name := fmt.Sprintf("late%02d", late)
			do, undo = func() { h.AddNode(name, "1.0.0") }, func() {}
			schedule.late.Add(1)
		}
		faults.Add(1)
		go func() {
			defer faults.Done()
			time.Sleep(at)
			schedule.faults.Add(1)
			if h.Rec.OfflineNow() > 0 {
				schedule.duringOffline.Add(1)
			}
			do()
			time.Sleep(hold)
			undo()
		}()
	}
	// Faults at random instants rarely land in a wave's offline window,
	// which is short: every other schedule also strikes the first node
	// (not the origin, not already a victim) the instant it goes offline,
	// killing or pausing it in the middle of its restart.
	if seed%2 == 0 {
		kill, hold := rng.IntN(2) == 0, time.Duration(1+rng.IntN(10))*time.Second
		offline := make(chan string, 1)
		h.Rec.OnChange(func(node string, st upgrade.NodeState) {
			if st.PlanID != "" && st.Phase.Offline() && !busy[node] {
				select {
				case offline <- node:
				default:
				}
			}
		})
		faults.Add(1)
		go func() {
			defer faults.Done()
			var victim string
			select {
			case victim = <-offline:
			case <-time.After(10 * time.Minute):
				return // no node went offline: the completion check below says why
			}
			h.Rec.OnChange(nil)
			schedule.faults.Add(1)
			schedule.targeted.Add(1)
			if h.Rec.OfflineNow() > 0 {
				schedule.duringOffline.Add(1)
			}
			if kill {
				h.Kill(victim)
				time.Sleep(hold)
				h.Restart(victim)
			} else {
				h.Pause(victim)
				time.Sleep(hold)
				h.Resume(victim)
			}
		}()
	}
	faults.Wait()
	wg.Wait()
	// Both triggers may lose a race between them (each got part of the
	// lock): the operator tries again once the lock's grace has passed.
	for won.Load() == 0 {
		time.Sleep(lockGraceForTests)
		if _, err := h.Trigger("node0001", "2.0.0", po); err == nil {
			won.Add(1)
		}
	}
	require.LessOrEqual(t, won.Load(), int64(1), "two concurrent triggers both started a plan")
	ok := h.WaitFor(20*time.Minute, func() bool { return h.AllAt("2.0.0") })
	require.True(t, ok, "seed %d: the rollout did not complete after the faults: %s", seed, h.Summary())
	require.Empty(t, h.Rec.Violations())
	maxWaves, _, offline := h.Rec.Stats()
	require.Equal(t, 1, maxWaves, "one wave offline at a time, and one was")
	require.GreaterOrEqual(t, offline, nodes, "every node went offline (at least) once")
}

// lockGraceForTests is how long a trigger that lost a race waits before
// it tries again: the plan lock's grace, and a little.
const lockGraceForTests = 70 * time.Second
