package swarm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade/piece"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memSink keeps pieces in memory, checking them as artifact.Partial does.
type memSink struct {
	list piece.List
	size int64
	mu   sync.Mutex
	got  map[int][]byte
}

func (s *memSink) Has(i int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[i] != nil
}

func (s *memSink) Write(i int, r io.Reader) (int64, error) {
	want := s.list.Len(i, s.size)
	b, err := io.ReadAll(io.LimitReader(r, want+1))
	if err != nil {
		return 0, err
	}
	if int64(len(b)) != want {
		return 0, fmt.Errorf("%w: length", piece.ErrMismatch)
	}
	if err := s.list.Verify(i, b); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.got[i] = b
	s.mu.Unlock()
	return want, nil
}

func (s *memSink) bitmap() piece.Bitmap {
	bm := piece.NewBitmap(s.list.Count())
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.got {
		bm.Set(i)
	}
	return bm
}

// memNet is a fleet of sinks and an origin that holds data; every request
// takes one latency, and a node serves at most slots pieces at once (its
// upload bandwidth).
type memNet struct {
	data    []byte
	list    piece.List
	origin  string
	latency time.Duration
	slots   int

	mu      sync.Mutex
	sinks   map[string]*memSink
	corrupt map[string]bool
	old     map[string]bool
	busy    map[string]chan struct{}
	served  map[string]int64
}

func newNet(t *testing.T, size int) *memNet {
	b := make([]byte, size)
	_, err := rand.Read(b)
	require.NoError(t, err)
	l, err := piece.Compute(bytes.NewReader(b), int64(size), piece.MinSize)
	require.NoError(t, err)
	return &memNet{data: b, list: l, origin: "origin", latency: 10 * time.Millisecond, slots: 4,
		sinks: map[string]*memSink{}, corrupt: map[string]bool{}, old: map[string]bool{},
		busy: map[string]chan struct{}{}, served: map[string]int64{}}
}

func (n *memNet) sink(name string) *memSink {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sinks[name] == nil {
		n.sinks[name] = &memSink{list: n.list, size: int64(len(n.data)), got: map[int][]byte{}}
	}
	return n.sinks[name]
}

func (n *memNet) names() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for k := range n.sinks {
		out = append(out, k)
	}
	return out
}

func (n *memNet) Have(ctx context.Context, peer string) (piece.Bitmap, error) {
	if err := sleep(ctx, n.latency); err != nil {
		return nil, err
	}
	n.mu.Lock()
	old := n.old[peer]
	n.mu.Unlock()
	if old {
		return nil, ErrOldPeer
	}
	return n.sink(peer).bitmap(), nil
}

func (n *memNet) Piece(ctx context.Context, peer string, i int) (io.ReadCloser, error) {
	n.mu.Lock()
	slot := n.busy[peer]
	if slot == nil {
		slot = make(chan struct{}, n.slots)
		n.busy[peer] = slot
	}
	n.mu.Unlock()
	select {
	case slot <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-slot }()
	if err := sleep(ctx, n.latency); err != nil {
		return nil, err
	}
	var b []byte
	if peer == n.origin {
		off := n.list.Offset(i)
		b = n.data[off : off+n.list.Len(i, int64(len(n.data)))]
	} else {
		s := n.sink(peer)
		s.mu.Lock()
		b = s.got[i]
		s.mu.Unlock()
		if b == nil {
			return nil, errors.New("404")
		}
	}
	n.mu.Lock()
	n.served[peer] += int64(len(b))
	if n.corrupt[peer] {
		b = bytes.Clone(b)
		b[0] ^= 0xff
	}
	n.mu.Unlock()
	return io.NopCloser(bytes.NewReader(b)), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func testConfig() Config {
	return Config{Poll: 20 * time.Millisecond, OriginWait: 200 * time.Millisecond, Stall: 5 * time.Second}
}

// fetchAll runs a fetch on every one of nodes at once and returns what
// each got from the origin.
func fetchAll(t *testing.T, n *memNet, nodes []string, cfg Config) map[string]Result {
	for _, name := range nodes {
		n.sink(name)
	}
	var mu sync.Mutex
	out := map[string]Result{}
	var wg sync.WaitGroup
	for k, name := range nodes {
		wg.Go(func() {
			res, err := Fetch(t.Context(), cfg, n, n.sink(name), Job{
				Artifact: "a", List: n.list, Peers: n.names, Origin: n.origin, Self: name, Duty: nodes, Seed: uint64(k),
			})
			assert.NoError(t, err, name)
			mu.Lock()
			out[name] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, name := range nodes {
		s := n.sink(name)
		for i := range n.list.Count() {
			require.True(t, s.Has(i), "%s lacks piece %d", name, i)
		}
	}
	return out
}

func names(k int) []string {
	var out []string
	for i := range k {
		out = append(out, fmt.Sprintf("n%03d", i))
	}
	return out
}

// TestOriginEgressBounded: k nodes start fetching at once, each serving
// at most 4 pieces at a time (its upload bandwidth, 4 pieces per 10 ms);
// the origin serves at most 1.5 copies in all. The fetch time it logs (fake
// time, no assert) is the figure to watch for log k growth.
func TestOriginEgressBounded(t *testing.T) {
	for _, k := range []int{1, 4, 16, 64, 256} {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			if k > 64 && (testing.Short() || raceEnabled) {
				t.Skip("-short or -race")
			}
			synctest.Test(t, func(t *testing.T) {
				n := newNet(t, 32*piece.MinSize+100)
				start := time.Now()
				fetchAll(t, n, names(k), testConfig())
				copies := float64(n.served[n.origin]) / float64(len(n.data))
				t.Logf("%d nodes: %.2f copies from the origin, all done in %s (fake time)", k, copies, time.Since(start))
				assert.LessOrEqual(t, copies, 1.5)
			})
		})
	}
}

// TestDeadDutyHolders: a third of the duty holders never fetch (down since
// the wave was computed); their pieces pass to one other node each after
// OriginWait, so the origin still serves about one copy.
func TestDeadDutyHolders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newNet(t, 32*piece.MinSize)
		live := names(20)
		duty := append(slices.Clone(live), "dead1", "dead2", "dead3", "dead4", "dead5", "dead6", "dead7", "dead8", "dead9", "dead10")
		for _, name := range live {
			n.sink(name)
		}
		var wg sync.WaitGroup
		for k, name := range live {
			wg.Go(func() {
				_, err := Fetch(t.Context(), testConfig(), n, n.sink(name), Job{
					Artifact: "a", List: n.list, Peers: n.names, Origin: n.origin, Self: name, Duty: duty, Seed: uint64(k),
				})
				assert.NoError(t, err, name)
			})
		}
		wg.Wait()
		copies := float64(n.served[n.origin]) / float64(len(n.data))
		t.Logf("%.2f copies from the origin with a third of the duty holders dead", copies)
		assert.LessOrEqual(t, copies, 1.5)
	})
}

func TestCorruptPeerIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newNet(t, 16*piece.MinSize)
		// The liar holds every piece, so it is asked first for many.
		liar := n.sink("liar")
		for i := range n.list.Count() {
			off := n.list.Offset(i)
			liar.got[i] = n.data[off : off+n.list.Len(i, int64(len(n.data)))]
		}
		n.corrupt["liar"] = true
		res := fetchAll(t, n, []string{"a", "b", "c"}, testConfig())
		for _, name := range []string{"a", "b", "c"} {
			assert.Equal(t, []string{"liar"}, res[name].Dropped, name)
			s := n.sink(name)
			for i, b := range s.got {
				assert.NoError(t, n.list.Verify(i, b))
			}
		}
		// Each node had at most PerPeer requests to the liar in flight
		// when the first bad piece came back, and asked it no more.
		assert.LessOrEqual(t, n.served["liar"], int64(3*DefaultConfig().PerPeer*piece.MinSize))
	})
}

func TestOldPeersOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newNet(t, 4*piece.MinSize)
		n.sink("old")
		n.old["old"] = true
		_, err := Fetch(t.Context(), testConfig(), n, n.sink("a"), Job{Artifact: "a", List: n.list, Peers: n.names, Origin: n.origin, Self: "a"})
		assert.ErrorIs(t, err, ErrWholeOnly)
	})
}

func TestStallsWithoutSources(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newNet(t, 4*piece.MinSize)
		n.origin = "gone" // no such node: every request fails
		n.sink("a")
		_, err := Fetch(t.Context(), testConfig(), brokenOrigin{n}, n.sink("a"), Job{Artifact: "a", List: n.list, Peers: n.names, Origin: "gone", Self: "a"})
		assert.ErrorIs(t, err, ErrStalled)
	})
}

type brokenOrigin struct{ *memNet }

func (b brokenOrigin) Piece(ctx context.Context, peer string, i int) (io.ReadCloser, error) {
	if peer == "gone" {
		return nil, errors.New("connection refused")
	}
	return b.memNet.Piece(ctx, peer, i)
}

func TestDutyIsSharedOnce(t *testing.T) {
	nodes := names(7)
	count := make([]int, 50)
	for _, self := range nodes {
		for i, r := range duty(Job{Artifact: "x", Self: self, Duty: nodes, Origin: "origin"}, 50) {
			if r == 0 {
				count[i]++
			}
		}
	}
	for i, c := range count {
		assert.Equal(t, 1, c, "piece %d has %d duty holders", i, c)
	}
}

// TestSettledHoldersFirst: a piece comes from a holder that is done with
// the rollout when one has room, not from one about to go offline.
func TestSettledHoldersFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newNet(t, 8*piece.MinSize)
		for _, name := range []string{"done", "ready"} {
			s := n.sink(name)
			for i := range n.list.Count() {
				off := n.list.Offset(i)
				s.got[i] = n.data[off : off+n.list.Len(i, int64(len(n.data)))]
			}
		}
		cfg := testConfig()
		cfg.Workers, cfg.PerPeer = 4, 4 // the settled holder always has room
		res, err := Fetch(t.Context(), cfg, n, n.sink("a"), Job{Artifact: "a", List: n.list, Peers: n.names, Origin: n.origin, Self: "a",
			Stable: func(p string) bool { return p == "done" }})
		require.NoError(t, err)
		assert.Equal(t, int64(len(n.data)), res.From["done"], "every piece from the settled holder")
		assert.Zero(t, res.From["ready"], "none from the one about to restart")
	})
}
