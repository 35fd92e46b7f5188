package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// observer polls every agent's control socket and peer HTTP API every
// ~20 ms and records who was unreachable when, and any member that some
// node saw failed or left.
type observer struct {
	agents  []*agent
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []sample
	bad     map[string]string // member -> status seen (failed/left)
}

type sample struct {
	at   time.Time
	down []string
}

func observe(agents []*agent) *observer { return observeEvery(agents, 20*time.Millisecond) }

// observeEvery is observe with another pause between rounds of polls.
func observeEvery(agents []*agent, pause time.Duration) *observer {
	o := &observer{agents: agents, stop: make(chan struct{}), done: make(chan struct{}), bad: map[string]string{}}
	go o.loop(pause)
	return o
}

func (o *observer) loop(pause time.Duration) {
	defer close(o.done)
	for tick := 0; ; tick++ {
		select {
		case <-o.stop:
			return
		case <-time.After(pause):
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			down []string
		)
		for _, a := range o.agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Down means refused or silent for 2 s (a slow answer on a
				// loaded machine is still an answer), or a health answer
				// other than 200: offline for its wave. Across a re-exec the
				// sockets stay open, so a restart shows only as the latter.
				_, err1 := a.infoWithin(2 * time.Second)
				_, code, err2 := httpHealthStatus(a.httpAddr())
				if err1 != nil || err2 != nil || code != http.StatusOK {
					mu.Lock()
					down = append(down, a.name)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		sort.Strings(down)
		o.mu.Lock()
		o.samples = append(o.samples, sample{at: time.Now(), down: down})
		o.mu.Unlock()
		if tick%5 != 0 {
			continue
		}
		for _, a := range o.agents {
			if contains(down, a.name) {
				continue
			}
			ms, err := a.members()
			if err != nil {
				continue
			}
			o.mu.Lock()
			for _, m := range ms {
				if m.Status != "alive" {
					o.bad[m.Name] = m.Status + " (seen by " + a.name + ")"
				}
			}
			o.mu.Unlock()
			break
		}
	}
}

func (o *observer) finish() ([]sample, map[string]string) {
	close(o.stop)
	<-o.done
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.samples, o.bad
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type rolloutCase struct {
	nodes      int
	batch      int
	supervisor bool
	patch      bool
}

// TestRollingUpgrade is the heart of peerd: ten real v1 agents, each with
// its own binary, upgraded in place to v2 in waves of three while an
// observer checks that only one wave is ever unreachable.
func TestRollingUpgrade(t *testing.T) {
	for name, tc := range map[string]rolloutCase{
		"reexec":     {nodes: 10, batch: 3},
		"patch":      {nodes: 6, batch: 2, patch: true},
		"supervisor": {nodes: 6, batch: 2, supervisor: true},
	} {
		t.Run(name, func(t *testing.T) { runRollout(t, tc) })
	}
}

func runRollout(t *testing.T, tc rolloutCase) {
	flags := []string{"--allow-unsigned"}
	if tc.supervisor {
		flags = append(flags, "--restart", "supervisor")
	}
	agents := startFleetOf(t, tc.nodes, bins["v1"], func(_ int, a *agent) { a.supervised = tc.supervisor }, flags...)
	pids := pidsOf(agents)

	args := []string{"upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", fmt.Sprint(tc.batch),
		"--min-healthy", "1s", "--deadline", "2m"}
	if tc.patch {
		patch := filepath.Join(t.TempDir(), "v1-v2.patch")
		_, stderr, err := agents[0].cli("mkpatch", bins["v1"], bins["v2"], patch)
		require.NoError(t, err, stderr)
		args = append(args, "--patch", patch, "--patch-from", "1.0.0")
	}

	obs := observe(agents)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agents[0].bin, args...)
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
	out, err := cmd.CombinedOutput()
	samples, bad := obs.finish()
	require.NoError(t, err, "peerd upgrade:\n%s", out)
	assert.Contains(t, string(out), "[####################] ", "live progress reaches the full bar")

	// Every node runs 2.0.0 from its version store, started by its own
	// launcher binary (left as it was), and speaks protocol 2.
	st := rolloutStatus(t, agents[0])
	require.Equal(t, upgrade.StateComplete, st.State)
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, a.name)
		got, err := execOutput(a.bin, "version")
		require.NoError(t, err)
		assert.Contains(t, got, "peerd 1.0.0", "%s's launcher is never written", a.name)
		got, err = execOutput(filepath.Join(a.dataDir(), "versions", "2.0.0", "peerd"), "version")
		require.NoError(t, err)
		assert.Contains(t, got, "peerd 2.0.0", "%s's version store holds 2.0.0", a.name)
		if !tc.supervisor {
			assert.Equal(t, pids[a.name], a.pid(), "%s re-executed in place (same PID)", a.name)
		} else {
			assert.Equal(t, 2, a.starts, "%s was restarted once by its supervisor", a.name)
		}
	}
	eventually(t, 20*time.Second, func() error {
		info, err := agents[0].info()
		if err == nil && info.Cluster.ActiveProtocol != 2 {
			err = fmt.Errorf("active protocol %d", info.Cluster.ActiveProtocol)
		}
		return err
	})

	// At every instant the unreachable nodes belong to one wave, and the
	// waves went offline in the computed order.
	waveOf := map[string]int{}
	for _, w := range st.Waves {
		for _, n := range w.Nodes {
			waveOf[n.Name] = w.Index
		}
	}
	first, last := map[int]time.Time{}, map[int]time.Time{}
	sawDown := 0
	for _, s := range samples {
		waves := map[int]bool{}
		for _, n := range s.down {
			w := waveOf[n]
			waves[w] = true
			if _, ok := first[w]; !ok {
				first[w] = s.at
			}
			last[w] = s.at
		}
		if len(s.down) > 0 {
			sawDown++
		}
		assert.LessOrEqual(t, len(waves), 1, "at %s unreachable %v span waves", s.at.Format("15:04:05.000"), s.down)
	}
	assert.Positive(t, sawDown, "the observer saw nodes restart")
	for w := 1; w < len(st.Waves); w++ {
		if f, ok := first[w]; ok {
			if l, ok := last[w-1]; ok {
				assert.True(t, l.Before(f), "wave %d went offline before wave %d was back", w+1, w)
			}
		}
	}
	assert.Empty(t, bad, "no member was ever marked failed or left")

	// Old and new versions worked together: v2 nodes voted on v1 nodes'
	// leases and served them the artifact; v1 nodes did the same.
	logs := allLogs(t, agents)
	for _, v := range []string{"1.0.0", "2.0.0"} {
		assert.Contains(t, logs, "voter_version="+v+" ", "a %s node answered lease queries", v)
	}
	assert.Contains(t, logs, "granted=true voter_version=2.0.0", "a v2 node granted a lease")
	// Wave 1 fetches from the origin, still at 1.0.0; from the third wave on,
	// nodes fetch from finished (2.0.0) peers first.
	// (A fetch by pieces names every version that served it a piece.)
	assert.Regexp(t, `from_versions?=(\S*,)?1\.0\.0[,\s]`, logs, "a node still at 1.0.0 served the artifact")
	assert.Regexp(t, `from_versions?=(\S*,)?2\.0\.0[,\s]`, logs, "an upgraded node served the artifact")
	if tc.patch {
		assert.Contains(t, logs, "built the new binary from the patch")
	}
	t.Logf("rollout output:\n%s", out)
}

func rolloutStatus(t testing.TB, a *agent) upgrade.Status {
	t.Helper()
	out, stderr, err := a.cli("upgrade", "status", "--json")
	require.NoError(t, err, stderr)
	// The CLI's document (docs/json.md): waves from 1, under "wave".
	var doc struct {
		upgrade.Status
		Waves []struct {
			Wave int `json:"wave"`
			upgrade.WaveStatus
		} `json:"waves"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	st := doc.Status
	st.Waves = nil
	for _, w := range doc.Waves {
		require.Positive(t, w.Wave, "waves are numbered from 1: %s", out)
		w.WaveStatus.Index = w.Wave - 1
		st.Waves = append(st.Waves, w.WaveStatus)
	}
	return st
}

func allLogs(t *testing.T, agents []*agent) string {
	var b strings.Builder
	for _, a := range agents {
		l, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		b.Write(l)
	}
	return b.String()
}
