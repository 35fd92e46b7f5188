// Package plan is a rollout plan and the waves every node derives from it.
//
// A plan is content-addressed: its ID is the sha256 of its canonical
// encoding, so a node that fetched it from any peer can check it against
// the ID the announcement carried. Every node computes the same waves from
// the plan alone, which is why there is no leader and no coordinator.
//
// This package is pure: no I/O, no clock, no randomness. It must never
// depend on anything but the plan's bytes, or two nodes could disagree on
// who goes offline when.
package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/peerd/peerd/upgrade/piece"
)

// Options are the operator's rollout options.
type Options struct {
	Batch          int           `json:"batch,omitempty"`           // nodes per wave
	MaxUnavailable string        `json:"max_unavailable,omitempty"` // "N" or "N%" of the snapshot, alternative to Batch
	Canary         int           `json:"canary,omitempty"`          // first wave of N nodes
	ByTag          string        `json:"by_tag,omitempty"`          // a wave never mixes values of this tag
	MinHealthy     time.Duration `json:"min_healthy"`
	Deadline       time.Duration `json:"deadline"` // per wave; also the lease TTL
	AllowOutage    bool          `json:"allow_outage,omitempty"`
	// Where selects the nodes whose tags have all these values; the others
	// take no part (e.g. install an app on zone=a only). Empty: every node.
	Where map[string]string `json:"where,omitempty"`
}

// Selects reports whether a node with these tags takes part in the plan.
func (o Options) Selects(tags map[string]string) bool {
	for k, v := range o.Where {
		if tags[k] != v {
			return false
		}
	}
	return true
}

// Artifact names a blob by digest; URL is an optional origin outside the
// cluster. With no URL, nodes fetch it from the origin node's peer HTTP API
// (or any peer that already has it).
type Artifact struct {
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	URL       string `json:"url,omitempty"`
	Signature string `json:"signature,omitempty"` // minisign signature text
	// Pieces, when set, lets nodes fetch the artifact in pieces from
	// several peers at once, checking each as it arrives (the origin lists
	// them when it makes the plan). Plans from before pieces have none and
	// are fetched whole; older agents ignore the field.
	Pieces *piece.List `json:"pieces,omitempty"`
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
	// Key is the member's identity key as the origin knew it: what the
	// member signs for this plan (its votes, its release, its finished
	// state) is checked against it.
	Key string `json:"key,omitempty"`
}

// Plan is a rollout: what to install, how, and on which snapshot of members.
type Plan struct {
	Target   string    `json:"target"`  // "peerd" or an app name
	Version  string    `json:"version"` // target version
	Rollback bool      `json:"rollback,omitempty"`
	Artifact Artifact  `json:"artifact"`
	Patch    *Patch    `json:"patch,omitempty"`
	Options  Options   `json:"options"`
	Members  []Member  `json:"members"` // snapshot, sorted by name in the encoding
	Origin   string    `json:"origin"`  // node that created the plan
	Created  time.Time `json:"created"` // the origin's clock: shown, never used to order plans
	// Seq orders plans: the plan lock's sequence, one above the highest a
	// majority of the members had seen when the origin took the lock.
	Seq uint64 `json:"seq,omitempty"`
}

// Newer reports whether p supersedes q: a higher sequence (plans from
// before sequences compare by Created, as they did).
func (p Plan) Newer(q Plan) bool {
	if p.Seq != q.Seq {
		return p.Seq > q.Seq
	}
	return p.Created.After(q.Created)
}

// Encode is the canonical encoding: Go's JSON of the plan with struct
// fields in declaration order, members sorted by name, and Created in UTC.
// Sorting and normalising here, rather than trusting the caller, is what
// lets two nodes that built or decoded the same plan agree on its ID.
func (p Plan) Encode() ([]byte, error) {
	encodes.Add(1)
	c := p
	// An empty snapshot encodes as [] whether the slice is nil or not.
	c.Members = append([]Member{}, p.Members...)
	// Break ties on every field so that even an invalid plan with a
	// duplicate name encodes the same whatever order it was built in.
	slices.SortFunc(c.Members, func(a, b Member) int {
		if n := strings.Compare(a.Name, b.Name); n != 0 {
			return n
		}
		if n := strings.Compare(a.Version, b.Version); n != 0 {
			return n
		}
		return strings.Compare(a.Tag, b.Tag)
	})
	c.Created = p.Created.UTC()
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	return b, nil
}

// encodes counts Encode calls, so that a benchmark can show that a plan is
// encoded once per plan rather than once per member or step.
var encodes atomic.Int64

// Encodes is how many times this process has encoded a plan.
func Encodes() int64 { return encodes.Load() }

// Decode parses an encoded plan. Its ID is the ID of the plan that was
// encoded.
func Decode(b []byte) (Plan, error) {
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return Plan{}, fmt.Errorf("decode plan: %w", err)
	}
	return p, nil
}

// ID is the lowercase hex sha256 of the canonical encoding, or "" for a
// plan that cannot be encoded (Validate reports why).
func (p Plan) ID() string {
	id, _ := p.id()
	return id
}

func (p Plan) id() (string, error) {
	b, err := p.Encode()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// ShortID is the ID's first 8 hex characters, for tags and logs, where the
// full ID is too long and 8 characters are plenty to tell plans apart.
func (p Plan) ShortID() string {
	id := p.ID()
	if len(id) < 8 {
		return "invalid"
	}
	return id[:8]
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate reports every problem at once (errors.Join), each saying which
// flag fixes it, so the operator fixes a plan in one go.
func (p Plan) Validate() error {
	var errs []error
	add := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if p.Target == "" {
		add("plan has no target: name peerd or an app")
	}
	if p.Version == "" {
		add("plan has no version: give --to VERSION")
	}
	if !hex64.MatchString(p.Artifact.SHA256) {
		add("artifact sha256 %q: want 64 lowercase hex digits", p.Artifact.SHA256)
	}
	if p.Artifact.Size <= 0 {
		add("artifact size %d: want a non-empty artifact", p.Artifact.Size)
	}
	if l := p.Artifact.Pieces; l != nil {
		if err := l.Check(p.Artifact.Size); err != nil {
			add("artifact pieces: %v", err)
		}
	}
	if p.Patch != nil {
		if p.Patch.Pieces != nil {
			add("patch has a piece list: patches are fetched whole")
		}
		if p.Patch.FromVersion == "" {
			add("patch has no source version: give --patch-from VERSION")
		}
		if !hex64.MatchString(p.Patch.SHA256) {
			add("patch sha256 %q: want 64 lowercase hex digits", p.Patch.SHA256)
		}
		if p.Patch.Size <= 0 {
			add("patch size %d: want a non-empty patch", p.Patch.Size)
		}
	}
	if len(p.Members) == 0 && len(p.Options.Where) > 0 {
		add("no alive member has the tags --where %s: check them with 'peerd members'", formatWhere(p.Options.Where))
	}
	errs = append(errs, p.Options.problems()...)
	errs = append(errs, p.memberProblems()...)
	if _, err := p.Encode(); err != nil {
		// Only a Created time outside years 0-9999 gets here; without an
		// encoding the plan has no ID and cannot be announced.
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// MinRestart is the least time Options.Deadline must leave beyond
// MinHealthy: a node's deadline runs from when its wave goes offline, and
// the install and restart come before the health gate's dwell.
const MinRestart = time.Second

// Validate reports every problem of the options at once, each naming the
// flag that fixes it and how: values that cannot work (a deadline shorter
// than the dwell it must contain) are refused when the plan is made, not
// found out by an outage and a rollback. A Batch of 0 means the default,
// one node; a command line that says --batch 0 is refused before it gets
// here.
func (o Options) Validate() error { return errors.Join(o.problems()...) }

func (o Options) problems() []error {
	errs := o.waveProblems()
	add := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if o.MinHealthy < 0 {
		add("--min-healthy %s: want 0 or more (e.g. 10s)", o.MinHealthy)
	}
	switch {
	case o.Deadline <= 0:
		add("--deadline %s: want a positive duration (e.g. 5m)", o.Deadline)
	case o.MinHealthy >= 0 && o.Deadline < o.MinHealthy+MinRestart:
		add("--deadline %s leaves no time for --min-healthy %s: a node must install, restart and then stay healthy for --min-healthy within --deadline of going offline, or it rolls back; "+
			"give --deadline at least %s (the default, 5m, leaves minutes for the restart), or a shorter --min-healthy", o.Deadline, o.MinHealthy, o.MinHealthy+MinRestart)
	}
	return errs
}

// waveProblems are the options' problems that would stop Waves from
// computing the waves every node agrees on.
func (o Options) waveProblems() []error {
	var errs []error
	add := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if o.Batch < 0 {
		add("--batch %d: want 1 or more nodes per wave", o.Batch)
	}
	if o.Batch > 0 && o.MaxUnavailable != "" {
		add("give --batch or --max-unavailable, not both")
	}
	if o.MaxUnavailable != "" {
		// Whether it parses does not depend on the member count.
		if _, err := ParseMaxUnavailable(o.MaxUnavailable, 1); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Canary < 0 {
		add("--canary %d: want 0 (no canary wave) or more nodes", o.Canary)
	}
	return errs
}

// waveProblems are the problems that would stop Waves from computing the
// waves every node agrees on. Waves checks them too, so that a plan that
// skipped Validate fails loudly rather than falling back to some default.
func (p Plan) waveProblems() []error {
	return append(p.Options.waveProblems(), p.memberProblems()...)
}

// memberProblems are the snapshot's problems.
func (p Plan) memberProblems() []error {
	var errs []error
	add := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if len(p.Members) == 0 {
		add("plan has no members")
	}
	seen := map[string]int{}
	for _, m := range p.Members {
		seen[m.Name]++
		switch {
		case m.Name == "" && seen[m.Name] == 1:
			add("plan has a member with no name")
		case m.Name != "" && seen[m.Name] == 2:
			add("member %q appears more than once", m.Name)
		}
	}
	return errs
}

func formatWhere(w map[string]string) string {
	var kv []string
	for k, v := range w {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}
