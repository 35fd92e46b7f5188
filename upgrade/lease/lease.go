// Package lease is the rollout lease: a node of wave w of a plan may be
// offline only while a majority of the plan's member snapshot holds a
// live grant of w.
//
// A granter grants one wave at a time, whatever its plan: it refuses a wave
// while it holds a live grant for another. Two majorities of one snapshot
// always share a member, so two waves are never offline together, even
// across a partition (the minority side stalls). A grant is owned: it names
// its holders - the requester and the wave-mates that may still go offline
// with it - who renew it while they are offline and release their part
// once their health gate passed; the grant ends when no holder is left, or
// expires, the last resort for holders that died. A holder also leaves the
// grant when the granter sees it finished with the plan (done, or aborted
// before it went offline: phases a node reaches only once it is back
// online, and never leaves for that plan), never on an empty tag, another
// plan's, or any state that could be stale. The granter takes the TTL from
// the plan (its caller's Terms), never from the requester, and caps how
// long a grant may be renewed.
//
// A grant, its holders and its expiry are persisted before they are
// answered: a granter that restarts (as every upgraded node does) still
// refuses a second wave while its grant is live, and still knows whom it
// waits for. The holders are written once, when the grant is made, so that
// a wave of a hundred costs each granter one write, not a hundred; a
// release is kept in memory until the next write (after a restart the
// granter waits for that holder again, until it sees it finished or the
// grant expires: only longer). Each new grant gets an epoch from a
// persisted counter, so a holder can tell a renewed grant from a new one.
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
	"strings"
	"sync"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/durable"
)

// Grant is one granter's consent for a wave, until Expires.
type Grant struct {
	PlanID string `json:"plan_id"`
	Wave   int    `json:"wave"`
	// Epoch numbers this granter's grants; a grant that lapsed and was
	// given again has a new one.
	Epoch uint64 `json:"epoch"`
	// Since is when it was granted; renewals stop at Since + Terms.MaxHold.
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
	// Holders are the requesters it was granted to that have not released
	// it; the grant ends when the last one does (or it expires).
	Holders []string `json:"holders"`
	// Exclusive grants are one node's (a late joiner's wave of its own):
	// anyone else waits as if for another wave.
	Exclusive bool `json:"exclusive,omitempty"`
}

// Request asks for (or renews, or releases) a node's part in a wave's grant.
type Request struct {
	PlanID string `json:"plan_id"`
	Wave   int    `json:"wave"`
	Node   string `json:"node"` // the requester, who will hold the grant
	// Release gives the node's part back (its health gate passed, or it
	// gave up before going offline).
	Release bool `json:"release,omitempty"`
	// Renew only extends a part the node holds: it never adds the node
	// to a grant. A renewal that arrives late, after the node released its
	// part, must not make it a holder again (nobody would release that).
	Renew bool `json:"renew,omitempty"`
	// TTL is what older agents asked for; it is ignored (Terms.TTL rules).
	TTL time.Duration `json:"ttl,omitempty"`
	// Nonce is the requester's, echoed in the signed answers, so that an
	// answer to an earlier request cannot be replayed as one to this.
	Nonce string `json:"nonce,omitempty"`
}

// Terms are what the granter's caller, which knows the plan, says about a
// request it has checked (the wave exists and the requester is in it).
type Terms struct {
	// TTL is how long a grant lasts from its last renewal: the plan's.
	TTL time.Duration
	// MaxHold caps how long a grant may be renewed (the plan's deadline
	// and a TTL for a rollback): no holder blocks later waves past it.
	MaxHold time.Duration
	// Exclusive: the wave is the requester's alone.
	Exclusive bool
	// Holders, when set, says who a new grant waits for besides the
	// requester: its wave-mates that may still go offline (not finished in
	// the granter's view). It is called only for a new grant.
	Holders func() []string
	// EarlierDone reports whether this granter sees every earlier wave
	// done and healthy; it is this granter's own view, because a
	// requester could not prove it, and it must not call back into the
	// Granter. It is consulted only for a new grant: a holder renewing, or
	// a wave-mate joining a live grant, is already past that point.
	EarlierDone func() bool
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
	// onSave, when set, is told of the grants each time they were
	// persisted (a test's checker records them).
	onSave func([]Grant)
	// finished, when set, reports whether the granter sees node finished
	// with plan (done or aborted there): it leaves the grant.
	finished func(planID, node string) bool

	mu     sync.Mutex // guards the fields below and the file at path
	grants []Grant
	epoch  uint64
	// holdUntil: grant nothing before then (Hold), for holdWhy.
	holdUntil time.Time
	holdWhy   string
}

// file is the granter's file: its grants and the last epoch it gave.
type file struct {
	Epoch  uint64  `json:"epoch"`
	Grants []Grant `json:"grants"`
}

// NewGranter loads the grants persisted at path, or their previous
// generation when the file is empty or torn; the directory must exist. A
// nil clock means the wall clock. When neither generation decodes, the
// error wraps durable.ErrCorrupt and the granter returned with it holds no
// grants: forgetting a live grant could let this member vote two waves
// offline at once, so the caller must keep it from granting (Hold) until
// every grant it may have given has expired.
func NewGranter(path string, clk clock.Clock) (*Granter, error) {
	if path == "" {
		return nil, errors.New("lease granter needs a file to keep its grants in")
	}
	if clk == nil {
		clk = clock.Real()
	}
	g := &Granter{path: path, clock: clk}
	var f file
	_, err := durable.ReadGenerations(path, func(b []byte) error {
		var err error
		f, err = decodeGrants(b)
		return err
	})
	if errors.Is(err, durable.ErrCorrupt) {
		return g, fmt.Errorf("lease grants: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("read lease grants: %w", err)
	}
	g.grants, g.epoch = f.Grants, f.Epoch
	return g, nil
}

// decodeGrants decodes a grants file's content.
func decodeGrants(b []byte) (file, error) {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		// Before epochs the file was a plain list of grants; they block
		// other waves until they expire, as they did then (no holder can
		// release them).
		f = file{}
		if json.Unmarshal(b, &f.Grants) != nil {
			return file{}, err
		}
		for i := range f.Grants {
			f.Grants[i].Holders = []string{""}
		}
	}
	for _, gr := range f.Grants {
		if gr.PlanID == "" || gr.Wave < 0 {
			return file{}, fmt.Errorf("a grant of plan %q, wave %d is not one this granter writes", gr.PlanID, gr.Wave)
		}
	}
	return f, nil
}

// Hold makes the granter refuse every new grant and renewal until until,
// saying why: a granter that lost its grants must not grant again before
// every grant it may have given has expired.
func (g *Granter) Hold(until time.Time, why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holdUntil, g.holdWhy = until, why
}

// OnSave registers f to be told of the grants each time they are
// persisted, with the granter's lock held (f must not call into g). Call
// it before the granter is used.
func (g *Granter) OnSave(f func([]Grant)) { g.onSave = f }

// OnFinished registers how the granter learns that a holder is finished
// with a plan (f is called with the granter's lock held and must not call
// into g). Call it before the granter is used.
func (g *Granter) OnFinished(f func(planID, node string) bool) { g.finished = f }

// Epoch is the epoch of the newest grant this granter gave.
func (g *Granter) Epoch() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.epoch
}

// Decide grants req.Node a part in its wave's grant (a new grant, or the
// live one, renewed), or returns an error saying why not. Wave numbers in
// messages are 1-based, as `peerd upgrade status` shows them.
//
// A refusal costs nothing. A grant and every extension of its expiry are
// persisted before they are returned; if that fails, Decide refuses with
// the error. A renewal extends the expiry only once less than three
// quarters of a TTL are left, so that holders renewing often cost a write
// per quarter TTL, not per request: the requester learns from the answer
// how long the grant lasts and must not count on more.
func (g *Granter) Decide(req Request, terms Terms) (Grant, error) {
	switch {
	case req.PlanID == "":
		return Grant{}, errors.New("lease request names no plan")
	case req.Wave < 0:
		return Grant{}, fmt.Errorf("lease request for wave %d: want 0 or more", req.Wave)
	case req.Node == "":
		return Grant{}, errors.New("lease request names no requester")
	case terms.TTL <= 0:
		return Grant{}, fmt.Errorf("lease TTL %s: want a positive duration", terms.TTL)
	case req.Release:
		return Grant{}, errors.New("a release is not a request: call Release")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	if now.Before(g.holdUntil) {
		return Grant{}, fmt.Errorf("grants nothing until %s: %s", stamp(g.holdUntil), g.holdWhy)
	}
	live := liveAt(g.grants, now)
	mine := -1
	for i := 0; i < len(live); i++ {
		gr := live[i]
		if (gr.PlanID != req.PlanID || gr.Wave != req.Wave) && !g.holdsAnyoneLocked(gr) {
			// Every holder of that wave is finished: it holds nothing.
			live = slices.Delete(live, i, i+1)
			i--
			continue
		}
		switch {
		case gr.PlanID != req.PlanID:
			// One live grant at a time, whatever its plan: two plans made
			// at once on two nodes must not take two waves offline together.
			return Grant{}, fmt.Errorf("holds a live grant for wave %d of another plan (%.8s) until %s", gr.Wave+1, gr.PlanID, stamp(gr.Expires))
		case gr.Wave != req.Wave:
			return Grant{}, fmt.Errorf("holds a live grant for wave %d until %s", gr.Wave+1, stamp(gr.Expires))
		case gr.Exclusive && !slices.Contains(gr.Holders, req.Node):
			return Grant{}, fmt.Errorf("holds a live grant for wave %d (late joiner %s) until %s", gr.Wave+1, strings.Join(gr.Holders, ", "), stamp(gr.Expires))
		}
		mine = i
	}
	if req.Renew && (mine < 0 || !slices.Contains(live[mine].Holders, req.Node)) {
		return Grant{}, fmt.Errorf("%s holds no part of wave %d to renew", req.Node, req.Wave+1)
	}
	if mine < 0 {
		if terms.EarlierDone == nil || !terms.EarlierDone() {
			return Grant{}, fmt.Errorf("does not see every wave before wave %d done yet", req.Wave+1)
		}
		holders := []string{req.Node}
		if !terms.Exclusive && terms.Holders != nil {
			for _, h := range terms.Holders() {
				if h != req.Node {
					holders = append(holders, h)
				}
			}
		}
		gr := Grant{PlanID: req.PlanID, Wave: req.Wave, Epoch: g.epoch + 1, Since: now,
			Expires: capped(now, now.Add(terms.TTL), terms), Holders: holders, Exclusive: terms.Exclusive}
		if err := g.saveLocked(append(live, gr), gr.Epoch); err != nil {
			return Grant{}, err
		}
		return gr, nil
	}
	gr := live[mine]
	changed := false
	if !slices.Contains(gr.Holders, req.Node) {
		gr.Holders = append(slices.Clone(gr.Holders), req.Node)
		changed = true
	}
	if ext := capped(gr.Since, now.Add(terms.TTL), terms); gr.Expires.Sub(now) < 3*terms.TTL/4 && ext.After(gr.Expires) {
		gr.Expires = ext
		changed = true
	}
	if changed {
		next := slices.Clone(live)
		next[mine] = gr
		if err := g.saveLocked(next, g.epoch); err != nil {
			return Grant{}, err
		}
	}
	return gr, nil
}

// capped bounds a grant's expiry by its MaxHold from since.
func capped(since, expires time.Time, terms Terms) time.Time {
	if terms.MaxHold > 0 {
		if limit := since.Add(terms.MaxHold); expires.After(limit) {
			return limit
		}
	}
	return expires
}

// Release drops node's part in a wave's grant; the grant goes when its
// last holder does, which frees this granter to grant the next wave.
// Releasing a part not held is not an error. A release is not written at
// once (see the package comment): it only ever shortens a wait.
func (g *Granter) Release(planID string, wave int, node string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.grants = liveAt(g.grants, g.clock.Now())
	for i, gr := range g.grants {
		if gr.PlanID != planID || gr.Wave != wave || !slices.Contains(gr.Holders, node) {
			continue
		}
		gr.Holders = slices.DeleteFunc(slices.Clone(gr.Holders), func(h string) bool { return h == node })
		if len(gr.Holders) == 0 {
			g.grants = slices.Delete(g.grants, i, i+1)
		} else {
			g.grants[i] = gr
		}
		return nil
	}
	return nil
}

// holdsAnyoneLocked reports whether a holder of gr is not finished.
func (g *Granter) holdsAnyoneLocked(gr Grant) bool {
	if g.finished == nil {
		return true
	}
	return slices.ContainsFunc(gr.Holders, func(h string) bool { return !g.finished(gr.PlanID, h) })
}

// liveLocked returns a new slice of the grants live at now, without the
// holders the granter sees finished, and without grants no holder is left
// of. The change is kept in memory only: after a restart the same view
// finds the same holders finished.
func (g *Granter) liveLocked(now time.Time) []Grant {
	live := liveAt(g.grants, now)
	if g.finished == nil {
		return live
	}
	out := live[:0]
	for _, gr := range live {
		left := slices.DeleteFunc(slices.Clone(gr.Holders), func(h string) bool { return g.finished(gr.PlanID, h) })
		if len(left) == 0 {
			continue
		}
		gr.Holders = left
		out = append(out, gr)
	}
	return out
}

// Live returns the unexpired grants, by plan and wave.
func (g *Granter) Live() []Grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := g.liveLocked(g.clock.Now())
	slices.SortFunc(out, func(a, b Grant) int {
		return cmp.Or(cmp.Compare(a.PlanID, b.PlanID), cmp.Compare(a.Wave, b.Wave))
	})
	return out
}

// liveAt returns a new slice of the grants live at now, so the file does
// not grow with every wave ever granted. A grant is dead from the instant
// it expires.
func liveAt(grants []Grant, now time.Time) []Grant {
	out := make([]Grant, 0, len(grants)+1)
	for _, gr := range grants {
		if now.Before(gr.Expires) {
			out = append(out, gr)
		}
	}
	return out
}

// saveLocked persists grants (temp file, fsync, rename, fsync of the
// directory) and only then adopts them, so an answer never promises what a
// crash or restart would forget.
func (g *Granter) saveLocked(grants []Grant, epoch uint64) error {
	b, err := json.Marshal(file{Epoch: epoch, Grants: grants})
	if err != nil {
		return fmt.Errorf("persist lease grants: %w", err)
	}
	if g.skipFsync {
		err = os.WriteFile(g.path, b, 0o600)
	} else {
		err = durable.WriteGenerations(g.path, b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("persist lease grants to %s: %w", g.path, err)
	}
	g.grants, g.epoch = grants, epoch
	if g.onSave != nil {
		g.onSave(slices.Clone(grants))
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
