package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkRollout20 rolls 20 real agents from 1.0.0 to 2.0.0 in waves of 4
// with --min-healthy 1s and reports where the time goes. Run it with
// `make bench`; it makes no timing asserts.
func BenchmarkRollout20(b *testing.B) {
	const nodes, batch = 20, 4
	for range b.N {
		agents := startFleet(b, nodes, "--allow-unsigned", "--log-level", "info")
		obs := observe(agents)
		start := time.Now()
		cmd := exec.Command(agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"],
			"--batch", fmt.Sprint(batch), "--min-healthy", "1s", "--deadline", "2m")
		cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
		out, err := cmd.CombinedOutput()
		total := time.Since(start)
		samples, _ := obs.finish()
		require.NoError(b, err, "%s", out)
		report(b, agents, samples, total)
	}
}

// phaseTimes reads when an agent entered each rollout step from its log.
type phaseTimes struct{ apply, health, done time.Time }

func readPhases(b *testing.B, a *agent) phaseTimes {
	f, err := os.Open(a.logPath)
	require.NoError(b, err)
	defer f.Close()
	var pt phaseTimes
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, strings.Fields(ts)[0])
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(line, `msg="rollout phase"`) && strings.Contains(line, "phase=apply"):
			pt.apply = t
		case strings.Contains(line, "entering the health gate"):
			pt.health = t
		case strings.Contains(line, `msg="rollout phase"`) && strings.Contains(line, "phase=done"):
			pt.done = t
		}
	}
	return pt
}

func report(b *testing.B, agents []*agent, samples []sample, total time.Duration) {
	st := rolloutStatus(b, agents[0])
	phases := map[string]phaseTimes{}
	var offline []time.Duration
	var dwellSum time.Duration
	for _, a := range agents {
		pt := readPhases(b, a)
		phases[a.name] = pt
		offline = append(offline, pt.health.Sub(pt.apply))
		dwellSum += pt.done.Sub(pt.health)
	}
	var overhead []time.Duration
	for w := 1; w < len(st.Waves); w++ {
		var prevDone, nextOff time.Time
		for _, n := range st.Waves[w-1].Nodes {
			if d := phases[n.Name].done; d.After(prevDone) {
				prevDone = d
			}
		}
		for _, n := range st.Waves[w].Nodes {
			if a := phases[n.Name].apply; nextOff.IsZero() || a.Before(nextOff) {
				nextOff = a
			}
		}
		overhead = append(overhead, nextOff.Sub(prevDone))
	}
	most := 0
	for _, s := range samples {
		most = max(most, len(s.down))
	}
	// Who served whom, from the fetch log lines (counters in memory would
	// not survive the nodes' own restarts).
	fromOrigin, fetches := 0, 0
	var peakRSS int64
	for _, a := range agents {
		l, err := os.ReadFile(a.logPath)
		require.NoError(b, err)
		for _, line := range strings.Split(string(l), "\n") {
			if strings.Contains(line, `msg="fetched artifact"`) {
				fetches++
				if strings.Contains(line, " from="+agents[0].name+" ") {
					fromOrigin++
				}
			}
		}
		peakRSS = max(peakRSS, vmHWM(a.pid()))
	}
	size := fileSize(b, bins["v2"])

	b.ReportMetric(total.Seconds(), "rollout-s")
	b.ReportMetric(pct(offline, 95).Seconds()*1000, "offline-p95-ms")
	b.ReportMetric(pct(overhead, 50).Seconds()*1000, "wave-gap-p50-ms")
	b.ReportMetric(float64(fromOrigin), "origin-copies")
	fmt.Printf(`
rollout of %d real agents, batch 4, --min-healthy 1s (%d waves)
  total rollout time (trigger to complete)   %s
  sum of health dwells (all nodes)            %s
  coordination overhead per wave (done -> next wave offline)  p50 %s  p95 %s
  per-node offline window (apply -> new binary in health gate) p50 %s  p95 %s  max %s
  most nodes unreachable at once (observer, 20 ms polls)       %d
  artifact size %d bytes; copies fetched from the origin %d of %d fetches (%.1f MB of origin egress, %.1f MB total)
  peak RSS of an agent (VmHWM)                                 %.1f MiB
`, len(agents), len(st.Waves), total.Round(time.Millisecond), dwellSum.Round(time.Millisecond),
		pct(overhead, 50), pct(overhead, 95), pct(offline, 50), pct(offline, 95), pct(offline, 100),
		most, size, fromOrigin, fetches, float64(int64(fromOrigin)*size)/1e6, float64(int64(fetches)*size)/1e6,
		float64(peakRSS)/1024)
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(time.Millisecond)
}

// vmHWM is a process's peak resident set in KiB.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	return 0
}

func fileSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	require.NoError(b, err)
	return st.Size()
}
