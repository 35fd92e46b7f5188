package upgrade

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/upgrade/plan"
)

// Rollout states, as `peerd upgrade status` reports them.
const (
	StateNone     = "none"
	StateRunning  = "running"
	StatePaused   = "paused"
	StateHalted   = "halted"
	StateComplete = "complete"
	StateAborted  = "aborted"
)

// Status is the cluster-wide progress of the latest plan this node knows.
type Status struct {
	PlanID   string       `json:"plan_id,omitempty"`
	Target   string       `json:"target,omitempty"`
	Version  string       `json:"version,omitempty"`
	Rollback bool         `json:"rollback,omitempty"`
	State    string       `json:"state"`
	Waves    []WaveStatus `json:"waves,omitempty"`
	Done     int          `json:"done"`
	Total    int          `json:"total"`
	Failed   []NodeStatus `json:"failed,omitempty"`
	Hint     string       `json:"hint,omitempty"`
	// SafeMode says why the node asked is in safe mode (see Engine.SafeMode).
	SafeMode string `json:"safe_mode,omitempty"`
}

// WaveStatus is one wave's progress.
type WaveStatus struct {
	Index  int          `json:"index"`
	Canary bool         `json:"canary,omitempty"`
	Late   bool         `json:"late,omitempty"` // nodes that joined after the plan was made
	Tag    string       `json:"tag,omitempty"`
	Nodes  []NodeStatus `json:"nodes"`
}

// NodeStatus is one node's progress.
type NodeStatus struct {
	Name    string `json:"name"`
	Phase   Phase  `json:"phase"`
	Version string `json:"version"`
	Member  string `json:"member"` // Serf status: alive, failed, left
	Reason  string `json:"reason,omitempty"`
}

// Status computes the rollout's progress from every member's tag, and asks
// failed nodes for their reason.
func (e *Engine) Status(ctx context.Context) (Status, error) {
	// What a status asks of other nodes (a plan this node has not fetched,
	// failed nodes' reasons) shares one short deadline: in a partition
	// those nodes may not answer at all, and a status that hangs is worse
	// than one that says a reason is unavailable.
	ctx, cancel := context.WithTimeout(ctx, statusBudget)
	defer cancel()
	st := e.State()
	id := st.PlanID
	e.mu.Lock()
	latest := e.latest
	e.mu.Unlock()
	if latest != "" && latest != id && e.newerPlan(ctx, latest, id) {
		id = latest // announced here, not adopted yet
	}
	safe, _ := e.SafeMode()
	if id == "" {
		return Status{State: StateNone, SafeMode: safe}, nil
	}
	p, err := e.planByID(ctx, id)
	if err != nil && id != st.PlanID {
		// Announced here but not fetched: every node that holds it is cut
		// off, paused or slow. A plan runs, and this node cannot say more;
		// failing the status would read as this node being down.
		return Status{PlanID: id, State: StateRunning, SafeMode: safe,
			Hint: fmt.Sprintf("plan %s was announced to this node, which has not fetched it yet (%v): ask a node that has it, or wait", short(id), err)}, nil
	}
	if err != nil {
		return Status{}, err
	}
	members := map[string]cluster.Member{}
	phases := map[string]Phase{}
	for _, m := range e.net.Members() {
		members[m.Name] = m
		if pr, ok := ParseProgress(m.Tags[e.tagKey()]); ok && pr.PlanShort == p.Short {
			phases[m.Name] = pr.Phase
		}
	}
	out := Status{PlanID: p.ID, Target: p.Target, Version: p.Version, Rollback: p.Rollback, SafeMode: safe}
	node := func(name string) NodeStatus {
		m, ok := members[name]
		ns := NodeStatus{Name: name, Phase: phases[name], Version: e.target.VersionOf(m), Member: m.Status}
		if !ok {
			ns.Member = "gone"
		}
		if ns.Phase == "" {
			ns.Phase = PhaseWait
		}
		return ns
	}
	for _, w := range p.Waves {
		ws := WaveStatus{Index: w.Index, Canary: w.Canary, Tag: w.Tag}
		for _, n := range w.Nodes {
			ws.Nodes = append(ws.Nodes, node(n))
		}
		out.Waves = append(out.Waves, ws)
	}
	var late []string
	for name := range phases {
		if !p.InSnapshot(name) {
			late = append(late, name)
		}
	}
	if len(late) > 0 {
		sort.Strings(late)
		ws := WaveStatus{Index: len(p.Waves), Late: true}
		for _, n := range late {
			ws.Nodes = append(ws.Nodes, node(n))
		}
		out.Waves = append(out.Waves, ws)
	}
	aborted := false
	var failed []*NodeStatus
	for wi := range out.Waves {
		for ni := range out.Waves[wi].Nodes {
			ns := &out.Waves[wi].Nodes[ni]
			if ns.Member == "left" || ns.Member == "gone" {
				continue
			}
			out.Total++
			switch ns.Phase {
			case PhaseDone:
				out.Done++
			case PhaseAborted:
				aborted = true
			case PhaseFailed:
				failed = append(failed, ns)
			}
		}
	}
	// Asked all at once, so that the deadline bounds them together.
	var wg sync.WaitGroup
	for _, ns := range failed {
		wg.Go(func() { ns.Reason = e.reasonOf(ctx, members[ns.Name]) })
	}
	wg.Wait()
	for _, ns := range failed {
		out.Failed = append(out.Failed, *ns)
	}
	switch {
	case aborted:
		// Only an operator's abort puts a node in PhaseAborted, and it ends
		// the plan however far it got, failed nodes included (a node that
		// missed the abort may still show its failure).
		out.State = StateAborted
		out.Hint = "aborted: no further wave of this plan starts, and it cannot be resumed; nodes already upgraded stay upgraded. " +
			"Start a new plan with 'peerd upgrade', or go back with 'peerd upgrade rollback'."
	case len(out.Failed) > 0:
		out.State = StateHalted
		f := out.Failed[0]
		out.Hint = fmt.Sprintf("node %s failed: %s. Later waves will not start. Fix the cause and run 'peerd upgrade resume', "+
			"or stop here with 'peerd upgrade abort', or go back with 'peerd upgrade rollback'.", f.Name, f.Reason)
	case out.Done == out.Total:
		out.State = StateComplete
	case st.Paused && st.PlanID == id:
		out.State = StatePaused
		out.Hint = "paused: no new wave starts; 'peerd upgrade resume' continues"
	default:
		out.State = StateRunning
	}
	return out, nil
}

// newerPlan reports whether plan a was made after plan b (or b is none).
// The last plan announced to this node is not always the newest: Serf
// delivers events in no set order, and a node may adopt a plan it found in
// its peers' tags before the event announcing it arrives, if ever.
func (e *Engine) newerPlan(ctx context.Context, a, b string) bool {
	if b == "" {
		return true
	}
	pa, errA := e.planByID(ctx, a)
	pb, errB := e.planByID(ctx, b)
	if errA != nil || errB != nil {
		return errB != nil // show what can be shown
	}
	return pa.Newer(pb.Plan)
}

// statusBudget bounds, all together, what one status asks of other nodes.
const statusBudget = 1500 * time.Millisecond

// reasonOf asks a failed node why (the tag has no room for it).
func (e *Engine) reasonOf(ctx context.Context, m cluster.Member) string {
	if m.Name == e.net.LocalMember().Name {
		return e.State().Reason
	}
	st, err := e.peers.Node(ctx, m)
	if err != nil {
		return "(reason unavailable: " + err.Error() + ")"
	}
	return st.Reason
}

// Summary is the one-line progress for systemd's STATUS and logs.
func (s Status) Summary() string {
	if s.State == StateNone {
		return ""
	}
	wave, nwaves := 0, len(s.Waves)
	for i, w := range s.Waves {
		for _, n := range w.Nodes {
			if n.Phase != PhaseDone {
				wave = i + 1
				break
			}
		}
		if wave != 0 {
			break
		}
	}
	if wave == 0 {
		wave = nwaves
	}
	return fmt.Sprintf("rollout %s: %s, wave %d/%d, %d/%d nodes done", short(s.PlanID), s.State, wave, nwaves, s.Done, s.Total)
}

// WavesText renders waves for --dry-run and logs.
func WavesText(waves []plan.Wave) string {
	var b strings.Builder
	for _, w := range waves {
		label := ""
		if w.Canary {
			label = " (canary)"
		}
		if w.Tag != "" {
			label += " [" + w.Tag + "]"
		}
		fmt.Fprintf(&b, "wave %d%s: %s\n", w.Index+1, label, strings.Join(w.Nodes, ", "))
	}
	return b.String()
}
