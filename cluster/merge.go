package cluster

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/hashicorp/serf/serf"
)

// mergeDelegate enforces version-compatible peering. Serf calls it when a
// node joins (with the other side's whole member list) and for every alive
// message (one member), so an incompatible node can get in neither by
// joining nor by being gossiped about.
type mergeDelegate struct {
	self     string
	protocol ProtocolRange
	log      *slog.Logger
	pins     *pins // nil: no identity checks

	mu          sync.Mutex // guards the fields below
	local       func() []Member
	lookup      func(name string) (Member, bool) // one member of local, cheaply
	lastRefusal error
	// accepted holds the members of the last merge this node accepted as a
	// whole. memberlist then announces them one at a time through alive
	// messages; by then this node's view is half merged and, judged one by
	// one, an old member could look incompatible with the new ones already
	// in. Each entry passes once, at the range it was accepted with.
	accepted map[string]ProtocolRange
	// previous holds the members this node's Serf snapshot lists as alive
	// when it started: after a restart its view is partial for a while, and
	// judged by that view alone, members it always knew would look like
	// newcomers. They are no newcomers; they must only not split the cluster.
	previous map[string]bool
}

func newMergeDelegate(self string, p ProtocolRange, log *slog.Logger) *mergeDelegate {
	return &mergeDelegate{self: self, protocol: p, log: log}
}

func (d *mergeDelegate) setPrevious(names map[string]bool) {
	d.mu.Lock()
	d.previous = names
	d.mu.Unlock()
}

// setLocal gives the delegate this node's view: the whole member list,
// and a lookup of one member in it.
func (d *mergeDelegate) setLocal(f func() []Member, lookup func(name string) (Member, bool)) {
	d.mu.Lock()
	d.local, d.lookup = f, lookup
	d.mu.Unlock()
}

// refusal is why this node was last refused as a joiner, if it was.
func (d *mergeDelegate) refusal() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastRefusal
}

func (d *mergeDelegate) clearRefusal() {
	d.mu.Lock()
	d.lastRefusal = nil
	d.mu.Unlock()
}

func (d *mergeDelegate) NotifyMerge(incoming []*serf.Member) (err error) {
	d.mu.Lock()
	localFn, lookup, previous := d.local, d.lookup, d.previous
	d.mu.Unlock()

	// A name must keep its key: no member comes back as another.
	if d.pins != nil {
		for _, m := range incoming {
			if m.Name == d.self || status(*m) == serf.StatusLeft {
				continue
			}
			if err := d.pins.check(m.Name, m.Tags[TagKey]); err != nil {
				d.log.Warn("refused member", "member", m.Name, "err", err)
				d.refuse(err)
				return err
			}
		}
	}

	// Decode the incoming members that still count for the protocol. When
	// they include this node, the other side still counts it as a member:
	// it is returning (a restart, a rollback), not joining anew.
	var theirs []Member
	returning := false
	for _, m := range incoming {
		if status(*m) == serf.StatusLeft {
			continue
		}
		if m.Name == d.self {
			returning = true
			continue
		}
		r, err := ParseProtocolRange(m.Tags[TagProtocol])
		if err != nil {
			err = fmt.Errorf("%w: member %s advertises no valid protocol range (tag p=%q); is it a peerd agent?", ErrIncompatibleProtocol, m.Name, m.Tags[TagProtocol])
			d.refuse(err)
			return err
		}
		theirs = append(theirs, Member{Name: m.Name, Protocol: r})
	}

	if len(incoming) == 1 && d.takeAccepted(theirs) {
		return nil
	}
	// Most calls are alive messages about a member this node already has,
	// at the range it had: each entry of every push/pull and every
	// rebroadcast of a tag change or refutation comes through here, under
	// memberlist's lock, before memberlist looks at the incarnation. Such a
	// message changes nothing the checks below look at, so it passes
	// without them (they read and index the whole membership: at 100
	// members that cost ~30 µs and 333 allocations a message).
	if len(incoming) == 1 && len(theirs) == 1 && lookup != nil {
		if m, ok := lookup(theirs[0].Name); ok && inCluster(m) && m.Protocol == theirs[0].Protocol {
			return nil
		}
	}
	var local []Member
	if localFn != nil {
		local = localFn()
	}
	defer func() {
		if err == nil && len(incoming) > 1 {
			d.setAccepted(theirs)
		}
	}()

	// Alone, this node is the joiner: the other side is the cluster, and
	// this node must speak its active protocol, unless it is returning
	// (then the rule for known members below applies).
	if len(ranges(local, d.self)) == 0 && !returning {
		var rs []ProtocolRange
		for _, m := range theirs {
			rs = append(rs, m.Protocol)
		}
		if err := CheckCompatible(d.self, d.protocol, rs); err != nil {
			d.refuse(err)
			return err
		}
		return nil
	}

	everyone := map[string]ProtocolRange{}
	known := map[string]bool{} // members of this node's view, and those it knew before restarting
	for name := range previous {
		known[name] = true
	}
	for _, m := range local {
		if inCluster(m) {
			everyone[m.Name] = m.Protocol
			known[m.Name] = true
		}
	}
	for _, m := range theirs {
		everyone[m.Name] = m.Protocol
	}

	// Two groups merging (a restarted node taking in the cluster's state, or
	// two clusters meeting): neither side can tell which members are new to
	// the cluster, since either view may be partial (a restarted node may
	// have rejoined only some peers from its snapshot). They must only not
	// split: together they must share a protocol. So must a member this node
	// knew before it restarted, and a member coming back at another range
	// (a node that failed its health gate in a rollout's last wave rolls
	// back to a build without the protocol everyone else now speaks; it
	// must get back in, and the active protocol falls back with it). Only
	// a newcomer is held to the active protocol.
	if returning || len(theirs) > 1 || (len(theirs) == 1 && known[theirs[0].Name]) {
		var all []ProtocolRange
		for _, r := range everyone {
			all = append(all, r)
		}
		if cr, _ := ClusterRange(all); cr.Min > cr.Max {
			err := fmt.Errorf("%w: merging these members would leave no protocol every member speaks (highest minimum %d, lowest maximum %d)", ErrIncompatibleProtocol, cr.Min, cr.Max)
			d.log.Warn("refused merge", "err", err)
			if len(ranges(local, d.self)) == 0 {
				d.refuse(err) // for the joiner's Join error
			}
			return err
		}
		return nil
	}

	// One node arriving (a joiner, or an alive message): it must speak the
	// active protocol of everyone else, so it can neither split the cluster
	// nor lower a protocol the cluster has switched on.
	for _, m := range theirs {
		var others []ProtocolRange
		for name, r := range everyone {
			if name != m.Name {
				others = append(others, r)
			}
		}
		if err := CheckCompatible(m.Name, m.Protocol, others); err != nil {
			d.log.Warn("refused member", "member", m.Name, "err", err)
			return err
		}
	}
	return nil
}

func (d *mergeDelegate) refuse(err error) {
	d.mu.Lock()
	d.lastRefusal = err
	d.mu.Unlock()
}

func (d *mergeDelegate) setAccepted(members []Member) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.accepted = make(map[string]ProtocolRange, len(members))
	for _, m := range members {
		d.accepted[m.Name] = m.Protocol
	}
}

// takeAccepted reports whether the one member in members was accepted by
// the last merge at the same range, and uses that acceptance up.
func (d *mergeDelegate) takeAccepted(members []Member) bool {
	if len(members) != 1 {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.accepted[members[0].Name]
	if ok && r == members[0].Protocol {
		delete(d.accepted, members[0].Name)
		return true
	}
	return false
}
