package upgrade

import (
	"sync"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/plan"
)

// view is this node's picture of the members, as the engine decides by it:
// each member's status and rollout progress (its tag), and, for each plan
// in use, per-wave counts of the members that hold a wave up. It is kept
// up to date from the cluster's member events (O(changed members) each) and
// resynced from Network.Members now and then, so that a step or a vote
// reads it in O(waves), not O(members): with a thousand nodes, every node
// deciding from a fresh copy of the member list on every change is what
// made rollouts quadratic.
//
// The state machine's goroutine and the lease votes (on Serf's query
// goroutines) read it; the cluster's event goroutine writes it. Its
// methods are safe for concurrent use.
type view struct {
	tagKey string

	mu      sync.Mutex
	members map[string]memberView
	tallies []*tally        // oldest first, at most maxTallies
	changed map[string]bool // members changed since the machine last looked
	kick    chan struct{}   // wakes the machine (buffered, 1)
	// next is closed, and replaced, at every change: any number of
	// waiters (lease votes) wake on it, where kick wakes one machine.
	// fresh says the update under way changed a member (changed also
	// holds the members the machine has not looked at yet).
	next  chan struct{}
	fresh bool
}

// maxTallies bounds the plans tallied at once: the node's own plan and
// those its live grants are for. An evicted plan is tallied again on use.
const maxTallies = 8

// memberView is one member as the view keeps it.
type memberView struct {
	status string // alive, leaving, left, failed, or "" when reaped
	tag    string // the rollout tag as the member advertises it
	prog   Progress
	hasTag bool   // prog is a valid rollout tag
	key    string // its identity key, as advertised (cluster pinned it)
}

func newView(tagKey string) *view {
	return &view{
		tagKey:  tagKey,
		members: map[string]memberView{},
		changed: map[string]bool{},
		kick:    make(chan struct{}, 1),
		next:    make(chan struct{}),
	}
}

func toMemberView(m cluster.Member, tagKey string) memberView {
	if m.Status == cluster.StatusReaped {
		return memberView{}
	}
	tag := m.Tags[tagKey]
	pr, ok := ParseProgress(tag)
	return memberView{status: m.Status, tag: tag, prog: pr, hasTag: ok, key: m.Tags[cluster.TagKey]}
}

// present reports whether the member is still in the cluster: a node that
// left (or was reaped) no longer holds a rollout up.
func (mv memberView) present() bool { return mv.status != "" && mv.status != "left" }

// phaseIn is the member's phase in the plan with this short ID, or "" when
// its tag is about another plan or none.
func (mv memberView) phaseIn(short string) Phase {
	if mv.hasTag && mv.prog.PlanShort == short {
		return mv.prog.Phase
	}
	return ""
}

// tally counts, per wave of one plan, the present members that hold
// something up.
type tally struct {
	p          *plan.Compiled
	notDone    []int // not done in p: the next wave waits for them
	unprepared []int // without the artifact: a wave prepares one ahead of them
	// running counts present members, in the snapshot or not, whose phase
	// in p is not terminal: while it is above zero the rollout goes on.
	running int
	// in counts present members whose tag is about p at all.
	in int
}

func newTally(p *plan.Compiled) *tally {
	n := len(p.Waves)
	return &tally{p: p, notDone: make([]int, n), unprepared: make([]int, n)}
}

// phaseOf is a member's phase in t's plan as the view may act on it: a
// finished phase counts only when it carries the member's signature,
// checked against the key the plan's snapshot holds for it (a late
// joiner, in no snapshot, by the key it advertises).
func (t *tally) phaseOf(name string, mv memberView, tagKey string) Phase {
	ph := mv.phaseIn(t.p.Short)
	if !signedPhase(ph) {
		return ph
	}
	key := t.p.KeyOf(name)
	if !t.p.InSnapshot(name) {
		key = mv.key
	}
	if !mv.prog.verifiedBy(key, name, tagKey) {
		return PhaseWait // says finished, unproven: it holds the rollout up
	}
	return ph
}

// add adds (sign 1) or removes (sign -1) one member's contribution.
func (t *tally) add(name string, mv memberView, sign int, tagKey string) {
	if !mv.present() {
		return
	}
	ph := t.phaseOf(name, mv, tagKey)
	if ph != "" {
		t.in += sign
		if !ph.Terminal() {
			t.running += sign
		}
	}
	w := t.p.WaveOf(name)
	if w < 0 {
		return
	}
	if ph != PhaseDone {
		t.notDone[w] += sign
	}
	if !ph.HasArtifact() {
		t.unprepared[w] += sign
	}
}

// update applies member changes from a cluster event.
func (v *view) update(ms []cluster.Member) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, m := range ms {
		v.setLocked(m.Name, toMemberView(m, v.tagKey))
	}
	v.kickLocked()
}

// resync replaces the view with a fresh member list: it heals whatever the
// event stream did not say (a view is only as good as its last event).
func (v *view) resync(ms []cluster.Member) {
	v.mu.Lock()
	defer v.mu.Unlock()
	seen := make(map[string]bool, len(ms))
	for _, m := range ms {
		seen[m.Name] = true
		v.setLocked(m.Name, toMemberView(m, v.tagKey))
	}
	for name := range v.members {
		if !seen[name] {
			v.setLocked(name, memberView{})
		}
	}
	v.kickLocked()
}

func (v *view) setLocked(name string, mv memberView) {
	old, had := v.members[name]
	if had && old.status == mv.status && old.tag == mv.tag && old.key == mv.key {
		return
	}
	for _, t := range v.tallies {
		t.add(name, old, -1, v.tagKey)
		t.add(name, mv, 1, v.tagKey)
	}
	if mv.status == "" {
		delete(v.members, name)
	} else {
		v.members[name] = mv
	}
	v.changed[name] = true
	v.fresh = true
}

func (v *view) kickLocked() {
	if len(v.changed) == 0 {
		return
	}
	select {
	case v.kick <- struct{}{}:
	default:
	}
	if v.fresh {
		v.fresh = false
		close(v.next)
		v.next = make(chan struct{})
	}
}

// changes is closed at the next change of the view after the call.
func (v *view) changes() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.next
}

// takeChanged returns the members changed since the last call.
func (v *view) takeChanged() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]string, 0, len(v.changed))
	for name := range v.changed {
		out = append(out, name)
	}
	// A fresh map: a cleared one keeps its size, and iterating it would
	// cost what the largest change set ever cost (a resync: every member).
	v.changed = map[string]bool{}
	return out
}

// size is how many members the view holds (left and failed ones too,
// until they are reaped).
func (v *view) size() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.members)
}

// finished reports whether name is finished with p - done, or aborted,
// in a state it signed - as this node sees it.
func (v *view) finished(p *plan.Compiled, name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	mv, ok := v.members[name]
	if !ok {
		return false
	}
	ph := (&tally{p: p}).phaseOf(name, mv, v.tagKey)
	return ph == PhaseDone || ph == PhaseAborted
}

// member returns one member as the view has it.
func (v *view) member(name string) (memberView, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	mv, ok := v.members[name]
	return mv, ok
}

// tallyLocked returns p's tally, counting it now if it is new.
func (v *view) tallyLocked(p *plan.Compiled) *tally {
	for _, t := range v.tallies {
		if t.p.ID == p.ID {
			return t
		}
	}
	if len(v.tallies) >= maxTallies {
		v.tallies = v.tallies[1:]
	}
	t := newTally(p)
	for name, mv := range v.members {
		t.add(name, mv, 1, v.tagKey)
	}
	v.tallies = append(v.tallies, t)
	return t
}

// earlierWavesDone reports whether every present member of the waves
// before w is done in p.
func (v *view) earlierWavesDone(p *plan.Compiled, w int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tallyLocked(p)
	for i := 0; i < w && i < len(t.notDone); i++ {
		if t.notDone[i] > 0 {
			return false
		}
	}
	return true
}

// wavePrepared reports whether every present member of wave w (if the
// wave exists) holds the artifact.
func (v *view) wavePrepared(p *plan.Compiled, w int) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tallyLocked(p)
	return w < 0 || w >= len(t.unprepared) || t.unprepared[w] == 0
}

// running is how many present members are in p and not finished with it,
// and in how many are in it at all.
func (v *view) running(p *plan.Compiled) (running, in int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := v.tallyLocked(p)
	return t.running, t.in
}
