package upgrade

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Control actions an operator can take on the running plan.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionAbort  = "abort"
)

// controlMsg is an operator action as a Serf event carries it, signed by
// the node the operator ran it on. Seq orders actions: one above the
// highest sequence, and Serf Lamport time, the sender had seen, so that an
// action sent after another was seen comes after it.
type controlMsg struct {
	PlanID string `json:"plan_id"`
	Action string `json:"action"`
	Sender string `json:"sender"`
	Seq    uint64 `json:"seq"`
	// reply, on the operator's own node, hears whether this node
	// recorded the action (nil also when it was not news here).
	reply chan error
}

// answer tells the operator's command, if it waits, what became of c.
func (c controlMsg) answer(err error) {
	if c.reply != nil {
		c.reply <- err
	}
}

// controlRecordTimeout bounds how long an operator's command waits for its
// own node to record the action.
const controlRecordTimeout = 10 * time.Second

// maxControlJump bounds how far one action may move a node's control
// sequence: a member cannot send a sequence so high that every later
// action looks old.
const maxControlJump = 1 << 16

// takeControl reports whether operator action c is news to st, and notes it.
// Serf delivers events in no set order and may deliver one again after a
// restart: a pause that arrives after the resume issued after it must not
// leave the node paused. seen is the highest Lamport time this node saw.
func (st *NodeState) takeControl(c controlMsg, seen uint64) bool {
	if c.PlanID != st.PlanID || c.Seq <= st.ControlSeq || c.Seq > max(st.ControlSeq, seen)+maxControlJump {
		return false
	}
	st.ControlSeq = c.Seq
	return true
}

// Control broadcasts an operator action on the current plan to every node;
// each node's state machine applies it (machine.go, applyControl). A resume
// of an aborted plan is refused: an abort ends a plan for good.
func (e *Engine) Control(ctx context.Context, action string) (string, error) {
	if !slices.Contains([]string{ActionPause, ActionResume, ActionAbort}, action) {
		return "", fmt.Errorf("unknown action %q: want pause, resume or abort", action)
	}
	st := e.State()
	if st.PlanID == "" {
		return "", errors.New("no rollout to " + action + ": this node has not seen one (see 'peerd upgrade status')")
	}
	if action == ActionResume {
		aborted := st.Phase == PhaseAborted
		if cs, err := e.Status(ctx); err == nil && cs.PlanID == st.PlanID && cs.State == StateAborted {
			aborted = true
		}
		if aborted {
			return "", fmt.Errorf("plan %s was aborted and cannot be resumed: start a new plan with 'peerd upgrade --to VERSION --artifact FILE|URL' (or 'peerd upgrade rollback')", short(st.PlanID))
		}
	}
	c := controlMsg{PlanID: st.PlanID, Action: action, Sender: e.net.LocalMember().Name,
		Seq: max(st.ControlSeq, e.seenLTime.Load()) + 1}
	b, err := e.id.Seal(domainControl, c)
	if err != nil {
		return "", err
	}
	// This node records the action before it is sent: a node that cannot
	// persist it (a full disk) must say so to the operator, not drop it
	// silently or act on it only until its next restart.
	c.reply = make(chan error, 1)
	e.m.mail.post(c)
	wait := time.NewTimer(controlRecordTimeout)
	defer wait.Stop()
	select {
	case err := <-c.reply:
		if err != nil {
			return "", fmt.Errorf("%s not sent: this node could not record it: %w; fix that (free disk space?) and run it again", action, err)
		}
	case <-wait.C:
		return "", fmt.Errorf("%s not sent: this node did not record it within %s (its state machine is busy or stopped); run it again", action, controlRecordTimeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if err := e.net.Broadcast(e.name(eventControl), b); err != nil {
		return "", err
	}
	return st.PlanID, nil
}
