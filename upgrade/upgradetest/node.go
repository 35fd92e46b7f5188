package upgradetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/swarm"
)

// errUnreachable is what a call to a node that is down, dead or cut off
// gets: the connection is refused (or times out) at once.
var errUnreachable = errors.New("connection refused")

// record is one member's self-description as it gossips it: its tags, at
// an incarnation that only grows, so that an observer keeps the newest it
// has heard whatever order updates arrive in (as memberlist does).
type record struct {
	tags map[string]string // never changed once published
	inc  uint64
}

// entry is one member as one observer sees it.
type entry struct {
	rec    record
	status string
}

func (n *Node) member(name string, e entry) cluster.Member {
	r, _ := cluster.ParseProtocolRange(e.rec.tags[cluster.TagProtocol])
	return cluster.Member{
		Name: name, Addr: "sim:" + name, Status: e.status,
		Version: e.rec.tags[cluster.TagVersion], Protocol: r, Tags: e.rec.tags,
	}
}

// proc is one process of a node: the Network and Peers its engine uses.
// When the node restarts, the old process's proc stops working, as a dead
// process's sockets do.
type proc struct {
	n   *Node
	gen int
}

// live reports whether this process still runs (and is not cut off from
// everything by being down). Call with the hub's lock held.
func (p *proc) liveLocked() bool { return p.gen == p.n.gen && p.n.state == stateUp }

// waitRunnable blocks while the node is paused (a SIGSTOPped process does
// nothing); it fails once this process is gone.
func (p *proc) waitRunnable() error {
	h := p.n.h
	for {
		h.mu.Lock()
		live, paused, resume := p.liveLocked(), p.n.paused, p.n.resume
		h.mu.Unlock()
		if !live {
			return errUnreachable
		}
		if !paused {
			return nil
		}
		<-resume
	}
}

func (p *proc) LocalMember() cluster.Member {
	h := p.n.h
	h.mu.Lock()
	defer h.mu.Unlock()
	return p.n.member(p.n.Name, entry{rec: p.n.rec, status: "alive"})
}

func (p *proc) Members() []cluster.Member {
	h := p.n.h
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]cluster.Member, 0, len(p.n.view)+1)
	out = append(out, p.n.member(p.n.Name, entry{rec: p.n.rec, status: "alive"}))
	for name, e := range p.n.view {
		out = append(out, p.n.member(name, e))
	}
	return out
}

func (p *proc) ProtocolRange() cluster.ProtocolRange {
	var ranges []cluster.ProtocolRange
	for _, m := range p.Members() {
		if m.Status != "left" {
			ranges = append(ranges, m.Protocol)
		}
	}
	r, _ := cluster.ClusterRange(ranges)
	return r
}

// SetTag publishes a new record: at once to this node, and to every other
// node a few gossip rounds later, unless lost.
func (p *proc) SetTag(key, value string) error {
	if err := p.waitRunnable(); err != nil {
		return err
	}
	h := p.n.h
	if h.rnd.chance(h.opts.Faults.TagFail) {
		return errors.New("timed out waiting for the update to be broadcast")
	}
	h.mu.Lock()
	if !p.liveLocked() {
		h.mu.Unlock()
		return errUnreachable
	}
	tags := maps.Clone(p.n.rec.tags)
	if value == "" {
		delete(tags, key)
	} else {
		tags[key] = value
	}
	p.n.rec = record{tags: tags, inc: p.n.rec.inc + 1}
	rec, from := p.n.rec, p.n.Name
	h.tagSets++
	h.mu.Unlock()
	h.gossip(from, rec)
	return nil
}

// Broadcast is a Serf user event: every node that is reachable when it
// arrives gets it (this one too), a few rounds later, maybe twice, maybe
// never.
func (p *proc) Broadcast(name string, payload []byte) error {
	if err := p.waitRunnable(); err != nil {
		return err
	}
	p.n.h.broadcast(p.n.Name, name, payload)
	return nil
}

// Query asks nodes; each answers after a round trip unless the request or
// the answer is lost, or the node is unreachable, down, or paused (then
// it answers when it resumes, too late).
func (p *proc) Query(ctx context.Context, name string, payload []byte, nodes []string, timeout time.Duration, enough func(string, []byte) bool) (map[string][]byte, error) {
	if err := p.waitRunnable(); err != nil {
		return nil, err
	}
	h := p.n.h
	h.mu.Lock()
	h.queries++
	h.asked += len(nodes)
	h.mu.Unlock()
	answers := make(chan answer, 2*len(nodes)+1)
	h.query(p.n.Name, nodes, name, payload, answers)
	out := map[string][]byte{}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for len(out) < len(nodes) {
		select {
		case a := <-answers:
			if _, dup := out[a.from]; dup {
				continue
			}
			out[a.from] = a.payload
			if enough != nil && enough(a.from, a.payload) {
				return out, nil
			}
		case <-t.C:
			return out, nil
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
	return out, nil
}

type answer struct {
	from    string
	payload []byte
}

// call reaches another node's engine for a peer API request: after a
// round's latency, if it is reachable; a paused node holds the caller
// until it resumes or the caller gives up.
func (p *proc) call(ctx context.Context, m cluster.Member, fn func(*upgrade.Engine) error) error {
	if err := p.waitRunnable(); err != nil {
		return err
	}
	h := p.n.h
	h.mu.Lock()
	t := h.nodes[m.Name]
	h.mu.Unlock()
	if t == nil {
		return fmt.Errorf("no node %s", m.Name)
	}
	for {
		h.mu.Lock()
		ok := h.reachableLocked(p.n, t)
		paused, resume, e := t.paused, t.resume, t.engine
		h.mu.Unlock()
		if !ok || e == nil {
			return fmt.Errorf("%s: %w", m.Name, errUnreachable)
		}
		if !paused {
			select {
			case <-time.After(h.opts.Round):
			case <-ctx.Done():
				return ctx.Err()
			}
			return fn(e)
		}
		select {
		case <-resume:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *proc) Plan(ctx context.Context, m cluster.Member, id string) ([]byte, []byte, error) {
	var b, sig []byte
	err := p.call(ctx, m, func(e *upgrade.Engine) (err error) {
		b, sig, err = e.PlanBytes(id)
		return err
	})
	return b, sig, err
}

func (p *proc) Artifact(ctx context.Context, m cluster.Member, sha string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := p.call(ctx, m, func(e *upgrade.Engine) error {
		f, n, err := e.OpenArtifact(sha)
		rc = f
		if err == nil {
			p.n.h.countServed(m.Name, n)
		}
		return err
	})
	return rc, err
}

func (p *proc) Pieces(ctx context.Context, m cluster.Member, sha string, size int64) ([]byte, error) {
	var b []byte
	err := p.call(ctx, m, func(e *upgrade.Engine) error {
		if p.n.h.oldPeer(m.Name) {
			return fmt.Errorf("%s: %w", m.Name, swarm.ErrOldPeer)
		}
		bm, err := e.PieceBitmap(sha, size)
		b = bm
		return err
	})
	return b, err
}

func (p *proc) Piece(ctx context.Context, m cluster.Member, sha string, size int64, i int) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := p.call(ctx, m, func(e *upgrade.Engine) error {
		f, n, err := e.OpenPiece(sha, size, i)
		if err != nil {
			return err
		}
		rc = f
		p.n.h.countServed(m.Name, n)
		if p.n.h.corrupts(m.Name) {
			b, err := io.ReadAll(f)
			f.Close()
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 0xff
			rc = io.NopCloser(bytes.NewReader(b))
		}
		return nil
	})
	return rc, err
}

func (p *proc) Node(ctx context.Context, m cluster.Member) (upgrade.NodeState, error) {
	var st upgrade.NodeState
	err := p.call(ctx, m, func(e *upgrade.Engine) error {
		st = e.State()
		return nil
	})
	return st, err
}

// healthy is the node's health check as its health gate sees it: a bad
// release fails it, and a paused process observes nothing until it
// resumes.
func (p *proc) healthy(ctx context.Context) error {
	if err := p.waitRunnable(); err != nil {
		return err
	}
	h := p.n.h
	h.mu.Lock()
	bad := h.badVersions[p.n.version]
	h.mu.Unlock()
	if bad {
		return fmt.Errorf("release %s is bad", p.n.version)
	}
	return ctx.Err()
}
