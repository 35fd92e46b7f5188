package daemon_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/peerd/peerd/daemon"
	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOneAgentPerDataDir: a second agent on a running agent's data dir
// refuses to start, naming the first one's PID, and leaves it serving; once
// the first stops, the dir is free again. A data dir found open to others,
// or writable by its group, is restricted to its owner and its group's
// read (the packages make it 0750, for the control socket's group).
func TestOneAgentPerDataDir(t *testing.T) {
	cfg := agenttest.Config(t, "first")
	require.NoError(t, os.MkdirAll(cfg.DataDir, 0o777))
	require.NoError(t, os.Chmod(cfg.DataDir, 0o777))
	first, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err)
	fi, err := os.Stat(cfg.DataDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o750), fi.Mode().Perm(), "the data dir's mode is enforced")

	second := cfg
	second.Node = "second"
	_, err = agenttest.Start(t, second, agenttest.Options(t, v1))
	require.ErrorIs(t, err, daemon.ErrDataDirInUse)
	assert.ErrorContains(t, err, fmt.Sprintf("PID %d", os.Getpid()))
	assert.ErrorContains(t, err, cfg.DataDir)
	assert.Equal(t, 1, agenttest.CountStatus(first, "alive"), "the first agent still serves")

	require.NoError(t, first.Agent.Close())
	again, err := agenttest.Start(t, cfg, agenttest.Options(t, v1))
	require.NoError(t, err, "a stopped agent's lock is gone")
	require.NoError(t, again.Agent.Close())
}
