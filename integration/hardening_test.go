package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSecondAgentOnOneDataDirRefuses: a second agent started on a running
// agent's data dir exits 1 with an error naming the first one's PID, and
// the first keeps serving with the same PID.
func TestSecondAgentOnOneDataDirRefuses(t *testing.T) {
	first := newAgent(t, "first", bins["v1"])
	first.run()
	pid := first.pid()

	second := newAgent(t, "second", bins["v1"])
	second.dir = first.dir // its data dir is the first's; its binary and log its own
	second.start("--socket", filepath.Join(t.TempDir(), "s.sock"))
	code, err := second.wait(20 * time.Second)
	require.NoError(t, err, "the second agent must exit, not run beside the first")
	assert.Equal(t, 1, code)
	log, err := os.ReadFile(second.logPath)
	require.NoError(t, err)
	assert.Contains(t, string(log), fmt.Sprintf("another agent (PID %d) is running on data dir %s", pid, first.dataDir()))

	info, err := first.info()
	require.NoError(t, err)
	assert.Equal(t, "first", info.Node.Name)
	assert.Equal(t, pid, first.pid())
	assert.False(t, first.exited())
}

// TestCorruptStateFilesStartInSafeMode: an agent whose rollout state,
// grants and plan lock are unreadable in both generations (a torn write, a
// disk that lied) starts anyway, in safe mode: it serves, its health and
// status say so, and it takes no trigger.
func TestCorruptStateFilesStartInSafeMode(t *testing.T) {
	a := newAgent(t, "n01", bins["v1"], "--allow-unsigned")
	a.run()
	a.kill()
	rdir := filepath.Join(a.dataDir(), "rollout")
	require.DirExists(t, rdir)
	for _, f := range []string{"state.json", "grants.json", "lock.json"} {
		require.NoError(t, os.WriteFile(filepath.Join(rdir, f), nil, 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(rdir, f+".prev"), []byte(`{"phase":`), 0o600))
	}
	a.run()

	resp, err := http.Get("http://" + a.httpAddr() + "/v1/health")
	require.NoError(t, err)
	var h api.Health
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
	resp.Body.Close()
	assert.Contains(t, h.SafeMode, "safe mode", "health says so: %+v", h)
	st := rolloutStatus(t, a)
	assert.Contains(t, st.SafeMode, "state.json")
	_, stderr, err := a.cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--allow-outage")
	require.Error(t, err)
	assert.Contains(t, stderr, "safe mode")
	log, _ := os.ReadFile(a.logPath)
	assert.Contains(t, string(log), "SAFE MODE")
}

// TestSlowReadersLeaveHealthAnswering: 1,000 clients that ask for an
// artifact and never read the answer neither slow /v1/health past 100 ms
// nor hold the agent's file descriptors: past the cap of streams they get
// 503 at once, and every connection they keep open is closed by the
// server's timeouts while they still hold their end.
func TestSlowReadersLeaveHealthAnswering(t *testing.T) {
	a := newAgent(t, "n01", bins["v1"])
	a.run()
	up, err := a.client().UploadArtifact(context.Background(), bins["v2"])
	require.NoError(t, err)
	base := fdCount(t, a.pid())

	const clients = 1000
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < clients; i++ {
		c, err := net.DialTimeout("tcp", a.httpAddr(), 5*time.Second)
		require.NoError(t, err)
		// A tiny receive window: the client reads nothing, and the server's
		// writes back up at once.
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		_, err = fmt.Fprintf(c, "GET /v1/rollout/artifacts/%s HTTP/1.1\r\nHost: x\r\n\r\n", up.SHA256)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	// The run must see the agent hold the clients, or it shows nothing.
	peak := 0
	eventually(t, 30*time.Second, func() error {
		if peak = fdCount(t, a.pid()); peak < base+clients {
			return fmt.Errorf("agent holds %d fds, %d before the clients: not all accepted yet", peak, base)
		}
		return nil
	})
	t.Logf("agent fds: %d before, %d with %d slow clients connected", base, peak, clients)

	slowest := time.Duration(0)
	for i := 0; i < 20; i++ {
		start := time.Now()
		_, err := httpHealth(a.httpAddr())
		require.NoError(t, err)
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest /v1/health of 20 under 1000 slow clients: %s", slowest)
	assert.Less(t, slowest, 100*time.Millisecond)

	// The clients keep their sockets open and read nothing; the agent lets
	// go of its ends.
	eventually(t, 60*time.Second, func() error {
		if n := fdCount(t, a.pid()); n > base+20 {
			return fmt.Errorf("agent holds %d fds (%d before the clients)", n, base)
		}
		return nil
	})
	_, err = httpHealth(a.httpAddr())
	require.NoError(t, err)
}

// fdCount is how many file descriptors process pid has open.
func fdCount(t testing.TB, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	return len(entries)
}
