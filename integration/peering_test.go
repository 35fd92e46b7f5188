package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClusterLifecycle runs five real agents at two versions and walks
// through what the foundation promises: convergence, mixed-version peering,
// refusal of an incompatible protocol and of a wrong gossip key, crash and
// rejoin from the snapshot, reload, leave and graceful stop.
func TestClusterLifecycle(t *testing.T) {
	key := keygen(t)

	// sd_notify: node1 reports READY and STATUS to a socket we listen on.
	notifyPath := filepath.Join(t.TempDir(), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	require.NoError(t, err)
	defer notify.Close()

	var agents []*agent
	for i := 1; i <= 5; i++ {
		bin := bins["v1"]
		if i > 3 {
			bin = bins["v2"]
		}
		args := []string{"--encrypt", key}
		if i == 2 {
			cfg := filepath.Join(t.TempDir(), "peerd.hcl")
			require.NoError(t, os.WriteFile(cfg, []byte(`tags = { zone = "a" }`+"\n"), 0o600))
			args = append(args, "--config", cfg)
		}
		a := newAgent(t, fmt.Sprintf("node%d", i), bin, args...)
		if i == 1 {
			a.env = []string{"NOTIFY_SOCKET=" + notifyPath}
			a.run()
		} else {
			a.run("--join", agents[0].gossip)
		}
		agents = append(agents, a)
	}
	waitAlive(t, agents, 5)

	t.Run("systemd notify", func(t *testing.T) {
		got := readNotify(t, notify, "READY=1")
		assert.Contains(t, got, "STATUS=serving:")
		assert.Contains(t, got, fmt.Sprintf("MAINPID=%d", agents[0].pid()))
	})

	t.Run("mixed versions peer", func(t *testing.T) {
		for _, a := range agents {
			ms, err := a.members()
			require.NoError(t, err)
			versions := map[string]int{}
			for _, m := range ms {
				versions[m.Version]++
				h, err := httpHealth(m.HTTPAddr)
				require.NoError(t, err, "peer API of %s", m.Name)
				assert.Equal(t, m.Name, h, "the advertised peer address is the member's own")
			}
			assert.Equal(t, map[string]int{"1.0.0": 3, "2.0.0": 2}, versions, "as seen by %s", a.name)
			info, err := a.info()
			require.NoError(t, err)
			assert.Equal(t, 5, info.Cluster.Size)
			assert.Equal(t, 1, info.Cluster.ActiveProtocol, "v1 members keep the active protocol at 1")
		}
		out, _, err := agents[3].cli("members")
		require.NoError(t, err)
		assert.Contains(t, out, "1.0.0")
		assert.Contains(t, out, "2.0.0")
		assert.Contains(t, out, "zone=a")
	})

	t.Run("incompatible protocol refused", func(t *testing.T) {
		v3 := newAgent(t, "node6", bins["v3"], "--encrypt", key)
		v3.start("--join", agents[0].gossip)
		code, err := v3.wait(30 * time.Second)
		require.NoError(t, err)
		assert.NotEqual(t, 0, code)
		log, _ := os.ReadFile(v3.logPath)
		last := lastLine(string(log))
		assert.Contains(t, last, "peerd: incompatible protocol")
		assert.Contains(t, last, "3-3", "names the joiner's range")
		assert.Contains(t, last, "cluster range 1-1", "names the cluster's range")
		assertNotMember(t, agents, "node6")
	})

	t.Run("wrong gossip key refused", func(t *testing.T) {
		other := newAgent(t, "node7", bins["v1"], "--encrypt", keygen(t))
		other.start("--join", agents[0].gossip)
		code, err := other.wait(30 * time.Second)
		require.NoError(t, err)
		assert.NotEqual(t, 0, code)
		log, _ := os.ReadFile(other.logPath)
		assert.Contains(t, lastLine(string(log)), "gossip key")
		assertNotMember(t, agents, "node7")
	})

	t.Run("kill -9 then rejoin from the snapshot", func(t *testing.T) {
		victim := agents[4]
		victim.signal(syscall.SIGKILL)
		_, err := victim.wait(10 * time.Second)
		require.NoError(t, err)
		eventually(t, 30*time.Second, func() error {
			s, err := agents[0].statusOf(victim.name)
			if err == nil && s != "failed" {
				err = fmt.Errorf("node1 sees %s %s", victim.name, s)
			}
			return err
		})
		victim.run() // no --join: the snapshot in the data dir is enough
		waitAlive(t, agents, 5)
	})

	t.Run("SIGHUP reloads tags", func(t *testing.T) {
		cfg := agents[1].args[len(agents[1].args)-1]
		require.NoError(t, os.WriteFile(cfg, []byte(`tags = { zone = "b" }`+"\n"), 0o600))
		agents[1].signal(syscall.SIGHUP)
		eventually(t, 20*time.Second, func() error {
			ms, err := agents[0].members()
			if err != nil {
				return err
			}
			for _, m := range ms {
				if m.Name == "node2" && m.Tags["zone"] == "b" {
					return nil
				}
			}
			return fmt.Errorf("node2 tags not reloaded: %+v", ms)
		})
	})

	t.Run("peerd leave", func(t *testing.T) {
		out, stderr, err := agents[3].cli("leave")
		require.NoError(t, err, stderr)
		assert.Contains(t, out, "left the cluster")
		code, err := agents[3].wait(15 * time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, code)
		waitStatus(t, agents[0], "node4", "left")
	})

	t.Run("SIGTERM leaves gracefully", func(t *testing.T) {
		agents[2].signal(syscall.SIGTERM)
		code, err := agents[2].wait(10 * time.Second)
		require.NoError(t, err)
		assert.Equal(t, 0, code)
		waitStatus(t, agents[0], "node3", "left")
	})

	t.Run("client without agent", func(t *testing.T) {
		_, stderr, err := agents[2].cli("members")
		require.Error(t, err)
		assert.Contains(t, stderr, "is the agent running?")
	})
}

func keygen(t *testing.T) string {
	out, err := execOutput(bins["v1"], "keygen")
	require.NoError(t, err)
	return strings.TrimSpace(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func waitStatus(t *testing.T, observer *agent, name, want string) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		s, err := observer.statusOf(name)
		if err == nil && s != want {
			err = fmt.Errorf("%s sees %s as %q, want %q", observer.name, name, s, want)
		}
		return err
	})
}

// assertNotMember checks that no agent knows name and all stay alive; it
// looks twice, with a round of gossip between, since a refusal that leaked
// would show up only after gossip.
func assertNotMember(t *testing.T, agents []*agent, name string) {
	t.Helper()
	for range 2 {
		for _, a := range agents {
			if a.exited() {
				continue
			}
			s, err := a.statusOf(name)
			require.NoError(t, err)
			assert.Empty(t, s, "%s must not know %s", a.name, name)
		}
		waitAlive(t, liveAgents(agents), len(liveAgents(agents)))
	}
}

func liveAgents(agents []*agent) []*agent {
	var out []*agent
	for _, a := range agents {
		if !a.exited() {
			out = append(out, a)
		}
	}
	return out
}

func readNotify(t *testing.T, conn *net.UnixConn, want string) string {
	t.Helper()
	var all strings.Builder
	buf := make([]byte, 4096)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		require.NoError(t, conn.SetReadDeadline(deadline))
		n, err := conn.Read(buf)
		require.NoError(t, err, "no %s from the agent; got %q", want, all.String())
		all.Write(buf[:n])
		all.WriteString("\n")
		if strings.Contains(all.String(), want) {
			return all.String()
		}
	}
	t.Fatalf("no %s from the agent; got %q", want, all.String())
	return ""
}
