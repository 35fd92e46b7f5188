package cluster

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrIncompatibleProtocol is returned (wrapped) when a node is refused because
// its protocol range does not include the cluster's active protocol. Callers
// branch on it to stop retrying: waiting will not make the ranges overlap.
var ErrIncompatibleProtocol = errors.New("incompatible protocol")

// ProtocolRange is the inclusive range of wire-protocol versions a build speaks.
type ProtocolRange struct {
	Min, Max int
}

// ParseProtocolRange parses the "min-max" form used in the "p" tag.
func ParseProtocolRange(s string) (ProtocolRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return ProtocolRange{}, fmt.Errorf("protocol range %q: want MIN-MAX, e.g. 1-2", s)
	}
	pmin, err1 := strconv.Atoi(lo)
	pmax, err2 := strconv.Atoi(hi)
	if err1 != nil || err2 != nil {
		return ProtocolRange{}, fmt.Errorf("protocol range %q: want MIN-MAX with whole numbers, e.g. 1-2", s)
	}
	r := ProtocolRange{Min: pmin, Max: pmax}
	if err := r.Validate(); err != nil {
		return ProtocolRange{}, err
	}
	return r, nil
}

// Validate reports whether the range is well formed.
func (r ProtocolRange) Validate() error {
	if r.Min < 1 || r.Max < r.Min {
		return fmt.Errorf("protocol range %d-%d: want 1 <= min <= max", r.Min, r.Max)
	}
	return nil
}

func (r ProtocolRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// Contains reports whether the build speaks protocol p.
func (r ProtocolRange) Contains(p int) bool { return r.Min <= p && p <= r.Max }

// ClusterRange is the range every given member speaks: from the highest
// minimum to the lowest maximum. Its Max is the active protocol. It is empty
// (Min > Max) when the members share no protocol, and ok is false when there
// are no members at all.
func ClusterRange(members []ProtocolRange) (r ProtocolRange, ok bool) {
	for i, m := range members {
		if i == 0 {
			r = m
			continue
		}
		r.Min = max(r.Min, m.Min)
		r.Max = min(r.Max, m.Max)
	}
	return r, len(members) > 0
}

// CheckCompatible decides whether a node speaking joiner may join a cluster
// whose members speak the given ranges. The joiner must speak the cluster's
// active protocol: letting it in must neither split the cluster nor lower the
// protocol the cluster has already switched on (as etcd's cluster version and
// CockroachDB's version finalization refuse older binaries). A lone node has
// switched nothing on yet, so two lone nodes need only share a protocol; this
// keeps the rule symmetric when neither side can tell which one is joining.
func CheckCompatible(node string, joiner ProtocolRange, cluster []ProtocolRange) error {
	cr, ok := ClusterRange(cluster)
	if !ok {
		return nil
	}
	if len(cluster) == 1 {
		if both, _ := ClusterRange([]ProtocolRange{joiner, cr}); both.Min <= both.Max {
			return nil
		}
		return fmt.Errorf("%w: node %s speaks protocol %s, which does not overlap the protocol range %s of the node it meets; run a peerd build whose protocol range overlaps %s",
			ErrIncompatibleProtocol, node, joiner, cr, cr)
	}
	if joiner.Contains(cr.Max) {
		return nil
	}
	return fmt.Errorf("%w: node %s speaks protocol %s, which does not include the cluster's active protocol %d (cluster range %s); run a peerd build whose protocol range includes %d",
		ErrIncompatibleProtocol, node, joiner, cr.Max, cr, cr.Max)
}
