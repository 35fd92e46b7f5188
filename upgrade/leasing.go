package upgrade

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
)

// maxLeaseTTL bounds one hold: a holder renews it while offline, so a
// holder that died blocks the next wave for at most this long past its
// last renewal, however long the plan's deadline.
const maxLeaseTTL = 2 * time.Minute

// leaseTerms are a plan's lease terms, the same on every node: a hold
// lasts the plan's deadline (at most maxLeaseTTL) from each renewal, and
// one holder renews for at most the deadline and one more TTL (for its
// rollback).
func leaseTerms(p *plan.Compiled) (ttl, maxHold time.Duration) {
	ttl = min(p.Options.Deadline, maxLeaseTTL)
	return ttl, p.Options.Deadline + ttl
}

// leaseAnswer is a granter's signed answer to one request: it names the
// request (plan, wave, requester, nonce) and the granter, so that it
// counts for that request and that granter only.
type leaseAnswer struct {
	Voter   string `json:"voter"`
	PlanID  string `json:"plan_id"`
	Wave    int    `json:"wave"`
	Node    string `json:"node"`
	Nonce   string `json:"nonce"`
	Granted bool   `json:"granted"`
	Epoch   uint64 `json:"epoch,omitempty"`
	// For is how long the grant lasts from when the granter answered, on
	// its own clock (a duration: the granters' clocks may disagree).
	For    time.Duration `json:"for,omitempty"`
	Reason string        `json:"reason,omitempty"`
}

// quorumLeases is the lease requester over the cluster: a Serf query to
// the alive members of the plan's snapshot, granted by a majority of the
// whole snapshot (package lease counts).
type quorumLeases struct{ e *Engine }

func (q quorumLeases) Request(ctx context.Context, p *plan.Compiled, wave int, renew bool) (time.Duration, string) {
	tally, _, why, lasts := q.ask(ctx, p, lease.Request{PlanID: p.ID, Wave: wave, Node: q.e.net.LocalMember().Name, Renew: renew})
	if !tally.Granted() {
		return 0, why
	}
	// A majority holds the wave at least as long as the shortest of the
	// quorum's longest grants.
	slices.SortFunc(lasts, func(a, b time.Duration) int { return cmp.Compare(b, a) })
	return max(lasts[lease.Quorum(len(p.Members))-1], time.Nanosecond), why
}

// Release reports whether every member it reached, and at least a
// majority, took the hold back.
func (q quorumLeases) Release(ctx context.Context, p *plan.Compiled, wave int) (bool, string) {
	tally, asked, why, _ := q.ask(ctx, p, lease.Request{PlanID: p.ID, Wave: wave, Node: q.e.net.LocalMember().Name, Release: true})
	granted, _ := tally.Counts()
	return tally.Granted() && granted == asked, why
}

func (q quorumLeases) ask(ctx context.Context, p *plan.Compiled, req lease.Request) (tally *lease.Tally, asked int, why string, lasts []time.Duration) {
	e := q.e
	req.Nonce = nonce()
	payload, err := e.id.Seal(domainLeaseRequest, req)
	if err != nil {
		return lease.NewTally(len(p.Members)), 0, err.Error(), nil
	}
	var ask []string
	for _, m := range e.net.Members() {
		if p.InSnapshot(m.Name) && m.Status == "alive" {
			ask = append(ask, m.Name)
		}
	}
	tally = lease.NewTally(len(p.Members))
	var refusals []string
	forged := 0
	count := func(from string, b []byte) {
		var a leaseAnswer
		// An answer counts only as its granter's own word about this very
		// request: signed by the key the snapshot holds for the member the
		// answer came from.
		err := identity.Open(domainLeaseAnswer, b, &a, func(any) (identity.PublicKey, error) { return snapshotKey(p, from) })
		if err != nil || a.Voter != from || a.PlanID != req.PlanID || a.Wave != req.Wave || a.Node != req.Node || a.Nonce != req.Nonce {
			forged++
			return
		}
		tally.Add(from, a.Granted)
		if a.Granted {
			lasts = append(lasts, a.For)
		} else {
			refusals = append(refusals, from+": "+a.Reason)
		}
	}
	// Stop listening once a majority granted: wave-mates that just went
	// offline will not answer, and waiting for them only delays the wave.
	// A release waits for everyone it can reach: each granter it misses
	// holds the wave until the hold expires.
	enough := func(from string, b []byte) bool {
		count(from, b)
		return !req.Release && tally.Granted()
	}
	_, err = e.net.Query(ctx, e.name(queryLease), payload, ask, e.cfg.QueryTimeout, enough)
	granted, refused := tally.Counts()
	if err != nil && granted+refused == 0 {
		return tally, len(ask), err.Error(), lasts
	}
	if forged > 0 {
		e.log.Warn("lease answers that do not verify were not counted", "plan", p.Short, "wave", req.Wave+1, "count", forged)
		refusals = append(refusals, fmt.Sprintf("%d answer(s) did not verify", forged))
	}
	sort.Strings(refusals)
	return tally, len(ask), fmt.Sprintf("%d granted, %d refused of %d (need %d; %d asked): %s",
		granted, refused, len(p.Members), lease.Quorum(len(p.Members)), len(ask), strings.Join(refusals, "; ")), lasts
}

// awaitEarlierDone waits, at most d, until this node sees every wave
// before w done. A requester asks as soon as it sees them done, and a
// granter may see the last of them a gossip round or two later: a vote
// that refused at once made the requester give back what others granted
// and ask again, two more queries that every member receives about a
// dozen times. In a 100-agent rollout on two cores those retries filled
// memberlist's handler queues (28,000 messages dropped in one run, 264
// with this wait), and dropped probes and refutations made false
// failures. Waiting, within the requester's query timeout, turns them into
// one late grant. It decides nothing: Decide checks again, and the
// grant's term starts when it is answered, after the wait (the requester
// counts its hold from before it asked).
func (e *Engine) awaitEarlierDone(p *plan.Compiled, w int, d time.Duration) {
	if d <= 0 {
		return
	}
	t := e.clock.NewTimer(d)
	defer t.Stop()
	for {
		changed := e.view.changes()
		if e.view.earlierWavesDone(p, w) {
			return
		}
		select {
		case <-changed:
		case <-t.Chan():
			return
		case <-e.quit:
			return
		}
	}
}

// finishedIn reports whether this node sees member finished with plan id:
// done, or aborted (which only a node that never went offline is). A
// holder that is finished leaves its grant (package lease).
func (e *Engine) finishedIn(id, member string) bool {
	p, ok := e.plans.local(id)
	return ok && e.view.finished(p, member)
}

// answerLease is this node's vote as a granter. It runs on the query's own
// goroutine, beside the state machine: it reads the view and the plan
// store, and the granter serialises the decision itself. Everything it
// grants is checked against the plan here, never taken from the request:
// the wave must exist, the requester must be in it, and the TTL is the
// plan's. A hold is released by its holder only, or expires: what this
// node sees in the holders' tags never ends one.
func (e *Engine) answerLease(payload []byte) []byte {
	var req lease.Request
	answer := func(a leaseAnswer) []byte {
		a.Voter, a.PlanID, a.Wave, a.Node, a.Nonce = e.net.LocalMember().Name, req.PlanID, req.Wave, req.Node, req.Nonce
		b, _ := e.id.Seal(domainLeaseAnswer, a)
		return b
	}
	refuse := func(format string, a ...any) []byte {
		e.metrics.refusedVote()
		return answer(leaseAnswer{Reason: fmt.Sprintf(format, a...)})
	}
	// The request must be the requester's own: signed by the key the plan's
	// snapshot holds for it (a late joiner's, by the key it is pinned by).
	var p *plan.Compiled
	err := identity.Open(domainLeaseRequest, payload, &req, func(any) (identity.PublicKey, error) {
		var ok bool
		if p, ok = e.plans.local(req.PlanID); !ok {
			ctx, cancel := context.WithTimeout(context.Background(), e.cfg.QueryTimeout)
			defer cancel()
			var err error
			if p, err = e.planByID(ctx, req.PlanID); err != nil {
				return nil, fmt.Errorf("unknown plan %s", short(req.PlanID))
			}
		}
		if p.InSnapshot(req.Node) {
			return snapshotKey(p, req.Node)
		}
		return e.pinnedKey(req.Node)
	})
	if err != nil {
		return refuse("lease request refused: %v", err)
	}
	if self := e.net.LocalMember().Name; !p.InSnapshot(self) {
		// Only the snapshot's members grant (a majority of it). A query
		// that names too many granters for Serf's filter reaches every
		// member, and the requester drops this answer (not a vote);
		// a grant recorded here would hold nothing.
		return answer(leaseAnswer{Reason: fmt.Sprintf("%s is not in plan %s's snapshot: it grants no lease", self, p.Short)})
	}
	if req.Release {
		if err := e.granter.Release(req.PlanID, req.Wave, req.Node); err != nil {
			return refuse("release: %v", err)
		}
		return answer(leaseAnswer{Granted: true})
	}
	// Late joiners (not in the snapshot) each run in a final wave of their
	// own, one at a time: a late wave's members could not be agreed on.
	late := req.Wave == len(p.Waves) && !p.InSnapshot(req.Node)
	switch {
	case late:
	case req.Wave < 0 || req.Wave >= len(p.Waves):
		return refuse("plan %s has no wave %d (it has %d)", p.Short, req.Wave+1, len(p.Waves))
	case p.WaveOf(req.Node) != req.Wave:
		return refuse("%s is not in wave %d of plan %s", req.Node, req.Wave+1, p.Short)
	}
	e.awaitEarlierDone(p, req.Wave, e.cfg.QueryTimeout/2)
	ttl, maxHold := leaseTerms(p)
	terms := lease.Terms{
		TTL: ttl, MaxHold: maxHold, Exclusive: late,
		EarlierDone: func() bool { return e.view.earlierWavesDone(p, req.Wave) },
	}
	if !late {
		// A new grant waits for the whole wave, not just the first to ask:
		// one write for the wave, not one per wave-mate.
		terms.Holders = func() []string {
			var hs []string
			for _, n := range p.Waves[req.Wave].Nodes {
				if !e.finishedIn(p.ID, n) {
					hs = append(hs, n)
				}
			}
			return hs
		}
	}
	gr, err := e.granter.Decide(req, terms)
	running, _ := e.target.Running()
	e.log.Debug("lease vote", "plan", p.Short, "requester", req.Node, "wave", req.Wave+1,
		"granted", err == nil, "voter_version", running, "err", err)
	if err != nil {
		return refuse("%v", err)
	}
	e.metrics.grantedVote(gr)
	return answer(leaseAnswer{Granted: true, Epoch: gr.Epoch, For: gr.Expires.Sub(e.clock.Now())})
}
