package upgrade

import "fmt"

// maxPrepareAttempts is how many agent processes may begin to prepare a
// plan and die before finishing (a panic, an out-of-memory kill) before
// the next one fails the node instead of trying again. Prepare handles
// outside input (patches, bundles, signatures): whatever slips past its
// checks and crashes the agent must not crash it on every restart, with
// the node's applications unsupervised.
const maxPrepareAttempts = 3

// countPrepareAttempt notes on disk, before the first prepare attempt of
// this process for the plan, that one more process began to prepare it.
// Entering the prepare phase counts the first (prepareAttemptsIn), so this
// writes only in a process that starts in it, after one died there. Later
// attempts of the same process (retries while no source serves the
// artifact) do not count: it came back from the earlier ones. It reports
// whether the attempt may start; when the count is used up it fails the
// node, which never went offline.
func (m *machine) countPrepareAttempt() bool {
	if m.prepNoted == m.st.PlanID {
		return true
	}
	st := m.st
	if st.PrepareAttempts >= maxPrepareAttempts {
		m.fail(fmt.Sprintf("prepare: the agent died during each of the last %d attempts to prepare this plan (a crash or a kill: see this node's log or journal for the panic or the out-of-memory kill); fix the cause, then 'peerd upgrade resume'",
			st.PrepareAttempts), false)
		return false
	}
	st.PrepareAttempts++
	if m.transition(st) != nil {
		return false
	}
	m.prepNoted = st.PlanID
	return true
}

// prepareAttemptsIn is the prepare attempt count that state st, about to
// be persisted, carries: the count belongs to the prepare phase. Entering
// it is this process's first attempt; leaving it (ready, failed, aborted,
// another plan) ends the count.
func (m *machine) prepareAttemptsIn(st NodeState) int {
	if st.Phase != PhasePrepare {
		return 0
	}
	if m.st.Phase != PhasePrepare || m.st.PlanID != st.PlanID {
		m.prepNoted = st.PlanID
		return 1
	}
	return st.PrepareAttempts
}
