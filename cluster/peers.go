package cluster

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/peerd/peerd/internal/durable"
)

// The peers file (peers.json beside the Serf snapshot) is every peer this
// node has known and not seen leave, with when it last saw each: what a
// restarted node rejoins, and what the rejoin loop keeps trying while a peer
// is missing from this node's view.
//
// Serf alone does not bring a partitioned cluster back together once its
// nodes restarted on both sides: each side rejoins the first peer of its
// snapshot that answers (its own side), the snapshot and the member list
// then hold only that side, and Serf reconnects only to failed members it
// still lists. So the file is merged, never replaced by the partial view of
// a restart (a peer stays until it is seen leaving, is reaped, or was not
// seen for Serf's reconnect timeout), and every node keeps trying the known
// peers it does not see alive, as Consul's retry_join does: after the heal
// one contact across the partition merges the two sides.

// peer is one entry of the peers file.
type peer struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// LastSeen is when this node last saw the peer alive (or failing);
	// older files have none, and their entries count as seen when the file
	// was written.
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// peerBook is the peers file as the event loop keeps it, by name. It is
// not safe for concurrent use: the event loop owns it (and Start, before
// the loop runs).
type peerBook struct {
	self string
	// timeout forgets a peer not seen for this long (Serf's reconnect
	// timeout: by then every member has reaped it too).
	timeout time.Duration
	peers   map[string]peer
}

func newPeerBook(self string, timeout time.Duration) *peerBook {
	return &peerBook{self: self, timeout: timeout, peers: map[string]peer{}}
}

// load takes in the entries of a peers file written at written. A node
// that was down for a while still knows the peers it knew when it stopped:
// an entry ages only against the newest in the file, the last time this
// node saw anyone.
func (b *peerBook) load(ps []peer, written time.Time) {
	var newest time.Time
	for i := range ps {
		if ps[i].LastSeen.IsZero() {
			ps[i].LastSeen = written
		}
		if ps[i].LastSeen.After(newest) {
			newest = ps[i].LastSeen
		}
	}
	for _, p := range ps {
		if p.Name == "" || p.Addr == "" || (p.Name != b.self && newest.Sub(p.LastSeen) > b.timeout) {
			continue
		}
		if old, ok := b.peers[p.Name]; !ok || p.LastSeen.After(old.LastSeen) {
			b.peers[p.Name] = p
		}
	}
}

// note takes in a member change. It reports whether the file must be
// written at once (a peer new to it, or at a new address: a node killed
// right after that must still find its way back) or later (a peer gone).
// A change that only confirms what the file holds needs no write: at 100
// members a restart's burst of join events made 99 durable writes of the
// whole list, 2.5% of a rollout's CPU in perf.
func (b *peerBook) note(m Member, now time.Time) (urgent, later bool) {
	p, known := b.peers[m.Name]
	switch m.Status {
	case "alive", "failed":
		if !known || p.Addr != m.Addr {
			b.peers[m.Name] = peer{Name: m.Name, Addr: m.Addr, LastSeen: now}
			return true, false
		}
		p.LastSeen = now // alive, or alive until a moment ago
		b.peers[m.Name] = p
	case "left", StatusReaped:
		// Left gracefully, or failed so long ago that Serf gave up on it.
		if known && m.Name != b.self {
			delete(b.peers, m.Name)
			return false, true
		}
	}
	return false, false
}

// list is the file's content at now: the peers alive in this node's view
// are seen now; those not seen for the timeout are forgotten.
func (b *peerBook) list(now time.Time, alive map[string]bool) []peer {
	out := make([]peer, 0, len(b.peers))
	for name, p := range b.peers {
		switch {
		case alive[name] || name == b.self:
			p.LastSeen = now
			b.peers[name] = p
		case now.Sub(p.LastSeen) > b.timeout:
			delete(b.peers, name)
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y peer) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// missing are up to n known peers, picked at random, that this node does
// not see alive.
func (b *peerBook) missing(alive map[string]bool, n int) []peer {
	var out []peer
	for name, p := range b.peers {
		if name != b.self && !alive[name] {
			out = append(out, p)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:min(n, len(out))]
}

// others are the addresses of every known peer but this node.
func (b *peerBook) others() []string {
	var out []string
	for name, p := range b.peers {
		if name != b.self {
			out = append(out, p.Addr)
		}
	}
	slices.Sort(out)
	return out
}

// peersPath is the peers file beside the Serf snapshot. Serf buffers its
// snapshot and may never flush a quiet cluster's members before a crash, so
// peerd keeps its own list, written durably.
func (c *Cluster) peersPath() string {
	return filepath.Join(filepath.Dir(c.cfg.SnapshotPath), "peers.json")
}

// loadPeers reads the peers file into the book (a missing or unreadable
// file is an empty one).
func (c *Cluster) loadPeers() {
	path := c.peersPath()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var ps []peer
	if err := json.Unmarshal(b, &ps); err != nil {
		c.log.Warn("peers file unreadable; starting from the snapshot alone", "path", path, "err", err)
		return
	}
	written := time.Now()
	if fi, err := os.Stat(path); err == nil {
		written = fi.ModTime()
	}
	c.book.load(ps, written)
}

// alive are the members Serf has alive now.
func (c *Cluster) alive() map[string]bool {
	out := map[string]bool{}
	for _, m := range c.serf.Members() {
		if status(m) == serf.StatusAlive {
			out[m.Name] = true
		}
	}
	return out
}

// savePeers writes the peers file. Only the event loop calls it.
func (c *Cluster) savePeers() {
	b, _ := json.Marshal(c.book.list(time.Now(), c.alive()))
	if err := durable.WriteFile(c.peersPath(), b, 0o600); err != nil {
		c.log.Warn("save peers file", "err", err)
	}
}

// peersRefresh is how often the peers file is written when nothing
// changed, so that the peers seen alive stay fresh in it: a node that
// crashes after a long quiet spell must not find them all expired.
func (c *Cluster) peersRefresh() time.Duration { return c.reconnectTimeout() / 10 }

// rejoinBatch is how many missing peers one round of the rejoin loop tries:
// one contact merges whole views, and a dropped packet costs a TCP timeout.
const rejoinBatch = 3

// startRejoin starts trying peers that are missing, unless a try is still
// running; done is closed when it ends.
func (c *Cluster) startRejoin(ctx context.Context) (done chan struct{}) {
	ps := c.book.missing(c.alive(), rejoinBatch)
	if len(ps) == 0 {
		return nil
	}
	done = make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(done)
		c.rejoin(ctx, ps)
	}()
	return done
}

// rejoin tries the given peers one at a time until one answers.
func (c *Cluster) rejoin(ctx context.Context, ps []peer) {
	c.rejoinMu.Lock()
	defer c.rejoinMu.Unlock()
	for _, p := range ps {
		if ctx.Err() != nil || c.leaving.Load() || c.serf.State() != serf.SerfAlive {
			return
		}
		// Not ignoring old events: like Serf's own reconnect, the join
		// replays the user events this node missed while it was apart.
		n, err := c.serf.Join([]string{p.Addr}, false)
		if n > 0 {
			c.log.Info("rejoined a known peer", "member", p.Name, "addr", p.Addr)
			return
		}
		c.log.Debug("rejoin a known peer", "member", p.Name, "addr", p.Addr, "err", flattenError(err))
	}
}

// reconnectTimeout is how long a failed member is kept: the configured
// one, or Serf's default.
func (c *Cluster) reconnectTimeout() time.Duration {
	if c.cfg.ReconnectTimeout > 0 {
		return c.cfg.ReconnectTimeout
	}
	return serf.DefaultConfig().ReconnectTimeout
}
