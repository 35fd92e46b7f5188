package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade/piece"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// testPlan is a valid plan over n members named node00, node01, ...
func testPlan(n int) Plan {
	p := Plan{
		Target:   "peerd",
		Version:  "v2.0.0",
		Artifact: Artifact{SHA256: digest, Size: 1 << 20, URL: "https://example.com/peerd", Signature: "untrusted comment: sig\nRW..."},
		Options:  Options{Batch: 1, MinHealthy: 10 * time.Second, Deadline: 5 * time.Minute},
		Origin:   "node00",
		Created:  time.Date(2025, 11, 25, 7, 0, 0, 123456789, time.UTC),
	}
	for i := range n {
		p.Members = append(p.Members, Member{Name: fmt.Sprintf("node%02d", i), Version: "v1.0.0"})
	}
	return p
}

func shuffled(ms []Member, seed uint64) []Member {
	out := slices.Clone(ms)
	rand.New(rand.NewPCG(seed, 0)).Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	zone := time.FixedZone("CET", 3600)
	tests := []struct {
		name string
		plan func() Plan
	}{
		{"plain", func() Plan { return testPlan(3) }},
		{"patch and every option", func() Plan {
			p := testPlan(4)
			p.Rollback = true
			p.Patch = &Patch{FromVersion: "v1.0.0", Artifact: Artifact{SHA256: digest, Size: 4096}}
			p.Options = Options{MaxUnavailable: "25%", Canary: 1, ByTag: "zone", MinHealthy: time.Second, Deadline: time.Minute, AllowOutage: true}
			for i := range p.Members {
				p.Members[i].Tag = []string{"a", "b"}[i%2]
			}
			return p
		}},
		{"members out of order, local time", func() Plan {
			p := testPlan(5)
			p.Members = shuffled(p.Members, 7)
			p.Created = p.Created.In(zone)
			return p
		}},
		{"no members", func() Plan { p := testPlan(0); p.Members = []Member{}; return p }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.plan()
			b, err := p.Encode()
			require.NoError(t, err)
			got, err := Decode(b)
			require.NoError(t, err)
			b2, err := got.Encode()
			require.NoError(t, err)
			assert.Equal(t, string(b), string(b2), "encode(decode(encode(p))) differs")
			assert.Equal(t, p.ID(), got.ID())
			assert.True(t, got.Created.Equal(p.Created))
			assert.Equal(t, time.UTC, got.Created.Location())
			assert.True(t, slices.IsSortedFunc(got.Members, func(a, b Member) int {
				return cmpString(a.Name, b.Name)
			}), "decoded members not sorted by name")
		})
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, in := range []string{"", "{", "[]", `{"target": 3}`, `{"target":"peerd"} trailing`} {
		_, err := Decode([]byte(in))
		assert.ErrorContains(t, err, "decode plan", "input %q", in)
	}
}

func TestIDIsLowercaseHexAndShortIDItsPrefix(t *testing.T) {
	p := testPlan(3)
	id := p.ID()
	assert.Regexp(t, `^[0-9a-f]{64}$`, id)
	b, err := p.Encode()
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	assert.Equal(t, hex.EncodeToString(sum[:]), id)
	assert.Equal(t, id[:8], p.ShortID())
	assert.Equal(t, id, p.ID(), "ID not stable across calls")
}

func TestIDIgnoresMemberOrderAndTimeZone(t *testing.T) {
	p := testPlan(8)
	want := p.ID()
	for seed := range uint64(20) {
		q := p
		q.Members = shuffled(p.Members, seed)
		q.Created = p.Created.In(time.FixedZone("X", int(seed)*3600))
		assert.Equal(t, want, q.ID(), "seed %d", seed)
	}
	// nil and empty snapshots are the same plan.
	q := p
	q.Members = nil
	r := p
	r.Members = []Member{}
	assert.Equal(t, q.ID(), r.ID())
	// The caller's slice is not reordered by encoding.
	q = p
	q.Members = []Member{p.Members[2], p.Members[0], p.Members[1]}
	_ = q.ID()
	assert.Equal(t, "node02", q.Members[0].Name)
}

func TestIDChangesWithEveryField(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *Plan)
	}{
		{"target", func(p *Plan) { p.Target = "app" }},
		{"version", func(p *Plan) { p.Version = "v2.0.1" }},
		{"rollback", func(p *Plan) { p.Rollback = true }},
		{"artifact sha256", func(p *Plan) { p.Artifact.SHA256 = digest[1:] + "0" }},
		{"artifact size", func(p *Plan) { p.Artifact.Size++ }},
		{"artifact url", func(p *Plan) { p.Artifact.URL = "" }},
		{"artifact signature", func(p *Plan) { p.Artifact.Signature += "x" }},
		{"artifact pieces", func(p *Plan) { p.Artifact.Pieces = &piece.List{Size: 1 << 20, SHA256: []string{digest}} }},
		{"patch", func(p *Plan) { p.Patch = &Patch{FromVersion: "v1.0.0", Artifact: Artifact{SHA256: digest, Size: 1}} }},
		{"batch", func(p *Plan) { p.Options.Batch = 2 }},
		{"max unavailable", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "1" }},
		{"canary", func(p *Plan) { p.Options.Canary = 1 }},
		{"by tag", func(p *Plan) { p.Options.ByTag = "zone" }},
		{"min healthy", func(p *Plan) { p.Options.MinHealthy++ }},
		{"deadline", func(p *Plan) { p.Options.Deadline++ }},
		{"allow outage", func(p *Plan) { p.Options.AllowOutage = true }},
		{"member name", func(p *Plan) { p.Members[1].Name = "other" }},
		{"member version", func(p *Plan) { p.Members[1].Version = "v0.9.0" }},
		{"member tag", func(p *Plan) { p.Members[1].Tag = "a" }},
		{"member added", func(p *Plan) { p.Members = append(p.Members, Member{Name: "node99", Version: "v1.0.0"}) }},
		{"member removed", func(p *Plan) { p.Members = p.Members[1:] }},
		{"origin", func(p *Plan) { p.Origin = "node01" }},
		{"created, by a nanosecond", func(p *Plan) { p.Created = p.Created.Add(time.Nanosecond) }},
	}
	base := testPlan(3)
	seen := map[string]string{base.ID(): "base"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(3)
			tt.change(&p)
			id := p.ID()
			if prev, ok := seen[id]; ok {
				t.Fatalf("changing %s gives the ID of %s", tt.name, prev)
			}
			seen[id] = tt.name
		})
	}
}

func TestUnencodablePlan(t *testing.T) {
	p := testPlan(3)
	p.Created = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	assert.Empty(t, p.ID())
	assert.Equal(t, "invalid", p.ShortID())
	assert.ErrorContains(t, p.Validate(), "encode plan")
	_, err := p.Waves()
	assert.ErrorContains(t, err, "encode plan")
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *Plan)
		want   []string // substrings, one per expected problem; none means valid
	}{
		{"valid", func(p *Plan) {}, nil},
		{"neither batch nor max unavailable", func(p *Plan) { p.Options.Batch = 0 }, nil},
		{"max unavailable count", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "3" }, nil},
		{"max unavailable share", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "25%" }, nil},
		{"zero min healthy", func(p *Plan) { p.Options.MinHealthy = 0 }, nil},
		{"valid patch", func(p *Plan) { p.Patch = &Patch{FromVersion: "v1", Artifact: Artifact{SHA256: digest, Size: 9}} }, nil},
		{"no target", func(p *Plan) { p.Target = "" }, []string{"no target"}},
		{"no version", func(p *Plan) { p.Version = "" }, []string{"--to VERSION"}},
		{"no sha256", func(p *Plan) { p.Artifact.SHA256 = "" }, []string{`artifact sha256 ""`}},
		{"short sha256", func(p *Plan) { p.Artifact.SHA256 = digest[:63] }, []string{"64 lowercase hex"}},
		{"uppercase sha256", func(p *Plan) { p.Artifact.SHA256 = "ABCDEF" + digest[6:] }, []string{"64 lowercase hex"}},
		{"zero size", func(p *Plan) { p.Artifact.Size = 0 }, []string{"artifact size 0"}},
		{"negative size", func(p *Plan) { p.Artifact.Size = -1 }, []string{"artifact size -1"}},
		{"bad patch", func(p *Plan) { p.Patch = &Patch{} }, []string{"--patch-from", `patch sha256 ""`, "patch size 0"}},
		{"batch and max unavailable", func(p *Plan) { p.Options.MaxUnavailable = "2" }, []string{"not both"}},
		{"negative batch", func(p *Plan) { p.Options.Batch = -1 }, []string{"--batch -1"}},
		{"max unavailable 0", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "0" }, []string{`--max-unavailable "0"`}},
		{"max unavailable 0%", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "0%" }, []string{`--max-unavailable "0%"`}},
		{"max unavailable 101%", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "101%" }, []string{`--max-unavailable "101%"`}},
		{"max unavailable word", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "half" }, []string{`--max-unavailable "half"`}},
		{"negative canary", func(p *Plan) { p.Options.Canary = -1 }, []string{"--canary -1"}},
		{"negative min healthy", func(p *Plan) { p.Options.MinHealthy = -time.Second }, []string{"--min-healthy -1s"}},
		{"zero deadline", func(p *Plan) { p.Options.Deadline = 0 }, []string{"--deadline 0s"}},
		{"deadline shorter than the dwell", func(p *Plan) { p.Options.MinHealthy, p.Options.Deadline = 10*time.Second, time.Second },
			[]string{"--deadline 1s leaves no time for --min-healthy 10s"}},
		{"deadline with no time to restart", func(p *Plan) { p.Options.MinHealthy, p.Options.Deadline = 10*time.Second, 10*time.Second+MinRestart-1 },
			[]string{"leaves no time"}},
		{"deadline just long enough", func(p *Plan) { p.Options.MinHealthy, p.Options.Deadline = 10*time.Second, 10*time.Second+MinRestart }, nil},
		{"no members", func(p *Plan) { p.Members = nil }, []string{"no members"}},
		{"nameless member", func(p *Plan) { p.Members[0].Name = "" }, []string{"no name"}},
		{"duplicate member", func(p *Plan) { p.Members[1].Name = "node00"; p.Members = append(p.Members, p.Members[0]) },
			[]string{`member "node00" appears more than once`}},
		{"every problem at once", func(p *Plan) {
			*p = Plan{Options: Options{Batch: 2, MaxUnavailable: "x", Canary: -1, MinHealthy: -1}}
		}, []string{"no target", "--to VERSION", "artifact sha256", "artifact size", "not both", `--max-unavailable "x"`, "--canary", "--min-healthy", "--deadline", "no members"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(3)
			tt.change(&p)
			err := p.Validate()
			if len(tt.want) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				assert.ErrorContains(t, err, w)
			}
			var joined interface{ Unwrap() []error }
			require.True(t, errors.As(err, &joined), "want errors.Join")
			assert.Len(t, joined.Unwrap(), len(tt.want), "one error per problem: %v", err)
		})
	}
}

func TestValidatePieces(t *testing.T) {
	p := testPlan(3)
	p.Artifact.Pieces = &piece.List{Size: 1 << 20, SHA256: []string{digest}}
	assert.NoError(t, p.Validate())
	p.Artifact.Pieces = &piece.List{Size: 1 << 19, SHA256: []string{digest}}
	assert.ErrorContains(t, p.Validate(), "artifact pieces", "two pieces' bytes, one hash")
	p.Artifact.Pieces = nil
	p.Patch = &Patch{FromVersion: "v1.0.0", Artifact: Artifact{SHA256: digest, Size: 1, Pieces: &piece.List{Size: 1 << 20, SHA256: []string{digest}}}}
	assert.ErrorContains(t, p.Validate(), "patch has a piece list")
}

func TestParseMaxUnavailable(t *testing.T) {
	tests := []struct {
		in      string
		members int
		want    int
		bad     bool
	}{
		{"3", 10, 3, false},
		{"1", 1, 1, false},
		{"12", 10, 12, false}, // more than the cluster: Waves refuses the plan, not the parser
		{"25%", 10, 3, false}, // 2.5 rounds up
		{"20%", 10, 2, false},
		{"100%", 10, 10, false},
		{"1%", 10, 1, false}, // at least one node
		{"50%", 1, 1, false},
		{"50%", 0, 1, false},
		{"12.5%", 16, 2, false},
		{"4.4%", 750, 33, false}, // exactly 33; float arithmetic says 33.00000000000001 and rounds up to 34
		{"33.3%", 3, 1, false},
		{"0", 10, 0, true},
		{"0%", 10, 0, true},
		{"0.0%", 10, 0, true},
		{"100.1%", 10, 0, true},
		{"101%", 10, 0, true},
		{"-1", 10, 0, true},
		{"-10%", 10, 0, true},
		{"", 10, 0, true},
		{"%", 10, 0, true},
		{"3.5", 10, 0, true},
		{"NaN%", 10, 0, true},
		{"Inf%", 10, 0, true},
		{"1e1%", 10, 0, true},
		{"0x10", 10, 0, true},
		{" 3", 10, 0, true},
		{"3 %", 10, 0, true},
		{"25%%", 10, 0, true},
		{"99999999999999999999", 10, 0, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q of %d", tt.in, tt.members), func(t *testing.T) {
			got, err := ParseMaxUnavailable(tt.in, tt.members)
			if tt.bad {
				require.Error(t, err)
				assert.Contains(t, err.Error(), fmt.Sprintf("%q", tt.in), "error must name the bad value")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func sizes(waves []Wave) []int {
	out := make([]int, len(waves))
	for i, w := range waves {
		out[i] = len(w.Nodes)
	}
	return out
}

func TestWavesSizes(t *testing.T) {
	tests := []struct {
		name    string
		members int
		opts    Options
		want    []int
		canary  bool
	}{
		{"default batch 1", 3, Options{}, []int{1, 1, 1}, false},
		{"batch 2 of 5", 5, Options{Batch: 2}, []int{2, 2, 1}, false},
		{"batch 3 of 6", 6, Options{Batch: 3}, []int{3, 3}, false},
		{"batch 4 of 5", 5, Options{Batch: 4}, []int{4, 1}, false},
		{"max unavailable 2 of 5", 5, Options{MaxUnavailable: "2"}, []int{2, 2, 1}, false},
		{"max unavailable 25% of 10", 10, Options{MaxUnavailable: "25%"}, []int{3, 3, 3, 1}, false},
		{"max unavailable 1% of 10", 10, Options{MaxUnavailable: "1%"}, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, false},
		{"canary 1 then batch 3", 8, Options{Canary: 1, Batch: 3}, []int{1, 3, 3, 1}, true},
		{"canary 2 then batch 2", 6, Options{Canary: 2, Batch: 2}, []int{2, 2, 2}, true},
		{"canary of all but one", 4, Options{Canary: 3}, []int{3, 1}, true},
		{"two nodes", 2, Options{}, []int{1, 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(tt.members)
			p.Options = Options{Deadline: time.Minute, Batch: tt.opts.Batch, MaxUnavailable: tt.opts.MaxUnavailable, Canary: tt.opts.Canary}
			require.NoError(t, p.Validate())
			waves, err := p.Waves()
			require.NoError(t, err)
			assert.Equal(t, tt.want, sizes(waves))
			for i, w := range waves {
				assert.Equal(t, i, w.Index)
				assert.Equal(t, tt.canary && i == 0, w.Canary, "wave %d canary flag", i)
				assert.Empty(t, w.Tag)
			}
			assertCoversOnce(t, p, waves)
		})
	}
}

// assertCoversOnce checks every member of the snapshot is in exactly one
// wave and no one else is.
func assertCoversOnce(t *testing.T, p Plan, waves []Wave) {
	t.Helper()
	var got, want []string
	for _, w := range waves {
		got = append(got, w.Nodes...)
	}
	for _, m := range p.Members {
		want = append(want, m.Name)
	}
	sort.Strings(got)
	sort.Strings(want)
	assert.Equal(t, want, got)
}

func TestWavesFollowHashOrder(t *testing.T) {
	p := testPlan(12)
	p.Options.Batch = 5
	p.Options.Canary = 1
	waves, err := p.Waves()
	require.NoError(t, err)
	var got []string
	for _, w := range waves {
		got = append(got, w.Nodes...)
	}
	// The contract other implementations could follow: hex digest of the
	// hex ID followed by the name, sorted ascending.
	id := p.ID()
	key := func(n string) string {
		s := sha256.Sum256([]byte(id + n))
		return hex.EncodeToString(s[:])
	}
	want := slices.Clone(got)
	sort.Slice(want, func(i, j int) bool { return key(want[i]) < key(want[j]) })
	assert.Equal(t, want, got)
}

func TestWavesDeterministic(t *testing.T) {
	for _, opts := range []Options{
		{Batch: 3},
		{MaxUnavailable: "20%", Canary: 2},
		{Batch: 2, Canary: 1, ByTag: "zone"},
	} {
		t.Run(fmt.Sprintf("%+v", opts), func(t *testing.T) {
			p := testPlan(17)
			for i := range p.Members {
				p.Members[i].Tag = []string{"a", "b", "c"}[i%3]
			}
			opts.Deadline = time.Minute
			p.Options = opts
			want, err := p.Waves()
			require.NoError(t, err)
			again, err := p.Waves()
			require.NoError(t, err)
			assert.Equal(t, want, again, "differs across calls")
			for seed := range uint64(10) {
				q := p
				q.Members = shuffled(p.Members, seed)
				got, err := q.Waves()
				require.NoError(t, err)
				assert.Equal(t, want, got, "differs with members in another order (seed %d)", seed)
			}
			b, err := p.Encode()
			require.NoError(t, err)
			d, err := Decode(b)
			require.NoError(t, err)
			got, err := d.Waves()
			require.NoError(t, err)
			assert.Equal(t, want, got, "differs after a round trip through the encoding")
		})
	}
}

func TestWavesOrderVariesByPlan(t *testing.T) {
	first := map[string]bool{}
	var orders [][]string
	for i := range 40 {
		p := testPlan(20)
		p.Version = fmt.Sprintf("v2.0.%d", i)
		waves, err := p.Waves()
		require.NoError(t, err)
		var order []string
		for _, w := range waves {
			order = append(order, w.Nodes...)
		}
		for _, o := range orders {
			require.NotEqual(t, o, order, "two plans gave the same order")
		}
		orders = append(orders, order)
		first[order[0]] = true
	}
	// 40 plans over 20 nodes: a fixed order would put one node first every
	// time; a hash spreads it (at least 10 distinct is overwhelmingly likely
	// and, the hash being fixed, deterministic).
	assert.GreaterOrEqual(t, len(first), 10, "first nodes: %v", first)
}

func TestWavesByTag(t *testing.T) {
	tests := []struct {
		name  string
		zones []string // tag of member i, cycled
		n     int
		opts  Options
	}{
		{"three zones batch 2", []string{"a", "b", "c"}, 14, Options{Batch: 2}},
		{"three zones batch 10", []string{"a", "b", "c"}, 14, Options{Batch: 10}},
		{"uneven zones with canary", []string{"a", "a", "a", "b", "c"}, 11, Options{Batch: 2, Canary: 1}},
		{"canary larger than first zone", []string{"a", "b", "b", "b", "b"}, 10, Options{Batch: 3, Canary: 4}},
		{"max unavailable share", []string{"east", "west"}, 9, Options{MaxUnavailable: "30%"}},
		{"untagged members form a group", []string{"a", ""}, 6, Options{Batch: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(tt.n)
			tt.opts.ByTag = "zone"
			tt.opts.Deadline = time.Minute
			p.Options = tt.opts
			tagOf := map[string]string{}
			for i := range p.Members {
				p.Members[i].Tag = tt.zones[i%len(tt.zones)]
				tagOf[p.Members[i].Name] = p.Members[i].Tag
			}
			require.NoError(t, p.Validate())
			waves, err := p.Waves()
			require.NoError(t, err)
			assertCoversOnce(t, p, waves)
			batch := p.batch()
			var tagOrder []string
			for i, w := range waves {
				require.NotEmpty(t, w.Nodes)
				tag := tagOf[w.Nodes[0]]
				for _, n := range w.Nodes {
					assert.Equal(t, tag, tagOf[n], "wave %d mixes zones: %v", i, w.Nodes)
				}
				assert.Equal(t, "zone="+tag, w.Tag)
				assert.Equal(t, tt.opts.Canary > 0 && i == 0, w.Canary)
				if !w.Canary {
					assert.LessOrEqual(t, len(w.Nodes), batch)
					// Only a group's last wave may be short.
					if len(w.Nodes) < batch && i+1 < len(waves) {
						assert.NotEqual(t, tag, tagOf[waves[i+1].Nodes[0]], "short wave %d is not its zone's last", i)
					}
				}
				if len(tagOrder) == 0 || tagOrder[len(tagOrder)-1] != tag {
					tagOrder = append(tagOrder, tag)
				}
			}
			// A zone is done before the next starts: each appears in one run.
			seen := map[string]bool{}
			for _, z := range tagOrder {
				assert.False(t, seen[z], "zone %q comes back after another zone: %v", z, tagOrder)
				seen[z] = true
			}
			// Zones go in the hash order of their first member.
			order := hashOrder(p.ID(), p.Members)
			assert.Equal(t, order[0].Tag, tagOrder[0])
		})
	}
}

func TestWavesRefuseWholeClusterWave(t *testing.T) {
	tests := []struct {
		name    string
		members int
		opts    Options
		want    []string
	}{
		{"one-node cluster", 1, Options{}, []string{"only member, node00", "add nodes", "--allow-outage"}},
		{"one-node cluster, 100%", 1, Options{MaxUnavailable: "100%"}, []string{"only member", "--allow-outage"}},
		{"batch equals members", 3, Options{Batch: 3}, []string{"all 3 members", "lower --batch or --max-unavailable", "add nodes", "--allow-outage"}},
		{"batch above members", 3, Options{Batch: 10}, []string{"all 3 members", "--allow-outage"}},
		{"100%", 4, Options{MaxUnavailable: "100%"}, []string{"all 4 members", "--max-unavailable", "--allow-outage"}},
		{"count equals members", 4, Options{MaxUnavailable: "4"}, []string{"all 4 members"}},
		{"99% rounds up to all", 4, Options{MaxUnavailable: "99%"}, []string{"all 4 members"}},
		{"canary of all", 3, Options{Canary: 3}, []string{"canary wave 1", "lower --canary", "--allow-outage"}},
		{"canary above all", 3, Options{Canary: 5}, []string{"canary wave 1"}},
		{"one zone holding everyone", 3, Options{ByTag: "zone", Batch: 3}, []string{"all 3 members"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(tt.members)
			tt.opts.Deadline = time.Minute
			p.Options = tt.opts
			require.NoError(t, p.Validate(), "Validate does not know about outages; Waves does")
			_, err := p.Waves()
			require.Error(t, err)
			for _, w := range tt.want {
				assert.ErrorContains(t, err, w)
			}

			p.Options.AllowOutage = true
			waves, err := p.Waves()
			require.NoError(t, err, "--allow-outage lifts the refusal")
			assertCoversOnce(t, p, waves)
		})
	}
}

func TestWavesAllButOneIsFine(t *testing.T) {
	p := testPlan(4)
	p.Options.Batch = 3
	waves, err := p.Waves()
	require.NoError(t, err)
	assert.Equal(t, []int{3, 1}, sizes(waves))
}

func TestWavesRefuseInvalidOptions(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *Plan)
		want   string
	}{
		{"bad max unavailable", func(p *Plan) { p.Options.Batch = 0; p.Options.MaxUnavailable = "lots" }, `--max-unavailable "lots"`},
		{"batch and max unavailable", func(p *Plan) { p.Options.MaxUnavailable = "1" }, "not both"},
		{"no members", func(p *Plan) { p.Members = nil }, "no members"},
		{"duplicate member", func(p *Plan) { p.Members[1].Name = p.Members[0].Name }, "more than once"},
		{"negative canary", func(p *Plan) { p.Options.Canary = -2 }, "--canary -2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan(4)
			tt.change(&p)
			_, err := p.Waves()
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

func TestWaveOf(t *testing.T) {
	p := testPlan(7)
	p.Options.Batch = 2
	p.Options.Canary = 1
	waves, err := p.Waves()
	require.NoError(t, err)
	for _, w := range waves {
		for _, n := range w.Nodes {
			assert.Equal(t, w.Index, WaveOf(waves, n), n)
		}
	}
	assert.Equal(t, -1, WaveOf(waves, "late-joiner"))
	assert.Equal(t, -1, WaveOf(nil, "node00"))
}

func TestWhereSelectsNodesByTag(t *testing.T) {
	o := Options{Where: map[string]string{"zone": "a", "role": "db"}}
	assert.True(t, o.Selects(map[string]string{"zone": "a", "role": "db", "x": "y"}))
	assert.False(t, o.Selects(map[string]string{"zone": "a"}))
	assert.False(t, o.Selects(nil))
	assert.True(t, Options{}.Selects(nil), "no --where: every node")

	p := testPlan(0)
	p.Options.Where = map[string]string{"zone": "c"}
	err := p.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no alive member has the tags --where zone=c")
}
