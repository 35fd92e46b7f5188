package upgradetest

import (
	"context"
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
		status := func() upgrade.Status {
			st, err := h.Node("node0002").Engine().Status(ctx)
			require.NoError(t, err)
			return st
		}
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return status().State == upgrade.StateHalted }), "not halted: %s", h.Summary())
		halted := status()
		require.Len(t, halted.Failed, 1)
		failed := halted.Failed[0].Name
		assert.Contains(t, halted.Hint, "peerd upgrade abort")
		require.True(t, h.WaitFor(time.Minute, func() bool { return h.Node(failed).Version() == "1.0.0" }), "the failed node rolls back")

		_, err = h.Node("node0003").Engine().Control(ctx, upgrade.ActionAbort)
		require.NoError(t, err)
		require.True(t, h.WaitFor(time.Minute, func() bool {
			st := status()
			return st.State == upgrade.StateAborted && len(st.Failed) == 0
		}), "the abort did not end the rollout: %+v", status())
		st := status()
		assert.NotContains(t, st.Hint, "peerd upgrade abort", "an aborted rollout is not to be aborted again")
		assert.Contains(t, st.Hint, "aborted")
		require.True(t, h.WaitFor(time.Minute, func() bool {
			return h.Node(failed).Engine().State().Phase == upgrade.PhaseAborted
		}), "the failed node's part ends too: %s", h.Summary())
		assert.Contains(t, h.Node(failed).Engine().State().Reason, "aborted", "its reason says so")

		_, err = h.Node("node0004").Engine().Control(ctx, upgrade.ActionResume)
		require.Error(t, err, "an aborted plan cannot be resumed")
		assert.Contains(t, err.Error(), "aborted")
		assert.Contains(t, err.Error(), "new plan")
		time.Sleep(10 * time.Second)
		assert.Equal(t, "1.0.0", h.Node(failed).Version(), "nothing went back into the bad release")
		for _, n := range h.Nodes() {
			assert.True(t, n.Engine().State().Phase.Terminal(), "%s is finished with the plan", n.Name)
		}

		// The plan is over: a new one may run (here, a good release).
		require.True(t, h.WaitFor(time.Minute, func() bool {
			_, err = h.Trigger("node0001", "2.0.1", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 30 * time.Second})
			return err == nil
		}), "a new plan after the abort: %v", err)
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.1") }), "%s", h.Summary())
	})
}
