package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkRollout20 rolls 20 real agents from 1.0.0 to 2.0.0 in waves of 4
// with --min-healthy 1s and reports where the time and the CPU go. Run it
// with `make bench`; it makes no timing asserts.
func BenchmarkRollout20(b *testing.B) {
	benchRollout(b, 20, nil, "--batch", "4")
}

// BenchmarkRollout100 is the same with 100 agents in waves of 20 %, with
// the gossip profile for many agents on one host: the size at which the
// rollout used to starve a two-core machine (false failure detections, a
// first wave that never got its lease).
func BenchmarkRollout100(b *testing.B) {
	benchRollout(b, 100, []string{"--gossip-profile", "local-large"}, "--max-unavailable", "20%")
}

// benchRollout starts a fleet of v1 agents with extra agent flags,
// measures it idle for a while, then rolls it to v2 with the given wave
// options.
func benchRollout(b *testing.B, nodes int, agentArgs []string, waves ...string) {
	for range b.N {
		agents := startFleet(b, nodes, append([]string{"--allow-unsigned", "--log-level", "info"}, agentArgs...)...)
		// The fleet's cost when nothing happens (gossip, probes, the
		// engines' resyncs), for comparison with a rollout's.
		idleStart, _ := fleetCPU(b, agents)
		time.Sleep(idleWindow)
		idleEnd, _ := fleetCPU(b, agents)

		obs := observeEvery(agents, observerPause)
		selfStart := selfCPU()
		cpuStart, pidsStart := fleetCPU(b, agents)
		start := time.Now()
		// A bound, so that a stalled rollout fails the run instead of
		// holding it until the test binary's timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		cmd := exec.CommandContext(ctx, agents[0].bin, append([]string{"upgrade", "--to", "2.0.0", "--artifact", bins["v2"],
			"--min-healthy", "1s", "--deadline", "2m"}, waves...)...)
		cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
		out, err := cmd.CombinedOutput()
		cancel()
		total := time.Since(start)
		cpuEnd, pidsEnd := fleetCPU(b, agents)
		selfUsed := selfCPU() - selfStart
		samples, bad := obs.finish()
		require.NoError(b, err, "%s", out)
		report(b, agents, samples, total, strings.Join(waves, " "), cpuFigures{
			rollout: cpuEnd - cpuStart, idle: idleEnd - idleStart,
			observer: selfUsed, cli: processCPU(cmd.ProcessState),
			pids: len(pidsStart) + len(pidsEnd) - len(intersect(pidsStart, pidsEnd)),
		}, bad)
	}
}

// idleWindow is how long the idle fleet is measured.
const idleWindow = 10 * time.Second

// observerPause is the pause between the observer's rounds of polls (the
// rollout tests use 20 ms). Its polls are answered by the agents, so they
// count in the fleet's CPU: at 20 ms, in perf, 9% of a 100-agent
// rollout's. Every offline window lasts well over 100 ms.
const observerPause = 100 * time.Millisecond

// cpuFigures is what a rollout cost in CPU time.
type cpuFigures struct {
	rollout  time.Duration // every agent process, trigger to complete
	idle     time.Duration // the same fleet over idleWindow before the trigger
	observer time.Duration // this test process (the observer's polls) during the rollout
	cli      time.Duration // the `peerd upgrade` client
	pids     int           // distinct agent PIDs seen at the trigger and at the end
}

// fleetCPU is the CPU time every agent's processes used so far, and their
// PIDs now.
func fleetCPU(b *testing.B, agents []*agent) (time.Duration, map[int]bool) {
	var sum time.Duration
	pids := map[int]bool{}
	for _, a := range agents {
		c, err := a.cpu()
		require.NoError(b, err)
		sum += c
		pids[a.pid()] = true
	}
	return sum, pids
}

func intersect(x, y map[int]bool) map[int]bool {
	out := map[int]bool{}
	for k := range x {
		if y[k] {
			out[k] = true
		}
	}
	return out
}

// selfCPU is this process's CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func processCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}

// failedLines counts the "member failed" lines in every agent's log (all
// of its processes append to it): who declared whom failed. A node that
// restarts into its new binary is never gone long enough to be declared
// failed, so every one of these is a false failure detection.
func failedLines(b *testing.B, agents []*agent) (int, map[string]int) {
	n, about := 0, map[string]int{}
	for _, a := range agents {
		l, err := os.ReadFile(a.logPath)
		require.NoError(b, err)
		for _, line := range strings.Split(string(l), "\n") {
			if !strings.Contains(line, `msg="member failed"`) {
				continue
			}
			n++
			if _, rest, ok := strings.Cut(line, " member="); ok {
				about[strings.Fields(rest)[0]]++
			}
		}
	}
	return n, about
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

func report(b *testing.B, agents []*agent, samples []sample, total time.Duration, waves string, cpu cpuFigures, bad map[string]string) {
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
	// A node that did not answer outside its own offline window (apply to
	// health gate) was up but too slow for the observer's 2 s bound: a
	// starved machine, not an outage. A sample is taken when its polls
	// end, up to 2 s after they began; a second more of slack.
	most, mostSlow := 0, 0
	for _, s := range samples {
		most = max(most, len(s.down))
		slow := 0
		for _, n := range s.down {
			pt := phases[n]
			if pt.apply.IsZero() || s.at.Before(pt.apply) || s.at.Add(-3*time.Second).After(pt.health) {
				slow++
			}
		}
		mostSlow = max(mostSlow, slow)
	}
	// Who served whom, from the fetch log lines (counters in memory would
	// not survive the nodes' own restarts).
	fromOrigin, fetches := 0, 0
	var originPieceBytes int64
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
				// A fetch by pieces says what it took from the origin.
				if m := originBytesRe.FindStringSubmatch(line); m != nil {
					n, _ := strconv.ParseInt(m[1], 10, 64)
					originPieceBytes += n
				}
			}
		}
		peakRSS = max(peakRSS, vmHWM(a.pid()))
	}
	size := fileSize(b, bins["v2"])
	originCopies := float64(fromOrigin) + float64(originPieceBytes)/float64(max(size, 1))
	failed, failedAbout := failedLines(b, agents)

	b.ReportMetric(total.Seconds(), "rollout-s")
	b.ReportMetric(pct(offline, 95).Seconds()*1000, "offline-p95-ms")
	b.ReportMetric(pct(overhead, 50).Seconds()*1000, "wave-gap-p50-ms")
	b.ReportMetric(originCopies, "origin-copies")
	b.ReportMetric(cpu.rollout.Seconds(), "fleet-cpu-s")
	b.ReportMetric(float64(failed), "member-failed-lines")
	fmt.Printf(`
rollout of %d real agents, %s, --min-healthy 1s (%d waves), agent flags %v
  total rollout time (trigger to complete)   %s
  sum of health dwells (all nodes)            %s
  coordination overhead per wave (done -> next wave offline)  p50 %s  p95 %s
  per-node offline window (apply -> new binary in health gate) p50 %s  p95 %s  max %s
  most nodes unreachable at once (observer, polls %s apart)  %d (at most %d outside their own offline window: up, slower than 2 s)
  artifact size %d bytes; copies fetched from the origin %.2f over %d fetches (%.1f MB of origin egress, %.1f MB total)
  peak RSS of an agent (VmHWM)                                 %.1f MiB
  fleet CPU, trigger to complete (all agent processes, %d PIDs)  %.1f s  (%.2f cores on average; %.2f CPU-s per node)
  fleet CPU when idle, same fleet, before the trigger          %.2f cores (%.1f s over %s)
  observer and test process / upgrade client, during the rollout  %.1f s / %.1f s
  "member failed" lines in the agents' logs (false failure detections)  %d %v
  members the observer saw not alive                           %d %v
`, len(agents), waves, len(st.Waves), agents[0].args, total.Round(time.Millisecond), dwellSum.Round(time.Millisecond),
		pct(overhead, 50), pct(overhead, 95), pct(offline, 50), pct(offline, 95), pct(offline, 100),
		observerPause, most, mostSlow, size, originCopies, fetches, originCopies*float64(size)/1e6, float64(int64(fetches)*size)/1e6,
		float64(peakRSS)/1024,
		cpu.pids, cpu.rollout.Seconds(), cpu.rollout.Seconds()/total.Seconds(), cpu.rollout.Seconds()/float64(len(agents)),
		cpu.idle.Seconds()/idleWindow.Seconds(), cpu.idle.Seconds(), idleWindow,
		cpu.observer.Seconds(), cpu.cli.Seconds(),
		failed, failedAbout, len(bad), bad)
}

// originBytesRe reads what a fetch by pieces took from the origin.
var originBytesRe = regexp.MustCompile(` origin_bytes=(\d+)`)

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

// fileSize is the size of the file at path, 0 if there is none.
func fileSize(t testing.TB, path string) int64 {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	require.NoError(t, err)
	return st.Size()
}
