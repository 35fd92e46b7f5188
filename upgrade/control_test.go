package upgrade

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestControlSaysWhenItCannotBeRecorded: an operator's resume on a node
// that cannot persist it (here the state's previous generation cannot be
// replaced, as on a full disk) fails the command, saying so, and is not
// sent; run again once the node can write, it is applied.
func TestControlSaysWhenItCannotBeRecorded(t *testing.T) {
	dir := t.TempDir()
	rdir := filepath.Join(dir, "rollout")
	require.NoError(t, os.MkdirAll(rdir, 0o700))
	p := testPlan(t)
	require.NoError(t, SaveState(filepath.Join(rdir, "state.json"),
		NodeState{PlanID: p.ID, Phase: PhaseFailed, Reason: "health gate failed", FromVersion: "1.0.0", ToVersion: "2.0.0"}))
	e, err := safeModeEngine(t, dir, clock.NewFake(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)))
	require.NoError(t, err)
	require.NoError(t, e.plans.save(p))
	require.NoError(t, e.Start(t.Context()))
	t.Cleanup(e.Close)

	prev := filepath.Join(rdir, "state.json.prev")
	require.NoError(t, os.RemoveAll(prev))
	require.NoError(t, os.MkdirAll(filepath.Join(prev, "x"), 0o700))
	_, err = e.Control(t.Context(), ActionResume)
	require.Error(t, err, "the operator hears that the resume was not recorded")
	assert.ErrorContains(t, err, "resume not sent: this node could not record it")
	assert.Equal(t, PhaseFailed, e.State().Phase)

	require.NoError(t, os.RemoveAll(prev))
	_, err = e.Control(t.Context(), ActionResume)
	require.NoError(t, err)
	// Recorded before the command returned: the node has left the failed
	// phase, and may already have gone on from wait to prepare.
	assert.Contains(t, []Phase{PhaseWait, PhasePrepare}, e.State().Phase, "recorded before the command returned")
}
