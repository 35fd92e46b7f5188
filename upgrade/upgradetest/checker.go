package upgradetest

import (
	"fmt"
	"slices"
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
	grants     map[string][]lease.Grant   // granter -> what it persisted last
	offsets    map[string]time.Duration   // node -> its clock's offset
	violations []string
	// MaxWaves and MaxNodes are the most waves and nodes seen offline at
	// once; Offline counts the offline intervals that began.
	MaxWaves, MaxNodes, Offline int
	Changes                     int
	// OnChange, when set, is called with each change as it is recorded,
	// on the node's state machine goroutine: a test can act at the
	// instant a node reaches a phase.
	OnChange func(node string, st upgrade.NodeState)
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
		plans: map[string]map[string]bool{}, grants: map[string][]lease.Grant{}, offsets: map[string]time.Duration{}}
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

// grantsSaved records what a granter persisted, and checks C2 at once
// (a grant that lost an offline holder is caught here).
func (r *Recorder) grantsSaved(node string, gs []lease.Grant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.grants[node] = gs
	r.checkC2Locked(time.Now())
}

// tick checks C2 as time passes (grants expire silently).
func (r *Recorder) tick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checkC2Locked(time.Now())
}

func (r *Recorder) checkC2Locked(now time.Time) {
	for node, s := range r.offline {
		snap := r.plans[s.wave.plan]
		if snap == nil {
			continue // a plan the test did not make: nothing to count against
		}
		covered := 0
		for g := range snap {
			for _, gr := range r.grants[g] {
				if gr.PlanID == s.wave.plan && gr.Wave == s.wave.wave && slices.Contains(gr.Holders, node) &&
					now.Add(r.offsets[g]).Before(gr.Expires) {
					covered++
					break
				}
			}
		}
		if need := lease.Quorum(len(snap)); covered < need {
			r.violate(now, fmt.Sprintf("C2 violated at %s: %s is offline in wave %d of plan %.8s, covered by %d of %d granters (need %d)",
				now.Format("15:04:05.000"), node, s.wave.wave+1, s.wave.plan, covered, len(snap), need))
		}
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
	if r.OnChange != nil {
		defer r.OnChange(node, st)
	}
	r.Changes++
	r.last[node] = st
	if st.PlanID != "" && st.Phase.Offline() {
		if _, was := r.offline[node]; !was {
			r.Offline++
		}
		r.offline[node] = span{wave: waveKey{st.PlanID, st.Wave}, since: now}
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
	r.checkC2Locked(now)
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
