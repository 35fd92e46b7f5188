package upgradetest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/require"
)

// TestTwoTriggersAtOnce: two nodes asked for a rollout at the same instant
// (messages delayed 1-4 rounds, so each member sees the two lock rounds
// in its own order). Exactly one trigger makes a plan and it runs to the
// end; the other's error names it. Before, a member that took the other
// trigger's commit first made the winner fail too: in most seeds both
// triggers failed, each naming a plan that never ran, and the lock stayed
// held for a minute. Afterwards the lock is free at once: the members that
// took the losing commit let it go when they take up the winner's plan.
func TestTwoTriggersAtOnce(t *testing.T) {
	const seeds = 20
	split := 0 // seeds where some member took the losing commit
	for seed := uint64(1); seed <= seeds; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := New(t, Options{Nodes: 5, Seed: seed, Faults: Faults{MaxDelayRounds: 3}})
				po := plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute}
				origins := []string{"node0001", "node0002"}
				var wg sync.WaitGroup
				res := make([]upgrade.TriggerResult, 2)
				errs := make([]error, 2)
				for i, n := range origins {
					wg.Go(func() { res[i], errs[i] = h.Trigger(n, "2.0.0", po) })
				}
				wg.Wait()
				require.True(t, (errs[0] == nil) != (errs[1] == nil), "exactly one trigger wins: %v | %v", errs[0], errs[1])
				win, lose := 0, 1
				if errs[0] != nil {
					win, lose = 1, 0
				}
				require.ErrorContains(t, errs[lose], "already running: plan "+res[win].PlanID[:8])
				// The members whose lock the losing commit took, if any.
				for _, n := range h.Nodes() {
					b, err := os.ReadFile(filepath.Join(n.Dir, "rollout", "lock.json"))
					require.NoError(t, err)
					var lock struct {
						PlanID string `json:"plan_id"`
					}
					require.NoError(t, json.Unmarshal(b, &lock))
					if lock.PlanID != res[win].PlanID {
						split++
						break
					}
				}
				require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.0.0") }), "the winner's plan ran: %s", h.Summary())
				require.Empty(t, h.Rec.Violations())
				// The loser may go again now, well within the lock's grace
				// (once gossip has told the members the plan finished).
				var err error
				require.True(t, h.WaitFor(lockGraceForTests/2, func() bool {
					_, err = h.Trigger(origins[lose], "2.1.0", po)
					return err == nil
				}), "a trigger after the plan finished: %v", err)
				require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.1.0") }), h.Summary())
			})
		})
	}
	t.Logf("%d of %d seeds raced the commits", split, seeds)
	require.Positive(t, split, "no seed raced the two commits")
}
