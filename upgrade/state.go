package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/peerd/peerd/internal/durable"
)

// Phase is a node's step in a rollout. Its short form goes into the "r" tag.
type Phase string

// The per-node state machine, in order. A node is offline from PhaseApply
// until PhaseHealth.
const (
	PhaseWait    Phase = "wait"    // plan known; earlier waves not done yet
	PhasePrepare Phase = "prep"    // fetching, verifying and staging the artifact (online)
	PhaseReady   Phase = "ready"   // prepared; asking for the wave's lease
	PhaseApply   Phase = "apply"   // lease held; activating the staged version (offline)
	PhaseRestart Phase = "restart" // swapped; restarting into the new binary
	PhaseHealth  Phase = "health"  // new version up; health gate running
	PhaseDone    Phase = "done"    // upgraded and healthy (or already at the target)
	PhaseFailed  Phase = "fail"    // failed and rolled back if it had gone offline
	PhaseAborted Phase = "abort"   // the operator aborted the plan before this node started
)

// Phases lists every phase in state machine order.
func Phases() []Phase {
	return []Phase{PhaseWait, PhasePrepare, PhaseReady, PhaseApply, PhaseRestart, PhaseHealth, PhaseDone, PhaseFailed, PhaseAborted}
}

// Terminal reports whether the node is finished with its plan.
func (p Phase) Terminal() bool { return p == PhaseDone || p == PhaseFailed || p == PhaseAborted }

// Offline reports whether a node in this phase is not serving.
func (p Phase) Offline() bool { return p == PhaseApply || p == PhaseRestart }

// HoldsLease reports whether a node in this phase went offline under the
// wave's lease and has not finished its health gate.
func (p Phase) HoldsLease() bool { return p == PhaseApply || p == PhaseRestart || p == PhaseHealth }

// HasArtifact reports whether a node in this phase holds the plan's
// verified artifact (and can serve it to peers).
func (p Phase) HasArtifact() bool {
	return p == PhaseReady || p.HoldsLease() || p == PhaseDone
}

// Abortable reports whether an abort stops a node in this phase: one that
// has not gone offline. A node that holds the lease finishes its upgrade
// (or rolls back), since stopping half-way would leave it down.
func (p Phase) Abortable() bool { return p == PhaseWait || p == PhasePrepare || p == PhaseReady }

// NodeState is this node's part of a rollout. Every change is written to
// disk (temp file, fsync, rename) before the node acts on it, so that a node
// killed at any instant resumes or rolls back from what it last wrote.
type NodeState struct {
	PlanID      string    `json:"plan_id,omitempty"`
	Wave        int       `json:"wave"`
	Phase       Phase     `json:"phase,omitempty"`
	FromVersion string    `json:"from_version,omitempty"`
	ToVersion   string    `json:"to_version,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	LeaseAt     time.Time `json:"lease_at,omitzero"`
	// Starts counts how often the new binary started in PhaseRestart or
	// PhaseHealth; a binary that keeps crashing is rolled back.
	Starts int `json:"starts,omitempty"`
	// PrepareAttempts counts the agent processes that began to prepare
	// this plan and did not finish (see countPrepareAttempt): input that
	// crashes the agent in prepare fails the node instead of looping.
	PrepareAttempts int `json:"prepare_attempts,omitempty"`
	// Lease is set from the node's first lease request of its plan until
	// it gave its hold back: a node that finished (or restarted into its
	// old version) releases it, so the next wave need not wait for expiry.
	Lease bool `json:"lease,omitempty"`
	// Paused holds the node before its next lease request.
	Paused bool `json:"paused,omitempty"`
	// ControlSeq is the sequence of the last operator action (pause,
	// resume, abort) applied; an older one is ignored.
	ControlSeq uint64 `json:"control_seq,omitempty"`
	// RolledBackFrom lists versions this node rolled back from. It does not
	// retry them on its own (no rollback loop); only `resume` or a new plan
	// naming the version again clears one.
	RolledBackFrom []string `json:"rolled_back_from,omitempty"`
	// Highest is the newest version of the target this node has run: a
	// plan to an older one needs a rollback statement signed by a release
	// key, so that no member can walk the fleet back to an old release.
	Highest string    `json:"highest,omitempty"`
	Updated time.Time `json:"updated"`
}

// Active reports whether the node is in a rollout that is not finished.
func (s NodeState) Active() bool { return s.PlanID != "" && !s.Phase.Terminal() }

// LoadState reads the state file, or its previous generation when the file
// is empty or torn; a missing file is the zero state. When neither
// generation decodes, the error wraps durable.ErrCorrupt (the engine then
// starts in safe mode, see safemode.go).
func LoadState(path string) (NodeState, error) {
	st, _, err := loadState(path)
	return st, err
}

func loadState(path string) (NodeState, durable.Read, error) {
	var s NodeState
	r, err := durable.ReadGenerations(path, func(b []byte) error {
		var err error
		s, err = decodeState(b)
		return err
	})
	if err != nil {
		return NodeState{}, r, fmt.Errorf("rollout state: %w", err)
	}
	return s, r, nil
}

// decodeState decodes a state file's content and checks that the machine
// can act on it: a phase it knows, no negative counts.
func decodeState(b []byte) (NodeState, error) {
	var s NodeState
	if err := json.Unmarshal(b, &s); err != nil {
		return NodeState{}, err
	}
	var problems []string
	if s.Phase != "" && !slices.Contains(Phases(), s.Phase) {
		problems = append(problems, fmt.Sprintf("unknown phase %q", s.Phase))
	}
	if s.Phase != "" && s.PlanID == "" {
		problems = append(problems, fmt.Sprintf("phase %q of no plan", s.Phase))
	}
	if s.Wave < 0 || s.Starts < 0 || s.PrepareAttempts < 0 {
		problems = append(problems, fmt.Sprintf("negative counts (wave %d, starts %d, prepare attempts %d)", s.Wave, s.Starts, s.PrepareAttempts))
	}
	if len(problems) > 0 {
		return NodeState{}, errors.New(strings.Join(problems, "; "))
	}
	return s, nil
}

// SaveState writes s durably (temp file, fsync, rename, fsync of the dir),
// keeping the state it replaces as the file's previous generation.
func SaveState(path string, s NodeState) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteGenerations(path, b, 0o600)
}
