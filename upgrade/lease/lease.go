// Package lease is the rollout lease: wave w of a plan may go offline only
// while a majority of the plan's member snapshot has granted it.
//
// A granter grants wave w only if it holds no live grant for another wave
// of the same plan and sees every earlier wave done. Two majorities of one
// snapshot always share a member, and that member grants one wave at a
// time, so two waves are never offline together, even across a partition
// (the minority side stalls). Grants are persisted before they are
// answered, so a granter that restarts (as every upgraded node does) still
// refuses a second wave while its grant is live.
//
// This package decides and counts; it never talks to the network and never
// takes anything offline. It must never hand out a grant it has not
// persisted.
package lease

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/durable"
)

// Grant is one granter's consent for a wave, until Expires.
type Grant struct {
	PlanID  string    `json:"plan_id"`
	Wave    int       `json:"wave"`
	Expires time.Time `json:"expires"`
}

// Request asks for a wave's lease. TTL is the plan's per-wave deadline: a
// wave that has not finished by then has failed, and its grant must not
// block the rollout's recovery forever.
type Request struct {
	PlanID string        `json:"plan_id"`
	Wave   int           `json:"wave"`
	TTL    time.Duration `json:"ttl"`
	Node   string        `json:"node"` // requester, for logs
}

// Granter is one member's side of the lease. Its methods are safe for
// concurrent use: requests from different waves race, and a check-and-grant
// must be atomic.
type Granter struct {
	path  string
	clock clock.Clock

	// skipFsync is for tests of the decision logic only, which write
	// thousands of grants and do not test durability.
	skipFsync bool

	mu     sync.Mutex // guards grants and the file at path
	grants []Grant
}

// NewGranter loads the grants persisted at path, if the file exists; the
// directory must exist. A nil clock means the wall clock. A file that does
// not parse is an error rather than a fresh start: forgetting a live grant
// could let this member vote two waves offline at once.
func NewGranter(path string, clk clock.Clock) (*Granter, error) {
	if path == "" {
		return nil, errors.New("lease granter needs a file to keep its grants in")
	}
	if clk == nil {
		clk = clock.Real()
	}
	g := &Granter{path: path, clock: clk}
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

// Decide grants req or returns an error saying why not. Wave numbers in
// messages are 1-based, as `peerd upgrade status` shows them.
//
// earlierDone reports whether this granter sees every wave before the
// requested one done and healthy; it is this granter's own view, because a
// requester could not prove it, and it must not call back into g. It is
// consulted only for a new grant: asking again for a wave already granted
// returns the existing grant unchanged (same expiry), so a requester that
// retries cannot stretch its lease.
//
// A refusal costs nothing. A grant is persisted before it is returned; if
// that fails, Decide refuses with the error.
func (g *Granter) Decide(req Request, earlierDone func(planID string, wave int) bool) (Grant, error) {
	switch {
	case req.PlanID == "":
		return Grant{}, errors.New("lease request names no plan")
	case req.Wave < 0:
		return Grant{}, fmt.Errorf("lease request for wave %d: want 0 or more", req.Wave)
	case req.TTL <= 0:
		return Grant{}, fmt.Errorf("lease request has TTL %s: want a positive duration", req.TTL)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	// One live grant at a time, whatever its plan: two plans made at once
	// on two nodes (before either heard of the other) must not take two
	// waves offline together either.
	for _, gr := range g.grants {
		if !live(gr, now) {
			continue
		}
		if gr.PlanID == req.PlanID && gr.Wave == req.Wave {
			return gr, nil
		}
		if gr.PlanID != req.PlanID {
			return Grant{}, fmt.Errorf("holds a live grant for wave %d of another plan (%.8s) until %s", gr.Wave+1, gr.PlanID, gr.Expires.UTC().Format(time.RFC3339))
		}
		return Grant{}, fmt.Errorf("holds a live grant for wave %d until %s", gr.Wave+1, gr.Expires.UTC().Format(time.RFC3339))
	}
	if !earlierDone(req.PlanID, req.Wave) {
		return Grant{}, fmt.Errorf("does not see every wave before wave %d done yet", req.Wave+1)
	}
	gr := Grant{PlanID: req.PlanID, Wave: req.Wave, Expires: now.Add(req.TTL).UTC()}
	next := append(liveAt(g.grants, now), gr)
	if err := g.saveLocked(next); err != nil {
		return Grant{}, err
	}
	return gr, nil
}

// Release drops this granter's grant for a wave, which frees it to grant
// the next one. Release is for a wave that finished: releasing early would
// let the next wave go offline beside it. Releasing a grant not held is not
// an error.
func (g *Granter) Release(planID string, wave int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	next := slices.DeleteFunc(liveAt(g.grants, now), func(gr Grant) bool {
		return gr.PlanID == planID && gr.Wave == wave
	})
	if len(next) == len(g.grants) {
		return nil // nothing held, nothing expired: nothing to write
	}
	return g.saveLocked(next)
}

// Live returns the unexpired grants, by plan and wave.
func (g *Granter) Live() []Grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := liveAt(g.grants, g.clock.Now())
	slices.SortFunc(out, func(a, b Grant) int {
		return cmp.Or(cmp.Compare(a.PlanID, b.PlanID), cmp.Compare(a.Wave, b.Wave))
	})
	return out
}

// live reports whether gr is unexpired at now; a grant is dead from the
// instant it expires.
func live(gr Grant, now time.Time) bool { return now.Before(gr.Expires) }

// liveAt returns a new slice of the grants live at now, so the file does
// not grow with every wave ever granted.
func liveAt(grants []Grant, now time.Time) []Grant {
	out := make([]Grant, 0, len(grants)+1)
	for _, gr := range grants {
		if live(gr, now) {
			out = append(out, gr)
		}
	}
	return out
}

// saveLocked persists grants (temp file, fsync, rename, fsync of the
// directory) and only then adopts them, so an answer never promises what a
// crash or restart would forget.
func (g *Granter) saveLocked(grants []Grant) error {
	b, err := json.Marshal(grants)
	if err != nil {
		return fmt.Errorf("persist lease grants: %w", err)
	}
	if g.skipFsync {
		err = os.WriteFile(g.path, b, 0o600)
	} else {
		err = durable.WriteFile(g.path, b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("persist lease grants to %s: %w", g.path, err)
	}
	g.grants = grants
	return nil
}
