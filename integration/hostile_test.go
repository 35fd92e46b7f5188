package integration

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withHooks gives an agent a test hook dir (PEERD_TEST_HOOK_DIR; v1 is
// built with testhooks) holding the given hook files.
func withHooks(t testing.TB, files ...string) func(*agent) {
	return func(a *agent) {
		hooks := filepath.Join(a.dir, "hooks")
		require.NoError(t, os.MkdirAll(hooks, 0o755))
		a.env = append(a.env, "PEERD_TEST_HOOK_DIR="+hooks)
		for _, f := range files {
			require.NoError(t, os.WriteFile(filepath.Join(hooks, f), nil, 0o644))
		}
	}
}

func setHook(t testing.TB, a *agent, name string, on bool) {
	t.Helper()
	path := filepath.Join(a.dir, "hooks", name)
	if on {
		require.NoError(t, os.WriteFile(path, nil, 0o644))
	} else {
		require.NoError(t, os.Remove(path))
	}
}

// checkOneWaveDown fails the test where the observer saw nodes of two
// waves unreachable at once, and returns how many samples saw any node
// down.
func checkOneWaveDown(t *testing.T, st upgrade.Status, samples []sample) int {
	t.Helper()
	waveOf := map[string]int{}
	for _, w := range st.Waves {
		for _, n := range w.Nodes {
			waveOf[n.Name] = w.Index
		}
	}
	down := 0
	for _, s := range samples {
		waves := map[int]bool{}
		for _, n := range s.down {
			waves[waveOf[n]] = true
		}
		if len(s.down) > 0 {
			down++
		}
		assert.LessOrEqual(t, len(waves), 1, "at %s unreachable %v span waves", s.at.Format("15:04:05.000"), s.down)
	}
	return down
}

// TestMalformedPatchCrashesNoAgent: a plan carries a 32-byte bsdiff patch
// whose header claims a result of 2^62 bytes (the patch that once
// panicked every node in prepare, again on each restart). The origin's own
// check of it is skipped by a test hook, as a compromised member's agent
// would skip it, so the patch reaches every node's decoder. Each node
// says what is wrong with it, falls back to the full artifact and
// upgrades in its wave: the same PID throughout (no crash, no restart
// loop), nobody marked failed, at most one wave offline.
func TestMalformedPatchCrashesNoAgent(t *testing.T) {
	agents := startFleetWith(t, 4, withHooks(t), "--allow-unsigned")
	setHook(t, agents[0], "origin-unchecked", true)
	pids := pidsOf(agents)

	patch := filepath.Join(t.TempDir(), "huge.patch")
	head := make([]byte, 32)
	copy(head, "BSDIFF40")
	binary.LittleEndian.PutUint64(head[24:], 1<<62) // the result's size
	require.NoError(t, os.WriteFile(patch, head, 0o644))

	obs := observe(agents)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"],
		"--patch", patch, "--patch-from", "1.0.0", "--batch", "2", "--min-healthy", "1s", "--deadline", "1m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
	out, err := cmd.CombinedOutput()
	samples, bad := obs.finish()
	require.NoError(t, err, "peerd upgrade:\n%s", out)
	require.Contains(t, string(out), "origin-unchecked", "the origin did not check the patch: the nodes had to")

	st := statusFrom(t, agents)
	assert.Equal(t, upgrade.StateComplete, st.State)
	assert.Empty(t, st.Failed)
	// The situation: every node's decoder was handed the patch and said
	// why it refused it; none of them panicked.
	const why = "its header claims a result of 4611686018427387904 bytes, but the plan's artifact has"
	for _, a := range agents[1:] { // the origin holds the full artifact: it needs no patch
		log, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		line := ""
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "patch failed; falling back to the full artifact") {
				line = l
				break
			}
		}
		require.NotEmpty(t, line, "%s never tried the patch", a.name)
		assert.Contains(t, line, why, a.name)
		assert.Contains(t, line, "bad patch", a.name)
		assert.NotContains(t, string(log), "panic", a.name)
		assert.NotContains(t, string(log), "built the new binary from the patch", a.name)
		t.Logf("%s: %s", a.name, line[:min(len(line), 400)])
	}
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, "%s upgraded from the full artifact", a.name)
		assert.Equal(t, pids[a.name], a.pid(), "%s kept its PID: it re-executed in place and never crashed", a.name)
		assert.Equal(t, 1, a.starts, "%s was started once", a.name)
		assert.False(t, a.exited(), a.name)
	}
	down := checkOneWaveDown(t, st, samples)
	assert.Positive(t, down, "the observer saw the waves restart")
	assert.Empty(t, bad, "no member was marked failed or left")
	t.Logf("%d samples, %d with a node down; %d waves", len(samples), down, len(st.Waves))
}
