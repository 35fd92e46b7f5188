package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startFleet starts n v1 agents joined to the first, with extra flags.
func startFleet(t testing.TB, n int, args ...string) []*agent {
	t.Helper()
	return startFleetWith(t, n, nil, args...)
}

// startFleetWith is startFleet with setup run on each agent before it starts.
func startFleetWith(t testing.TB, n int, setup func(*agent), args ...string) []*agent {
	t.Helper()
	return startFleetOf(t, n, bins["v1"], func(_ int, a *agent) {
		if setup != nil {
			setup(a)
		}
	}, args...)
}

// startFleetOf starts n agents n01, n02, ... of binary bin, each after
// setup(i, a) (i from 1; nil: none) may change its flags, the first alone
// and the others joining it, and waits until each sees all of them alive.
func startFleetOf(t testing.TB, n int, bin string, setup func(i int, a *agent), args ...string) []*agent {
	t.Helper()
	var agents []*agent
	for i := 1; i <= n; i++ {
		a := newAgent(t, fmt.Sprintf("n%02d", i), bin, args...)
		if setup != nil {
			setup(i, a)
		}
		if i == 1 {
			a.run()
		} else {
			a.run("--join", agents[0].gossip())
		}
		agents = append(agents, a)
	}
	waitAlive(t, agents, n)
	return agents
}

func pidsOf(agents []*agent) map[string]int {
	out := map[string]int{}
	for _, a := range agents {
		out[a.name] = a.pid()
	}
	return out
}

// TestBadArtifactsRefusedBeforeAnyNodeGoesOffline: agents that trust one
// minisign key refuse, before anything goes offline, an unsigned artifact,
// one signed for another version or platform, one with the wrong digest,
// one signed by another key, and one whose protocol the cluster cannot speak.
func TestBadArtifactsRefusedBeforeAnyNodeGoesOffline(t *testing.T) {
	keys := t.TempDir()
	run := func(args ...string) (string, error) {
		out, err := execOutput(bins["v1"], args...)
		return out, err
	}
	_, err := run("sign", "--generate", filepath.Join(keys, "release"))
	require.NoError(t, err)
	_, err = run("sign", "--generate", filepath.Join(keys, "other"))
	require.NoError(t, err)
	agents := startFleet(t, 3, "--trust-key", filepath.Join(keys, "release.pub"))
	pids := pidsOf(agents)

	// sign copies an artifact into its own dir and signs it as told.
	sign := func(bin, key string, args ...string) (string, string) {
		dir := t.TempDir()
		art := filepath.Join(dir, "peerd")
		copyFile(t, bin, art)
		_, err := run(append(append([]string{"sign", "--key", filepath.Join(keys, key+".key")}, args...), art)...)
		require.NoError(t, err)
		return art, art + ".minisig"
	}
	upgradeTo := func(version, art string, extra ...string) (string, error) {
		stdout, stderr, err := agents[0].cli(append([]string{"upgrade", "--to", version, "--artifact", art, "--batch", "1", "--detach"}, extra...)...)
		return stdout + stderr, err
	}

	goodArt, goodSig := sign(bins["v2"], "release", "--version", "2.0.0")
	otherVersionArt, otherVersionSig := sign(bins["v2"], "release", "--version", "2.0.1")
	armArt, armSig := sign(bins["v2-arm"], "release", "--version", "2.0.0", "--arch", "arm64")
	otherKeyArt, otherKeySig := sign(bins["v2"], "other", "--version", "2.0.0")
	v3Art, v3Sig := sign(bins["v3"], "release", "--version", "3.0.0")

	for _, tc := range []struct {
		name, version, art string
		extra              []string
		want               string
	}{
		{"unsigned", "2.0.0", bins["v2"], nil, "is not signed"},
		{"wrong sha256", "2.0.0", goodArt, []string{"--signature", goodSig, "--sha256", strings.Repeat("0", 64)}, "but --sha256 expects 0000"},
		{"signed for another version", "2.0.0", otherVersionArt, []string{"--signature", otherVersionSig}, `version is "2.0.1", want "2.0.0"`},
		{"signed for another platform", "2.0.0", armArt, []string{"--signature", armSig}, `arch is "arm64", want "amd64"`},
		{"signed by an untrusted key", "2.0.0", otherKeyArt, []string{"--signature", otherKeySig}, "which this agent does not trust"},
		{"signature of other bytes", "2.0.0", bins["v2-bad"], []string{"--signature", goodSig}, "does not match"},
		{"incompatible protocol", "3.0.0", v3Art, []string{"--signature", v3Sig}, "does not include the cluster's active protocol 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := upgradeTo(tc.version, tc.art, tc.extra...)
			require.Error(t, err, out)
			assert.Contains(t, out, tc.want)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(out), "\n")+1, "one line: %q", out)
		})
	}

	// The good artifact passes every check (dry run: nothing changes).
	out, err := upgradeTo("2.0.0", goodArt, "--signature", goodSig, "--dry-run")
	require.NoError(t, err, out)
	assert.Contains(t, out, "minisign signature by a key this agent trusts, over target, version, platform and sha256")
	assert.Contains(t, out, "nothing changed")

	st := rolloutStatus(t, agents[1])
	assert.Equal(t, upgrade.StateNone, st.State, "no plan reached the cluster")
	assert.Equal(t, pids, pidsOf(agents), "no node restarted")
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "1.0.0", info.Build.Version)
	}
}

// TestBadReleaseRollsBackAndHalts: a v2 that fails its own health check is
// rolled back on the first wave's node; the rollout halts with the reason;
// later waves are untouched.
func TestBadReleaseRollsBackAndHalts(t *testing.T) {
	agents := startFleet(t, 4, "--allow-unsigned")
	pids := pidsOf(agents)
	stdout, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2-bad"], "--batch", "1",
		"--min-healthy", "1s", "--deadline", "5s")
	out := stdout + stderr
	require.Error(t, err, "the rollout did not complete, so upgrade exits non-zero:\n%s", out)
	assert.Contains(t, out, "rollout halted")
	assert.Contains(t, out, "peerd upgrade resume")

	var st upgrade.Status
	eventually(t, 30*time.Second, func() error {
		st = statusFrom(t, agents)
		if len(st.Failed) != 1 || !strings.Contains(st.Failed[0].Reason, "bad-release") {
			return fmt.Errorf("status: %+v", st)
		}
		return nil
	})
	assert.Equal(t, upgrade.StateHalted, st.State)
	failed := st.Failed[0].Name
	assert.Equal(t, st.Waves[0].Nodes[0].Name, failed, "the first wave's node failed")
	for _, a := range agents {
		eventually(t, 20*time.Second, func() error {
			info, err := a.info()
			if err == nil && info.Build.Version != "1.0.0" {
				err = fmt.Errorf("%s runs %s", a.name, info.Build.Version)
			}
			return err
		})
		got, err := execOutput(a.bin, "version")
		require.NoError(t, err)
		assert.Contains(t, got, "peerd 1.0.0", "%s's binary is the old one", a.name)
		_, err = os.Lstat(filepath.Join(a.dataDir(), "versions", "current"))
		assert.ErrorIs(t, err, os.ErrNotExist, "%s: nothing newer is current in the version store", a.name)
		if a.name != failed {
			assert.Equal(t, pids[a.name], a.pid(), "%s in a later wave was untouched", a.name)
		}
	}
	// It stays halted: no later wave starts on its own.
	st = statusFrom(t, agents)
	assert.Equal(t, 1, len(st.Failed))
	assert.Equal(t, 0, st.Done)
}

// TestKillDuringUpgrade kills -9 an upgrading node at each step, restarts
// it as a supervisor would, and checks that the rollout completes with at
// most one wave unreachable at any instant.
func TestKillDuringUpgrade(t *testing.T) {
	for _, step := range []upgrade.Phase{upgrade.PhasePrepare, upgrade.PhaseApply, upgrade.PhaseRestart, upgrade.PhaseHealth} {
		t.Run(string(step), func(t *testing.T) {
			agents := startFleetWith(t, 4, func(a *agent) {
				hooks := filepath.Join(a.dir, "hooks")
				require.NoError(t, os.MkdirAll(hooks, 0o755))
				a.env = []string{"PEERD_TEST_HOOK_DIR=" + hooks}
				if step != upgrade.PhaseHealth {
					require.NoError(t, os.WriteFile(filepath.Join(hooks, "pause-"+string(step)), nil, 0o644))
				}
			}, "--allow-unsigned")
			obs := observe(agents)

			_, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "1",
				"--min-healthy", "1s", "--deadline", "1m", "--detach")
			require.NoError(t, err, stderr)

			// Find the node at the step, and kill it there.
			var victim *agent
			eventually(t, 60*time.Second, func() error {
				for _, a := range agents {
					if step == upgrade.PhaseHealth {
						st, err := a.client().RolloutStatus(t.Context())
						if err != nil {
							continue
						}
						for _, w := range st.Waves {
							for _, n := range w.Nodes {
								if n.Phase == upgrade.PhaseHealth {
									victim = byName(agents, n.Name)
									return nil
								}
							}
						}
						continue
					}
					if _, err := os.Stat(filepath.Join(a.dir, "hooks", "at-"+string(step))); err == nil {
						victim = a
						return nil
					}
				}
				return fmt.Errorf("no node reached %s", step)
			})
			victim.signal(syscall.SIGKILL)
			_, err = victim.wait(10 * time.Second)
			require.NoError(t, err)
			for _, a := range agents {
				os.Remove(filepath.Join(a.dir, "hooks", "pause-"+string(step)))
			}
			victim.run() // as a supervisor would; it rejoins from its snapshot

			eventually(t, 90*time.Second, func() error {
				st := statusFrom(t, agents)
				if st.State != upgrade.StateComplete {
					return fmt.Errorf("rollout %s: %d/%d done", st.State, st.Done, st.Total)
				}
				return nil
			})
			samples, _ := obs.finish()
			st := statusFrom(t, agents)
			waveOf := map[string]int{}
			for _, w := range st.Waves {
				for _, n := range w.Nodes {
					waveOf[n.Name] = w.Index
				}
			}
			for _, s := range samples {
				waves := map[int]bool{}
				for _, n := range s.down {
					waves[waveOf[n]] = true
				}
				assert.LessOrEqual(t, len(waves), 1, "at %s unreachable %v span waves", s.at.Format("15:04:05.000"), s.down)
			}
			for _, a := range agents {
				info, err := a.info()
				require.NoError(t, err)
				assert.Equal(t, "2.0.0", info.Build.Version, "%s came back and finished", a.name)
			}
		})
	}
}

// TestJoinAndLeaveMidRollout: a node that joins during the rollout is
// upgraded in a final wave; a node that leaves does not stall it.
func TestJoinAndLeaveMidRollout(t *testing.T) {
	agents := startFleet(t, 5, "--allow-unsigned")
	_, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "1",
		"--min-healthy", "1s", "--deadline", "1m", "--detach")
	require.NoError(t, err, stderr)

	// The leaver: the node of the last wave that is not the origin (an
	// origin that leaves at once could take the plan with it before any
	// peer fetched it).
	st := statusFrom(t, agents)
	var last *agent
	for w := len(st.Waves) - 1; last == nil; w-- {
		if n := st.Waves[w].Nodes[0].Name; n != agents[0].name {
			last = byName(agents, n)
		}
	}
	out, stderr, err := last.cli("leave")
	require.NoError(t, err, stderr)
	assert.Contains(t, out, "left")

	late := newAgent(t, "n06", bins["v1"], "--allow-unsigned")
	var seeds []string
	for _, a := range agents {
		if a != last {
			seeds = append(seeds, "--join", a.gossip()) // any of them may be restarting
		}
	}
	late.run(seeds...)

	eventually(t, 2*time.Minute, func() error {
		st = statusFrom(t, agents)
		lastWave := st.Waves[len(st.Waves)-1]
		if st.State != upgrade.StateComplete || !lastWave.Late {
			return fmt.Errorf("rollout %s: %d/%d done, late wave: %v", st.State, st.Done, st.Total, lastWave.Late)
		}
		return nil
	})
	info, err := late.info()
	require.NoError(t, err)
	assert.Equal(t, "2.0.0", info.Build.Version, "the late joiner was upgraded")
	lastWave := st.Waves[len(st.Waves)-1]
	assert.True(t, lastWave.Late, "late joiners run in a final wave")
	assert.Equal(t, "n06", lastWave.Nodes[0].Name)
	assert.Equal(t, 5, st.Total, "the node that left is not counted")
}

func byName(agents []*agent, name string) *agent {
	for _, a := range agents {
		if a.name == name {
			return a
		}
	}
	return nil
}

// statusFrom reads the rollout status from the first agent that answers
// (any of them may be restarting in its wave).
func statusFrom(t *testing.T, agents []*agent) upgrade.Status {
	t.Helper()
	var st upgrade.Status
	eventually(t, 30*time.Second, func() error {
		var errs []string
		for _, a := range agents {
			got, err := a.client().RolloutStatus(t.Context())
			if err == nil {
				st = got
				return nil
			}
			errs = append(errs, err.Error())
		}
		return fmt.Errorf("no agent answered: %s", strings.Join(errs, "; "))
	})
	return st
}

// TestStoredVersionThatCannotStartIsRolledBack: a stored version that
// passed every check but exits at once (here: a script standing in for a
// broken build) is handed over at most versions.MaxStarts times; then the
// launcher rolls the store back and runs its own version, so a supervisor
// restarting the node brings it back rather than looping.
func TestStoredVersionThatCannotStartIsRolledBack(t *testing.T) {
	a := newAgent(t, "n01", bins["v1"])
	require.NoError(t, os.MkdirAll(a.dataDir(), 0o700))
	broken := filepath.Join(t.TempDir(), "peerd")
	require.NoError(t, os.WriteFile(broken, []byte("#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 1\n"), 0o755))
	store := versions.New(filepath.Join(a.dataDir(), "versions"), "peerd", a.bin)
	require.NoError(t, store.Install(broken, "9.0.0", a.bin))

	for i := 1; i <= versions.MaxStarts; i++ {
		a.start()
		code, err := a.wait(20 * time.Second)
		require.NoError(t, err)
		require.Equal(t, 1, code, "start %d hands over to the broken 9.0.0", i)
	}
	a.run() // the supervisor's next try
	info, err := a.info()
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", info.Build.Version)
	log, err := os.ReadFile(a.logPath)
	require.NoError(t, err)
	assert.Equal(t, versions.MaxStarts, strings.Count(string(log), "broken build: cannot start"))
	assert.Contains(t, string(log), "rolling back to what ran before")
	_, ok, err := store.Current()
	require.NoError(t, err)
	assert.False(t, ok, "nothing newer is current any more")
}

// TestLastWaveFailureRollsBackIntoTheCluster: when the node of the last
// wave fails its health gate, every member ran 2.0.0 for a moment (so the
// active protocol rose to 2); the node must still come back into the
// cluster at 1.0.0, and the rollout halt there.
func TestLastWaveFailureRollsBackIntoTheCluster(t *testing.T) {
	agents := startFleetWith(t, 3, func(a *agent) {
		// Each node's own health check: it fails once the test marks it.
		a.args = append(a.args, "--health-cmd", "test ! -e "+filepath.Join(a.dir, "unhealthy"))
	}, "--allow-unsigned")

	_, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "1",
		"--min-healthy", "1s", "--deadline", "10s", "--detach")
	require.NoError(t, err, stderr)
	st := statusFrom(t, agents)
	lastWave := st.Waves[len(st.Waves)-1]
	require.Len(t, lastWave.Nodes, 1)
	last := byName(agents, lastWave.Nodes[0].Name)
	require.NoError(t, os.WriteFile(filepath.Join(last.dir, "unhealthy"), nil, 0o644))

	// The earlier waves stay upgraded (a node that just restarted into
	// 1.0.0 may report before it has heard of them all again: wait).
	eventually(t, 90*time.Second, func() error {
		st = statusFrom(t, agents)
		if st.State != upgrade.StateHalted || len(st.Failed) != 1 || st.Done != len(agents)-1 {
			return fmt.Errorf("rollout %s: %d/%d done, failed %v", st.State, st.Done, st.Total, st.Failed)
		}
		return nil
	})
	assert.Equal(t, last.name, st.Failed[0].Name)
	// The failed node runs 1.0.0 again, and every member sees it alive.
	eventually(t, 30*time.Second, func() error {
		if last.exited() {
			return fmt.Errorf("%s exited after its rollback", last.name)
		}
		info, err := last.info()
		if err != nil {
			return err
		}
		if info.Build.Version != "1.0.0" {
			return fmt.Errorf("%s runs %s", last.name, info.Build.Version)
		}
		for _, a := range agents {
			ms, err := a.members()
			if err != nil {
				return err
			}
			for _, m := range ms {
				if m.Name == last.name && (m.Status != "alive" || m.Version != "1.0.0") {
					return fmt.Errorf("%s sees %s %s at %s", a.name, m.Name, m.Status, m.Version)
				}
			}
		}
		return nil
	})
	require.False(t, last.exited(), "%s was refused by the cluster after its rollback", last.name)
}
