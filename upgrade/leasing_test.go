package upgrade

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
)

// laterWaveRig is the fuzz rig's a and b with a plan of one node per wave
// in which b, the requester, comes after a, the granter: a's vote on b's
// lease depends on a seeing itself done.
func laterWaveRig(t *testing.T) (*fuzzRig, *clock.Fake) {
	r := newFuzzRig(t)
	for seq := uint64(1); ; seq++ {
		p, err := plan.Compile(plan.Plan{
			Target: TargetPeerd, Version: "2.0.0",
			Artifact: plan.Artifact{SHA256: hexSHA([]byte("v2")), Size: 2},
			Options:  plan.Options{Batch: 1, Deadline: time.Minute},
			Members:  []plan.Member{{Name: "a", Key: r.net.a.Public.String()}, {Name: "b", Key: r.net.b.Public.String()}},
			Origin:   "b", Seq: seq,
		})
		require.NoError(t, err)
		if p.WaveOf("b") == 0 {
			continue
		}
		p.Sig = r.net.b.Sign(domainPlan, []byte(p.ID))
		require.NoError(t, r.e.plans.save(p))
		r.p = p
		return r, r.e.clock.(*clock.Fake)
	}
}

// vote sends b's request for its wave to a, on its own goroutine, and
// delivers a's answer (or why there is none).
func (r *fuzzRig) vote(t *testing.T) <-chan leaseAnswer {
	req, err := r.net.b.Seal(domainLeaseRequest, lease.Request{PlanID: r.p.ID, Wave: r.p.WaveOf("b"), Node: "b", Nonce: "n1"})
	require.NoError(t, err)
	answers := make(chan leaseAnswer, 1)
	go func() {
		var a leaseAnswer
		b, err := r.e.HandleQuery(queryLease, req)
		if err == nil {
			err = identity.Open(domainLeaseAnswer, b, &a, func(any) (identity.PublicKey, error) { return r.net.a.Public, nil })
		}
		if err != nil {
			a.Reason = "no answer: " + err.Error()
		}
		answers <- a
	}()
	return answers
}

// waitingVote starts b's vote and returns once it waits on a's clock
// (a vote that does not wait fails the test here).
func waitingVote(t *testing.T, r *fuzzRig, fake *clock.Fake) <-chan leaseAnswer {
	answers := r.vote(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := fake.BlockUntilContext(ctx, 1); err != nil {
		select {
		case a := <-answers:
			t.Fatalf("the vote did not wait for a to see wave %d done: %+v", r.p.WaveOf("a")+1, a)
		default:
			t.Fatalf("the vote neither waits on the clock nor answered: %v", err)
		}
	}
	return answers
}

// TestLeaseVoteWaitsForTheEarlierWave: a requester asks once it sees the
// wave before its own done; a granter that does not see that yet waits
// for it, within half the query timeout, and grants, where it used to
// refuse at once (and the requester gave back what others granted and
// asked again). Past the wait it still refuses.
func TestLeaseVoteWaitsForTheEarlierWave(t *testing.T) {
	t.Run("the done tag arrives during the wait: granted", func(t *testing.T) {
		r, fake := laterWaveRig(t)
		answers := waitingVote(t, r, fake) // a does not see itself done yet
		done := Progress{PlanShort: r.p.Short, Wave: r.p.WaveOf("a"), Phase: PhaseDone}
		done.Sig = r.net.a.Sign(domainState, stateMessage("a", r.e.tagKey(), done))
		m := r.net.member("a", r.net.a)
		m.Tags[r.e.tagKey()] = done.String()
		r.e.MembersChanged([]cluster.Member{m})
		a := <-answers
		require.True(t, a.Granted, "refused: %s", a.Reason)
		require.Equal(t, "b", a.Node)
	})
	t.Run("it never arrives: refused once the wait is over", func(t *testing.T) {
		r, fake := laterWaveRig(t)
		answers := waitingVote(t, r, fake)
		fake.Advance(r.e.cfg.QueryTimeout / 2)
		a := <-answers
		require.False(t, a.Granted)
		require.True(t, strings.Contains(a.Reason, "done yet"), "reason: %s", a.Reason)
	})
}
