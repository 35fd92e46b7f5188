package upgrade

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/peerd/peerd/internal/durable"
)

// Safe mode: the engine could not read one of its own files (the node's
// rollout state, its lease grants, its plan lock) in either generation.
// Refusing to start would leave the node down and, under systemd, in a
// restart loop with its applications unsupervised; starting afresh could
// let it grant a second wave while a grant it forgot is still live, or act
// on a rollout step it does not remember. So the engine starts with empty
// state and, until the longest lease TTL has passed (every grant it may
// have given, every hold it may have been part of, has expired by then),
// takes no rollout step, grants no lease, answers no plan lock and takes
// no trigger. Then it moves the damaged files aside (NAME.corrupt, kept
// for a post-mortem) and goes on as a node that never ran a rollout: it
// adopts the running plan again from the cluster. A restart during safe
// mode finds the damaged files still there and starts it afresh, which is
// only longer.
type safeMode struct {
	mu     sync.Mutex
	until  time.Time
	why    []string
	files  []string // the damaged files, moved aside when safe mode ends
	active bool
}

// enterSafeMode notes that the file at path could not be read (err) and
// holds the engine until the longest lease TTL from now.
func (e *Engine) enterSafeMode(path string, err error) {
	s := &e.safe
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active = true
	s.until = e.clock.Now().Add(maxLeaseTTL)
	s.why = append(s.why, err.Error())
	s.files = append(s.files, path)
	e.granter.Hold(s.until, "this node lost its lease grants (safe mode)")
	e.log.Error("SAFE MODE: a rollout file of this node is unreadable in both generations; "+
		"this node takes no rollout step and grants no lease until every lease it may have been part of has expired, then starts afresh",
		"file", path, "until", s.until.UTC().Format(time.RFC3339), "err", err)
}

// SafeMode says why the engine is in safe mode and until when, or "" when
// it is not (or no longer) in it.
func (e *Engine) SafeMode() (why string, until time.Time) {
	s := &e.safe
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return "", time.Time{}
	}
	if !e.clock.Now().Before(s.until) {
		e.endSafeModeLocked()
		return "", time.Time{}
	}
	return fmt.Sprintf("safe mode until %s: %s; no rollout step, lease grant or trigger on this node until then",
		s.until.UTC().Format(time.RFC3339), strings.Join(s.why, "; ")), s.until
}

// inSafeMode reports whether the engine is held in safe mode now.
func (e *Engine) inSafeMode() bool {
	why, _ := e.SafeMode()
	return why != ""
}

// refuseInSafeMode is the error an operator's trigger gets in safe mode.
func (e *Engine) refuseInSafeMode() error {
	if why, _ := e.SafeMode(); why != "" {
		return fmt.Errorf("this node is in %s: trigger the rollout on another node, or wait", why)
	}
	return nil
}

// endSafeModeLocked moves the damaged files aside, so that the next write
// starts each afresh and the next start is not held again.
func (e *Engine) endSafeModeLocked() {
	s := &e.safe
	s.active = false
	var moved []string
	var errs []error
	for _, f := range s.files {
		m, err := durable.MoveAside(f)
		moved = append(moved, m...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		e.log.Error("safe mode over, but the damaged rollout files could not be moved aside: the next start is held again", "err", err)
		return
	}
	e.log.Warn("safe mode over: every lease this node may have been part of has expired; the damaged files were moved aside", "kept", moved)
}
