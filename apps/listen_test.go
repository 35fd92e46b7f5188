package apps_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/apps"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// listenScript records, per start, its PID, the socket activation
// variables and the socket behind descriptor 3 (its inode names the
// listener), then waits to be stopped.
const listenScript = `#!/bin/sh
dir=$(pwd)
echo "$$ pid=$LISTEN_PID fds=$LISTEN_FDS names=$LISTEN_FDNAMES shim=$PEERD_APP_EXEC addrfile=$PEERD_APP_ADDR_FILE fd3=$(readlink /proc/$$/fd/3) fd4=$(readlink /proc/$$/fd/4)" >> "$dir/starts"
trap 'exit 0' TERM
while :; do sleep 1 & wait $!; done
`

// start is one line of the script's record.
type start struct {
	pid    int
	fields map[string]string
}

func starts(t *testing.T, dir string) []start {
	t.Helper()
	var out []start
	for line := range strings.Lines(read(t, filepath.Join(dir, "starts"))) {
		f := strings.Fields(line)
		s := start{fields: map[string]string{}}
		_, _ = fmt.Sscan(f[0], &s.pid)
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			s.fields[k] = v
		}
		out = append(out, s)
	}
	return out
}

func newListenApp(t *testing.T, dataDir string, mutate func(*apps.Config)) (*apps.Supervisor, string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "app.sh")
	require.NoError(t, os.WriteFile(bin, []byte(listenScript), 0o755))
	cfg := apps.Config{
		Name: "kv", Binary: bin, Version: "1.0.0", Listen: []string{"tcp://127.0.0.1:0"},
		Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		StopTimeout: 5 * time.Second, HealthInterval: 20 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	sup, err := apps.New(cfg, dataDir, nil)
	require.NoError(t, err)
	return sup, filepath.Join(dataDir, "apps", "kv")
}

func waitStarts(t *testing.T, dir string, n int) []start {
	t.Helper()
	require.Eventually(t, func() bool { return len(starts(t, dir)) >= n }, 10*time.Second, 5*time.Millisecond, "want %d starts", n)
	return starts(t, dir)
}

// TestListenersPassedToEachInstance: the instance finds the sockets at
// descriptors 3... with LISTEN_PID its own PID (the shim execs it in its
// place), and a crash and a restart keep the same socket.
func TestListenersPassedToEachInstance(t *testing.T) {
	sup, dir := newListenApp(t, t.TempDir(), func(c *apps.Config) {
		c.Listen = append(c.Listen, "tcp://127.0.0.1:0")
	})
	require.NoError(t, sup.Start(context.Background(), nil))
	defer sup.Close()

	addrs := sup.ListenAddrs()
	require.Len(t, addrs, 2)
	assert.NotEqual(t, addrs[0], addrs[1])
	assert.NotContains(t, addrs[0], ":0", "the bound port is read back")
	st := waitState(t, sup, apps.StateRunning)
	assert.Equal(t, addrs[0], st.Address, "with no address given the first listener's is the app's")

	first := waitStarts(t, dir, 1)[0]
	assert.Equal(t, st.PID, first.pid)
	assert.Equal(t, fmt.Sprint(first.pid), first.fields["pid"], "LISTEN_PID is the instance's own PID")
	assert.Equal(t, "2", first.fields["fds"])
	assert.Equal(t, "kv:kv", first.fields["names"])
	assert.Empty(t, first.fields["shim"], "the shim's trigger is not passed on")
	assert.Empty(t, first.fields["addrfile"], "the address is known: the app is not asked to report one")
	require.True(t, strings.HasPrefix(first.fields["fd3"], "socket:"), "fd 3 is a socket: %q", first.fields["fd3"])
	require.True(t, strings.HasPrefix(first.fields["fd4"], "socket:"), "fd 4 is a socket: %q", first.fields["fd4"])

	// A crash: the next instance gets the very same sockets.
	require.NoError(t, syscall.Kill(-first.pid, syscall.SIGKILL))
	second := waitStarts(t, dir, 2)[1]
	assert.NotEqual(t, first.pid, second.pid)
	assert.Equal(t, fmt.Sprint(second.pid), second.fields["pid"])
	assert.Equal(t, first.fields["fd3"], second.fields["fd3"], "a restart keeps the same listener")
	assert.Equal(t, first.fields["fd4"], second.fields["fd4"])

	// A restart (an upgrade): the same again. This app never accepts, so a
	// client that connects is queued in the backlog, as while no instance
	// runs (the integration test connects across a real upgrade).
	require.NoError(t, sup.Restart(context.Background()))
	third := waitStarts(t, dir, 3)[2]
	assert.Equal(t, first.fields["fd3"], third.fields["fd3"])
	assert.Equal(t, addrs, sup.ListenAddrs())
	c, err := net.DialTimeout("tcp", addrs[0], 2*time.Second)
	require.NoError(t, err, "the listener accepts into its backlog whether or not the app accepts")
	c.Close()

	sup.Close()
	// The script's last `sleep 1` inherited the socket and may hold it
	// for up to a second after the script exited.
	assert.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addrs[0], time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 5*time.Second, 10*time.Millisecond, "Close closes the listeners")
}

// TestListenersOutliveReExec: a detached supervisor hands its listeners to
// the next one (as across peerd's re-exec), which passes the same sockets
// to the instance it starts after adopting the running one.
func TestListenersOutliveReExec(t *testing.T) {
	data := t.TempDir()
	old, dir := newListenApp(t, data, nil)
	require.NoError(t, old.Start(context.Background(), nil))
	first := waitStarts(t, dir, 1)[0]
	addr := old.ListenAddrs()[0]
	h := old.Detach()
	require.NotNil(t, h)
	require.Len(t, h.Listeners, 1)
	assert.Equal(t, first.pid, h.PID)
	old.Close() // stops nothing: detached

	next, _ := newListenApp(t, data, nil)
	require.NoError(t, next.Start(context.Background(), reExec(t, h)))
	defer next.Close()
	assert.Equal(t, []string{addr}, next.ListenAddrs(), "the handed-over socket, not a new one on another port")
	assert.Equal(t, first.pid, waitState(t, next, apps.StateRunning).PID, "the instance was adopted, not restarted")

	require.NoError(t, next.Restart(context.Background()))
	second := waitStarts(t, dir, 2)[1]
	assert.Equal(t, first.fields["fd3"], second.fields["fd3"], "the new image's instance gets the same listener")
	assert.Equal(t, fmt.Sprint(second.pid), second.fields["pid"])
}

// reExec does to a hand-over's descriptors what exec does: the next image
// holds them, and the old image's files are gone. In one test process the
// old supervisor's files outlive the hand-over, and their finalizers would
// close the descriptors the next supervisor adopted, whose numbers other
// files then reuse: a close that fails with "bad file descriptor" in
// another test, an output reader that never sees EOF (seen with two make
// test at once). So the next supervisor gets duplicates, and the old
// descriptors are close-on-exec again, as the old files left them.
func reExec(t *testing.T, h *apps.Handover) *apps.Handover {
	t.Helper()
	dup := func(fd int) int {
		n, err := syscall.Dup(fd)
		require.NoError(t, err)
		syscall.CloseOnExec(fd)
		syscall.CloseOnExec(n) // as the next image marks what it was handed (AppHandoversFromEnv)
		return n
	}
	next := *h
	if h.PID != 0 {
		next.FD = dup(h.FD)
	}
	next.Listeners = nil
	for _, fd := range h.Listeners {
		next.Listeners = append(next.Listeners, dup(fd))
	}
	return &next
}

// A listener that cannot be bound fails Start, naming the app and the value.
func TestListenBindFails(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	sup, _ := newListenApp(t, t.TempDir(), func(c *apps.Config) { c.Listen = []string{"tcp://127.0.0.1:0", "tcp://" + taken.Addr().String()} })
	err = sup.Start(context.Background(), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "app kv: listen tcp://"+taken.Addr().String())
	sup.Close()
}

func TestListenConfigErrors(t *testing.T) {
	err := apps.Config{Name: "kv", Listen: []string{"udp://127.0.0.1:53", "127.0.0.1:80", "tcp://nohost", "tcp://127.0.0.1:99999", "tcp://example.com:80"}}.Validate()
	require.Error(t, err)
	for _, want := range []string{
		`app "kv": listen "udp://127.0.0.1:53": scheme "udp": want tcp://HOST:PORT`,
		`app "kv": listen "127.0.0.1:80": want tcp://HOST:PORT`,
		`app "kv": listen "tcp://nohost": "nohost": want HOST:PORT`,
		`app "kv": listen "tcp://127.0.0.1:99999": port "99999"`,
		`app "kv": listen "tcp://example.com:80": host "example.com": want an IP address`,
	} {
		assert.Contains(t, err.Error(), want)
	}
	assert.NoError(t, apps.Config{Name: "kv", Listen: []string{"tcp://:0", "tcp4://0.0.0.0:8080", "tcp6://[::1]:8080"}, Health: apps.HealthConfig{HTTP: "/health"}}.Validate(),
		"a path-only health check goes to the first listener's address")
}
