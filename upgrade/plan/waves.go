package plan

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Wave is a set of nodes that go offline together.
type Wave struct {
	Index  int      `json:"index"` // from 0; people see Index+1
	Nodes  []string `json:"nodes"` // in the plan's hash order
	Canary bool     `json:"canary,omitempty"`
	Tag    string   `json:"tag,omitempty"` // "key=value" when Options.ByTag is set
}

// Waves computes the waves, the same on every node.
//
// Order. Members are sorted by sha256(planID || name): the digest of the
// plan's lowercase hex ID (its 64 ASCII characters) followed by the node's
// name, compared as raw digest bytes (which is also the order of the digests'
// lowercase hex). Every node computes it alike from the plan alone, and it
// differs from plan to plan, so the same nodes do not always go first and
// bear the risk of every release. Equal digests would need equal names,
// which a valid plan does not have; names break the tie anyway.
//
// Waves. With Canary > 0 the first wave is the canary: the first Canary
// nodes in that order. The rest go in chunks of the batch size (Batch,
// MaxUnavailable resolved against the snapshot size, or 1): every chunk
// holds exactly the batch size except the last, which holds what is left.
//
// ByTag. Members are grouped by their tag value and each group is chunked
// on its own, so a wave never mixes values (one zone at a time); only a
// group's last wave may be short. Groups go in the order of their first
// member in the hash order, so, like nodes, which zone goes first varies
// from plan to plan. The canary is then taken from the first group (capped
// at its size) so that it, too, never mixes values.
//
// A wave that would hold every member of the snapshot (a one-node cluster,
// a batch or canary as large as the cluster, 100%) is refused unless
// AllowOutage: keeping the rest of the cluster online is the point of a
// rollout, and the lease cannot protect a cluster that has no one left.
func (p Plan) Waves() ([]Wave, error) {
	id, err := p.id()
	if err != nil {
		return nil, fmt.Errorf("compute waves: %w", err)
	}
	return p.wavesFor(id)
}

// wavesFor computes the waves of the plan whose ID is id.
func (p Plan) wavesFor(id string) ([]Wave, error) {
	if errs := p.waveProblems(); len(errs) > 0 {
		return nil, fmt.Errorf("compute waves: %w", errors.Join(errs...))
	}
	order := hashOrder(id, p.Members)
	groups := [][]Member{order}
	if p.Options.ByTag != "" {
		groups = groupByTag(order)
	}

	var waves []Wave
	add := func(ms []Member, canary bool) {
		w := Wave{Index: len(waves), Canary: canary, Nodes: make([]string, len(ms))}
		for i, m := range ms {
			w.Nodes[i] = m.Name
		}
		if p.Options.ByTag != "" {
			w.Tag = p.Options.ByTag + "=" + ms[0].Tag
		}
		waves = append(waves, w)
	}
	if c := min(p.Options.Canary, len(groups[0])); c > 0 {
		add(groups[0][:c], true)
		groups[0] = groups[0][c:]
	}
	batch := p.batch()
	for _, g := range groups {
		for len(g) > 0 {
			n := min(batch, len(g))
			add(g[:n], false)
			g = g[n:]
		}
	}

	if !p.Options.AllowOutage {
		for _, w := range waves {
			if len(w.Nodes) == len(p.Members) {
				return nil, outage(w, len(p.Members))
			}
		}
	}
	return waves, nil
}

// outage is the refusal of a whole-cluster wave, saying what to do instead.
func outage(w Wave, members int) error {
	switch {
	case members == 1:
		return fmt.Errorf("wave %d would take the only member, %s, offline: add nodes to the cluster, or pass --allow-outage to accept the outage", w.Index+1, w.Nodes[0])
	case w.Canary:
		return fmt.Errorf("canary wave %d would take all %d members offline at once: lower --canary, add nodes, or pass --allow-outage to accept the outage", w.Index+1, members)
	default:
		return fmt.Errorf("wave %d would take all %d members offline at once: lower --batch or --max-unavailable, add nodes, or pass --allow-outage to accept the outage", w.Index+1, members)
	}
}

// hashOrder returns the members sorted by sha256(id || name).
func hashOrder(id string, members []Member) []Member {
	type ranked struct {
		key [sha256.Size]byte
		m   Member
	}
	rs := make([]ranked, len(members))
	for i, m := range members {
		rs[i] = ranked{key: sha256.Sum256([]byte(id + m.Name)), m: m}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := bytes.Compare(a.key[:], b.key[:]); c != 0 {
			return c
		}
		return strings.Compare(a.m.Name, b.m.Name)
	})
	out := make([]Member, len(rs))
	for i, r := range rs {
		out[i] = r.m
	}
	return out
}

// groupByTag splits ordered members by tag value, keeping the order within
// each group, and ordering groups by their first member.
func groupByTag(order []Member) [][]Member {
	var groups [][]Member
	index := map[string]int{}
	for _, m := range order {
		i, ok := index[m.Tag]
		if !ok {
			i = len(groups)
			index[m.Tag] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], m)
	}
	return groups
}

// batch is the wave size; call it only once waveProblems found none.
func (p Plan) batch() int {
	if p.Options.MaxUnavailable != "" {
		n, _ := ParseMaxUnavailable(p.Options.MaxUnavailable, len(p.Members))
		return n
	}
	return max(p.Options.Batch, 1)
}

// WaveOf returns the index of node's wave, or -1 when the node is not in
// the snapshot. Callers run such late joiners in a final extra wave, index
// len(waves), after every wave of the snapshot is done.
func WaveOf(waves []Wave, node string) int {
	for _, w := range waves {
		if slices.Contains(w.Nodes, node) {
			return w.Index
		}
	}
	return -1
}

var (
	countRE = regexp.MustCompile(`^[0-9]+$`)
	shareRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)%$`)
)

// ParseMaxUnavailable resolves "N" (a node count) or "N%" (a share of the
// snapshot, N may have decimals) against a member count. A share rounds up
// and is at least one node, so that a small share of a small cluster still
// makes progress. The share is computed exactly: a float can land a hair
// above a whole number and take one node too many offline.
func ParseMaxUnavailable(s string, members int) (int, error) {
	bad := fmt.Errorf("--max-unavailable %q: want a count like 3 or a share of the cluster like 25%% (above 0, at most 100%%)", s)
	if m := shareRE.FindStringSubmatch(s); m != nil {
		pct, ok := new(big.Rat).SetString(m[1])
		if !ok || pct.Sign() <= 0 || pct.Cmp(big.NewRat(100, 1)) > 0 {
			return 0, bad
		}
		share := new(big.Rat).Mul(pct, big.NewRat(int64(max(members, 0)), 100))
		n, rem := new(big.Int).QuoRem(share.Num(), share.Denom(), new(big.Int))
		if rem.Sign() > 0 {
			n.Add(n, big.NewInt(1))
		}
		return max(1, int(n.Int64())), nil
	}
	if countRE.MatchString(s) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return 0, bad
		}
		return n, nil
	}
	return 0, bad
}
