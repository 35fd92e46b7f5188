package upgrade

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade/plan"
)

// planStore keeps the plans this node knows, compiled, in memory and in
// its data dir. Plans are content-addressed and immutable, so the store is
// shared freely: by the state machine, the lease votes and the peer API.
type planStore struct {
	dir  string
	mu   sync.Mutex
	byID map[string]*plan.Compiled
}

func newPlanStore(dir string) *planStore {
	return &planStore{dir: dir, byID: map[string]*plan.Compiled{}}
}

func (s *planStore) path(id string) string { return filepath.Join(s.dir, id+".json") }

// local returns a plan from memory or the data dir (where only plans that
// verified, or that this node made, are saved).
func (s *planStore) local(id string) (*plan.Compiled, bool) {
	s.mu.Lock()
	p, ok := s.byID[id]
	s.mu.Unlock()
	if ok {
		return p, true
	}
	if !isHexID(id) {
		return nil, false
	}
	b, err := os.ReadFile(s.path(id))
	if err != nil {
		return nil, false
	}
	p, err = plan.DecodeCompiled(id, b)
	if err != nil {
		return nil, false
	}
	p.Sig, _ = os.ReadFile(s.path(id) + ".sig")
	s.remember(p)
	return p, true
}

// save writes a plan and its signature durably and keeps it.
func (s *planStore) save(p *plan.Compiled) error {
	if err := durable.WriteFile(s.path(p.ID)+".sig", p.Sig, 0o600); err != nil {
		return fmt.Errorf("save plan %s: %w", p.Short, err)
	}
	if err := durable.WriteFile(s.path(p.ID), p.Encoded, 0o600); err != nil {
		return fmt.Errorf("save plan %s: %w", p.Short, err)
	}
	s.remember(p)
	return nil
}

// find returns the one plan whose ID starts with prefix (8 hex digits or
// more, as logs and the CLI show IDs).
func (s *planStore) find(prefix string) (*plan.Compiled, bool, error) {
	prefix = strings.ToLower(prefix)
	if len(prefix) < 8 || len(prefix) > 64 || !isHex(prefix) {
		return nil, false, fmt.Errorf("plan ID %q: want the ID a dry run printed (8 to 64 hex digits)", prefix)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, false, fmt.Errorf("list plans: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && isHexID(id) && strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
		}
	}
	switch len(ids) {
	case 0:
		return nil, false, nil
	case 1:
		p, ok := s.local(ids[0])
		return p, ok, nil
	}
	return nil, false, fmt.Errorf("plan ID %q is the start of %d plans: give more of it", prefix, len(ids))
}

func (s *planStore) remember(p *plan.Compiled) {
	s.mu.Lock()
	s.byID[p.ID] = p
	s.mu.Unlock()
}

// planByID returns a plan from this node's store or from any alive peer,
// checking that its content hashes to its ID and that its origin signed it.
func (e *Engine) planByID(ctx context.Context, id string) (*plan.Compiled, error) {
	if p, ok := e.plans.local(id); ok {
		return p, nil
	}
	if !isHexID(id) {
		return nil, fmt.Errorf("plan ID %q: want 64 hex digits", id)
	}
	var errs []error
	for _, m := range e.alivePeers() {
		b, sig, err := e.peers.Plan(ctx, m, id)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		p, err := plan.DecodeCompiled(id, b)
		if err == nil {
			p.Sig = sig
			err = e.checkPlan(p)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("plan from %s: %w", m.Name, err))
			continue
		}
		if err := e.plans.save(p); err != nil {
			return nil, err
		}
		return p, nil
	}
	return nil, fmt.Errorf("no peer served plan %s: %w", short(id), errors.Join(errs...))
}

// PlanBytes serves a stored plan and its origin's signature to peers.
func (e *Engine) PlanBytes(id string) (plan, sig []byte, err error) {
	p, ok := e.plans.local(id)
	if !ok {
		return nil, nil, os.ErrNotExist
	}
	return p.Encoded, p.Sig, nil
}

// checkPlan accepts a plan fetched from a peer only as its origin's own:
// signed by the key this node pinned for the origin, and with a snapshot
// that names no member by another key than this node knows it by.
func (e *Engine) checkPlan(p *plan.Compiled) error {
	key, err := e.pinnedKey(p.Origin)
	if err != nil {
		return fmt.Errorf("plan %s comes from %s, whose identity key this node does not know: %w", p.Short, p.Origin, err)
	}
	if !key.Verify(domainPlan, []byte(p.ID), p.Sig) {
		return fmt.Errorf("plan %s is not signed by its origin %s: refused", p.Short, p.Origin)
	}
	return e.checkSnapshotKeys(p)
}

// alivePeers lists the other alive members.
func (e *Engine) alivePeers() []cluster.Member {
	self := e.net.LocalMember().Name
	var out []cluster.Member
	for _, m := range e.net.Members() {
		if m.Name != self && m.Status == "alive" {
			out = append(out, m)
		}
	}
	return out
}

func isHexID(s string) bool { return len(s) == 64 && isHex(s) }

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}
