package lease_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/upgrade/lease"
)

var t0 = time.Date(2025, 11, 25, 7, 0, 0, 0, time.UTC)

const planID = "8f2c0e4e5d1b5a0c9e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d"

func allDone(string, int) bool  { return true }
func noneDone(string, int) bool { return false }

// step is one thing that happens to a granter in a scenario.
type step struct {
	// exactly one of these
	request *lease.Request
	advance time.Duration
	release *lease.Grant // PlanID and Wave
	restart bool

	earlierDone func(string, int) bool // for a request; nil means every earlier wave is done
	want        string                 // for a request: "" grants, else a substring of the refusal
	wantExpires time.Time              // for a granted request, when set
}

func req(wave int, ttl time.Duration) *lease.Request {
	return &lease.Request{PlanID: planID, Wave: wave, TTL: ttl, Node: fmt.Sprintf("n%d", wave)}
}

func rel(wave int) *lease.Grant { return &lease.Grant{PlanID: planID, Wave: wave} }

func TestDecide(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{"grant when free", []step{
			{request: req(0, time.Minute), wantExpires: t0.Add(time.Minute)},
		}},
		{"refuse another wave while live", []step{
			{request: req(0, time.Minute)},
			{advance: 30 * time.Second},
			{request: req(1, time.Minute), want: "holds a live grant for wave 1 until 2025-11-25T07:01:00Z"},
		}},
		{"refuse an earlier wave too", []step{
			{request: req(2, time.Minute)},
			{request: req(0, time.Minute), want: "holds a live grant for wave 3"},
		}},
		{"same wave again returns the same grant without refreshing it", []step{
			{request: req(0, time.Minute), wantExpires: t0.Add(time.Minute)},
			{advance: 50 * time.Second},
			{request: req(0, time.Hour), wantExpires: t0.Add(time.Minute)},
			{request: req(0, time.Hour), earlierDone: noneDone, wantExpires: t0.Add(time.Minute)},
		}},
		{"another wave once the grant expired", []step{
			{request: req(0, time.Minute)},
			{advance: time.Minute},
			{request: req(1, time.Minute), wantExpires: t0.Add(2 * time.Minute)},
		}},
		{"not a nanosecond before expiry", []step{
			{request: req(0, time.Minute)},
			{advance: time.Minute - time.Nanosecond},
			{request: req(1, time.Minute), want: "holds a live grant for wave 1"},
		}},
		{"an expired grant for the same wave is granted afresh", []step{
			{request: req(0, time.Minute)},
			{advance: 2 * time.Minute},
			{request: req(0, time.Minute), wantExpires: t0.Add(3 * time.Minute)},
		}},
		{"another wave once released", []step{
			{request: req(0, time.Minute)},
			{release: rel(0)},
			{request: req(1, time.Minute)},
		}},
		{"releasing another wave frees nothing", []step{
			{request: req(0, time.Minute)},
			{release: rel(1)},
			{release: &lease.Grant{PlanID: "other", Wave: 0}},
			{request: req(1, time.Minute), want: "holds a live grant for wave 1"},
		}},
		{"earlier waves not done", []step{
			{request: req(1, time.Minute), earlierDone: noneDone, want: "does not see every wave before wave 2 done"},
			{request: req(2, time.Minute)},
		}},
		{"a refusal holds nothing", []step{
			{request: req(1, time.Minute), earlierDone: noneDone, want: "before wave 2"},
			{request: req(0, time.Minute)},
		}},
		{"restart still refuses a second wave while the first is live", []step{
			{request: req(0, time.Minute), wantExpires: t0.Add(time.Minute)},
			{restart: true},
			{request: req(1, time.Minute), want: "holds a live grant for wave 1"},
			{request: req(0, time.Minute), wantExpires: t0.Add(time.Minute)},
			{advance: time.Minute},
			{restart: true},
			{request: req(1, time.Minute)},
		}},
		{"restart remembers a release", []step{
			{request: req(0, time.Minute)},
			{release: rel(0)},
			{restart: true},
			{request: req(1, time.Minute)},
		}},
		{"another plan is blocked while a grant is live, across a restart", []step{
			{request: req(0, time.Minute)},
			{request: &lease.Request{PlanID: "another-plan", Wave: 1, TTL: time.Minute}, want: "of another plan"},
			{restart: true},
			{request: &lease.Request{PlanID: "another-plan", Wave: 0, TTL: time.Minute}, want: "wave 1 of another plan"},
			{request: req(0, time.Minute)},
		}},
		{"late joiners' wave", []step{
			{request: req(7, time.Minute)},
		}},
		{"malformed requests", []step{
			{request: &lease.Request{Wave: 0, TTL: time.Minute}, want: "names no plan"},
			{request: &lease.Request{PlanID: planID, Wave: -1, TTL: time.Minute}, want: "wave -1"},
			{request: &lease.Request{PlanID: planID, Wave: 0}, want: "TTL 0s"},
			{request: &lease.Request{PlanID: planID, Wave: 0, TTL: -time.Second}, want: "TTL -1s"},
			{request: req(1, time.Minute)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "grants.json")
			clk := clock.NewFake(t0)
			g, err := lease.NewGranter(path, clk)
			require.NoError(t, err)
			for i, s := range tt.steps {
				switch {
				case s.request != nil:
					done := s.earlierDone
					if done == nil {
						done = allDone
					}
					gr, err := g.Decide(*s.request, done)
					if s.want != "" {
						require.ErrorContains(t, err, s.want, "step %d", i)
						assert.Zero(t, gr, "step %d: a refusal returns no grant", i)
						continue
					}
					require.NoError(t, err, "step %d", i)
					assert.Equal(t, s.request.PlanID, gr.PlanID, "step %d", i)
					assert.Equal(t, s.request.Wave, gr.Wave, "step %d", i)
					assert.Contains(t, g.Live(), gr, "step %d: the grant is live", i)
					if !s.wantExpires.IsZero() {
						assert.True(t, s.wantExpires.Equal(gr.Expires), "step %d: expires %s, want %s", i, gr.Expires, s.wantExpires)
					}
				case s.release != nil:
					require.NoError(t, g.Release(s.release.PlanID, s.release.Wave), "step %d", i)
				case s.restart:
					g, err = lease.NewGranter(path, clk)
					require.NoError(t, err, "step %d", i)
				default:
					clk.Advance(s.advance)
				}
			}
		})
	}
}

func TestDecideAsksAboutTheRequestedWave(t *testing.T) {
	g, err := lease.NewGranter(filepath.Join(t.TempDir(), "grants.json"), clock.NewFake(t0))
	require.NoError(t, err)
	var gotPlan string
	gotWave := -1
	_, err = g.Decide(*req(3, time.Minute), func(p string, w int) bool {
		gotPlan, gotWave = p, w
		return true
	})
	require.NoError(t, err)
	assert.Equal(t, planID, gotPlan)
	assert.Equal(t, 3, gotWave)
}

func TestGrantIsPersistedBeforeItIsReturned(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "grants.json")
	clk := clock.NewFake(t0)
	g, err := lease.NewGranter(path, clk)
	require.NoError(t, err)
	gr, err := g.Decide(*req(0, time.Minute), allDone)
	require.NoError(t, err)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.JSONEq(t, fmt.Sprintf(`[{"plan_id":%q,"wave":0,"expires":"2025-11-25T07:01:00Z"}]`, planID), string(b))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "temp files left behind: %v", entries)

	again, err := lease.NewGranter(path, clk)
	require.NoError(t, err)
	assert.Equal(t, []lease.Grant{gr}, again.Live())
}

func TestExpiredGrantsAreDroppedFromTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grants.json")
	clk := clock.NewFake(t0)
	g, err := lease.NewGranter(path, clk)
	require.NoError(t, err)
	for w := range 5 {
		_, err := g.Decide(*req(w, time.Minute), allDone)
		require.NoError(t, err)
		clk.Advance(time.Minute)
	}
	_, err = g.Decide(*req(5, time.Minute), allDone)
	require.NoError(t, err)
	var stored []lease.Grant
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &stored))
	assert.Len(t, stored, 1)
}

func TestUnpersistableGrantIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "grants.json")
	g, err := lease.NewGranter(path, clock.NewFake(t0))
	require.NoError(t, err, "a missing file is a fresh granter")
	_, err = g.Decide(*req(0, time.Minute), allDone)
	require.ErrorContains(t, err, "persist lease grants")
	assert.Empty(t, g.Live(), "a grant that was not persisted must not be held")
}

func TestNewGranterRejectsACorruptFile(t *testing.T) {
	for _, content := range []string{"", "{", `{"plan_id":"x"}`, `[{"wave":"one"}]`, "garbage"} {
		t.Run(fmt.Sprintf("%q", content), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "grants.json")
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			_, err := lease.NewGranter(path, clock.NewFake(t0))
			require.Error(t, err)
			assert.ErrorContains(t, err, path, "the error names the file")
			assert.ErrorContains(t, err, "corrupt")
		})
	}
}

func TestNewGranterNeedsAPath(t *testing.T) {
	_, err := lease.NewGranter("", nil)
	assert.Error(t, err)
}

func TestLive(t *testing.T) {
	clk := clock.NewFake(t0)
	g, err := lease.NewGranter(filepath.Join(t.TempDir(), "grants.json"), clk)
	require.NoError(t, err)
	assert.Empty(t, g.Live())

	_, err = g.Decide(lease.Request{PlanID: "a", Wave: 2, TTL: time.Hour}, allDone)
	require.NoError(t, err)
	_, err = g.Decide(lease.Request{PlanID: "b", Wave: 0, TTL: time.Minute}, allDone)
	require.ErrorContains(t, err, "of another plan", "one live grant at a time, whatever the plan")
	require.NoError(t, g.Release("a", 2))
	_, err = g.Decide(lease.Request{PlanID: "b", Wave: 0, TTL: time.Minute}, allDone)
	require.NoError(t, err)
	live := g.Live()
	require.Len(t, live, 1)
	assert.Equal(t, "b", live[0].PlanID)
	clk.Advance(time.Minute)
	assert.Empty(t, g.Live(), "expired grants are not live")
}

func TestQuorum(t *testing.T) {
	tests := []struct{ n, want int }{
		{1, 1}, {2, 2}, {3, 2}, {4, 3}, {5, 3}, {6, 4}, {7, 4}, {10, 6}, {11, 6},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, lease.Quorum(tt.n), "Quorum(%d)", tt.n)
		// Two majorities of the same snapshot share a member.
		assert.Greater(t, 2*lease.Quorum(tt.n), tt.n, "n=%d", tt.n)
	}
}

func TestTally(t *testing.T) {
	type vote struct {
		voter   string
		granted bool
	}
	tests := []struct {
		name                   string
		size                   int
		votes                  []vote
		granted                bool
		wantGranted, wantRefus int
	}{
		{"nobody answered", 3, nil, false, 0, 0},
		{"one of three", 3, []vote{{"a", true}}, false, 1, 0},
		{"two of three", 3, []vote{{"a", true}, {"b", true}}, true, 2, 0},
		{"a voter counts once", 3, []vote{{"a", true}, {"a", true}, {"a", true}}, false, 1, 0},
		{"first answer stands", 3, []vote{{"a", true}, {"a", false}, {"b", false}, {"b", true}}, false, 1, 1},
		{"refusals do not block a majority", 5, []vote{{"a", false}, {"b", true}, {"c", true}, {"d", false}, {"e", true}}, true, 3, 2},
		{"half is not a majority", 4, []vote{{"a", true}, {"b", true}, {"c", false}}, false, 2, 1},
		{"majority of the snapshot, not of who answered", 5, []vote{{"a", true}, {"b", true}}, false, 2, 0},
		{"one-node snapshot", 1, []vote{{"a", true}}, true, 1, 0},
		{"ten nodes, six grant", 10, []vote{{"1", true}, {"2", true}, {"3", true}, {"4", true}, {"5", true}, {"6", true}}, true, 6, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tally := lease.NewTally(tt.size)
			for _, v := range tt.votes {
				tally.Add(v.voter, v.granted)
			}
			assert.Equal(t, tt.granted, tally.Granted())
			g, r := tally.Counts()
			assert.Equal(t, tt.wantGranted, g, "granted")
			assert.Equal(t, tt.wantRefus, r, "refused")
		})
	}
}

// TestNeverTwoWavesAtOnce drives 5 granters with random requests from two
// waves (random partitions, random views of earlier waves, random TTLs,
// releases, restarts and clock jumps) and checks after every step that the
// two waves never both hold a majority of live grants. The truth it checks
// against is its own record of every grant the granters handed out, so a
// granter that forgot a grant (say, across a restart) is caught.
func TestNeverTwoWavesAtOnce(t *testing.T) {
	const (
		voters = 5
		seeds  = 30
		steps  = 200
	)
	majorities := 0
	for seed := range uint64(seeds) {
		rng := rand.New(rand.NewPCG(seed, 42))
		dir := t.TempDir()
		clk := clock.NewFake(t0)
		granters := make([]*lease.Granter, voters)
		open := func(i int) {
			g, err := lease.NewGranter(filepath.Join(dir, fmt.Sprintf("grants-%d.json", i)), clk)
			require.NoError(t, err)
			granters[i] = lease.WithoutFsync(g)
		}
		for i := range granters {
			open(i)
		}
		// handedOut[i][w] is when granter i's last grant for wave w
		// expires, as the requester was told; a release clears it.
		handedOut := make([]map[int]time.Time, voters)
		for i := range handedOut {
			handedOut[i] = map[int]time.Time{}
		}
		// liveCount is how many granters hold a live grant for each wave.
		liveCount := func(step int) [2]int {
			var c [2]int
			now := clk.Now()
			for i := range granters {
				var held []lease.Grant
				for w, exp := range handedOut[i] {
					if now.Before(exp) {
						c[w]++
						held = append(held, lease.Grant{PlanID: planID, Wave: w, Expires: exp})
					}
				}
				require.LessOrEqual(t, len(held), 1, "seed %d step %d: granter %d holds grants for two waves: %v", seed, step, i, held)
				require.ElementsMatch(t, held, granters[i].Live(), "seed %d step %d: granter %d forgot or invented a grant", seed, step, i)
			}
			return c
		}
		for step := range steps {
			switch op := rng.IntN(10); {
			case op < 5: // a request round from one wave to a random subset of voters
				w := rng.IntN(2)
				r := lease.Request{PlanID: planID, Wave: w, TTL: time.Duration(1+rng.IntN(5)) * time.Minute, Node: fmt.Sprint("wave", w)}
				tally := lease.NewTally(voters)
				for i, g := range granters {
					if rng.IntN(4) == 0 {
						continue // partitioned away
					}
					gr, err := g.Decide(r, func(string, int) bool { return rng.IntN(3) > 0 })
					if err == nil {
						handedOut[i][w] = gr.Expires
					}
					tally.Add(fmt.Sprint("voter", i), err == nil)
				}
				if tally.Granted() {
					majorities++
					c := liveCount(step)
					require.Less(t, c[1-w], lease.Quorum(voters),
						"seed %d step %d: wave %d reached a majority while wave %d holds one", seed, step, w, 1-w)
				}
			case op < 7:
				clk.Advance(time.Duration(rng.IntN(150)) * time.Second)
			case op < 8: // a granter sees a wave done and releases it
				i, w := rng.IntN(voters), rng.IntN(2)
				require.NoError(t, granters[i].Release(planID, w))
				delete(handedOut[i], w)
			default: // a granter restarts, as an upgraded node does
				open(rng.IntN(voters))
			}
			c := liveCount(step)
			require.False(t, c[0] >= lease.Quorum(voters) && c[1] >= lease.Quorum(voters),
				"seed %d step %d: both waves hold a majority of live grants: %v", seed, step, c)
		}
	}
	// The property is vacuous if no wave ever got its lease.
	t.Logf("%d majorities", majorities)
	assert.Greater(t, majorities, seeds, "too few majorities to mean anything")
}

// TestConcurrentRequests races requests for different waves against one
// granter: exactly one wave wins and the rest are refused.
func TestConcurrentRequests(t *testing.T) {
	g, err := lease.NewGranter(filepath.Join(t.TempDir(), "grants.json"), clock.NewFake(t0))
	require.NoError(t, err)
	const waves = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		granted = map[int]int{}
	)
	for w := range waves {
		for range 4 {
			wg.Go(func() {
				if _, err := g.Decide(*req(w, time.Minute), allDone); err == nil {
					mu.Lock()
					granted[w]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	require.Len(t, granted, 1, "granted waves: %v", granted)
	require.Len(t, g.Live(), 1)
}
