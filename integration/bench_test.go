package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkSideBySide rolls the same fleet of real agents from 1.0.0 to
// 2.0.0 with peerd, with an Ansible playbook (`serial: "20%"`) and with a
// naive batch script, alternating runs (A B C A B C), in waves of 20 % with
// a dwell of 1 s; then a managed kv app under client load; then an idle
// agent beside a real `serf agent`. It prints one table per fleet size and
// makes no timing asserts. BENCH_N (sizes, "20,100"), BENCH_RUNS (runs of
// each tool, 2), BENCH_TOOLS (a subset of "peerd,ansible,naive"),
// BENCH_KV_N (kv fleet, 20; 0 leaves it out), BENCH_IDLE (the idle
// comparison, 30s; 0 leaves it out) make a quick run possible;
// BENCH_OBSERVE (20ms) is how often the observer dials every node.
func BenchmarkSideBySide(b *testing.B) {
	cfg := benchConfigFromEnv(b)
	// The scripts start agents that outlive the shells that started them;
	// they are reparented to this process, which reaps them by PID when it
	// stops them (this machine's PID 1 reaps nothing).
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		b.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	for range b.N {
		for _, n := range cfg.sizes {
			results := map[string][]runResult{}
			for run := 1; run <= cfg.runs; run++ {
				for _, tool := range rollTools() {
					if tool.skip != "" {
						continue
					}
					b.Run(fmt.Sprintf("N=%d/%s/%d", n, tool.name, run), func(b *testing.B) {
						r := rollFleet(b, tool, n, cfg)
						results[tool.name] = append(results[tool.name], r)
						b.ReportMetric(r.total.Seconds(), "total-s")
					})
				}
			}
			printTable(n, cfg, results)
		}
		if cfg.kvNodes > 0 {
			var kv []runResult
			for run := 1; run <= cfg.runs; run++ {
				b.Run(fmt.Sprintf("kv/N=%d/%d", cfg.kvNodes, run), func(b *testing.B) {
					kv = append(kv, rollKV(b, cfg))
				})
			}
			printKV(cfg, kv)
		}
		if cfg.idle > 0 {
			b.Run("idle-beside-serf", func(b *testing.B) { printIdle(idleBesideSerf(b, cfg.idle)) })
		}
	}
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from linux/prctl.h.
const prSetChildSubreaper = 36

type benchConfig struct {
	sizes   []int
	runs    int
	kvNodes int
	dwell   time.Duration
	idle    time.Duration
	// observe is how often the outside observer dials every node.
	observe time.Duration
}

func benchConfigFromEnv(b *testing.B) benchConfig {
	cfg := benchConfig{sizes: []int{20, 100}, runs: 2, kvNodes: 20, dwell: time.Second, idle: 30 * time.Second, observe: 20 * time.Millisecond}
	var errs []error
	if s := os.Getenv("BENCH_N"); s != "" {
		cfg.sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 5 {
				errs = append(errs, fmt.Errorf("BENCH_N=%q: want sizes of at least 5, separated by commas", s))
				break
			}
			cfg.sizes = append(cfg.sizes, n)
		}
	}
	for name, v := range map[string]struct {
		dst   *int
		least int
	}{"BENCH_RUNS": {&cfg.runs, 1}, "BENCH_KV_N": {&cfg.kvNodes, 0}} {
		if s := os.Getenv(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < v.least {
				errs = append(errs, fmt.Errorf("%s=%q: want a whole number of at least %d", name, s, v.least))
			}
			*v.dst = n
		}
	}
	if s := os.Getenv("BENCH_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if s == "0" {
			d, err = 0, nil
		} else if err != nil || d < time.Second {
			errs = append(errs, fmt.Errorf("BENCH_IDLE=%q: want a duration of at least 1s, or 0", s))
		}
		cfg.idle = d
	}
	if s := os.Getenv("BENCH_OBSERVE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Millisecond {
			errs = append(errs, fmt.Errorf("BENCH_OBSERVE=%q: want a duration of at least 1ms", s))
		}
		cfg.observe = d
	}
	require.NoError(b, errors.Join(errs...))
	return cfg
}

// benchArgs are the fleet's agent flags at size n: the gossip profile for
// many agents on one host from 50 on (the harness's `fast` below).
func benchArgs(n int) []string {
	args := []string{"--allow-unsigned", "--log-level", "info"}
	if n >= 50 {
		args = append(args, "--gossip-profile", "local-large")
	}
	return args
}

// runResult is what one rollout of one fleet measured.
type runResult struct {
	nodes, complete int           // fleet size; nodes at 2.0.0 after it
	total           time.Duration // trigger to complete
	waves           int
	handoffs        []time.Duration // per wave after the first: its first node offline - the wave before's last back - dwell
	refused         []int           // per node: connections refused
	unreachable     []time.Duration // per node: the longest time without any HTTP answer
	offline         []time.Duration // per node: last healthy answer at v1 to the first at v2
	mostOffline     int             // most nodes offline at one instant
	firstOff        time.Duration   // trigger to the first node offline
	lastBack        time.Duration   // the last node back to complete
	originCopies    float64         // artifact bytes from the origin / artifact size
	agentCPU        time.Duration   // every agent process, trigger to complete
	orchCPU         time.Duration   // the orchestrator's processes (CLI, ansible-playbook, bash)
	observerCPU     time.Duration   // this process: the observer's probes, mostly
	probeEvery      time.Duration   // the observer's mean interval between a node's probes
	failedLines     int             // "member failed" log lines: false failure detections
	errs            []string        // dropped connections (accepted, then no answer), a few
	dropped         int
	writes          int // kv: writes acknowledged during the rollout
}

// rollFleet starts a fresh v1 fleet of n agents, has the tool roll it to
// v2 with every node's peer HTTP port observed from outside, and measures.
func rollFleet(b *testing.B, tool rollTool, n int, cfg benchConfig) runResult {
	agents := startFleet(b, n, benchArgs(n)...)
	f := newBenchFleet(b, agents, cfg.dwell)
	hs := make([]*hammer, len(agents))
	for i, a := range agents {
		hs[i] = startHammer(a.name, "tcp", a.httpAddr(), "/v1/health", cfg.observe)
	}
	// Every node answers the observer before the trigger.
	time.Sleep(200 * time.Millisecond)
	cpuStart, selfStart := f.cpu(), selfCPU()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	orch, out, err := tool.roll(ctx, f)
	total := time.Since(start)
	cpuEnd, selfEnd := f.cpu(), selfCPU()
	probes := map[string][]probe{}
	for _, h := range hs {
		probes[h.name] = h.finish()
	}
	require.NoError(b, err, "%s:\n%s", tool.name, tail(out, 40))

	r := observed(probes, start, start.Add(total), f.waves(tool), cfg.dwell)
	r.nodes, r.total, r.agentCPU, r.orchCPU, r.observerCPU = n, total, cpuEnd-cpuStart, orch, selfEnd-selfStart
	for _, a := range agents {
		if h, _, err := peerHealth(a.httpAddr()); err == nil && h.Version == "2.0.0" {
			r.complete++
		}
	}
	if tool.name == "peerd" {
		r.originCopies = peerdOriginCopies(b, agents)
	} else {
		// Every host copies the artifact from the control machine.
		r.originCopies = float64(n)
	}
	r.failedLines = failedLines(b, agents)
	return r
}

// observed sums up the observer's probes of every node from trigger to
// complete, with the waves the nodes went offline in.
func observed(probes map[string][]probe, from, to time.Time, waves [][]string, dwell time.Duration) runResult {
	r := runResult{waves: len(waves)}
	attempts := 0
	spans := map[string]offSpan{}
	var edges []offEdge
	names := make([]string, 0, len(probes))
	for name := range probes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ps := probes[name]
		s := statsOf(ps, from, to)
		attempts += s.attempts
		r.refused = append(r.refused, s.refused)
		r.unreachable = append(r.unreachable, s.noAnswer)
		r.dropped += s.other
		if len(r.errs) < 3 {
			r.errs = append(r.errs, s.errs...)
		}
		if sp, ok := offlineSpan(ps, from, to, "2.0.0"); ok {
			spans[name] = sp
			r.offline = append(r.offline, sp.back.Sub(sp.off))
			edges = append(edges, offEdge{sp.off, 1}, offEdge{sp.back, -1})
		}
	}
	if attempts > 0 {
		r.probeEvery = to.Sub(from) * time.Duration(len(probes)) / time.Duration(attempts)
	}
	if len(edges) > 0 {
		first, last := edges[0].at, edges[0].at
		for _, e := range edges {
			if e.at.Before(first) {
				first = e.at
			}
			if e.at.After(last) {
				last = e.at
			}
		}
		r.firstOff, r.lastBack = first.Sub(from), to.Sub(last)
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].d < edges[j].d
		}
		return edges[i].at.Before(edges[j].at)
	})
	for now, i := 0, 0; i < len(edges); i++ {
		now += edges[i].d
		r.mostOffline = max(r.mostOffline, now)
	}
	for w := 1; w < len(waves); w++ {
		var back, off time.Time
		for _, n := range waves[w-1] {
			if s, ok := spans[n]; ok && s.back.After(back) {
				back = s.back
			}
		}
		for _, n := range waves[w] {
			if s, ok := spans[n]; ok && (off.IsZero() || s.off.Before(off)) {
				off = s.off
			}
		}
		if !back.IsZero() && !off.IsZero() {
			r.handoffs = append(r.handoffs, off.Sub(back)-dwell)
		}
	}
	return r
}

// offSpan is when a node last answered healthy at the old version and
// when it first answered healthy at the new one.
type offSpan struct{ off, back time.Time }

type offEdge struct {
	at time.Time
	d  int
}

// offlineSpan is a node's offline span between from and to: from the end
// of its last healthy answer at the old version, before any answer that
// was not a 200 or came from the new version, to the end of the first
// healthy answer at the new version after the last one that was not a 200.
// A restart the kernel's backlog hides (the probe waits, then the new
// version answers 200) counts from the old version's last answer.
func offlineSpan(ps []probe, from, to time.Time, version string) (offSpan, bool) {
	healthy := func(p probe) bool { return p.err == nil && p.status == http.StatusOK }
	var s offSpan
	change, lastBad := -1, -1
	for i, p := range ps {
		if p.start.Before(from) || p.start.After(to) {
			continue
		}
		if change < 0 && healthy(p) && p.version != version {
			s.off = p.end
		}
		if !healthy(p) || p.version == version {
			if change < 0 {
				change = i
			}
			if !healthy(p) {
				lastBad = i
			}
		}
	}
	if change < 0 {
		return offSpan{}, false
	}
	if s.off.IsZero() {
		s.off = ps[change].start
	}
	for _, p := range ps[max(change, lastBad+1):] {
		if healthy(p) && p.version == version {
			s.back = p.end
			break
		}
	}
	if s.back.IsZero() {
		s.back = ps[max(change, lastBad)].end
	}
	return s, true
}

// peerdOriginCopies is how many copies of the artifact the origin (the
// first agent, which the CLI handed the file) served, from the fetch log
// lines: counters in memory do not survive the nodes' own restarts. A
// whole-blob fetch from the origin is one copy; a fetch by pieces says
// how many bytes it took from the origin (origin_bytes).
func peerdOriginCopies(b *testing.B, agents []*agent) float64 {
	n, pieceBytes := 0, int64(0)
	for _, a := range agents {
		l, err := os.ReadFile(a.logPath)
		require.NoError(b, err)
		for _, line := range strings.Split(string(l), "\n") {
			if !strings.Contains(line, `msg="fetched artifact"`) {
				continue
			}
			if strings.Contains(line, " from="+agents[0].name+" ") {
				n++
			}
			if m := originBytesRe.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseInt(m[1], 10, 64)
				pieceBytes += v
			}
		}
	}
	return float64(n) + float64(pieceBytes)/float64(max(fileSize(b, bins["v2"]), 1))
}

// originBytesRe reads what a fetch by pieces took from the origin.
var originBytesRe = regexp.MustCompile(` origin_bytes=(\d+)`)

// failedLines counts the "member failed" lines in every agent's log (all
// of its processes append to it). A node that restarts is never gone long
// enough to be declared failed, so every one is a false failure detection.
func failedLines(b *testing.B, agents []*agent) int {
	n := 0
	for _, a := range agents {
		l, err := os.ReadFile(a.logPath)
		require.NoError(b, err)
		n += strings.Count(string(l), `msg="member failed"`)
	}
	return n
}

// benchFleet is a running fleet as the scripts see it: per node a PID
// file, a start and a stop script in its directory.
type benchFleet struct {
	b      *testing.B
	dir    string
	agents []*agent
	dwell  time.Duration
	// batches are 20 % of the inventory each, in its order, as Ansible's
	// serial: "20%" cuts them.
	batches [][]*agent
}

func newBenchFleet(b *testing.B, agents []*agent, dwell time.Duration) *benchFleet {
	f := &benchFleet{b: b, dir: b.TempDir(), agents: agents, dwell: dwell}
	size := max(1, len(agents)*20/100)
	for i := 0; i < len(agents); i += size {
		f.batches = append(f.batches, agents[i:min(len(agents), i+size)])
	}
	for i, a := range agents {
		// A restarted agent joins a node of the batch before or after its
		// own: one of them is up (a graceful leave forgets the peers).
		var join []string
		for _, j := range []int{i - size, i + size} {
			if j >= 0 && j < len(agents) {
				join = append(join, "--join", agents[j].gossip())
			}
		}
		argv := slices.Concat([]string{a.bin}, a.argv(join...))
		start := fmt.Sprintf("#!/bin/sh\n# Start the agent in the background, detached, and record its PID.\ncd %s || exit 1\nsetsid %s >>%s 2>&1 </dev/null &\necho $! >%s\n",
			shellQuote(a.dir), shellJoin(argv), shellQuote(a.logPath), shellQuote(a.pidFile()))
		// A stopped agent that nobody reaps stays a zombie: gone for us.
		stop := fmt.Sprintf("#!/bin/sh\n# Stop the agent by its PID file and wait until it has exited.\npid=$(cat %s) || exit 1\nkill \"$pid\" 2>/dev/null\n"+
			"while [ -e /proc/$pid ] && [ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do sleep 0.05; done\n", shellQuote(a.pidFile()))
		require.NoError(b, os.WriteFile(filepath.Join(a.dir, "start.sh"), []byte(start), 0o755))
		require.NoError(b, os.WriteFile(filepath.Join(a.dir, "stop.sh"), []byte(stop), 0o755))
		require.NoError(b, os.WriteFile(a.pidFile(), []byte(strconv.Itoa(a.pid())+"\n"), 0o644))
		// Registered after the agent's own cleanup, so run before it
		// removes the PID file: stop what the scripts started.
		b.Cleanup(func() { stopScripted(a) })
	}
	return f
}

func (a *agent) pidFile() string { return filepath.Join(a.dir, "agent.pid") }

// scriptedPID is the PID of the agent process a script started, 0 if the
// PID file still names the harness's own.
func (a *agent) scriptedPID() int {
	b, err := os.ReadFile(a.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid == a.pid() {
		return 0
	}
	return pid
}

// stopScripted kills and reaps the agent a script started, if it is this
// process's child (reparented to it): a PID of some other process is left.
func stopScripted(a *agent) {
	pid := a.scriptedPID()
	if pid == 0 || parentOf(pid) != os.Getpid() {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, 0, nil)
}

func parentOf(pid int) int {
	f, err := procStat(pid)
	if err != nil || len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// cpu is the CPU time of every agent process so far: the harness's, and
// those the scripts started.
func (f *benchFleet) cpu() time.Duration {
	var sum time.Duration
	for _, a := range f.agents {
		c, err := a.cpu()
		require.NoError(f.b, err)
		sum += c
		if pid := a.scriptedPID(); pid != 0 {
			if c, err := procCPU(pid); err == nil {
				sum += c
			}
		}
	}
	return sum
}

// waves are the node names per wave: peerd's plan, or the scripts' batches.
func (f *benchFleet) waves(tool rollTool) [][]string {
	if tool.name == "peerd" {
		return waveNames(rolloutStatus(f.b, f.agents[0]))
	}
	var out [][]string
	for _, batch := range f.batches {
		var names []string
		for _, a := range batch {
			names = append(names, a.name)
		}
		out = append(out, names)
	}
	return out
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// pct is the p-th percentile of ds, rounded to the millisecond.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))].Round(time.Millisecond)
}

// vmKiB is a field of a process's /proc status in KiB (VmRSS, VmHWM).
func vmKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	return 0
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
