package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// onTmpfs puts the agent's data dir on a tmpfs of its own of size MiB.
// It needs root; the mount goes with the test, pass or fail, after the
// agent is stopped.
func onTmpfs(t *testing.T, a *agent, size int) {
	t.Helper()
	require.NoError(t, os.MkdirAll(a.dataDir(), 0o700))
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0700", size), "tmpfs", a.dataDir()).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		a.kill()
		if out, err := exec.Command("umount", a.dataDir()).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", a.dataDir(), err, out)
			_ = exec.Command("umount", "-l", a.dataDir()).Run()
		}
	})
}

// fill takes the free space of the agent's data dir down to keep bytes
// (0: none at all), in a file fill frees.
func fill(t *testing.T, a *agent, keep int64) {
	t.Helper()
	var st syscall.Statfs_t
	f, err := os.OpenFile(filepath.Join(a.dataDir(), "fill"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer f.Close()
	// The agent writes to its data dir meanwhile: space measured free may
	// be gone by the fallocate (ENOSPC), so measure again and retry.
	for try := 0; ; try++ {
		require.NoError(t, syscall.Statfs(a.dataDir(), &st))
		free := int64(st.Bavail) * st.Bsize
		if free <= keep {
			break
		}
		off, _ := f.Seek(0, 2)
		err := syscall.Fallocate(int(f.Fd()), 0, off, free-keep)
		if err == nil {
			break
		}
		require.True(t, errors.Is(err, syscall.ENOSPC) && try < 20, "fallocate: %v", err)
	}
	if keep == 0 {
		// Whatever fallocate left (metadata rounding), a write takes.
		buf := make([]byte, 4096)
		for {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
	}
	require.NoError(t, syscall.Statfs(a.dataDir(), &st))
	t.Logf("%s: data dir filled, %d bytes free", a.name, int64(st.Bavail)*st.Bsize)
}

func unfill(t *testing.T, a *agent) {
	t.Helper()
	require.NoError(t, os.Remove(filepath.Join(a.dataDir(), "fill")))
}

// TestFullDiskAtEachWrite: three agents, each data dir on a 100 MiB tmpfs
// (an artifact needs about 55 MiB: store, staged and version-store copies).
// One disk is nearly full before the trigger, another is filled while its
// node waits to prepare. Each such node fails in prepare with a clear
// 'not enough free space', before it asks for the lease; 'peerd upgrade
// resume' on a disk with no byte free fails and says it was not recorded;
// once space is freed, resume goes on and the rollout completes. No agent
// ever crashes or restarts outside its own upgrade.
func TestFullDiskAtEachWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	prep := "pause-" + string(upgrade.PhasePrepare)
	agents := startFleetWith(t, 3, func(a *agent) {
		onTmpfs(t, a, 100)
		withHooks(t, prep)(a)
	}, "--allow-unsigned")
	pids := pidsOf(agents)
	before, during := agents[1], agents[2]
	fill(t, before, 1<<20)

	_, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "1",
		"--min-healthy", "1s", "--deadline", "1m", "--detach")
	require.NoError(t, err, stderr)
	st := statusFrom(t, agents)

	full := map[string]bool{}
	for _, w := range st.Waves {
		a := byName(agents, w.Nodes[0].Name)
		eventually(t, 60*time.Second, func() error {
			_, err := os.Stat(filepath.Join(a.dir, "hooks", "at-"+string(upgrade.PhasePrepare)))
			return err
		})
		if a == during {
			fill(t, a, 1<<20)
		}
		setHook(t, a, prep, false)
		if a != before && a != during {
			continue
		}
		// It fails in prepare, for space, before any lease request.
		var reason string
		eventually(t, 30*time.Second, func() error {
			st, err := a.client().RolloutStatus(t.Context())
			if err != nil {
				return err
			}
			for _, f := range st.Failed {
				if f.Name == a.name {
					reason = f.Reason
					return nil
				}
			}
			return fmt.Errorf("%s has not failed: %s", a.name, st.State)
		})
		t.Logf("%s failed: %s", a.name, reason)
		assert.Contains(t, reason, "not enough free space", a.name)
		assert.Contains(t, reason, "peerd upgrade resume", a.name)
		logs := allLogs(t, agents)
		assert.NotContains(t, logs, "requester="+a.name+" ", "%s asked for the lease on a full disk", a.name)

		// Resume on a disk without a byte free: not recorded, so not sent.
		fill(t, a, 0)
		full[a.name] = true
		_, stderr, err := a.cli("upgrade", "resume")
		require.Error(t, err, "resume on a full disk must fail")
		t.Logf("%s: resume on a full disk: %s", a.name, strings.TrimSpace(stderr))
		assert.Contains(t, stderr, "not sent: this node could not record it")
		assert.Equal(t, pids[a.name], a.pid(), "%s did not crash on a full disk", a.name)

		unfill(t, a)
		_, stderr, err = a.cli("upgrade", "resume")
		require.NoError(t, err, "resume once space is free: %s", stderr)
	}
	eventually(t, 90*time.Second, func() error {
		if st := statusFrom(t, agents); st.State != upgrade.StateComplete {
			return fmt.Errorf("rollout %s: %d/%d done", st.State, st.Done, st.Total)
		}
		return nil
	})
	require.Len(t, full, 2, "both filled nodes were seen to fail and resume")
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, a.name)
		assert.Equal(t, pids[a.name], a.pid(), "%s kept its PID", a.name)
		assert.Equal(t, 1, a.starts, a.name)
		log, _ := os.ReadFile(a.logPath)
		assert.NotContains(t, string(log), "panic", a.name)
	}
}
