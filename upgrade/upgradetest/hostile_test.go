package upgradetest

import (
	"encoding/json"
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
		res, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		victim := res.Waves[0].Nodes[0]
		forger := "node0005"
		if victim == forger {
			forger = "node0004"
		}
		members := make([]string, 0, len(res.Plan.Members))
		for _, m := range res.Plan.Members {
			members = append(members, m.Name)
		}
		fk := h.Node(forger).Key()
		var forged atomic.Int64
		h.Forge(func(to, query string, payload []byte) map[string][]byte {
			if to != forger || query != "peerd-lease" {
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
			if json.Unmarshal(payload, &s) != nil || json.Unmarshal(s.Body, &req) != nil || req.Node != victim {
				return nil
			}
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
		// Cut the victim off with the forger once it holds the artifact,
		// before it asks for its lease.
		var rest []string
		for _, m := range members {
			if m != victim && m != forger {
				rest = append(rest, m)
			}
		}
		var cut atomic.Bool
		h.Rec.OnChange(func(node string, st upgrade.NodeState) {
			if node == victim && st.Phase == upgrade.PhaseReady && cut.CompareAndSwap(false, true) {
				h.Partition(rest, []string{victim, forger})
			}
		})
		require.True(t, h.WaitFor(time.Minute, cut.Load), "%s never got ready: %s", victim, h.Summary())
		time.Sleep(30 * time.Second)
		assert.Positive(t, forged.Load(), "the forger answered in others' names")
		_, _, offline := h.Rec.Stats()
		assert.Zero(t, offline, "%s went offline on forged votes", victim)

		h.Forge(nil)
		h.Heal()
		require.True(t, h.WaitFor(10*time.Minute, func() bool { return h.AllAt("2.0.0") }), "after the heal: %s", h.Summary())
		require.Empty(t, h.Rec.Violations())
	})
}
