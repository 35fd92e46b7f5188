package main

// These tests run kv as real processes, built at two releases, on loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// builds are the releases the tests play: name -> -ldflags.
var builds = map[string]string{
	"v1":     "-X main.version=1.0.0 -X main.protocol=1",
	"v2":     "-X main.version=2.0.0 -X main.protocol=2",
	"v2-bad": "-X main.version=2.0.0 -X main.protocol=2 -X main.healthFault=bad-release",
}

// bins holds the binaries TestMain built, by build name.
var bins = map[string]string{}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kv-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		var wg sync.WaitGroup
		errs := make(chan error, len(builds))
		for name, ldflags := range builds {
			out := filepath.Join(dir, name, "kv")
			bins[name] = out
			wg.Go(func() {
				args := []string{"build", "-ldflags", ldflags, "-o", out}
				if raceEnabled {
					args = append(args, "-race")
				}
				b, err := exec.Command("go", append(args, ".")...).CombinedOutput()
				if err != nil {
					errs <- fmt.Errorf("build %s: %v\n%s", name, err, b)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

const waitFor, tick = 10 * time.Second, 20 * time.Millisecond

var client = &http.Client{Timeout: 5 * time.Second}

// instance is one kv process; it keeps its data dir and peers file across
// restarts, as a node being upgraded in place does. It listens on port 0
// and reports the address it bound in addrFile, so each start may get
// another address: the peers files are then rewritten, as peerd does.
type instance struct {
	t         *testing.T
	name      string
	addr      string // the address bound by the running (or last) process
	dir       string
	peersFile string
	addrFile  string
	env       []string

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

func newInstance(t *testing.T, name string) *instance {
	dir := t.TempDir()
	in := &instance{t: t, name: name, dir: dir, peersFile: filepath.Join(dir, "peers.json"), addrFile: filepath.Join(dir, "addr")}
	writePeers(t, in.peersFile)
	t.Cleanup(func() {
		if in.cmd != nil {
			in.cmd.Process.Kill() // by PID; a no-op when it has exited
			<-in.done
		}
		b, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
		assert.NotContains(t, string(b), "DATA RACE", name)
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, b)
		}
	})
	return in
}

// start runs the build and waits until it serves HTTP.
func (in *instance) start(build string) {
	t := in.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(in.dir, "stderr.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer logf.Close()
	// The last run's address is no sign that this one is listening.
	if err := os.Remove(in.addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	in.cmd = exec.Command(bins[build], "--listen", "127.0.0.1:0", "--addr-file", in.addrFile, "--name", in.name,
		"--data-dir", filepath.Join(in.dir, "data"), "--peers-file", in.peersFile,
		"--anti-entropy-interval", "50ms", "--peer-timeout", "1s")
	in.cmd.Env = append(os.Environ(), in.env...)
	in.cmd.Stderr = logf
	require.NoError(t, in.cmd.Start())
	done := make(chan struct{})
	in.done = done
	go func() { in.cmd.Wait(); close(done) }()
	require.Eventually(t, func() bool {
		select {
		case <-done:
			return true
		default:
		}
		b, err := os.ReadFile(in.addrFile)
		if err != nil {
			return false
		}
		in.addr = strings.TrimSpace(string(b))
		resp, err := client.Get(in.url("/version"))
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, waitFor, tick)
	select {
	case <-done:
		t.Fatalf("%s exited at start: %v", in.name, in.cmd.ProcessState)
	default:
	}
}

// stop sends sig and returns the exit code.
func (in *instance) stop(sig syscall.Signal) int {
	in.t.Helper()
	require.NoError(in.t, in.cmd.Process.Signal(sig))
	select {
	case <-in.done:
	case <-time.After(waitFor):
		in.t.Fatalf("%s did not exit after %v", in.name, sig)
	}
	return in.cmd.ProcessState.ExitCode()
}

func (in *instance) url(path string) string { return "http://" + in.addr + path }

func (in *instance) peer() Peer { return Peer{Name: in.name, Addr: in.addr} }

func (in *instance) put(key, value, contentType string) putResult {
	t := in.t
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, in.url("/kv/"+key), strings.NewReader(value))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var res putResult
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
	return res
}

// get returns the value and content type of key, or ok false on 404.
func (in *instance) get(key string) (value, contentType string, ok bool) {
	in.t.Helper()
	resp, err := client.Get(in.url("/kv/" + key))
	require.NoError(in.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(in.t, err)
	if resp.StatusCode == http.StatusNotFound {
		return "", "", false
	}
	require.Equal(in.t, http.StatusOK, resp.StatusCode, string(b))
	return string(b), resp.Header.Get("Content-Type"), true
}

func (in *instance) getJSON(path string, v any) int {
	in.t.Helper()
	resp, err := client.Get(in.url(path))
	require.NoError(in.t, err)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK || resp.Header.Get("Content-Type") == "application/json" {
		require.NoError(in.t, json.NewDecoder(resp.Body).Decode(v))
	}
	return resp.StatusCode
}

func (in *instance) all() map[string]string {
	var m map[string]string
	require.Equal(in.t, http.StatusOK, in.getJSON("/kv", &m))
	return m
}

type health struct {
	Status, Reason, Version string
	Protocol, Peers, Keys   int
}

func (in *instance) health() (health, int) {
	var h health
	code := in.getJSON("/health", &h)
	return h, code
}

// writePeers replaces a peers file atomically, as peerd does.
func writePeers(t *testing.T, path string, peers ...Peer) {
	b, err := json.Marshal(append([]Peer{}, peers...))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+".tmp", b, 0o600))
	require.NoError(t, os.Rename(path+".tmp", path))
}

// cluster starts one instance per build, then tells each of them all.
func cluster(t *testing.T, builds ...string) []*instance {
	ins := make([]*instance, len(builds))
	for i := range builds {
		ins[i] = newInstance(t, fmt.Sprintf("n%d", i))
		ins[i].start(builds[i])
	}
	link(t, ins...)
	return ins
}

// link writes every instance's peers file listing all of them at the
// addresses they bound (itself included, as peerd writes it), sends each
// SIGHUP, and waits until each counts the others.
func link(t *testing.T, ins ...*instance) {
	t.Helper()
	var peers []Peer
	for _, in := range ins {
		peers = append(peers, in.peer())
	}
	for _, in := range ins {
		writePeers(t, in.peersFile, peers...)
		require.NoError(t, in.cmd.Process.Signal(syscall.SIGHUP))
	}
	for _, in := range ins {
		require.Eventually(t, func() bool { h, _ := in.health(); return h.Peers == len(ins)-1 }, waitFor, tick, "%s learns its peers", in.name)
	}
}

func addrs(ins ...*instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.addr)
	}
	return out
}

func TestReplicateToAll(t *testing.T) {
	t.Parallel()
	ins := cluster(t, "v1", "v1", "v1")
	res := ins[0].put("greeting", "hello", "")
	assert.ElementsMatch(t, addrs(ins[1:]...), res.Replicated)
	assert.Empty(t, res.Pending)
	// Replication is synchronous: the write is everywhere once acknowledged.
	for _, in := range ins {
		v, _, ok := in.get("greeting")
		assert.True(t, ok, in.name)
		assert.Equal(t, "hello", v, in.name)
		assert.Equal(t, map[string]string{"greeting": "hello"}, in.all())
		h, code := in.health()
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, health{Status: "ok", Version: "1.0.0", Protocol: 1, Peers: 2, Keys: 1}, h)
	}
	_, _, ok := ins[1].get("missing")
	assert.False(t, ok)
}

func TestMixedVersions(t *testing.T) {
	t.Parallel()
	ins := cluster(t, "v1", "v1", "v2", "v2")
	v1a, v1b, v2a, v2b := ins[0], ins[1], ins[2], ins[3]
	var vi versionInfo
	v2a.getJSON("/version", &vi)
	assert.Equal(t, versionInfo{Version: "2.0.0", Protocol: 2, ProtocolMin: 1}, vi)

	// Written on v1, readable on v2.
	res := v1a.put("old", "from v1", "application/json")
	assert.ElementsMatch(t, addrs(v1b, v2a, v2b), res.Replicated)
	for _, in := range ins {
		v, ct, _ := in.get("old")
		assert.Equal(t, "from v1", v, in.name)
		assert.Equal(t, "text/plain; charset=utf-8", ct, "v1 does not know content types")
	}

	// Written on v2, readable on v1; v2's content type kept between v2 nodes.
	res = v2a.put("new", `{"n":1}`, "application/json")
	assert.ElementsMatch(t, addrs(v1a, v1b, v2b), res.Replicated)
	for _, in := range ins {
		v, ct, _ := in.get("new")
		assert.Equal(t, `{"n":1}`, v, in.name)
		if in == v2a || in == v2b {
			assert.Equal(t, "application/json", ct, in.name)
		} else {
			assert.Equal(t, "text/plain; charset=utf-8", ct, in.name)
		}
	}
	var dump []message
	require.Equal(t, http.StatusOK, v2b.getJSON("/sync/dump?proto=2", &dump))
	require.Len(t, dump, 2)
	assert.Equal(t, &Meta{ContentType: "application/json"}, dump[0].Meta) // "new" sorts first
	assert.Equal(t, http.StatusBadRequest, v1a.getJSON("/sync/dump?proto=2", &dump), "a v1 build never speaks v2")

	// Concurrent writes of one key on both versions: everyone converges.
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Go(func() { in.put("race", fmt.Sprintf("w%d", i), "text/x") })
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		want := ins[0].all()
		for _, in := range ins[1:] {
			if !assert.ObjectsAreEqual(want, in.all()) {
				return false
			}
		}
		return len(want) == 3
	}, waitFor, tick)
}

// TestUpgradeCatchesUp stops a v1 node, writes meanwhile, and brings it back
// as v2 on the same data dir, as one wave of a rolling upgrade does.
func TestUpgradeCatchesUp(t *testing.T) {
	t.Parallel()
	ins := cluster(t, "v1", "v1", "v1")
	a, c := ins[0], ins[2]
	a.put("before", "1", "")
	assert.Equal(t, 0, c.stop(syscall.SIGTERM), "graceful stop exits 0")

	for i := range 5 {
		res := a.put(fmt.Sprintf("during%d", i), "x", "")
		assert.Equal(t, []string{c.addr}, res.Pending)
	}
	c.start("v2")
	link(t, ins...) // c may be back at another port
	v, _, ok := c.get("before")
	assert.True(t, ok, "the upgraded node keeps its data")
	assert.Equal(t, "1", v)
	require.Eventually(t, func() bool { return len(c.all()) == 6 }, waitFor, tick, "anti-entropy brings the missed writes")
	res := c.put("after", "2", "")
	assert.ElementsMatch(t, addrs(ins[:2]...), res.Replicated)
}

// TestDurableAfterSIGKILL has no peers, so only the local log can hold the
// acknowledged writes.
func TestDurableAfterSIGKILL(t *testing.T) {
	t.Parallel()
	in := newInstance(t, "solo")
	in.start("v1")
	for i := range 20 {
		in.put(fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i), "")
	}
	assert.Equal(t, -1, in.stop(syscall.SIGKILL))
	in.start("v1")
	all := in.all()
	require.Len(t, all, 20)
	for i := range 20 {
		assert.Equal(t, fmt.Sprintf("v%d", i), all[fmt.Sprintf("k%d", i)])
	}
	// The same data dir again, after a clean restart on the new release.
	assert.Equal(t, 0, in.stop(syscall.SIGINT))
	in.start("v2")
	assert.Len(t, in.all(), 20)
}

func TestSIGHUPReloadsPeers(t *testing.T) {
	t.Parallel()
	a, b := newInstance(t, "a"), newInstance(t, "b")
	a.start("v1")
	b.start("v2")
	b.put("on-b", "1", "")
	assert.Empty(t, a.put("on-a", "1", "").Replicated, "no peers yet")

	writePeers(t, a.peersFile, a.peer(), b.peer())
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { h, _ := a.health(); return h.Peers == 1 }, waitFor, tick)
	require.Eventually(t, func() bool { _, _, ok := a.get("on-b"); return ok }, waitFor, tick, "a pulls b's data")
	res := a.put("later", "2", "")
	assert.Equal(t, []string{b.addr}, res.Replicated)
	v, _, _ := b.get("later")
	assert.Equal(t, "2", v)

	// A broken file on reload is reported and the old list kept.
	require.NoError(t, os.WriteFile(a.peersFile, []byte("{broken"), 0o600))
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(filepath.Join(a.dir, "stderr.log"))
		return strings.Contains(string(b), "keeping the previous list")
	}, waitFor, tick)
	h, code := a.health()
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, 1, h.Peers)
}

func TestHealthFault(t *testing.T) {
	t.Parallel()
	in := newInstance(t, "bad")
	in.start("v2-bad")
	h, code := in.health()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "bad-release", h.Reason)
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aFile := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(aFile, []byte("x"), 0o600))
	badPeers := filepath.Join(dir, "bad-peers.json")
	require.NoError(t, os.WriteFile(badPeers, []byte(`[{"name":"b"}]`), 0o600))
	dataDir := filepath.Join(dir, "data")
	tests := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		wantErr  string
	}{
		{"no data dir", nil, nil, 2, "--data-dir (or KV_DATA_DIR) is required"},
		{"data dir is a file", []string{"--data-dir", filepath.Join(aFile, "sub")}, nil, 1, "data dir"},
		{"bad KV_PEERS", []string{"--data-dir", dataDir}, []string{"KV_PEERS=[{oops"}, 1, "KV_PEERS: want a JSON array"},
		{"peer without addr", []string{"--data-dir", dataDir, "--peers-file", badPeers}, nil, 1, `addr \"\": want host:port`},
		{"missing peers file", []string{"--data-dir", dataDir, "--peers-file", filepath.Join(dir, "nope")}, nil, 1, "no such file"},
		{"bad listen", []string{"--data-dir", dataDir, "--listen", "localhost"}, nil, 2, "--listen"},
		{"unknown flag", []string{"--nope"}, nil, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			// A later flag wins, so "bad listen" overrides this one.
			args := append([]string{"--listen", "127.0.0.1:0"}, tt.args...)
			cmd := exec.CommandContext(ctx, bins["v1"], args...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "want a non-zero exit, got %v: %s", err, out)
			assert.Equal(t, tt.wantCode, exit.ExitCode(), string(out))
			assert.Contains(t, string(out), tt.wantErr)
			assert.NotContains(t, string(out), "panic")
			assert.NotContains(t, string(out), "goroutine ")
		})
	}
}
