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

// Control broadcasts an operator action on the current plan to every node.
func (e *Engine) Control(_ context.Context, action string) (string, error) {
	if !slices.Contains([]string{ActionPause, ActionResume, ActionAbort}, action) {
		return "", fmt.Errorf("unknown action %q: want pause, resume or abort", action)
	}
	id := e.State().PlanID
	if id == "" {
		return "", errors.New("no rollout to " + action + ": this node has not seen one (see 'peerd upgrade status')")
	}
	b, _ := json.Marshal(controlMsg{PlanID: id, Action: action})
	if err := e.net.Broadcast(e.name(eventControl), b); err != nil {
		return "", err
	}
	return id, nil
}

// control applies an operator action to this node. It runs on the cluster's
// event goroutine, so it hands the change to the state machine's owner.
func (e *Engine) control(c controlMsg) {
	e.mu.Lock()
	e.pendingCtl = append(e.pendingCtl, c)
	e.mu.Unlock()
	e.wake()
}

// applyControl runs on the state machine's goroutine.
func (e *Engine) applyControl() {
	e.mu.Lock()
	msgs := e.pendingCtl
	e.pendingCtl = nil
	e.mu.Unlock()
	for _, c := range msgs {
		st := e.State()
		if !st.takeControl(c) {
			continue
		}
		log := e.log.With("plan", short(st.PlanID), "wave", st.Wave, "action", c.Action)
		switch c.Action {
		case ActionPause:
			st.Paused = true
		case ActionResume:
			st.Paused = false
			if st.Phase == PhaseFailed {
				// The operator fixed the cause: try this version again.
				st.RolledBackFrom = slices.DeleteFunc(st.RolledBackFrom, func(v string) bool { return v == st.ToVersion })
				st.Phase, st.Reason, st.Starts = PhaseWait, "", 0
			}
		case ActionAbort:
			switch st.Phase {
			case PhaseWait, PhasePrepare, PhaseReady:
				st.Phase = PhaseAborted
				st.Reason = "aborted by the operator"
			}
		}
		e.transition(st, log)
	}
}
