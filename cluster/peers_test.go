package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPeerBook(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	names := func(ps []peer) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		slices.Sort(out)
		return out
	}

	t.Run("load ages entries against the newest, not the clock", func(t *testing.T) {
		b := newPeerBook("self", day)
		b.load([]peer{
			{Name: "self", Addr: "10.0.0.1:1", LastSeen: t0},
			{Name: "recent", Addr: "10.0.0.2:1", LastSeen: t0.Add(-time.Hour)},
			{Name: "old", Addr: "10.0.0.3:1", LastSeen: t0.Add(-day - time.Second)},
			{Name: "undated", Addr: "10.0.0.4:1"}, // an older file: seen when it was written
			{Name: "", Addr: "10.0.0.5:1"},
		}, t0.Add(-2*time.Hour))
		assert.ElementsMatch(t, []string{"self", "recent", "undated"}, keys(b.peers))
		assert.Equal(t, t0.Add(-2*time.Hour), b.peers["undated"].LastSeen)
		assert.Equal(t, []string{"10.0.0.2:1", "10.0.0.4:1"}, b.others())
		// A week later (the node was down), it still knows them.
		assert.Equal(t, []string{"recent", "self", "undated"}, names(b.list(t0.Add(7*day), map[string]bool{"recent": true, "undated": true})))
	})

	t.Run("note says when the file must be written", func(t *testing.T) {
		b := newPeerBook("self", day)
		b.load([]peer{{Name: "a", Addr: "10.0.0.2:1", LastSeen: t0}}, t0)
		for _, tc := range []struct {
			m             Member
			urgent, later bool
		}{
			{Member{Name: "a", Addr: "10.0.0.2:1", Status: "alive"}, false, false}, // a restart hearing again of what it listed
			{Member{Name: "b", Addr: "10.0.0.3:1", Status: "alive"}, true, false},  // a newcomer
			{Member{Name: "b", Addr: "10.0.0.3:2", Status: "alive"}, true, false},  // back at another address
			{Member{Name: "c", Addr: "10.0.0.4:1", Status: "failed"}, true, false}, // first heard of as failed
			{Member{Name: "c", Addr: "10.0.0.4:1", Status: "failed"}, false, false},
			{Member{Name: "a", Addr: "10.0.0.2:1", Status: "leaving"}, false, false},
			{Member{Name: "a", Addr: "10.0.0.2:1", Status: "left"}, false, true}, // gone for good
			{Member{Name: "a", Addr: "10.0.0.2:1", Status: "left"}, false, false},
			{Member{Name: "c", Addr: "10.0.0.4:1", Status: StatusReaped}, false, true}, // Serf gave up on it
			{Member{Name: "self", Addr: "10.0.0.1:1", Status: "alive"}, true, false},
			{Member{Name: "self", Addr: "10.0.0.1:1", Status: "left"}, false, false}, // this node itself stays
		} {
			urgent, later := b.note(tc.m, t0)
			assert.Equal(t, tc.urgent, urgent, "%s %s: urgent", tc.m.Name, tc.m.Status)
			assert.Equal(t, tc.later, later, "%s %s: later", tc.m.Name, tc.m.Status)
		}
		assert.ElementsMatch(t, []string{"b", "self"}, keys(b.peers))
		assert.Equal(t, "10.0.0.3:2", b.peers["b"].Addr)
	})

	t.Run("list stamps who is alive and forgets who was not seen for the timeout", func(t *testing.T) {
		b := newPeerBook("self", day)
		b.load([]peer{
			{Name: "self", Addr: "s", LastSeen: t0},
			{Name: "up", Addr: "u", LastSeen: t0},
			{Name: "down", Addr: "d", LastSeen: t0},
		}, t0)
		now := t0.Add(day)
		ps := b.list(now, map[string]bool{"up": true})
		assert.Equal(t, []string{"down", "self", "up"}, names(ps), "down is exactly at the timeout: still kept")
		for _, p := range ps {
			want := now
			if p.Name == "down" {
				want = t0
			}
			assert.Equal(t, want, p.LastSeen, p.Name)
		}
		assert.Equal(t, []string{"self", "up"}, names(b.list(now.Add(time.Second), map[string]bool{"up": true})))
		assert.Equal(t, []string{"self", "up"}, names(b.list(now.Add(day), nil)), "self is always seen; up was seen a moment less than a day ago")
	})

	t.Run("missing are known peers not alive, never this node", func(t *testing.T) {
		b := newPeerBook("self", day)
		var ps []peer
		for i := range 6 {
			ps = append(ps, peer{Name: fmt.Sprintf("p%d", i), Addr: fmt.Sprint(i), LastSeen: t0})
		}
		b.load(append(ps, peer{Name: "self", Addr: "s", LastSeen: t0}), t0)
		alive := map[string]bool{"p0": true, "p1": true, "self": true}
		assert.ElementsMatch(t, []string{"p2", "p3", "p4", "p5"}, names(b.missing(alive, 10)))
		assert.Len(t, b.missing(alive, 3), 3)
		assert.Empty(t, b.missing(map[string]bool{"p0": true, "p1": true, "p2": true, "p3": true, "p4": true, "p5": true}, 3))
	})
}

func keys(m map[string]peer) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// dataNode is a test node with a data dir (snapshot and peers file).
func dataNode(t *testing.T, name, dir string, port int) *Cluster {
	t.Helper()
	cfg := TestConfig(name)
	cfg.SnapshotPath = filepath.Join(dir, "serf.snapshot")
	cfg.PreferPort = port
	return startTestNode(t, cfg)
}

func filePeers(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "peers.json"))
	if err != nil {
		return nil
	}
	var ps []peer
	require.NoError(t, json.Unmarshal(b, &ps))
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func waitFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func aliveNames(c *Cluster) []string {
	var out []string
	for _, m := range c.Members() {
		if m.Status == "alive" {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

// TestRejoinsKnownPeersOutOfView: three nodes, all stopped at once; two
// come back and find each other. A newcomer joins them, and the peers file
// written for it still holds the third, which neither sees. The third comes
// back at its address knowing nobody (a fresh data dir): Serf would not
// reconnect to it (it is in no member list), but the rejoin loop, trying
// the peers each node knew and does not see alive, finds it.
func TestRejoinsKnownPeersOutOfView(t *testing.T) {
	dirs := map[string]string{"a": t.TempDir(), "b": t.TempDir(), "c": t.TempDir()}
	all := []string{"a", "b", "c"}
	nodes := map[string]*Cluster{}
	ports := map[string]int{}
	for _, name := range all {
		nodes[name] = dataNode(t, name, dirs[name], 0)
		ports[name] = portOf(t, nodes[name].BoundAddr())
		if name != "a" {
			_, err := nodes[name].Join([]string{nodes["a"].LocalAddr()})
			require.NoError(t, err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		for _, name := range all {
			if got := filePeers(t, dirs[name]); !slices.Equal(got, all) {
				return fmt.Errorf("%s's peers file lists %v", name, got)
			}
		}
		return nil
	})
	for _, n := range nodes {
		require.NoError(t, n.Close())
	}

	a := dataNode(t, "a", dirs["a"], ports["a"])
	assert.ElementsMatch(t, []string{fmt.Sprintf("127.0.0.1:%d", ports["b"]), fmt.Sprintf("127.0.0.1:%d", ports["c"])},
		a.PreviousPeers(), "a remembers b and c")
	b := dataNode(t, "b", dirs["b"], ports["b"])
	waitFor(t, 10*time.Second, func() error {
		if got := aliveNames(a); !slices.Equal(got, []string{"a", "b"}) {
			return fmt.Errorf("a sees %v alive", got)
		}
		return nil
	})
	d := dataNode(t, "d", t.TempDir(), 0)
	_, err := d.Join([]string{a.LocalAddr()})
	require.NoError(t, err)
	waitFor(t, 10*time.Second, func() error {
		if got := filePeers(t, dirs["a"]); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
			return fmt.Errorf("a's peers file lists %v", got)
		}
		return nil
	})

	c := dataNode(t, "c", t.TempDir(), ports["c"])
	if portOf(t, c.BoundAddr()) != ports["c"] {
		t.Skipf("c's port %d was taken meanwhile", ports["c"])
	}
	waitFor(t, 20*time.Second, func() error {
		for _, n := range []*Cluster{a, b, c, d} {
			if got := aliveNames(n); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
				return fmt.Errorf("%s sees %v alive", n.cfg.NodeName, got)
			}
		}
		return nil
	})
}
