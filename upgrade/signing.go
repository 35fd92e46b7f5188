package upgrade

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/plan"
)

// What a node signs with its identity key, each in a domain of its own, so
// that a signature made for one cannot pass for another.
const (
	domainLeaseRequest = "peerd/lease-request/1"
	domainLeaseAnswer  = "peerd/lease-answer/1"
	domainLockAnswer   = "peerd/lock-answer/1"
	domainPlan         = "peerd/plan/1"
	domainControl      = "peerd/control/1"
	domainState        = "peerd/state/1"
)

// PinnedKeys is what a Network may add: the identity key the node pinned
// for a member (cluster pins every member's on first sight).
type PinnedKeys interface {
	PinnedKey(name string) string
}

// pinnedKey is the key this node pinned for member name: from its
// cluster's pins, else as the member advertises it now (the cluster
// refused any other).
func (e *Engine) pinnedKey(name string) (identity.PublicKey, error) {
	s := ""
	if pk, ok := e.net.(PinnedKeys); ok {
		s = pk.PinnedKey(name)
	}
	if s == "" {
		if mv, ok := e.view.member(name); ok {
			s = mv.key
		}
	}
	if s == "" {
		return nil, fmt.Errorf("%s has no identity key this node knows", name)
	}
	return identity.Parse(s)
}

// snapshotKey is the key the plan's snapshot records for node.
func snapshotKey(p *plan.Compiled, node string) (identity.PublicKey, error) {
	s := p.KeyOf(node)
	if s == "" {
		return nil, fmt.Errorf("plan %s records no identity key for %s", p.Short, node)
	}
	return identity.Parse(s)
}

// checkSnapshotKeys refuses a plan whose snapshot names, for a member this
// node knows, another key than the one it pinned: such a plan could speak
// for that member.
func (e *Engine) checkSnapshotKeys(p *plan.Compiled) error {
	for _, m := range p.Members {
		pinned, err := e.pinnedKey(m.Name)
		if err != nil {
			continue // a member this node has not seen: the others check it
		}
		if m.Key != pinned.String() {
			return fmt.Errorf("plan %s records key %.12s… for %s, but this node pinned %.12s…: refused, as it could speak for %s",
				p.Short, m.Key, m.Name, pinned.String(), m.Name)
		}
	}
	return nil
}

func nonce() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
