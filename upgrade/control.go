package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Control actions an operator can take on the running plan.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionAbort  = "abort"
)

// controlMsg is an operator action as a Serf event carries it.
type controlMsg struct {
	PlanID string `json:"plan_id"`
	Action string `json:"action"`
	ltime  uint64 // the event's Lamport time
}

// takeControl reports whether operator action c is news to st, and notes it.
// Serf delivers events in no set order and may deliver one again after a
// restart: a pause that arrives after the resume issued after it must not
// leave the node paused.
func (st *NodeState) takeControl(c controlMsg) bool {
	if c.PlanID != st.PlanID || c.ltime != 0 && c.ltime <= st.ControlLTime {
		return false
	}
	st.ControlLTime = max(st.ControlLTime, c.ltime)
	return true
}

// Control broadcasts an operator action on the current plan to every node;
// each node's state machine applies it (machine.go, applyControl). A resume
// of an aborted plan is refused: an abort ends a plan for good.
func (e *Engine) Control(ctx context.Context, action string) (string, error) {
	if !slices.Contains([]string{ActionPause, ActionResume, ActionAbort}, action) {
		return "", fmt.Errorf("unknown action %q: want pause, resume or abort", action)
	}
	id := e.State().PlanID
	if id == "" {
		return "", errors.New("no rollout to " + action + ": this node has not seen one (see 'peerd upgrade status')")
	}
	if action == ActionResume {
		aborted := e.State().Phase == PhaseAborted
		if st, err := e.Status(ctx); err == nil && st.PlanID == id && st.State == StateAborted {
			aborted = true
		}
		if aborted {
			return "", fmt.Errorf("plan %s was aborted and cannot be resumed: start a new plan with 'peerd upgrade --to VERSION --artifact FILE|URL' (or 'peerd upgrade rollback')", short(id))
		}
	}
	b, _ := json.Marshal(controlMsg{PlanID: id, Action: action})
	if err := e.net.Broadcast(e.name(eventControl), b); err != nil {
		return "", err
	}
	return id, nil
}
