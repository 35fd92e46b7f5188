package upgrade

import (
	"maps"
	"sync"

	"github.com/peerd/peerd/upgrade/lease"
)

// This file keeps the counts behind the agent's Prometheus metrics. The
// engine only counts; package daemon turns Stats into metrics at scrape
// time, so this package does not depend on any metrics library.

// Outcomes of one node's upgrade, as Stats.Upgrades keys them.
const (
	OutcomeDone   = "done"
	OutcomeFailed = "failed"
)

// UpgradeDurationBuckets are the upper bounds, in seconds, of the buckets of
// Stats.Upgrades: from taking the lease to passing (or failing) the health
// gate, which takes at least the plan's MinHealthy.
var UpgradeDurationBuckets = []float64{1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// Stats are the engine's counters since this process started.
type Stats struct {
	// ArtifactBytesServed counts the artifact bytes served to peers.
	ArtifactBytesServed int64
	// LeaseGrants counts the new grants this node handed out as a granter:
	// each grant once, however often its wave asks again.
	LeaseGrants uint64
	// LeaseVotes counts this node's answers to lease requests, by answer
	// ("granted" or "refused").
	LeaseVotes map[string]uint64
	// Upgrades are this node's own upgrades that finished in this process,
	// by outcome (OutcomeDone, OutcomeFailed), timed from taking the lease.
	// A node finishes its upgrade in the new binary, after a restart: the
	// lease time comes from the state file.
	Upgrades map[string]Durations
}

// Durations summarises observed durations.
type Durations struct {
	Count uint64
	// Sum is in seconds.
	Sum float64
	// Buckets maps each of UpgradeDurationBuckets to the number of
	// observations at or below it (cumulative, as Prometheus wants them).
	Buckets map[float64]uint64
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	s := e.metrics.snapshot()
	s.ArtifactBytesServed = e.BytesServed()
	return s
}

// engineMetrics is the engine's part of Stats. Its zero value is ready.
type engineMetrics struct {
	mu      sync.Mutex
	grants  uint64
	granted uint64
	refused uint64
	// lastEpoch is the newest grant counted: a granter's epochs only grow
	// (they are persisted), and one from before a restart is not counted
	// again because nothing is granted twice under one epoch.
	lastEpoch uint64
	upgrades  map[string]*Durations
}

func (m *engineMetrics) refusedVote() {
	m.mu.Lock()
	m.refused++
	m.mu.Unlock()
}

// grantedVote counts a granted answer, and the grant itself if this
// granter has not counted its epoch yet: a holder renews, wave-mates join
// the same grant, and a requester asks again until it has a majority.
func (m *engineMetrics) grantedVote(gr lease.Grant) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.granted++
	if gr.Epoch > m.lastEpoch {
		m.lastEpoch = gr.Epoch
		m.grants++
	}
}

// stateChanged observes a finished upgrade of this node: the step from a
// phase that held the lease (apply, restart, health) to done or failed, in
// the same plan. It sees every such step, whether the state machine, a
// rollback or the recovery at start took it, because every state change is
// saved.
func (m *engineMetrics) stateChanged(prev, next NodeState) {
	if prev.PlanID == "" || prev.PlanID != next.PlanID || next.LeaseAt.IsZero() {
		return
	}
	switch prev.Phase {
	case PhaseApply, PhaseRestart, PhaseHealth:
	default:
		return
	}
	var outcome string
	switch next.Phase {
	case PhaseDone:
		outcome = OutcomeDone
	case PhaseFailed:
		outcome = OutcomeFailed
	default:
		return
	}
	secs := max(next.Updated.Sub(next.LeaseAt), 0).Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.upgrades == nil {
		m.upgrades = map[string]*Durations{}
	}
	d := m.upgrades[outcome]
	if d == nil {
		d = &Durations{Buckets: map[float64]uint64{}}
		m.upgrades[outcome] = d
	}
	d.Count++
	d.Sum += secs
	for _, b := range UpgradeDurationBuckets {
		if secs <= b {
			d.Buckets[b]++
		}
	}
}

func (m *engineMetrics) snapshot() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Stats{
		LeaseGrants: m.grants,
		LeaseVotes:  map[string]uint64{"granted": m.granted, "refused": m.refused},
		Upgrades:    map[string]Durations{},
	}
	for outcome, d := range m.upgrades {
		c := *d
		c.Buckets = maps.Clone(d.Buckets)
		s.Upgrades[outcome] = c
	}
	return s
}
