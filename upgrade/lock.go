package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
)

// The plan lock: one plan of a target at a time, cluster-wide, and the
// order of plans. Before announcing a plan its origin takes the lock from
// a majority of the members (all that have not left):
//
//  1. prepare: each member answers the highest plan sequence it has seen,
//     or refuses, naming the plan that holds its lock;
//  2. the origin numbers its plan one above the highest answered;
//  3. commit: each member takes the lock for that plan and sequence only
//     if it has seen no higher sequence and its lock is free.
//
// Two majorities share a member, so of two triggers racing, at most one
// commits a sequence; the other gets an error naming the plan that won.
// Nodes order plans by that sequence, never by a clock.

// lockGrace is how long a lock holds for a plan this member cannot yet
// see running (its nodes have not adopted it, or this member has not
// fetched it): the time an announcement takes to spread.
const lockGrace = time.Minute

// maxPlanSkew is how far ahead of a node's clock a plan's Created may be
// before the node refuses the plan: far beyond the skew of a synchronised
// fleet, and short of what would let a plan stamped in the future pose as
// the newest.
const maxPlanSkew = 2 * time.Hour

type lockRequest struct {
	Commit bool   `json:"commit,omitempty"`
	Origin string `json:"origin"`
	PlanID string `json:"plan_id,omitempty"` // commit
	Seq    uint64 `json:"seq,omitempty"`     // commit
	Nonce  string `json:"nonce"`
}

// lockAnswer is a member's signed answer to one lock request (its nonce).
type lockAnswer struct {
	Voter string `json:"voter"`
	Nonce string `json:"nonce"`
	OK    bool   `json:"ok"`
	// Seq is the highest plan sequence this member has seen.
	Seq uint64 `json:"seq"`
	// Running is the plan that holds this member's lock, when it refused.
	Running string `json:"running,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// planLock is one member's side of the plan lock, persisted in its file.
type planLock struct {
	path string
	mu   sync.Mutex
	st   lockState
}

type lockState struct {
	// Seq is the highest plan sequence this member has seen.
	Seq uint64 `json:"seq"`
	// PlanID holds the lock, since At, with sequence PlanSeq.
	PlanID  string    `json:"plan_id,omitempty"`
	PlanSeq uint64    `json:"plan_seq,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

func openPlanLock(path string) (*planLock, error) {
	l := &planLock{path: path}
	if _, err := durable.ReadGenerations(path, l.decode); err != nil {
		return nil, fmt.Errorf("plan lock: %w", err)
	}
	return l, nil
}

// seen notes a plan this member took up: its sequence, so that the next
// answer is never below it, and, when it is newer than the plan that holds
// this member's lock, that it holds the lock now (this member may have
// missed its commit, but a majority took it).
func (l *planLock) seen(planID string, seq uint64, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	// The same sequence with another plan: this member took the commit of
	// a trigger that lost the race for it; the plan that runs has it.
	if seq < l.st.PlanSeq || seq == l.st.PlanSeq && planID == l.st.PlanID {
		return nil
	}
	return l.saveLocked(lockState{Seq: max(seq, l.st.Seq), PlanID: planID, PlanSeq: seq, At: now})
}

// highest is the highest plan sequence this member has seen.
func (l *planLock) highest() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.Seq
}

func (l *planLock) saveLocked(st lockState) error {
	b, _ := json.Marshal(st)
	if err := durable.WriteGenerations(l.path, b, 0o600); err != nil {
		return fmt.Errorf("persist plan lock: %w", err)
	}
	l.st = st
	return nil
}

// answerLock is this member's answer to a lock query.
func (e *Engine) answerLock(payload []byte) []byte {
	var req lockRequest
	answer := func(a lockAnswer) []byte {
		a.Voter, a.Nonce = e.net.LocalMember().Name, req.Nonce
		b, _ := e.id.Seal(domainLockAnswer, a)
		return b
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		return answer(lockAnswer{Reason: "malformed lock request"})
	}
	if why, _ := e.SafeMode(); why != "" {
		return answer(lockAnswer{Reason: "this node is in " + why})
	}
	l := e.lock
	l.mu.Lock()
	defer l.mu.Unlock()
	seq := l.st.Seq
	if id := l.st.PlanID; id != "" && (!req.Commit || id != req.PlanID) {
		if why := e.lockHeld(l.st); why != "" {
			return answer(lockAnswer{Seq: seq, Running: id, Reason: why})
		}
	}
	if !req.Commit {
		return answer(lockAnswer{OK: true, Seq: seq})
	}
	if req.Seq <= seq && req.PlanID != l.st.PlanID {
		return answer(lockAnswer{Seq: seq, Running: l.st.PlanID,
			Reason: fmt.Sprintf("sequence %d is taken: this member has seen %d (another trigger won the race)", req.Seq, seq)})
	}
	if err := l.saveLocked(lockState{Seq: max(seq, req.Seq), PlanID: req.PlanID, PlanSeq: req.Seq, At: e.clock.Now()}); err != nil {
		return answer(lockAnswer{Seq: seq, Reason: err.Error()})
	}
	return answer(lockAnswer{OK: true, Seq: req.Seq})
}

// lockHeld says why the lock st still holds for its plan, or "" when the
// plan is over: a newer one took over, or nobody in this member's view is
// still in it (and its grace has passed, or some node took it up).
func (e *Engine) lockHeld(st lockState) string {
	if st.Seq > st.PlanSeq {
		return "" // superseded: this member has taken up a newer plan
	}
	if p, ok := e.plans.local(st.PlanID); ok {
		running, in := e.view.running(p)
		if running > 0 {
			return fmt.Sprintf("plan %s is still running on %d node(s)", p.Short, running)
		}
		if in > 0 {
			return "" // nodes took it up, and all are finished with it
		}
	}
	if e.clock.Since(st.At) < lockGrace {
		return fmt.Sprintf("plan %s was started %s ago and is still being announced", short(st.PlanID), e.clock.Since(st.At).Round(time.Second))
	}
	return ""
}

// lockMembers are the members the lock needs a majority of: every one
// that has not left. Those not alive cannot answer.
func (e *Engine) lockMembers() (all, alive []cluster.Member) {
	for _, m := range e.net.Members() {
		if m.Status == "left" {
			continue
		}
		all = append(all, m)
		if m.Status == "alive" {
			alive = append(alive, m)
		}
	}
	return all, alive
}

// unreachable refuses a trigger that cannot reach a majority of members,
// naming the members it cannot reach.
func unreachable(all, alive []cluster.Member) error {
	need := lease.Quorum(len(all))
	if len(alive) >= need {
		return nil
	}
	var down []string
	for _, m := range all {
		if m.Status != "alive" {
			down = append(down, fmt.Sprintf("%s (%s)", m.Name, m.Status))
		}
	}
	sort.Strings(down)
	return fmt.Errorf("only %d of the %d members are reachable, and a rollout needs a majority (%d): %s; "+
		"a partitioned minority must not start a plan: heal the network or bring those members back; "+
		"only for a member gone for good, 'peerd force-leave NODE' stops counting it (never for members merely cut off: that lets a minority roll out)",
		len(alive), len(all), need, strings.Join(down, ", "))
}

// takeLock runs the plan lock's two rounds for p (whose Seq it sets) and
// returns the compiled plan.
func (e *Engine) takeLock(ctx context.Context, p plan.Plan) (*plan.Compiled, error) {
	seq, q, err := e.lockSeq(ctx)
	if err != nil {
		return nil, err
	}
	p.Seq = seq + 1
	c, err := plan.Compile(p)
	if err != nil {
		return nil, err
	}
	return c, e.commitLock(ctx, c, q)
}

// takeLockFor takes the lock for a plan numbered beforehand (by a dry
// run): only while no plan took that sequence or a later one meanwhile, as
// Nomad's job run -check-index runs a job plan only if the job did not
// change. It leaves the plan, and so its ID and waves, as they were shown.
func (e *Engine) takeLockFor(ctx context.Context, c *plan.Compiled) error {
	seq, q, err := e.lockSeq(ctx)
	if err != nil {
		return err
	}
	if seq >= c.Seq {
		return fmt.Errorf("plan %s is out of date: it was numbered %d when it was previewed, and the cluster has seen plans up to %d since; run the dry run again and run the plan it shows", c.Short, c.Seq, seq)
	}
	return e.commitLock(ctx, c, q)
}

// lockQuorum is who the lock's rounds ask (the alive members) and how
// many members a majority is of.
type lockQuorum struct {
	names   []string
	members int
}

// lockSeq runs the lock's first round: the highest plan sequence a
// majority of the members answered. The commit asks the same members.
func (e *Engine) lockSeq(ctx context.Context) (uint64, lockQuorum, error) {
	all, alive := e.lockMembers()
	if err := unreachable(all, alive); err != nil {
		return 0, lockQuorum{}, err
	}
	q := lockQuorum{names: make([]string, len(alive)), members: len(all)}
	for i, m := range alive {
		q.names[i] = m.Name
	}
	self := e.net.LocalMember().Name
	for wait := 0; ; wait++ {
		seq, running, err := e.lockRound(ctx, lockRequest{Origin: self}, q.names, q.members)
		if err == nil {
			return seq, q, nil
		}
		// A member that has not yet heard that the last plan finished
		// refuses; gossip tells it within seconds. Ask again for a while
		// when this node sees that plan finished.
		if !e.finished(running) || wait >= lockRetries {
			return 0, lockQuorum{}, err
		}
		select {
		case <-e.clock.After(lockRetryEvery):
		case <-ctx.Done():
			return 0, lockQuorum{}, err
		}
	}
}

// commitLock runs the lock's second round for c.
func (e *Engine) commitLock(ctx context.Context, c *plan.Compiled, q lockQuorum) error {
	_, _, err := e.lockRound(ctx, lockRequest{Commit: true, Origin: e.net.LocalMember().Name, PlanID: c.ID, Seq: c.Seq}, q.names, q.members)
	return err
}

// How long a trigger waits for members to hear that the last plan
// finished: lockRetries rounds lockRetryEvery apart.
const (
	lockRetries    = 60
	lockRetryEvery = 500 * time.Millisecond
)

// finished reports whether this node sees plan id taken up and finished.
func (e *Engine) finished(id string) bool {
	p, ok := e.plans.local(id)
	if !ok {
		return false
	}
	running, in := e.view.running(p)
	return running == 0 && in > 0
}

// lockAttempts is how often a lock round asks the members that have not
// answered: a query's answers travel as single UDP packets, and a busy
// network drops some. Both rounds may be asked again without harm.
const lockAttempts = 3

// lockRound asks the members and returns the highest sequence they
// answered, or why a majority of all did not agree (and the plan that
// holds a lock, if that is why).
func (e *Engine) lockRound(ctx context.Context, req lockRequest, names []string, members int) (uint64, string, error) {
	req.Nonce = nonce()
	payload, _ := json.Marshal(req)
	answers := map[string]lockAnswer{}
	need := lease.Quorum(members)
	for attempt := 0; attempt < lockAttempts && len(answers) < len(names); attempt++ {
		var silent []string
		for _, n := range names {
			if _, ok := answers[n]; !ok {
				silent = append(silent, n)
			}
		}
		take := func(from string, b []byte) {
			// A member's answer counts only as its own word on this request.
			var a lockAnswer
			err := identity.Open(domainLockAnswer, b, &a, func(any) (identity.PublicKey, error) { return e.pinnedKey(from) })
			if err == nil && a.Voter == from && a.Nonce == req.Nonce {
				answers[from] = a
			}
		}
		decided := func() bool {
			ok, refused := tallyLock(answers)
			return ok >= need || ok+len(names)-len(answers) < need || refused && !req.Commit
		}
		// Stop listening once the answers decide: members offline in a
		// running wave do not answer, and waiting out the query timeout
		// for them kept an operator's second trigger (refused at once by
		// the others) waiting seconds for its error.
		got, err := e.net.Query(ctx, e.name(queryLock), payload, silent, e.cfg.QueryTimeout, func(from string, b []byte) bool {
			take(from, b)
			return decided()
		})
		if err != nil && ctx.Err() != nil {
			return 0, "", fmt.Errorf("plan lock: %w", err)
		}
		for from, b := range got {
			if _, seen := answers[from]; !seen {
				take(from, b)
			}
		}
		if decided() {
			break
		}
	}
	var seq uint64
	ok := 0
	var refusals []string
	running := ""
	for from, a := range answers {
		seq = max(seq, a.Seq)
		if a.OK {
			ok++
			continue
		}
		refusals = append(refusals, from+": "+a.Reason)
		if a.Running != "" {
			running = a.Running
		}
	}
	sort.Strings(refusals)
	switch {
	case req.Commit && ok >= need:
		// Members that took a racing trigger's commit first refuse this
		// one, naming it; but a majority took this plan, so the other can
		// have none, and it is the one to give way. Failing here too would
		// leave two triggers that both lost, each naming a plan that never
		// runs, and the lock held for neither until its grace passed.
	case running != "":
		return 0, running, fmt.Errorf("a rollout is already running: plan %s (%s); watch it with 'peerd upgrade status', or stop it with 'peerd upgrade abort'",
			short(running), strings.Join(refusals, "; "))
	case ok < need:
		var silent []string
		for _, n := range names {
			if _, answered := answers[n]; !answered {
				silent = append(silent, n)
			}
		}
		slices.Sort(silent)
		return 0, "", fmt.Errorf("plan lock: %d of %d members agreed, a majority needs %d (refused: %s; no answer: %s)",
			ok, members, need, strings.Join(refusals, "; "), strings.Join(silent, ", "))
	}
	return seq, "", nil
}

// tallyLock counts the members that agreed, and whether one refused
// because another plan holds its lock (asking again cannot help then).
func tallyLock(answers map[string]lockAnswer) (ok int, refused bool) {
	for _, a := range answers {
		if a.OK {
			ok++
		} else if a.Running != "" {
			refused = true
		}
	}
	return ok, refused
}
