// Package lease is the rollout lease: wave w of a plan may go offline only
// while a majority of the plan's member snapshot has granted it.
//
// A granter grants wave w only if it holds no live grant for another wave of
// the same plan and sees every earlier wave done. Two majorities of one
// snapshot always share a member, so two waves are never offline together,
// even across a partition (the minority side stalls). Grants are persisted
// before they are answered, so a granter that restarts (as every upgraded
// node does) still refuses a second wave while its grant is live.
package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Grant is one granter's consent for a wave, until Expires.
type Grant struct {
	PlanID  string    `json:"plan_id"`
	Wave    int       `json:"wave"`
	Expires time.Time `json:"expires"`
}

// Request asks for a wave's lease.
type Request struct {
	PlanID string        `json:"plan_id"`
	Wave   int           `json:"wave"`
	TTL    time.Duration `json:"ttl"`
	Node   string        `json:"node"`
}

// Clock tells the time; tests use a FakeClock.
type Clock interface{ Now() time.Time }

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// FakeClock is a clock tests move by hand.
type FakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewFakeClock returns a clock stopped at t.
func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{now: t} }

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Granter is one member's side of the lease.
type Granter struct {
	path  string
	clock Clock

	mu     sync.Mutex // guards grants and the file
	grants []Grant
}

// NewGranter loads the grants persisted at path, if any.
func NewGranter(path string, clock Clock) (*Granter, error) {
	g := &Granter{path: path, clock: clock}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease grants: %w", err)
	}
	if err := json.Unmarshal(b, &g.grants); err != nil {
		return nil, fmt.Errorf("lease grants file %s is corrupt: %w; remove it only when no rollout is running", path, err)
	}
	return g, nil
}

// Decide grants req or says why not. earlierDone reports whether this
// granter sees every wave before the requested one done and healthy.
func (g *Granter) Decide(req Request, earlierDone func(planID string, wave int) bool) (Grant, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	for _, gr := range g.grants {
		if gr.PlanID != req.PlanID || !now.Before(gr.Expires) {
			continue
		}
		if gr.Wave == req.Wave {
			return gr, nil
		}
		return Grant{}, fmt.Errorf("holds a live grant for wave %d until %s", gr.Wave+1, gr.Expires.UTC().Format(time.RFC3339))
	}
	if !earlierDone(req.PlanID, req.Wave) {
		return Grant{}, fmt.Errorf("does not see every wave before wave %d done yet", req.Wave+1)
	}
	if req.TTL <= 0 {
		return Grant{}, errors.New("request has no TTL")
	}
	gr := Grant{PlanID: req.PlanID, Wave: req.Wave, Expires: now.Add(req.TTL)}
	next := []Grant{gr}
	for _, old := range g.grants {
		if now.Before(old.Expires) {
			next = append(next, old)
		}
	}
	if err := g.saveLocked(next); err != nil {
		return Grant{}, err
	}
	return gr, nil
}

// Release drops this granter's grant for a wave (it finished).
func (g *Granter) Release(planID string, wave int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var next []Grant
	for _, gr := range g.grants {
		if gr.PlanID != planID || gr.Wave != wave {
			next = append(next, gr)
		}
	}
	return g.saveLocked(next)
}

// Live lists the unexpired grants.
func (g *Granter) Live() []Grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	var out []Grant
	for _, gr := range g.grants {
		if now.Before(gr.Expires) {
			out = append(out, gr)
		}
	}
	return out
}

// saveLocked persists grants (temp file, fsync, rename) and only then
// adopts them, so an answer never promises what a restart would forget.
func (g *Granter) saveLocked(grants []Grant) error {
	b, err := json.Marshal(grants)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(g.path), ".grants-*")
	if err != nil {
		return fmt.Errorf("persist lease grants: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), g.path)
	}
	if err != nil {
		return fmt.Errorf("persist lease grants: %w", err)
	}
	g.grants = grants
	return nil
}

// Quorum is the majority of n voters.
func Quorum(n int) int { return n/2 + 1 }

// Tally counts the answers to one request; each voter counts once.
type Tally struct {
	n     int
	votes map[string]bool
}

// NewTally counts against a snapshot of the given size.
func NewTally(snapshotSize int) *Tally { return &Tally{n: snapshotSize, votes: map[string]bool{}} }

// Add records a voter's answer; a voter's first answer stands.
func (t *Tally) Add(voter string, granted bool) {
	if _, ok := t.votes[voter]; !ok {
		t.votes[voter] = granted
	}
}

// Counts returns how many granted and refused.
func (t *Tally) Counts() (granted, refused int) {
	for _, v := range t.votes {
		if v {
			granted++
		} else {
			refused++
		}
	}
	return granted, refused
}

// Granted reports whether a majority of the snapshot granted.
func (t *Tally) Granted() bool {
	g, _ := t.Counts()
	return g >= Quorum(t.n)
}
