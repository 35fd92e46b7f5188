package upgradetest

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fetchLog keeps the engines' log lines about how they fetched the
// artifact (slog writes each record in one Write).
type fetchLog struct {
	mu    sync.Mutex
	lines []string
}

var fetchLine = regexp.MustCompile(`msg="fetched artifact"|msg="fetching the artifact whole"`)

func (l *fetchLog) Write(b []byte) (int, error) {
	if fetchLine.Match(b) {
		l.mu.Lock()
		l.lines = append(l.lines, string(bytes.TrimSpace(b)))
		l.mu.Unlock()
	}
	return len(b), nil
}

func (l *fetchLog) matching(re string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if regexp.MustCompile(re).MatchString(s) {
			out = append(out, s)
		}
	}
	return out
}

// swarmOptions is a fleet whose artifact cuts into 64 pieces of 1 KiB.
func swarmOptions(nodes int, log *fetchLog) Options {
	return Options{Nodes: nodes, Seed: 1, ArtifactBytes: 64 << 10, Log: log,
		Engine: func(c *upgrade.Config) { c.PieceSize = 1 << 10 }}
}

// TestSwarmOriginEgress: a fleet whose first wave is a quarter of it
// fetches the artifact by pieces, and the origin serves at most 1.5 copies
// of it in all, whatever the fleet's size; every node ends at the new
// version (its whole digest checked).
func TestSwarmOriginEgress(t *testing.T) {
	for _, nodes := range []int{20, 100, 300} {
		t.Run(fmt.Sprint(nodes), func(t *testing.T) {
			if nodes > 20 && (testing.Short() || raceEnabled) {
				t.Skip("-short or -race: make test runs it without -race")
			}
			synctest.Test(t, func(t *testing.T) {
				log := &fetchLog{}
				h := rollout(t, swarmOptions(nodes, log), plan.Options{MaxUnavailable: "25%", MinHealthy: time.Second, Deadline: 5 * time.Minute})
				size := int64(len(h.artifact("2.0.0")))
				copies := float64(h.Served("node0001")) / float64(size)
				byPieces := log.matching(`from=pieces`)
				t.Logf("%d nodes: the origin served %.2f copies; %d fetches by pieces", nodes, copies, len(byPieces))
				assert.LessOrEqual(t, copies, 1.5, "origin egress")
				assert.Len(t, byPieces, nodes-1, "every node but the origin fetched by pieces")
				assert.Empty(t, log.matching(`fetching the artifact whole`))
				var fromOrigin int64
				for _, l := range byPieces {
					fromOrigin += logInt(t, l, "origin_bytes")
				}
				assert.Equal(t, h.Served("node0001"), fromOrigin, "what the nodes say they took from the origin is what it served")
			})
		})
	}
}

// TestSwarmCorruptPeers: members that serve corrupt pieces are dropped by
// each node that got one, and the rollout completes with every node on
// the artifact whose digest the plan names.
func TestSwarmCorruptPeers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &fetchLog{}
		opts := swarmOptions(20, log)
		// Two nodes of the second wave serve what they fetched, corrupted,
		// to the waves after them. The fourth wave fetches once the second
		// is done, when a node takes pieces from settled holders first:
		// the liars are two of its ten. (Liars of the third wave, still
		// busy while the fourth fetches, were rarely asked at all.)
		h := New(t, opts)
		res, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 5, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		require.Len(t, res.Waves, 4)
		var liars []string
		for _, n := range res.Waves[1].Nodes {
			if n != "node0001" && len(liars) < 2 {
				liars = append(liars, n)
			}
		}
		for _, n := range liars {
			h.CorruptPieces(n)
		}
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.0") }), "rollout did not complete: %s", h.Summary())
		assert.Empty(t, h.Rec.Violations())
		// slog quotes a list of two or more: dropped="[a b]".
		dropped := log.matching(`dropped="?\[[^\]]*(` + liars[0] + `|` + liars[1] + `)`)
		size := int64(len(h.artifact("2.0.0")))
		copies := float64(h.Served("node0001")) / float64(size)
		t.Logf("%d fetches dropped a liar; the liars served %d and %d bytes; the origin served %.2f copies", len(dropped), h.Served(liars[0]), h.Served(liars[1]), copies)
		assert.Positive(t, h.Served(liars[0])+h.Served(liars[1]), "the liars were asked for pieces")
		assert.NotEmpty(t, dropped, "some node was served a corrupt piece (the test saw the situation it tests)")
		for _, l := range log.matching(`from=pieces`) {
			assert.NotRegexp(t, `dropped="?\[[^\]]*node0001`, l, "the origin is never taken for a liar")
		}
		assert.LessOrEqual(t, copies, 1.5, "origin egress")
	})
}

// TestSwarmOldPeers: where every peer is an agent from before pieces, a
// node fetches the artifact whole from them (or the origin), as before.
func TestSwarmOldPeers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &fetchLog{}
		h := New(t, swarmOptions(6, log))
		for i := 2; i <= 6; i++ {
			h.OldPeer(fmt.Sprintf("node%04d", i))
		}
		_, err := h.Trigger("node0001", "2.0.0", plan.Options{Batch: 2, MinHealthy: time.Second, Deadline: 5 * time.Minute})
		require.NoError(t, err)
		require.True(t, h.WaitFor(30*time.Minute, func() bool { return h.AllAt("2.0.0") }), "rollout did not complete: %s", h.Summary())
		whole := log.matching(`fetching the artifact whole`)
		assert.NotEmpty(t, whole, "some node fell back to the whole artifact")
		for _, l := range whole {
			assert.Contains(t, l, "only peers without the piece API")
		}
		assert.NotEmpty(t, log.matching(`msg="fetched artifact".* from=node000[2-6] `), "an old peer served it whole")
	})
}

func logInt(t *testing.T, line, key string) int64 {
	t.Helper()
	m := regexp.MustCompile(` ` + key + `=(\d+)`).FindStringSubmatch(line)
	require.NotNil(t, m, "%s in %s", key, line)
	n, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	return n
}
