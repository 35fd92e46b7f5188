// Package plan is a rollout plan and the waves every node derives from it.
//
// A plan is content-addressed: its ID is the sha256 of its canonical
// encoding, so a node that fetched it from any peer can check it. Every node
// computes the same waves from the plan alone, so no leader is needed.
// This package is pure: no I/O, no clock.
package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options are the operator's rollout options.
type Options struct {
	Batch          int           `json:"batch,omitempty"`
	MaxUnavailable string        `json:"max_unavailable,omitempty"`
	Canary         int           `json:"canary,omitempty"`
	ByTag          string        `json:"by_tag,omitempty"`
	MinHealthy     time.Duration `json:"min_healthy"`
	Deadline       time.Duration `json:"deadline"`
	AllowOutage    bool          `json:"allow_outage,omitempty"`
}

// Artifact names a blob by digest; URL is an optional origin outside the cluster.
type Artifact struct {
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	URL       string `json:"url,omitempty"`
	Signature string `json:"signature,omitempty"`
}

// Patch is a bsdiff patch from FromVersion to the plan's artifact.
type Patch struct {
	FromVersion string `json:"from_version"`
	Artifact
}

// Member is one node of the snapshot the plan was made from.
type Member struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Tag     string `json:"tag,omitempty"` // value of Options.ByTag
}

// Plan is a rollout: what to install, how, and on which snapshot of members.
type Plan struct {
	Target   string    `json:"target"`
	Version  string    `json:"version"`
	Rollback bool      `json:"rollback,omitempty"`
	Artifact Artifact  `json:"artifact"`
	Patch    *Patch    `json:"patch,omitempty"`
	Options  Options   `json:"options"`
	Members  []Member  `json:"members"`
	Origin   string    `json:"origin"`
	Created  time.Time `json:"created"`
}

// Wave is a set of nodes that go offline together.
type Wave struct {
	Index  int      `json:"index"`
	Nodes  []string `json:"nodes"`
	Canary bool     `json:"canary,omitempty"`
	Tag    string   `json:"tag,omitempty"`
}

// Encode is the canonical encoding: members sorted by name, times in UTC,
// and Go's JSON (struct fields in declaration order).
func (p Plan) Encode() ([]byte, error) {
	c := p
	c.Members = append([]Member(nil), p.Members...)
	sort.Slice(c.Members, func(i, j int) bool { return c.Members[i].Name < c.Members[j].Name })
	c.Created = p.Created.UTC()
	return json.Marshal(c)
}

// Decode parses an encoded plan.
func Decode(b []byte) (Plan, error) {
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("decode plan: %w", err)
	}
	return p, nil
}

// ID is the lowercase hex sha256 of the canonical encoding.
func (p Plan) ID() string {
	b, err := p.Encode()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ShortID is the ID's first 8 hex characters, for tags and logs.
func (p Plan) ShortID() string { return p.ID()[:8] }

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate reports every problem at once.
func (p Plan) Validate() error {
	var errs []error
	add := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if p.Target == "" {
		add("plan has no target")
	}
	if p.Version == "" {
		add("plan has no version: give --to VERSION")
	}
	if !hex64.MatchString(p.Artifact.SHA256) {
		add("artifact sha256 %q: want 64 lowercase hex digits", p.Artifact.SHA256)
	}
	if p.Artifact.Size <= 0 {
		add("artifact is empty")
	}
	if p.Patch != nil && (!hex64.MatchString(p.Patch.SHA256) || p.Patch.FromVersion == "") {
		add("patch needs a sha256 and --patch-from VERSION")
	}
	o := p.Options
	if o.Batch < 0 {
		add("--batch %d: want a positive number", o.Batch)
	}
	if o.Batch > 0 && o.MaxUnavailable != "" {
		add("give --batch or --max-unavailable, not both")
	}
	if o.MaxUnavailable != "" {
		if _, err := ParseMaxUnavailable(o.MaxUnavailable, max(len(p.Members), 1)); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Canary < 0 {
		add("--canary %d: want 0 or more", o.Canary)
	}
	if o.MinHealthy < 0 {
		add("--min-healthy %s: want 0 or more", o.MinHealthy)
	}
	if o.Deadline <= 0 {
		add("--deadline %s: want a positive duration", o.Deadline)
	}
	if len(p.Members) == 0 {
		add("plan has no members")
	}
	seen := map[string]bool{}
	for _, m := range p.Members {
		if seen[m.Name] {
			add("member %q appears twice", m.Name)
		}
		seen[m.Name] = true
	}
	return errors.Join(errs...)
}

// ParseMaxUnavailable resolves "N" or "N%" against a member count; a share
// rounds up and is at least one node.
func ParseMaxUnavailable(s string, members int) (int, error) {
	bad := fmt.Errorf("--max-unavailable %q: want a count like 3 or a share like 25%% (above 0, at most 100%%)", s)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(pct, 64)
		if err != nil || f <= 0 || f > 100 {
			return 0, bad
		}
		return max(1, int(math.Ceil(f*float64(members)/100))), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, bad
	}
	return n, nil
}

func (p Plan) batch() int {
	if p.Options.MaxUnavailable != "" {
		n, err := ParseMaxUnavailable(p.Options.MaxUnavailable, len(p.Members))
		if err == nil {
			return n
		}
	}
	if p.Options.Batch > 0 {
		return p.Options.Batch
	}
	return 1
}

// Waves computes the waves. Members are ordered by sha256(planID || name)
// (raw bytes), which every node computes alike and which differs from plan
// to plan, so the same nodes are not always first. The canary wave takes the
// first Canary nodes; the rest go in chunks of the batch size. With ByTag,
// members are grouped by tag value (groups in the order of their first
// member) and chunked per group, so a wave never mixes values.
//
// A wave that would hold every member is refused unless AllowOutage:
// keeping the rest online is the point of a rollout.
func (p Plan) Waves() ([]Wave, error) {
	id := p.ID()
	names := make([]Member, len(p.Members))
	copy(names, p.Members)
	rank := func(n string) string {
		h := sha256.Sum256([]byte(id + n))
		return string(h[:])
	}
	sort.Slice(names, func(i, j int) bool { return rank(names[i].Name) < rank(names[j].Name) })

	var waves []Wave
	add := func(w Wave) {
		w.Index = len(waves)
		waves = append(waves, w)
	}
	rest := names
	if c := p.Options.Canary; c > 0 {
		c = min(c, len(rest))
		w := Wave{Canary: true}
		for _, m := range rest[:c] {
			w.Nodes = append(w.Nodes, m.Name)
		}
		add(w)
		rest = rest[c:]
	}
	batch := p.batch()
	var groups [][]Member
	if p.Options.ByTag != "" {
		index := map[string]int{}
		for _, m := range rest {
			i, ok := index[m.Tag]
			if !ok {
				i = len(groups)
				index[m.Tag] = i
				groups = append(groups, nil)
			}
			groups[i] = append(groups[i], m)
		}
	} else if len(rest) > 0 {
		groups = [][]Member{rest}
	}
	for _, g := range groups {
		for start := 0; start < len(g); start += batch {
			w := Wave{}
			if p.Options.ByTag != "" {
				w.Tag = p.Options.ByTag + "=" + g[start].Tag
			}
			for _, m := range g[start:min(start+batch, len(g))] {
				w.Nodes = append(w.Nodes, m.Name)
			}
			add(w)
		}
	}
	if !p.Options.AllowOutage {
		for _, w := range waves {
			if len(w.Nodes) >= len(p.Members) {
				return nil, fmt.Errorf("wave %d would take all %d members offline at once: lower --batch or --max-unavailable, add nodes, or pass --allow-outage to accept the outage", w.Index+1, len(p.Members))
			}
		}
	}
	return waves, nil
}

// WaveOf returns the index of node's wave, or -1 when the node is not in the
// snapshot (callers run such late joiners in a final wave, len(waves)).
func WaveOf(waves []Wave, node string) int {
	for _, w := range waves {
		for _, n := range w.Nodes {
			if n == node {
				return w.Index
			}
		}
	}
	return -1
}
