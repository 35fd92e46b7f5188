package upgradetest

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
)

// Recorder records every state each node persisted, as the engines report
// them (upgrade.Config.Observe), and checks the rollout's invariant over
// the record as it grows:
//
// C1: at no instant are nodes of two waves offline together, across all
// plans of the target.
//
// C2: every offline interval is covered by live, persisted grants of the
// node's wave, naming it as a holder, from a majority of the plan's full
// snapshot (each granter's expiry read on its own clock).
//
// A node is offline from the moment it persisted a phase that is offline
// (it holds the lease and is swapping or restarting) until it persisted
// one that is not (the new process entered its health gate, or the node
// failed and rolled back). A crash in between leaves it offline until it
// comes back, which is what it is.
type Recorder struct {
	mu         sync.Mutex
	t          testing.TB
	seed       uint64
	offline    map[string]span
	last       map[string]upgrade.NodeState
	plans      map[string]map[string]bool // plan ID -> its snapshot
	grants     map[string][]heldGrant     // granter -> what it persisted last
	offsets    map[string]time.Duration   // node -> its clock's offset
	violations []string
	// MaxWaves and MaxNodes are the most waves and nodes seen offline at
	// once; Offline counts the offline intervals that began.
	MaxWaves, MaxNodes, Offline int
	Changes                     int
	// onChange: see OnChange.
	onChange func(node string, st upgrade.NodeState)
}

// OnChange has f called with each change as it is recorded, on the node's
// state machine goroutine, while the recorder is locked: a test can act at
// the instant a node reaches a phase. Nodes may be running already.
func (r *Recorder) OnChange(f func(node string, st upgrade.NodeState)) {
	r.mu.Lock()
	r.onChange = f
	r.mu.Unlock()
}

// heldGrant is a persisted grant as the checker looks it up.
type heldGrant struct {
	wave    waveKey
	expires time.Time
	holders map[string]bool
}

type span struct {
	wave  waveKey
	since time.Time
}

type waveKey struct {
	plan string
	wave int
}

func newRecorder(t testing.TB, seed uint64) *Recorder {
	return &Recorder{t: t, seed: seed, offline: map[string]span{}, last: map[string]upgrade.NodeState{},
		plans: map[string]map[string]bool{}, grants: map[string][]heldGrant{}, offsets: map[string]time.Duration{}}
}

// plan records a plan's snapshot, which C2 counts majorities of.
func (r *Recorder) plan(id string, members []plan.Member) {
	snap := map[string]bool{}
	for _, m := range members {
		snap[m.Name] = true
	}
	r.mu.Lock()
	r.plans[id] = snap
	r.mu.Unlock()
}

// grantsSaved records what a granter persisted, and checks C2 for the
// offline nodes it no longer covers (a grant that lost an offline holder
// is caught here).
func (r *Recorder) grantsSaved(node string, gs []lease.Grant) {
	now := time.Now()
	held := make([]heldGrant, len(gs))
	for i, g := range gs {
		hs := make(map[string]bool, len(g.Holders))
		for _, h := range g.Holders {
			hs[h] = true
		}
		held[i] = heldGrant{wave: waveKey{g.PlanID, g.Wave}, expires: g.Expires, holders: hs}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.grants[node]
	r.grants[node] = held
	for x, s := range r.offline {
		if r.covers(before, x, s.wave, node, now) && !r.covers(held, x, s.wave, node, now) {
			r.checkC2Locked(x, s, now)
		}
	}
}

// tick checks C2 for every offline node as time passes (grants expire
// silently).
func (r *Recorder) tick() {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for x, s := range r.offline {
		r.checkC2Locked(x, s, now)
	}
}

// covers reports whether granter g's grants cover node x offline in w.
func (r *Recorder) covers(gs []heldGrant, x string, w waveKey, g string, now time.Time) bool {
	for _, gr := range gs {
		if gr.wave == w && gr.holders[x] && now.Add(r.offsets[g]).Before(gr.expires) {
			return true
		}
	}
	return false
}

// checkC2Locked checks that offline node x is covered by a majority.
func (r *Recorder) checkC2Locked(x string, s span, now time.Time) {
	snap := r.plans[s.wave.plan]
	if snap == nil {
		return // a plan the test did not make: nothing to count against
	}
	covered := 0
	for g := range snap {
		if r.covers(r.grants[g], x, s.wave, g, now) {
			covered++
		}
	}
	if need := lease.Quorum(len(snap)); covered < need {
		r.violate(now, fmt.Sprintf("C2 violated at %s: %s is offline in wave %d of plan %.8s, covered by %d of %d granters (need %d)",
			now.Format("15:04:05.000"), x, s.wave.wave+1, s.wave.plan, covered, len(snap), need))
	}
}

// violate records a violation and fails the test at once.
func (r *Recorder) violate(now time.Time, v string) {
	r.violations = append(r.violations, v)
	if r.t != nil {
		r.t.Errorf("%s (seed %d)", v, r.seed)
	}
}

func (r *Recorder) observe(node string, st upgrade.NodeState) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.onChange; f != nil {
		defer f(node, st)
	}
	r.Changes++
	r.last[node] = st
	if st.PlanID != "" && st.Phase.Offline() {
		if _, was := r.offline[node]; !was {
			r.Offline++
			s := span{wave: waveKey{st.PlanID, st.Wave}, since: now}
			r.offline[node] = s
			r.checkC2Locked(node, s, now)
		}
	} else {
		delete(r.offline, node)
	}
	waves := map[waveKey][]string{}
	for n, s := range r.offline {
		waves[s.wave] = append(waves[s.wave], n)
	}
	r.MaxWaves = max(r.MaxWaves, len(waves))
	r.MaxNodes = max(r.MaxNodes, len(r.offline))
	if len(waves) > 1 {
		var parts []string
		for w, nodes := range waves {
			sort.Strings(nodes)
			parts = append(parts, fmt.Sprintf("plan %.8s wave %d: %s", w.plan, w.wave+1, strings.Join(nodes, ",")))
		}
		sort.Strings(parts)
		r.violate(now, fmt.Sprintf("C1 violated at %s: %d waves offline together (%s)", now.Format("15:04:05.000"), len(waves), strings.Join(parts, "; ")))
	}
}

// started and down note process starts and stops (informational).
func (r *Recorder) started(string, string) {}
func (r *Recorder) down(string)            {}

// OfflineNow is how many nodes are offline now.
func (r *Recorder) OfflineNow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.offline)
}

// Violations returns what the checker found wrong.
func (r *Recorder) Violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.violations...)
}

// Stats returns the most waves and nodes seen offline at once, and how
// many offline intervals began.
func (r *Recorder) Stats() (maxWaves, maxNodes, offline int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.MaxWaves, r.MaxNodes, r.Offline
}
