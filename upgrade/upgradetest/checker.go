package upgradetest

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
)

// Recorder records every state each node persisted, as the engines report
// them (upgrade.Config.Observe), and checks the rollout's invariant over
// the record as it grows:
//
// C1: at no instant are nodes of two waves offline together, across all
// plans of the target.
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
	return &Recorder{t: t, seed: seed, offline: map[string]span{}, last: map[string]upgrade.NodeState{}}
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
		v := fmt.Sprintf("C1 violated at %s: %d waves offline together (%s)", now.Format("15:04:05.000"), len(waves), strings.Join(parts, "; "))
		r.violations = append(r.violations, v)
		if r.t != nil {
			r.t.Errorf("%s (seed %d)", v, r.seed)
		}
	}
}

// started and down note process starts and stops (informational).
func (r *Recorder) started(string, string) {}
func (r *Recorder) down(string)            {}

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
