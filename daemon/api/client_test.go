package api

import (
	"context"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func listenUnix(t *testing.T, mode os.FileMode) string {
	dir, err := os.MkdirTemp("", "pdapi")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "peerd.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	require.NoError(t, os.Chmod(path, mode))
	return path
}

// TestPermissionHint: a user refused by the socket is told who may use it
// and, for a group socket, how to join the group.
func TestPermissionHint(t *testing.T) {
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	require.NoError(t, err)

	hint := permissionHint(listenUnix(t, 0o660))
	assert.Contains(t, hint, "members of group "+g.Name+" may use it")
	assert.Contains(t, hint, "sudo usermod -aG "+g.Name+" $USER")

	hint = permissionHint(listenUnix(t, 0o600))
	assert.Regexp(t, `only user \S+ may use it \(mode 0600\)`, hint)
	assert.Contains(t, hint, "group peerd")
}

// TestPermissionDeniedNamesTheHint: the client's error is the hint, not
// "connect: permission denied".
func TestPermissionDeniedNamesTheHint(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may use any socket")
	}
	path := listenUnix(t, 0o000)
	_, err := NewClient(path).Info(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "permission denied on socket "+path)
}
