package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kvNode is a peerd agent that supervises the example kv application.
type kvNode struct {
	*agent
}

// startKVNode starts an agent whose config declares app "kv": the real
// example store on a port it picks (and reports to peerd), told its peers
// by env, peers file and SIGHUP.
func startKVNode(t testing.TB, name, peerdBin string, join string) *kvNode {
	return startKVNodeWith(t, name, peerdBin, join, bins["kv"], "1.0.0")
}

// startKVNodeWith declares kv with the given binary and version; a binary
// that is only a name ("kv", version "") means not installed yet.
func startKVNodeWith(t testing.TB, name, peerdBin, join, kvBin, kvVersion string, args ...string) *kvNode {
	return startKVAgent(t, name, peerdBin, join, kvApp{bin: kvBin, version: kvVersion}, args...)
}

// kvApp is how a test agent's config declares app "kv".
type kvApp struct {
	bin, version string
	// listen: peerd owns kv's socket (listen = [...]) and passes it by
	// socket activation; otherwise kv binds a port of its own and reports
	// it (address = ...), and is told its peers by env too.
	listen bool
}

// hcl is the app block for the node called name.
func (k kvApp) hcl(name string) string {
	command := fmt.Sprintf(`%q, "--listen", "127.0.0.1:0"`, k.bin)
	socket := `address = "127.0.0.1:0"`
	peersEnv := `env    = "KV_PEERS"` + "\n    "
	if k.listen {
		// kv's --listen is then ignored. --addr-file writes the address kv
		// serves on where kvAddr reads it, though peerd does not need it.
		command += `, "--addr-file", "addr"`
		socket = `listen  = ["tcp://127.0.0.1:0"]`
		peersEnv = ""
	}
	return fmt.Sprintf(`
app "kv" {
  command = [%s, "--name", %q, "--data-dir", "kvdata",
             "--peers-file", "peers.json", "--anti-entropy-interval", "200ms"]
  version = %q
  %s
  health {
    http     = "/health"
    interval = "100ms"
  }
  peers {
    %sfile   = "peers.json"
    signal = "SIGHUP"
  }
}
`, command, name, k.version, socket, peersEnv)
}

// startKVAgent starts an agent at peerdBin whose config declares app.
func startKVAgent(t testing.TB, name, peerdBin, join string, app kvApp, args ...string) *kvNode {
	t.Helper()
	a := newAgent(t, name, peerdBin, append([]string{"--allow-unsigned"}, args...)...)
	cfg := filepath.Join(a.dir, "peerd.hcl")
	require.NoError(t, os.WriteFile(cfg, []byte(app.hcl(name)), 0o644))
	a.args = append(a.args, "--config", cfg)
	n := &kvNode{agent: a}
	// A test that kills the agent with SIGKILL must not leave kv running.
	t.Cleanup(func() {
		if pid := n.kvPID(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if join == "" {
		a.run()
	} else {
		a.run("--join", join)
	}
	return n
}

// kvFleet starts n agents at peerd 1.0.0 (named prefix1...), each
// supervising kv 1.0.0, and waits until every instance knows the others.
func kvFleet(t *testing.T, prefix string, n int) []*kvNode {
	t.Helper()
	return kvFleetWith(t, prefix, n, func(t testing.TB, name, join string) *kvNode {
		return startKVNode(t, name, bins["v1"], join)
	})
}

// kvFleetWith is kvFleet with each node started by start.
func kvFleetWith(t testing.TB, prefix string, n int, start func(t testing.TB, name, join string) *kvNode) []*kvNode {
	t.Helper()
	var nodes []*kvNode
	var agents []*agent
	for i := 1; i <= n; i++ {
		join := ""
		if i > 1 {
			join = nodes[0].gossip()
		}
		nodes = append(nodes, start(t, fmt.Sprintf("%s%d", prefix, i), join))
		agents = append(agents, nodes[i-1].agent)
	}
	waitAlive(t, agents, n)
	waitPeers(t, nodes, n)
	return nodes
}

// kvAddr is where the running kv listens, as it reported to its supervisor
// (apps.EnvAddrFile); "" while it does not run or has not bound yet. Each
// start of kv may get another port.
func (n *kvNode) kvAddr() string {
	b, err := os.ReadFile(filepath.Join(n.dataDir(), "apps", "kv", "addr"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// kvPID is the running kv's PID as its supervisor recorded it.
func (n *kvNode) kvPID() int {
	b, err := os.ReadFile(filepath.Join(n.dataDir(), "apps", "kv", "run.json"))
	if err != nil {
		return 0
	}
	var rec struct {
		PID int `json:"pid"`
	}
	_ = json.Unmarshal(b, &rec)
	if rec.PID > 0 && syscall.Kill(rec.PID, 0) != nil {
		return 0
	}
	return rec.PID
}

type kvHealth struct {
	Status  string `json:"status"`
	Version string `json:"version"`
	Peers   int    `json:"peers"`
}

func (n *kvNode) health() (kvHealth, error) {
	var h kvHealth
	resp, err := http.Get("http://" + n.kvAddr() + "/health")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

func (n *kvNode) put(key, value string) error {
	req, _ := http.NewRequest(http.MethodPut, "http://"+n.kvAddr()+"/kv/"+key, strings.NewReader(value))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("PUT %s: %s: %s", key, resp.Status, b)
	}
	return nil
}

func (n *kvNode) get(key string) (string, error) {
	resp, err := http.Get("http://" + n.kvAddr() + "/kv/" + key)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s on %s: %s", key, n.name, resp.Status)
	}
	return string(b), nil
}

// waitPeers waits until every kv instance was told about want instances
// (itself included; kv counts the others).
func waitPeers(t testing.TB, nodes []*kvNode, want int) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, 30*time.Second, func() error {
			h, err := n.health()
			if err == nil && (h.Peers != want-1 || h.Status != "ok") {
				err = fmt.Errorf("%s's kv: status %s, %d peers, want %d", n.name, h.Status, h.Peers, want-1)
			}
			return err
		})
	}
}

func apps(t testing.TB, a *agent) []api.App {
	t.Helper()
	rows, err := a.client().Apps(context.Background())
	require.NoError(t, err)
	return rows
}

// TestManagedAppLearnsPeersAndOutlivesSelfUpgrade: each agent supervises a
// real kv; every instance learns the others (a write on one is read on all),
// including a node that joins later; then peerd upgrades itself (re-exec in
// place) while kv keeps running with the same PID, and the new peerd image
// still supervises it (a later join reaches it as a peers change).
func TestManagedAppLearnsPeersAndOutlivesSelfUpgrade(t *testing.T) {
	nodes := kvFleet(t, "k", 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	require.NoError(t, n1.put("greeting", "hello"))
	for _, n := range nodes {
		got, err := n.get("greeting")
		require.NoError(t, err)
		assert.Equal(t, "hello", got, "replicated to %s's kv", n.name)
	}
	eventually(t, 10*time.Second, func() error {
		rows := apps(t, n2.agent)
		running := 0
		for _, r := range rows {
			if r.Name == "kv" && r.State == "running" && r.Version == "1.0.0" {
				running++
			}
		}
		if running != 3 {
			return fmt.Errorf("peerd apps: %+v", rows)
		}
		return nil
	})
	out, stderr, err := n2.cli("apps")
	require.NoError(t, err, stderr)
	assert.Regexp(t, `kv\s+k1\s+1\.0\.0\s+-\s+running\s+127\.0\.0\.1:\d+\s+alive`, out)

	// A node joining later: the running instances learn it by file + SIGHUP.
	n4 := startKVNode(t, "k4", bins["v1"], n1.gossip())
	nodes = append(nodes, n4)
	waitPeers(t, nodes, 4)
	require.NoError(t, n4.put("late", "joiner"))
	got, err := n1.get("late")
	require.NoError(t, err)
	assert.Equal(t, "joiner", got)

	// peerd upgrades itself; kv must not notice.
	kvPIDs, peerdPIDs := map[string]int{}, map[string]int{}
	for _, n := range nodes {
		kvPIDs[n.name], peerdPIDs[n.name] = n.kvPID(), n.pid()
		require.NotZero(t, kvPIDs[n.name])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n1.bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "2",
		"--min-healthy", "500ms", "--deadline", "2m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+n1.socket())
	upOut, err := cmd.CombinedOutput()
	require.NoError(t, err, "peerd upgrade:\n%s", upOut)
	for _, n := range nodes {
		info, err := n.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version)
		assert.Equal(t, peerdPIDs[n.name], n.pid(), "%s: peerd re-executed in place", n.name)
		assert.Equal(t, kvPIDs[n.name], n.kvPID(), "%s: kv kept running across peerd's re-exec", n.name)
		log, _ := os.ReadFile(n.logPath)
		assert.Contains(t, string(log), "adopted across peerd's re-exec", n.name)
	}

	// The new images supervise the adopted instances: a join reaches them.
	n5 := startKVNode(t, "k5", bins["v2"], n1.gossip())
	nodes = append(nodes, n5)
	waitPeers(t, nodes, 5)
	require.NoError(t, n5.put("after", "upgrade"))
	for _, n := range nodes {
		got, err := n.get("after")
		require.NoError(t, err)
		assert.Equal(t, "upgrade", got, "%s", n.name)
	}

	// A graceful stop stops kv too.
	pid := n3.kvPID()
	n3.signal(syscall.SIGTERM)
	_, err = n3.wait(20 * time.Second)
	require.NoError(t, err)
	assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "kv stopped with its agent")
}
