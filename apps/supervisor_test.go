package apps_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain is also the exec shim (apps.ExecShim) when a test's app has
// listeners: the supervisor runs its own executable, this test binary.
func TestMain(m *testing.M) {
	apps.ExecShim()
	// A signal ignored when a process starts stays ignored in what it
	// execs, and sh cannot trap one ignored at its start: under nohup
	// every test app ignored SIGHUP, and the peers-change test failed.
	// The agent handles SIGHUP, so its apps start with the default; so
	// do this process's.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	goleak.VerifyTestMain(m)
}

// script is a small application: it records its env peers list, appends
// "hup" and the peers file on SIGHUP, exits 3 on its first run when asked
// to crash, and says hello on its output. The traps come first: the tests
// signal it once it has written what it records, and a SIGHUP that came
// before its trap was set would end sh.
const script = `#!/bin/sh
dir=$(pwd)
trap 'echo hup >> "$dir/hups"; cat peers.json >> "$dir/hups"' HUP
trap 'echo term >> "$dir/terms"; exit 0' TERM
echo "$KV_PEERS" > "$dir/env-peers"
echo "$PEERD_APP_ADDR_FILE" > "$dir/env-addr-file"
echo $$ >> "$dir/pids"
echo "hello from the app"
if [ -f "$dir/crash-once" ]; then rm "$dir/crash-once"; exit 3; fi
while :; do sleep 1 & wait $!; done
`

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newApp(t *testing.T, mutate func(*apps.Config)) (*apps.Supervisor, string, *logBuf) {
	t.Helper()
	data := t.TempDir()
	bin := filepath.Join(t.TempDir(), "app.sh")
	require.NoError(t, os.WriteFile(bin, []byte(script), 0o755))
	cfg := apps.Config{
		Name: "kv", Binary: bin, Version: "1.0.0", Address: "127.0.0.1:9999",
		Peers:   apps.PeersConfig{Env: "KV_PEERS", File: "peers.json", Signal: "SIGHUP"},
		Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		StopTimeout: 5 * time.Second, HealthInterval: 20 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	logs := new(logBuf)
	sup, err := apps.New(cfg, data, slog.New(slog.NewTextHandler(logs, nil)))
	require.NoError(t, err)
	return sup, filepath.Join(data, "apps", "kv"), logs
}

func waitState(t *testing.T, sup *apps.Supervisor, state string) apps.Status {
	t.Helper()
	var st apps.Status
	require.Eventually(t, func() bool { st = sup.Status(); return st.State == state }, 10*time.Second, 5*time.Millisecond,
		"want state %s", state)
	return st
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}

func TestSuperviseTellPeersAndStop(t *testing.T) {
	sup, dir, logs := newApp(t, nil)
	peers := []apps.Peer{{Name: "b", Addr: "10.0.0.2:9999", Version: "1.0.0"}, {Name: "a", Addr: "10.0.0.1:9999", Version: "1.0.0"}}
	require.NoError(t, sup.SetPeers(peers))
	require.NoError(t, sup.Start(context.Background(), nil))

	st := waitState(t, sup, apps.StateRunning) // no health check: running is healthy
	assert.NotZero(t, st.PID)
	assert.Equal(t, "1.0.0", st.Version)
	assert.Equal(t, 2, st.Peers)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "hello from the app") }, 5*time.Second, 5*time.Millisecond)
	assert.Contains(t, logs.String(), "app=kv", "output is logged under the app's name")

	// At start: the env var, sorted by name.
	require.Eventually(t, func() bool { return read(t, filepath.Join(dir, "env-peers")) != "" }, 5*time.Second, 5*time.Millisecond)
	var got []apps.Peer
	require.NoError(t, json.Unmarshal([]byte(read(t, filepath.Join(dir, "env-peers"))), &got))
	assert.Equal(t, []apps.Peer{peers[1], peers[0]}, got)

	// A change: the file is rewritten, then the signal.
	more := append(peers, apps.Peer{Name: "c", Addr: "10.0.0.3:9999"})
	require.NoError(t, sup.SetPeers(more))
	require.Eventually(t, func() bool { return strings.Contains(read(t, filepath.Join(dir, "hups")), `"name":"c"`) }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, sup.SetPeers(more))
	assert.Equal(t, 1, strings.Count(read(t, filepath.Join(dir, "hups")), "hup"), "no signal when nothing changed")

	sup.Close()
	assert.Equal(t, "term\n", read(t, filepath.Join(dir, "terms")), "stopped with SIGTERM")
	assert.Equal(t, apps.StateStopped, sup.Status().State)
	assert.ErrorIs(t, syscall.Kill(st.PID, 0), syscall.ESRCH, "the process is gone")
}

func TestCrashIsRestartedWithBackoff(t *testing.T) {
	sup, dir, logs := newApp(t, nil)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "crash-once"), nil, 0o644))
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()
	require.Eventually(t, func() bool { return sup.Status().Restarts == 1 && sup.Status().PID != 0 }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return strings.Count(read(t, filepath.Join(dir, "pids")), "\n") == 2 },
		5*time.Second, 5*time.Millisecond, "started twice")
	assert.Contains(t, logs.String(), "exit status 3")
}

func TestHealthCheck(t *testing.T) {
	okFile := filepath.Join(t.TempDir(), "ok")
	sup, _, _ := newApp(t, func(c *apps.Config) { c.Health.Cmd = []string{"test", "-f", okFile} })
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()
	st := waitState(t, sup, apps.StateUnhealthy)
	assert.Contains(t, st.Reason, "health cmd")
	require.NoError(t, os.WriteFile(okFile, nil, 0o644))
	waitState(t, sup, apps.StateRunning)
}

func TestNotInstalled(t *testing.T) {
	sup, _, _ := newApp(t, func(c *apps.Config) { c.Binary = "" })
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()
	st := waitState(t, sup, apps.StateNotInstalled)
	assert.Contains(t, st.Reason, "not installed")
}

func TestNewerStoredVersionWins(t *testing.T) {
	sup, _, logs := newApp(t, nil)
	v2 := filepath.Join(t.TempDir(), "app-v2.sh")
	require.NoError(t, os.WriteFile(v2, []byte(strings.Replace(script, "hello from the app", "hello from v2", 1)), 0o755))
	require.NoError(t, sup.Versions().Install(v2, "2.0.0", ""))
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()
	st := waitState(t, sup, apps.StateRunning)
	assert.Equal(t, "2.0.0", st.Version)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "hello from v2") }, 5*time.Second, 5*time.Millisecond)
}

// A version installed from a bundle reports the protocol range its manifest
// declares; the configured binary declares none.
func TestStoredBundleReportsItsProtocol(t *testing.T) {
	sup, _, _ := newApp(t, nil)
	tree, err := sup.Versions().TreeDir("2.0.0")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(tree, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(tree, "bin", "kv"), []byte(script), 0o755))
	manifest := `{"name":"kv","version":"2.0.0","os":"linux","arch":"amd64","protocol_min":1,"protocol_max":2,"command":["bin/kv"]}`
	require.NoError(t, os.WriteFile(filepath.Join(tree, artifact.BundleManifestName), []byte(manifest), 0o644))
	require.NoError(t, sup.Versions().InstallTree(tree, "bin/kv", "2.0.0", ""))
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()
	st := waitState(t, sup, apps.StateRunning)
	assert.Equal(t, "2.0.0", st.Version)
	assert.Equal(t, "1-2", st.Protocol)

	// Rolled back to the configured binary: no range.
	require.NoError(t, sup.Versions().Rollback("2.0.0"))
	require.NoError(t, sup.Restart(context.Background()))
	st = waitState(t, sup, apps.StateRunning)
	assert.Equal(t, "1.0.0", st.Version)
	assert.Empty(t, st.Protocol)
}

// TestPortZeroAddressIsReported: an app whose address has port 0 is told
// where to report the address it bound; until it does it is starting, with
// no address to advertise; then its path-only health check goes there.
// Here the test writes the file, playing the app, and serves its health.
func TestPortZeroAddressIsReported(t *testing.T) {
	var probes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			probes.Add(1)
		}
	}))
	defer srv.Close()
	sup, dir, _ := newApp(t, func(c *apps.Config) { c.Address, c.Health.HTTP = "127.0.0.1:0", "/health" })
	addrFile := filepath.Join(dir, "addr")
	require.NoError(t, os.WriteFile(addrFile, []byte("127.0.0.1:1\n"), 0o644)) // a last run's
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()

	require.Eventually(t, func() bool { return strings.TrimSpace(read(t, filepath.Join(dir, "env-addr-file"))) == addrFile },
		5*time.Second, 5*time.Millisecond, "the app is told %s", apps.EnvAddrFile)
	require.Eventually(t, func() bool { return strings.Contains(sup.Status().Reason, "waiting for the app to write") },
		5*time.Second, 5*time.Millisecond)
	st := sup.Status()
	assert.Equal(t, apps.StateStarting, st.State)
	assert.Empty(t, st.Address, "no address until the app reports one (the last run's file is gone)")

	require.NoError(t, os.WriteFile(addrFile, []byte("no port"), 0o644))
	require.Eventually(t, func() bool { return strings.Contains(sup.Status().Reason, "want host:port") }, 5*time.Second, 5*time.Millisecond)

	reported := srv.Listener.Addr().String()
	require.NoError(t, os.WriteFile(addrFile, []byte(reported+"\n"), 0o644))
	st = waitState(t, sup, apps.StateRunning)
	assert.Equal(t, reported, st.Address)
	assert.NotZero(t, probes.Load(), "health was asked at the reported address")

	// A new instance may bind elsewhere: the address is forgotten until it reports.
	require.NoError(t, syscall.Kill(-st.PID, syscall.SIGKILL)) // its process group: the shell and its sleep
	require.Eventually(t, func() bool { s := sup.Status(); return s.Restarts == 1 && s.PID != 0 && s.PID != st.PID }, 10*time.Second, 5*time.Millisecond)
	assert.Empty(t, sup.Status().Address)
	assert.NoFileExists(t, addrFile, "the last instance's address is not taken for the new one's")
}

func TestConfigErrors(t *testing.T) {
	err := apps.Config{Name: "no spaces", Address: "nohost", Health: apps.HealthConfig{HTTP: "ftp://x", Cmd: []string{"true"}},
		Peers: apps.PeersConfig{Signal: "SIGBOGUS"}}.Validate()
	require.Error(t, err)
	for _, want := range []string{"name must be", `address "nohost": want host:port`, "http or cmd, not both", "want an http://", `unknown signal "SIGBOGUS"`} {
		assert.Contains(t, err.Error(), want)
	}
	assert.ErrorContains(t, apps.Config{Name: "kv", Health: apps.HealthConfig{HTTP: "/health"}}.Validate(), "a path on the app's address, but it has none")
	assert.NoError(t, apps.Config{Name: "kv", Address: "127.0.0.1:0", Health: apps.HealthConfig{HTTP: "/health"}}.Validate())
	for _, s := range []string{"HUP", "sighup", "SIGUSR1"} {
		_, err := apps.ParseSignal(s)
		assert.NoError(t, err, s)
	}
	assert.NoError(t, apps.Config{Name: "kv", Address: ":8080"}.Validate())
}
