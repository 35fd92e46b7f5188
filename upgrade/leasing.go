package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
)

type leaseAnswer struct {
	Granted bool   `json:"granted"`
	Reason  string `json:"reason,omitempty"`
}

// quorumLeases is the lease requester over the cluster: a Serf query to
// the alive members of the plan's snapshot, granted by a majority of the
// whole snapshot (package lease counts).
type quorumLeases struct{ e *Engine }

func (q quorumLeases) Request(ctx context.Context, p *plan.Compiled, wave int) (bool, string) {
	e := q.e
	req := lease.Request{PlanID: p.ID, Wave: wave, TTL: p.Options.Deadline, Node: e.net.LocalMember().Name}
	payload, _ := json.Marshal(req)
	var ask []string
	for _, m := range e.net.Members() {
		if p.InSnapshot(m.Name) && m.Status == "alive" {
			ask = append(ask, m.Name)
		}
	}
	tally := lease.NewTally(len(p.Members))
	var refusals []string
	count := func(from string, b []byte) {
		var a leaseAnswer
		if !p.InSnapshot(from) || json.Unmarshal(b, &a) != nil {
			return
		}
		tally.Add(from, a.Granted)
		if !a.Granted {
			refusals = append(refusals, from+": "+a.Reason)
		}
	}
	// Stop listening once a majority granted: wave-mates that just went
	// offline will not answer, and waiting for them only delays the wave.
	enough := func(from string, b []byte) bool {
		count(from, b)
		return tally.Granted()
	}
	_, err := e.net.Query(ctx, e.name(queryLease), payload, ask, e.cfg.QueryTimeout, enough)
	granted, refused := tally.Counts()
	if err != nil && granted+refused == 0 {
		return false, err.Error()
	}
	sort.Strings(refusals)
	return tally.Granted(), fmt.Sprintf("%d granted, %d refused of %d (need %d): %s",
		granted, refused, len(p.Members), lease.Quorum(len(p.Members)), strings.Join(refusals, "; "))
}

// answerLease is this node's vote as a granter. It runs on the query's own
// goroutine, beside the state machine: it reads the view and the plan
// store, and the granter serialises the decision itself.
func (e *Engine) answerLease(payload []byte) []byte {
	refuse := func(format string, a ...any) []byte {
		e.metrics.refusedVote()
		b, _ := json.Marshal(leaseAnswer{Reason: fmt.Sprintf(format, a...)})
		return b
	}
	var req lease.Request
	if err := json.Unmarshal(payload, &req); err != nil {
		return refuse("malformed lease request")
	}
	p, ok := e.plans.local(req.PlanID)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.QueryTimeout)
		defer cancel()
		var err error
		if p, err = e.planByID(ctx, req.PlanID); err != nil {
			return refuse("unknown plan %s", short(req.PlanID))
		}
	}
	// A wave that has settled no longer needs its grant, whatever its plan.
	held := false
	for _, g := range e.granter.Live() {
		if g.PlanID == req.PlanID && g.Wave == req.Wave {
			held = true
			continue
		}
		gp, ok := e.plans.local(g.PlanID)
		if !ok || !e.view.waveSettled(gp, g.Wave) {
			continue // unknown plan or wave in flight: keep the grant until it expires (safe)
		}
		if err := e.granter.Release(g.PlanID, g.Wave); err != nil {
			return refuse("release grant: %v", err)
		}
	}
	gr, err := e.granter.Decide(req, func(_ string, w int) bool { return e.view.earlierWavesDone(p, w) })
	running, _ := e.target.Running()
	e.log.Debug("lease vote", "plan", p.Short, "requester", req.Node, "wave", req.Wave,
		"granted", err == nil, "voter_version", running, "err", err)
	if err != nil {
		return refuse("%v", err)
	}
	e.metrics.grantedVote(gr, held, e.clock.Now())
	b, _ := json.Marshal(leaseAnswer{Granted: true})
	return b
}
