package daemon_test

import (
	"os"
	"os/user"
	"strconv"
	"syscall"
	"testing"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestControlSocketMode: the socket is the socket group's (0660) when the
// group exists, the agent's user's alone (0600) when not, and starting the
// agent leaves the process's umask as it was.
func TestControlSocketMode(t *testing.T) {
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	require.NoError(t, err)
	umask := syscall.Umask(0o022)
	syscall.Umask(umask)

	for _, tc := range []struct {
		group string
		mode  os.FileMode
	}{
		{g.Name, 0o660},
		{"peerd-no-such-group", 0o600},
	} {
		t.Run(tc.group, func(t *testing.T) {
			opts := agenttest.Options(t, v1)
			opts.SocketGroup = tc.group
			n, err := agenttest.Start(t, agenttest.Config(t, "a"), opts)
			require.NoError(t, err)
			fi, err := os.Stat(n.Agent.SocketPath())
			require.NoError(t, err)
			assert.Equal(t, os.ModeSocket|tc.mode, fi.Mode())
			assert.Equal(t, uint32(os.Getgid()), fi.Sys().(*syscall.Stat_t).Gid)

			now := syscall.Umask(umask)
			assert.Equal(t, umask, now, "the umask is restored after listen")
		})
	}
}
