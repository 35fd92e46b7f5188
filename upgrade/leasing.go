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

// requestLease asks every alive member of the plan's snapshot for the
// wave's lease and reports whether a majority of the snapshot granted it.
func (e *Engine) requestLease(ctx context.Context, p plan.Plan, wave int) (bool, string) {
	req := lease.Request{PlanID: p.ID(), Wave: wave, TTL: p.Options.Deadline, Node: e.net.LocalMember().Name}
	payload, _ := json.Marshal(req)
	inSnapshot := map[string]bool{}
	for _, m := range p.Members {
		inSnapshot[m.Name] = true
	}
	var ask []string
	for _, m := range e.net.Members() {
		if inSnapshot[m.Name] && m.Status == "alive" {
			ask = append(ask, m.Name)
		}
	}
	count := func(answers map[string][]byte) (*lease.Tally, []string) {
		tally := lease.NewTally(len(p.Members))
		var refusals []string
		for from, b := range answers {
			var a leaseAnswer
			if json.Unmarshal(b, &a) != nil || !inSnapshot[from] {
				continue
			}
			tally.Add(from, a.Granted)
			if !a.Granted {
				refusals = append(refusals, from+": "+a.Reason)
			}
		}
		return tally, refusals
	}
	// Stop listening once a majority granted: wave-mates that just went
	// offline will not answer, and waiting for them only delays the wave.
	enough := func(answers map[string][]byte) bool {
		t, _ := count(answers)
		return t.Granted()
	}
	answers, err := e.net.Query(ctx, e.name(queryLease), payload, ask, e.cfg.QueryTimeout, enough)
	if err != nil && len(answers) == 0 {
		return false, err.Error()
	}
	tally, refusals := count(answers)
	sort.Strings(refusals)
	granted, refused := tally.Counts()
	return tally.Granted(), fmt.Sprintf("%d granted, %d refused of %d (need %d): %s",
		granted, refused, len(p.Members), lease.Quorum(len(p.Members)), strings.Join(refusals, "; "))
}

// answerLease is this node's vote as a granter.
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
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.QueryTimeout)
	defer cancel()
	p, err := e.planByID(ctx, req.PlanID)
	if err != nil {
		return refuse("unknown plan %s", short(req.PlanID))
	}
	waves, err := p.Waves()
	if err != nil {
		return refuse("plan %s: %v", p.ShortID(), err)
	}
	// A wave that has settled no longer needs its grant, whatever its plan.
	for _, g := range e.granter.Live() {
		if g.PlanID == req.PlanID && g.Wave == req.Wave {
			continue
		}
		gp, err := e.planByID(ctx, g.PlanID)
		if err != nil {
			continue // unknown plan: keep the grant until it expires (safe)
		}
		gwaves, err := gp.Waves()
		if err != nil || !e.waveSettled(gp, gwaves, g.Wave) {
			continue
		}
		if err := e.granter.Release(g.PlanID, g.Wave); err != nil {
			return refuse("release grant: %v", err)
		}
	}
	held := e.holdsGrant(req.PlanID, req.Wave)
	gr, err := e.granter.Decide(req, func(_ string, w int) bool { return e.earlierWavesDone(p, waves, w) })
	e.log.Debug("lease vote", "plan", p.ShortID(), "requester", req.Node, "wave", req.Wave,
		"granted", err == nil, "voter_version", e.running(), "err", err)
	if err != nil {
		return refuse("%v", err)
	}
	e.metrics.grantedVote(gr, held, e.cfg.Clock.Now())
	b, _ := json.Marshal(leaseAnswer{Granted: true})
	return b
}
