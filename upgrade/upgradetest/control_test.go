package upgradetest

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAbortEndsAHaltedRollout: a rollout halted by a failed node is
// ended for good by an abort: its state is aborted (not halted), its hint
// no longer suggests an abort, the failed node is not sent back into the
// bad release by a resume (which is refused), and a new plan may start.
func TestAbortEndsAHaltedRollout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 5, Seed: 1})
		h.SetBad("2.0.0")
		_, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second})
		require.NoError(t, err)
		ctx := context.Background()
		// Any node may be the one that fails and restarts; a status asked
		// while the observer restarts is not an answer, so ask again.
		status := func() upgrade.Status {
			var st upgrade.Status
			require.True(t, h.WaitFor(time.Minute, func() bool {
				var err error
				st, err = h.Node("node0002").Running().Status(ctx)
				return err == nil
			}), "node0002 gives no status: %s", h.Summary())
			return st
		}
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return status().State == upgrade.StateHalted }), "not halted: %s", h.Summary())
		halted := status()
		require.Len(t, halted.Failed, 1)
		failed := halted.Failed[0].Name
		assert.Contains(t, halted.Hint, "peerd upgrade abort")
		require.True(t, h.WaitFor(time.Minute, func() bool { return h.Node(failed).Version() == "1.0.0" }), "the failed node rolls back")

		_, err = h.Node("node0003").Running().Control(ctx, upgrade.ActionAbort)
		require.NoError(t, err)
		require.True(t, h.WaitFor(time.Minute, func() bool {
			st := status()
			return st.State == upgrade.StateAborted && len(st.Failed) == 0
		}), "the abort did not end the rollout: %+v", status())
		st := status()
		assert.NotContains(t, st.Hint, "peerd upgrade abort", "an aborted rollout is not to be aborted again")
		assert.Contains(t, st.Hint, "aborted")
		require.True(t, h.WaitFor(time.Minute, func() bool {
			return h.Node(failed).State().Phase == upgrade.PhaseAborted
		}), "the failed node's part ends too: %s", h.Summary())
		assert.Contains(t, h.Node(failed).Running().State().Reason, "aborted", "its reason says so")

		_, err = h.Node("node0004").Running().Control(ctx, upgrade.ActionResume)
		require.Error(t, err, "an aborted plan cannot be resumed")
		assert.Contains(t, err.Error(), "aborted")
		assert.Contains(t, err.Error(), "new plan")
		time.Sleep(10 * time.Second)
		assert.Equal(t, "1.0.0", h.Node(failed).Version(), "nothing went back into the bad release")
		for _, n := range h.Nodes() {
			assert.True(t, n.Running().State().Phase.Terminal(), "%s is finished with the plan", n.Name)
		}

		// The plan is over: a new one may run (here, a good release).
		require.True(t, h.WaitFor(time.Minute, func() bool {
			_, err = h.Trigger("node0001", "2.0.1", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second})
			return err == nil
		}), "a new plan after the abort: %v", err)
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.1") }), "%s", h.Summary())
	})
}

// TestRollbackHasOneMeaning: 'peerd upgrade rollback' goes back to the
// version the last plan upgraded the cluster from, whichever node it is
// run on. A node that joined late at another version, and so keeps that
// one, does not make a plan back to its own old version: it says which
// version the cluster goes back to and where to run the rollback.
func TestRollbackHasOneMeaning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 4, Seed: 1})
		opts := plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second}
		_, err := h.Trigger("node0001", "2.0.0", opts)
		require.NoError(t, err)
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.0") }), "%s", h.Summary())

		// Joins after the plan was made, at 1.2.0: runs it in a final wave.
		late := h.AddNode("node0005", "1.2.0")
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.0.0") }), "%s", h.Summary())
		ctx := context.Background()
		for _, n := range h.Nodes() {
			res, err := n.Running().Trigger(ctx, upgrade.TriggerRequest{Rollback: true, DryRun: true, Options: opts})
			if n.Name == late.Name {
				require.Error(t, err, "%s keeps 1.2.0, which the cluster never ran before 2.0.0", n.Name)
				assert.Contains(t, err.Error(), "not 1.0.0")
				assert.Contains(t, err.Error(), "run 'peerd upgrade rollback' on a node that was upgraded from 1.0.0")
				continue
			}
			require.NoError(t, err, n.Name)
			assert.Equal(t, "1.0.0", res.Plan.Version, "%s: the version the last plan upgraded from", n.Name)
			// The fleet trusts no key and accepts unsigned artifacts; with
			// --trust-key a rollback needs a signed rollback statement
			// (TestDowngradeNeedsARollbackStatement).
			assert.Contains(t, strings.Join(res.Checks, "\n"), "unsigned: this agent accepts unsigned artifacts",
				"the check printed is the one made")
		}
	})
}

// TestStatusDoesNotWaitForFrozenNodes: a status asks failed nodes for
// their reasons; with those nodes frozen (SIGSTOP, or across a partition)
// it still answers, within its one shared deadline, saying the reason is
// unavailable. Before, each frozen node could hold it for seconds, and a
// fault test read a node slow to give its status as a node offline.
func TestStatusDoesNotWaitForFrozenNodes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 5, Seed: 1})
		h.SetBad("2.0.0")
		_, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second})
		require.NoError(t, err)
		var failed string
		require.True(t, h.WaitFor(10*time.Minute, func() bool {
			for _, n := range h.Nodes() {
				if n.State().Phase == upgrade.PhaseFailed {
					failed = n.Name
					return true
				}
			}
			return false
		}), "no node failed: %s", h.Summary())
		asker := "node0001"
		if failed == asker {
			asker = "node0002"
		}
		var st upgrade.Status
		require.True(t, h.WaitFor(time.Minute, func() bool {
			st, err = h.Node(asker).Running().Status(context.Background())
			return err == nil && len(st.Failed) == 1
		}), "%s never saw %s failed: %v", asker, failed, err)
		require.NotContains(t, st.Failed[0].Reason, "reason unavailable", "answered while %s runs", failed)

		h.Pause(failed)
		begun := time.Now()
		st, err = h.Node(asker).Running().Status(context.Background())
		took := time.Since(begun) // fake time: what the status waited for
		require.NoError(t, err)
		require.Len(t, st.Failed, 1, "the frozen node still shows as failed")
		assert.Contains(t, st.Failed[0].Reason, "reason unavailable", "it could not say why")
		assert.Less(t, took, 2*time.Second, "the status waited %s for a frozen node (a status waits at most 1.5 s in all)", took)
		assert.Positive(t, took, "the status did ask the frozen node")
		h.Resume(failed)
	})
}

// TestStatusOfAPlanNotFetchedYet: a node that was told of a plan but
// cannot fetch it (the origin, the only holder, froze right after the
// announcement) answers a status anyway: the plan runs, and the hint says
// this node has not fetched it. It used to fail the status, which a fault
// test read as the node being down (two cut-off nodes: two waves offline).
func TestStatusOfAPlanNotFetchedYet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 3, Seed: 1})
		res, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second})
		require.NoError(t, err)
		h.Pause("node0001")
		n := h.Node("node0002")
		require.True(t, h.WaitFor(time.Minute, func() bool {
			st, err := n.Running().Status(context.Background())
			return err == nil && st.PlanID == res.PlanID
		}), "node0002 never heard of the plan")
		require.Empty(t, n.State().PlanID, "node0002 has not adopted the plan: it could not fetch it")
		st, err := n.Running().Status(context.Background())
		require.NoError(t, err)
		assert.Equal(t, upgrade.StateRunning, st.State)
		assert.Empty(t, st.Waves, "it does not know the waves")
		assert.Contains(t, st.Hint, "has not fetched it yet")
		h.Resume("node0001")
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.0.0") }), "%s", h.Summary())
	})
}
