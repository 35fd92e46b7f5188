package upgradetest

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestForgedVotesGetNoLease: a member that answers every lease query
// "granted" in every member's name (and replays genuine answers it saw)
// gets a cut-off node no lease: an answer counts only when it is signed by
// the key the plan's snapshot holds for the member it names, for this very
// request. Without the check the node, cut off with the forger, would have
// had five grants and gone offline.
func TestForgedVotesGetNoLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := New(t, Options{Nodes: 5, Seed: 3})
		var members []string
		for i := 1; i <= 5; i++ {
			members = append(members, fmt.Sprintf("node%04d", i))
		}
		// The victim is the first wave's node (batch 1), known only once
		// the plan is made; the hooks go in before the trigger all the
		// same, since the origin may be that node and then it is ready
		// the moment the plan is. Cut the victim off with the forger once
		// it holds the artifact, before it asks for its lease (OnChange
		// runs within the step, before the next one).
		var victim, forger atomic.Value // string
		var cut atomic.Bool
		h.Rec.OnChange(func(node string, st upgrade.NodeState) {
			if st.Phase != upgrade.PhaseReady || st.Wave != 0 || !cut.CompareAndSwap(false, true) {
				return
			}
			f := "node0005"
			if node == f {
				f = "node0004"
			}
			victim.Store(node)
			forger.Store(f)
			var rest []string
			for _, m := range members {
				if m != node && m != f {
					rest = append(rest, m)
				}
			}
			h.Partition(rest, []string{node, f})
		})
		var forged atomic.Int64
		h.Forge(func(to, query string, payload []byte) map[string][]byte {
			v, _ := victim.Load().(string)
			f, _ := forger.Load().(string)
			if v == "" || to != f || query != "peerd-lease" {
				return nil
			}
			var s identity.Signed
			var req struct {
				PlanID string `json:"plan_id"`
				Wave   int    `json:"wave"`
				Node   string `json:"node"`
				Nonce  string `json:"nonce"`
				Renew  bool   `json:"renew"`
			}
			if json.Unmarshal(payload, &s) != nil || json.Unmarshal(s.Body, &req) != nil || req.Node != v {
				return nil
			}
			fk := h.Node(f).Key()
			out := map[string][]byte{}
			for _, m := range members {
				b, _ := fk.Seal("peerd/lease-answer/1", map[string]any{
					"voter": m, "plan_id": req.PlanID, "wave": req.Wave, "node": req.Node, "nonce": req.Nonce,
					"granted": true, "for": int64(2 * time.Minute)})
				out[m] = b
			}
			forged.Add(int64(len(out)))
			return out
		})
		res, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		require.Len(t, res.Plan.Members, len(members))
		require.True(t, h.WaitFor(time.Minute, cut.Load), "the first wave never got ready: %s", h.Summary())
		time.Sleep(30 * time.Second)
		assert.Positive(t, forged.Load(), "the forger answered in others' names")
		_, _, offline := h.Rec.Stats()
		assert.Zero(t, offline, "%s went offline on forged votes", victim.Load())

		h.Forge(nil)
		h.Heal()
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.0.0") }), "after the heal: %s", h.Summary())
		require.Empty(t, h.Rec.Violations())
	})
}
