// Package integration runs real peerd binaries, built from this tree at
// several versions with `make build`, as separate processes on loopback.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/require"
)

// bins holds the binaries TestMain built, by name.
var bins = map[string]string{}

// builds are the versions the tests need: name -> make variables.
// v1 is built with the testhooks tag: the kill tests pause it at a step.
var builds = map[string][]string{
	"v1":     {"VERSION=1.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=1", "TAGS=testhooks"},
	"v2":     {"VERSION=2.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=2"},
	"v3":     {"VERSION=3.0.0", "PROTOCOL_MIN=3", "PROTOCOL_MAX=3"},
	"v2-bad": {"VERSION=2.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=2", "HEALTH_FAULT=bad-release"},
	"v2-arm": {"VERSION=2.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=2", "GOARCH=arm64"},
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "peerd-bins")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		var wg sync.WaitGroup
		errs := make(chan error, len(builds)+3)
		for name, vars := range builds {
			out := filepath.Join(dir, name, "peerd")
			bins[name] = out
			wg.Add(1)
			go func() {
				defer wg.Done()
				args := append([]string{"-s", "-C", "..", "build", "OUT=" + out}, vars...)
				if b, err := exec.Command("make", args...).CombinedOutput(); err != nil {
					errs <- fmt.Errorf("make %v: %v\n%s", args, err, b)
				}
			}()
		}
		// The example application that managed-app tests supervise and
		// roll out: v1 (wire 1), v2 (wire 1-2), and a v2 whose health fails.
		for name, ldflags := range map[string]string{
			"kv":     "-X main.version=1.0.0",
			"kv2":    "-X main.version=2.0.0",
			"kv2bad": "-X main.version=2.0.0 -X main.healthFault=bad-release",
		} {
			out := filepath.Join(dir, name, "kv")
			bins[name] = out
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, "./contrib/examples/kv")
				cmd.Dir = ".."
				if b, err := cmd.CombinedOutput(); err != nil {
					errs <- fmt.Errorf("build %s: %v\n%s", name, err, b)
				}
			}()
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

// agent is one peerd agent process. It binds port 0 for gossip and HTTP
// and reads back the ports it got; a restart in the same data dir gets the
// same ones back (the agent tries its last ports first), as a node keeps
// its address.
type agent struct {
	t    testing.TB
	name string
	dir  string // holds the binary copy, data dir and log
	bin  string
	args []string // extra agent flags
	env  []string
	// host is the address the agent binds gossip and HTTP on (port 0):
	// loopback unless the test gave it a network namespace of its own.
	host string
	// netns is that namespace: the agent and every client command the test
	// runs against it start inside it (ip netns exec), so nothing of theirs
	// reaches an address from the root namespace.
	netns   string
	logPath string
	// supervised agents are started again when they exit with 75 (the
	// agent's request to be restarted into a new binary), as systemd would.
	supervised bool
	starts     int

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	code  int
	addrs api.Addrs // what the agent reported once ready (run)
	cl    *api.Client
	// exitedCPU is the CPU time of this agent's processes that have
	// exited (a supervised restart starts a new one), with their waited
	// children; cpu adds the running process's.
	exitedCPU time.Duration
	running   bool
}

// newAgent prepares an agent with its own copy of the binary; start runs it.
func newAgent(t testing.TB, name, binary string, args ...string) *agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "pd-"+name+"-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bin", "peerd")
	require.NoError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
	copyFile(t, binary, bin)
	a := &agent{
		t: t, name: name, dir: dir, bin: bin,
		args:    args,
		logPath: filepath.Join(dir, "agent.log"),
	}
	t.Cleanup(func() {
		a.kill()
		if dir := os.Getenv("PEERD_TEST_LOG_DIR"); dir != "" {
			b, _ := os.ReadFile(a.logPath)
			_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+a.name+".log"), b, 0o644)
		}
		if t.Failed() {
			// The agent's own lines apart from a managed app's output,
			// which can crowd out the rollout's in the tail.
			b, _ := os.ReadFile(a.logPath)
			var own, app []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "component=app ") && strings.Contains(l, "stream=") {
					app = append(app, l)
				} else {
					own = append(own, l)
				}
			}
			t.Logf("---- log of %s ----\n%s", a.name, tail(strings.Join(own, "\n"), 60))
			if len(app) > 0 {
				t.Logf("---- its app output ----\n%s", tail(strings.Join(app, "\n"), 10))
			}
		}
	})
	return a
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func copyFile(t testing.TB, from, to string) {
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o755))
}

func (a *agent) socket() string  { return filepath.Join(a.dir, "data", "peerd.sock") }
func (a *agent) dataDir() string { return filepath.Join(a.dir, "data") }

// argv is the agent command's arguments: the harness's, the agent's own
// flags, then extra.
func (a *agent) argv(extra ...string) []string {
	host := a.host
	if host == "" {
		host = "127.0.0.1"
	}
	args := append([]string{"agent", "--node", a.name, "--bind", host + ":0", "--http-addr", host + ":0",
		"--data-dir", a.dataDir(), "--gossip-profile", "fast", "--log-level", "debug"}, a.args...)
	args = append(args, extra...)
	if !slices.ContainsFunc(args, func(s string) bool {
		return s == "--encrypt" || s == "--keyring-file" || s == "--insecure-gossip"
	}) {
		args = append(args, "--encrypt", agenttest.GossipKey)
	}
	return args
}

// start runs the agent; it returns once the process is running (not ready).
func (a *agent) start(extra ...string) {
	a.t.Helper()
	args := a.argv(extra...)
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(a.t, err)
	cmd := a.command(args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), a.env...)
	require.NoError(a.t, cmd.Start())
	done := make(chan struct{})
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.running = true
	a.starts++
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		a.mu.Lock()
		a.code = code
		a.running = false
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			// wait4 reports the process's own usage and that of the
			// children it waited for, as procCPU reads a live one's.
			a.exitedCPU += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		restart := a.supervised && code == 75
		a.mu.Unlock()
		if restart {
			a.start(extra...)
		}
		close(done)
	}()
}

// run starts the agent and waits until it is ready: its addresses file
// names this process (the file of an earlier run may still be there), and
// its control API answers.
func (a *agent) run(extra ...string) {
	a.t.Helper()
	a.start(extra...)
	eventually(a.t, 20*time.Second, func() error {
		if a.exited() {
			return fmt.Errorf("%s exited with %d", a.name, a.exitCode())
		}
		addrs, err := api.ReadAddrs(a.dataDir())
		if err != nil {
			return err
		}
		if addrs.PID != a.pid() {
			return fmt.Errorf("%s: the addresses file is pid %d's, not yet this run's (%d)", a.name, addrs.PID, a.pid())
		}
		if _, err := a.info(); err != nil {
			return err
		}
		a.mu.Lock()
		a.addrs = addrs
		a.mu.Unlock()
		return nil
	})
}

// gossip is the address to join the agent at, as it reported at its last run.
func (a *agent) gossip() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.addrs.GossipAdvertise
}

// httpAddr is the agent's peer HTTP address, as it reported at its last run.
func (a *agent) httpAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.addrs.HTTP
}

func (a *agent) exited() bool {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	select {
	case <-done:
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.done == done // a supervised restart has not replaced it
	default:
		return false
	}
}

func (a *agent) exitCode() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.code
}

func (a *agent) pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd.Process.Pid
}

// wait waits for the process to exit and returns its exit code.
func (a *agent) wait(timeout time.Duration) (int, error) {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	select {
	case <-done:
		return a.exitCode(), nil
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s did not exit within %s", a.name, timeout)
	}
}

func (a *agent) signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(sig)
	}
}

// kill stops the process by PID with SIGKILL and waits for it.
func (a *agent) kill() {
	if a.cmd == nil || a.exited() {
		return
	}
	a.signal(syscall.SIGKILL)
	_, _ = a.wait(10 * time.Second)
}

// client is the agent's control API client, one per agent: each client has
// its own pool of connections, and a client made per call left its idle
// connection open (an observer polling every 20 ms ran out of descriptors).
func (a *agent) client() *api.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cl == nil {
		a.cl = api.NewClient(a.socket())
	}
	return a.cl
}

func (a *agent) members() ([]api.Member, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.client().Members(ctx, "")
}

func (a *agent) info() (api.Info, error) { return a.infoWithin(5 * time.Second) }

func (a *agent) infoWithin(d time.Duration) (api.Info, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return a.client().Info(ctx)
}

// statusOf is the status a sees for member name ("" if unknown).
func (a *agent) statusOf(name string) (string, error) {
	ms, err := a.members()
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Status, nil
		}
	}
	return "", nil
}

// command is the agent's binary run with args, inside its network
// namespace if it has one (ip netns exec execs in place: the PID is the
// agent's).
func (a *agent) command(args ...string) *exec.Cmd {
	if a.netns != "" {
		return exec.Command("ip", append([]string{"netns", "exec", a.netns, a.bin}, args...)...)
	}
	return exec.Command(a.bin, args...)
}

// cli runs a peerd client command against this agent's socket.
func (a *agent) cli(args ...string) (string, string, error) {
	cmd := a.command(args...)
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+a.socket())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// eventually polls f until it returns nil or the timeout passes, then fails
// the test with f's last error.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// aliveCount counts the members a sees alive.
func aliveCount(a *agent) (int, error) {
	ms, err := a.members()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range ms {
		if m.Status == "alive" {
			n++
		}
	}
	return n, nil
}

func waitAlive(t testing.TB, agents []*agent, want int) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		for _, a := range agents {
			n, err := aliveCount(a)
			if err != nil {
				return err
			}
			if n != want {
				return fmt.Errorf("%s sees %d alive, want %d", a.name, n, want)
			}
		}
		return nil
	})
}

func execOutput(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).Output()
	return string(out), err
}

// httpHealth asks a peer HTTP address for its node name.
func httpHealth(addr string) (string, error) {
	name, _, err := httpHealthStatus(addr)
	return name, err
}

// httpHealthStatus is httpHealth with the answer's status: 503 while the
// node is offline for its rollout wave (or not serving gossip).
func httpHealthStatus(addr string) (string, int, error) {
	h, code, err := peerHealth(addr)
	return h.Node, code, err
}

// peerHealth is a peer HTTP address's /v1/health answer and its status.
func peerHealth(addr string) (api.Health, int, error) {
	var h api.Health
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/v1/health")
	if err != nil {
		return h, 0, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&h)
	return h, resp.StatusCode, err
}

// cpu is the CPU time (user and system, with waited children) that every
// process of this agent has used so far: the exited ones' and the running
// one's. A re-exec in place keeps the PID and its counters, so it needs
// nothing more.
func (a *agent) cpu() (time.Duration, error) {
	for try := 0; ; try++ {
		a.mu.Lock()
		running, pid, exited := a.running, 0, a.exitedCPU
		if running {
			pid = a.cmd.Process.Pid
		}
		a.mu.Unlock()
		if !running {
			return exited, nil
		}
		live, err := procCPU(pid)
		if err == nil {
			return exited + live, nil
		}
		// Reaped a moment ago, and the wait goroutine has not accounted
		// the exit yet: it will within a few milliseconds.
		if try == 50 {
			return 0, fmt.Errorf("cpu of %s: %w", a.name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture (it is part of the ABI, whatever the kernel's HZ).
const clockTick = 10 * time.Millisecond

// procCPU reads utime+stime+cutime+cstime of a live process from
// /proc/PID/stat: its own time and that of the children it waited for (the
// preflight runs the new binary as a child).
func procCPU(pid int) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 15 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:15] { // utime, stime, cutime, cstime: fields 14-17
		var n int64
		if _, err := fmt.Sscan(s, &n); err != nil {
			return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// procStat is a live process's /proc/PID/stat from field 3 (state) on:
// the command name (field 2) may hold spaces, so fields count from after
// its closing parenthesis.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// readIfExists reads a file, or nothing where there is none.
func readIfExists(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// fileSize is the size of the file at path, 0 if there is none.
func fileSize(t testing.TB, path string) int64 {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	require.NoError(t, err)
	return st.Size()
}
