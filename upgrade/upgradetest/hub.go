// Package upgradetest runs many rollout engines in one process over an
// in-memory hub: a fake cluster (members, tags, events, queries) and a fake
// peer API, with per-link reachability (partitions), delay, loss,
// duplication and reordering of messages, pauses, kills and restarts of a
// node on its data dir, and an invariant checker that records every phase
// change and fails the test the instant nodes of two waves are offline
// together.
//
// It is meant to run inside a testing/synctest bubble: time is then fake
// and moves only when every goroutine waits, so a rollout of a thousand
// nodes with one-second health gates takes seconds of wall time, and
// nothing here sleeps on the wall clock. The engines run exactly as in
// production (the same state machine, goroutines and timers); only the
// seams (upgrade.Network, upgrade.Peers, the target's preflight and
// restart) are the hub's. Faults are drawn from a seeded source, so a
// failing seed replays the same schedule.
package upgradetest

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Faults are the network's misbehaviour. The zero value is a perfect
// network with Round-sized delays.
type Faults struct {
	// MaxDelayRounds: each message (a tag update to one observer, an event,
	// a query or its answer) is delivered 1 to 1+MaxDelayRounds gossip
	// rounds after it was sent, so messages overtake each other.
	MaxDelayRounds int
	// Loss is the probability that one delivery is lost.
	Loss float64
	// Duplicate is the probability that an event or query answer is
	// delivered twice.
	Duplicate float64
	// TagFail is the probability that SetTag fails outright: the update
	// reaches nobody (memberlist gave up on the broadcast).
	TagFail float64
	// PushPull, when set, is how often each node merges its view with one
	// random reachable peer's (memberlist's anti-entropy). Zero: never, so
	// that a lost update is healed only by the engine's own reconcile.
	PushPull time.Duration
}

// scheduler runs the hub's deliveries in time order, on one goroutine:
// everything due at the same instant runs as one batch, so that an engine
// is woken once per gossip round rather than once per message.
type scheduler struct {
	mu   sync.Mutex
	q    eventHeap
	seq  uint64
	wake chan struct{}
	// afterBatch runs after each batch (the hub hands the batch's member
	// changes to each engine at once).
	afterBatch func()
}

type event struct {
	at  time.Time
	seq uint64
	fn  func()
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newScheduler() *scheduler { return &scheduler{wake: make(chan struct{}, 1)} }

// at runs fn at t (at once if t has passed), on the scheduler's goroutine.
func (s *scheduler) at(t time.Time, fn func()) {
	s.mu.Lock()
	s.seq++
	heap.Push(&s.q, event{at: t, seq: s.seq, fn: fn})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *scheduler) run(ctx context.Context) {
	for {
		s.mu.Lock()
		var batch []func()
		now := time.Now()
		for len(s.q) > 0 && !s.q[0].at.After(now) {
			batch = append(batch, heap.Pop(&s.q).(event).fn)
		}
		var wait <-chan time.Time
		var timer *time.Timer
		if len(batch) == 0 && len(s.q) > 0 {
			timer = time.NewTimer(s.q[0].at.Sub(now))
			wait = timer.C
		}
		s.mu.Unlock()
		if len(batch) > 0 {
			for _, fn := range batch {
				fn()
			}
			if s.afterBatch != nil {
				s.afterBatch()
			}
			continue
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-s.wake:
		case <-wait:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// source is the hub's seeded randomness; it is safe for concurrent use.
type source struct {
	mu  sync.Mutex
	rng *rand.Rand
}

func newSource(seed uint64) *source {
	return &source{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (s *source) chance(p float64) bool {
	if p <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < p
}

func (s *source) intN(n int) int {
	if n <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.IntN(n)
}
