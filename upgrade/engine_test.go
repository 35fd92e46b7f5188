package upgrade

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStateFileRoundTripAndCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	st, err := LoadState(path)
	require.NoError(t, err)
	assert.False(t, st.Active(), "no file: no rollout")

	want := NodeState{PlanID: "abc", Wave: 2, Phase: PhaseHealth, FromVersion: "1.0.0", ToVersion: "2.0.0", Starts: 1, RolledBackFrom: []string{"1.5.0"}}
	require.NoError(t, SaveState(path, want))
	got, err := LoadState(path)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	entries, _ := os.ReadDir(filepath.Dir(path))
	assert.Len(t, entries, 1, "no temp file left behind")
	require.NoError(t, SaveState(path, want))

	entries, _ = os.ReadDir(filepath.Dir(path))
	assert.Len(t, entries, 2, "and its previous generation")

	// A torn file is read from its previous generation; when that is torn
	// too, the error says so (the engine starts in safe mode).
	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o600))
	got, err = LoadState(path)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	require.NoError(t, os.WriteFile(path+".prev", []byte(`{"phase":"what"}`), 0o600))
	_, err = LoadState(path)
	assert.ErrorIs(t, err, durable.ErrCorrupt)
	assert.ErrorContains(t, err, "state.json is not usable")
	assert.ErrorContains(t, err, `unknown phase "what"`)
}

func TestPhases(t *testing.T) {
	for _, p := range []Phase{PhaseDone, PhaseFailed, PhaseAborted} {
		assert.True(t, p.Terminal(), p)
	}
	for _, p := range []Phase{PhaseWait, PhasePrepare, PhaseReady, PhaseApply, PhaseRestart, PhaseHealth} {
		assert.False(t, p.Terminal(), p)
	}
	assert.True(t, PhaseApply.Offline())
	assert.True(t, PhaseRestart.Offline())
	assert.False(t, PhaseHealth.Offline(), "the new binary serves during its health gate")
}

func TestProgressTag(t *testing.T) {
	p := Progress{PlanShort: "1a2b3c4d", Wave: 3, Phase: PhaseApply}
	assert.Equal(t, "1a2b3c4d:3:apply", p.String())
	got, ok := ParseProgress(p.String())
	require.True(t, ok)
	assert.Equal(t, p, got)
	for _, bad := range []string{"", "x", "a:b:c", ":1:done", "a:1"} {
		_, ok := ParseProgress(bad)
		assert.False(t, ok, bad)
	}
}

// TestRecover is the crash-safety table: whatever step a node died in, the
// binary that starts next decides to resume, enter the health gate, or
// report a rollback, and never leaves the node in between.
func TestRecover(t *testing.T) {
	for _, tc := range []struct {
		name       string
		phase      Phase
		running    string
		wantPhase  Phase
		wantStarts int
		wantReason string
	}{
		{"died waiting: wait again", PhaseWait, "1.0.0", PhaseWait, 0, ""},
		{"died preparing: prepare again", PhasePrepare, "1.0.0", PhasePrepare, 0, ""},
		{"died holding the lease, before the swap: apply again", PhaseApply, "1.0.0", PhaseApply, 0, ""},
		{"died right after the swap: the new binary starts its health gate", PhaseApply, "2.0.0", PhaseHealth, 1, ""},
		{"restarted into the new binary", PhaseRestart, "2.0.0", PhaseHealth, 1, ""},
		{"died during the health gate: count the start, gate again", PhaseHealth, "2.0.0", PhaseHealth, 2, ""},
		{"old binary back after the swap: report the rollback", PhaseRestart, "1.0.0", PhaseFailed, 0, "did not stay up"},
		{"old binary back during the gate", PhaseHealth, "1.0.0", PhaseFailed, 1, "did not stay up"},
		{"finished: nothing to do", PhaseDone, "2.0.0", PhaseDone, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			starts := 0
			if tc.phase == PhaseHealth {
				starts = 1
			}
			require.NoError(t, os.MkdirAll(filepath.Join(dir, "rollout"), 0o700))
			require.NoError(t, SaveState(filepath.Join(dir, "rollout", "state.json"), NodeState{
				PlanID: "p", Phase: tc.phase, FromVersion: "1.0.0", ToVersion: "2.0.0", Starts: starts,
			}))
			e, err := New(Config{DataDir: dir, Identity: identity.New(), Target: &Self{
				Executable: filepath.Join(dir, "peerd"), Build: buildinfo.Info{Version: tc.running},
				Store: versions.New(filepath.Join(dir, "versions"), "peerd", filepath.Join(dir, "peerd")),
			}}, nil)
			require.NoError(t, err)
			require.NoError(t, e.m.recover())
			st := e.State()
			assert.Equal(t, tc.wantPhase, st.Phase)
			assert.Equal(t, tc.wantStarts, st.Starts)
			if tc.wantReason != "" {
				assert.Contains(t, st.Reason, tc.wantReason)
				assert.Equal(t, []string{"2.0.0"}, st.RolledBackFrom, "it will not retry 2.0.0 on its own")
			}
			persisted, err := LoadState(filepath.Join(dir, "rollout", "state.json"))
			require.NoError(t, err)
			assert.Equal(t, st.Phase, persisted.Phase, "the decision is on disk before the node acts on it")
		})
	}
}

// TestControlOrder: Serf delivers user events in no set order, and again
// after a restart. A node applies an operator action only when its
// sequence is newer than the last one it applied, so a pause that arrives
// after the resume sent after it does not leave the node paused; and no
// sequence may jump so far that every later action looks old.
func TestControlOrder(t *testing.T) {
	st := NodeState{PlanID: "p"}
	pause := controlMsg{PlanID: "p", Action: ActionPause, Seq: 7}
	resume := controlMsg{PlanID: "p", Action: ActionResume, Seq: 9}

	assert.True(t, st.takeControl(resume, 8), "the resume arrives first")
	assert.False(t, st.takeControl(pause, 9), "the older pause, late, is ignored")
	assert.False(t, st.takeControl(resume, 9), "and so is the resume delivered again")
	assert.Equal(t, uint64(9), st.ControlSeq)

	assert.False(t, st.takeControl(controlMsg{PlanID: "other", Action: ActionAbort, Seq: 12}, 12), "another plan's action")
	assert.False(t, st.takeControl(controlMsg{PlanID: "p", Action: ActionAbort, Seq: 1 << 62}, 12), "a sequence far beyond anything seen")
	assert.True(t, st.takeControl(controlMsg{PlanID: "p", Action: ActionPause, Seq: 10}, 12), "a newer pause")

	// What was applied survives a restart with the state file.
	path := filepath.Join(t.TempDir(), "state.json")
	require.NoError(t, SaveState(path, st))
	back, err := LoadState(path)
	require.NoError(t, err)
	assert.False(t, back.takeControl(resume, 12), "a replayed old resume after a restart")
}

// TestShareableURL: an artifact URL with credentials never goes into the
// plan, which every member fetches and any peer serves.
func TestShareableURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://releases.example/peerd-2.0.0":                     "https://releases.example/peerd-2.0.0",
		"https://user:secret@releases.example/peerd":               "",
		"https://token@releases.example/peerd":                     "",
		"https://bucket.example/peerd?X-Amz-Signature=abc&X-Amz-x": "",
		"https://releases.example/peerd#token=abc":                 "",
		"":            "",
		"::not a url": "",
	} {
		assert.Equal(t, want, shareableURL(raw), raw)
	}
}
