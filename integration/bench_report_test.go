package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerd/peerd/daemon/agenttest"
	"github.com/stretchr/testify/require"
)

// rollKV starts n agents that each supervise kv on a socket peerd owns,
// puts a client load on them (a writer, and the observer's connections),
// and rolls kv to 2.0.0 in waves of 20 %.
func rollKV(b *testing.B, cfg benchConfig) runResult {
	n, dwell := cfg.kvNodes, cfg.dwell
	nodes := kvFleetWith(b, "k", n, startKVNodeListening)
	var agents []*agent
	for _, kn := range nodes {
		agents = append(agents, kn.agent)
	}
	var hs []*hammer
	for _, kn := range nodes {
		for _, row := range apps(b, kn.agent) {
			if row.Node == kn.name {
				hs = append(hs, startHammer(kn.name, "tcp", row.Address, "/health", cfg.observe))
			}
		}
	}
	require.Len(b, hs, n, "every node advertises kv's address")
	w := startWriter(nodes)
	time.Sleep(200 * time.Millisecond)
	cpuStart, selfStart := fleetCPU(b, agents), selfCPU()
	start := time.Now()
	appCLI(b, nodes[0], "upgrade", "kv", "--to", "2.0.0", "--artifact", bins["kv2"], "--max-unavailable", "20%",
		"--min-healthy", dwell.String(), "--deadline", "2m")
	total := time.Since(start)
	cpuEnd, selfEnd := fleetCPU(b, agents), selfCPU()
	acked := w.finish()
	probes := map[string][]probe{}
	for _, h := range hs {
		probes[h.name] = h.finish()
	}
	r := observed(probes, start, start.Add(total), waveNames(kvStatus(b, nodes[0])), dwell)
	r.nodes, r.total, r.agentCPU, r.observerCPU = n, total, cpuEnd-cpuStart, selfEnd-selfStart
	for _, kn := range nodes {
		if h, err := kn.health(); err == nil && h.Version == "2.0.0" {
			r.complete++
		}
	}
	r.originCopies = peerdOriginCopies(b, agents)
	r.failedLines = failedLines(b, agents)
	r.writes = len(acked)
	return r
}

// fleetCPU is the CPU time of the agents' processes so far (kv, which they
// supervise, is not their child in /proc's sense once it is reaped).
func fleetCPU(b *testing.B, agents []*agent) time.Duration {
	var sum time.Duration
	for _, a := range agents {
		c, err := a.cpu()
		require.NoError(b, err)
		sum += c
	}
	return sum
}

// idleFigures compare idle peerd agents with real serf agents beside them.
type idleFigures struct {
	skip              string
	serfVersion       string
	window            time.Duration
	peerdRSS, serfRSS []int64 // KiB, VmRSS at the end of the window
	peerdCPU, serfCPU []time.Duration
}

// serfModule is the real Serf agent the idle comparison runs.
const serfModule = "github.com/hashicorp/serf/cmd/serf@v0.11.0"

// idleBesideSerf runs three peerd agents (lan gossip profile, Serf's
// defaults) and three `serf agent`s (defaults), each cluster encrypted,
// side by side and idle, and measures each agent over window.
func idleBesideSerf(b *testing.B, window time.Duration) idleFigures {
	fig := idleFigures{window: window}
	serf, err := serfBinary()
	if err != nil {
		fig.skip = err.Error()
		return fig
	}
	if out, err := exec.Command(serf, "version").Output(); err == nil {
		fig.serfVersion = strings.SplitN(string(out), "\n", 2)[0]
	}
	agents := startFleet(b, 3, "--gossip-profile", "lan", "--log-level", "info")
	var serfs []*exec.Cmd
	var first string
	for i := 1; i <= 3; i++ {
		bind, rpc := freeAddr(b), freeAddr(b)
		args := []string{"agent", "-node", fmt.Sprintf("s%d", i), "-bind", bind, "-rpc-addr", rpc,
			"-encrypt", agenttest.GossipKey, "-log-level", "warn"}
		if first != "" {
			args = append(args, "-join", first)
		} else {
			first = bind
		}
		cmd := exec.Command(serf, args...)
		logf, err := os.Create(filepath.Join(b.TempDir(), "serf.log"))
		require.NoError(b, err)
		b.Cleanup(func() { logf.Close() })
		cmd.Stdout, cmd.Stderr = logf, logf
		require.NoError(b, cmd.Start())
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		serfs = append(serfs, cmd)
		eventually(b, 20*time.Second, func() error {
			out, err := exec.Command(serf, "members", "-rpc-addr", rpc, "-status", "alive").Output()
			if got := strings.Count(string(out), "alive"); err != nil || got != i {
				return fmt.Errorf("serf s%d sees %d alive (%v)", i, got, err)
			}
			return nil
		})
	}
	// Past the joins' first rounds of gossip.
	time.Sleep(5 * time.Second)
	cpu := func() (p, s []time.Duration) {
		for _, a := range agents {
			c, err := a.cpu()
			require.NoError(b, err)
			p = append(p, c)
		}
		for _, cmd := range serfs {
			c, err := procCPU(cmd.Process.Pid)
			require.NoError(b, err)
			s = append(s, c)
		}
		return p, s
	}
	p0, s0 := cpu()
	time.Sleep(window)
	p1, s1 := cpu()
	for i := range agents {
		fig.peerdCPU = append(fig.peerdCPU, p1[i]-p0[i])
		fig.peerdRSS = append(fig.peerdRSS, vmKiB(agents[i].pid(), "VmRSS"))
	}
	for i, cmd := range serfs {
		fig.serfCPU = append(fig.serfCPU, s1[i]-s0[i])
		fig.serfRSS = append(fig.serfRSS, vmKiB(cmd.Process.Pid, "VmRSS"))
	}
	return fig
}

// serfBinary is build/tools/serf, installed from the module proxy when it
// is not there yet.
func serfBinary() (string, error) {
	dir, err := filepath.Abs(filepath.Join("..", "build", "tools"))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "serf")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.Command("go", "install", serfModule)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v: %s", serfModule, err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer l.Close()
	return l.Addr().String()
}

// printTable prints one fleet size's side-by-side figures.
func printTable(n int, cfg benchConfig, res map[string][]runResult) {
	fmt.Printf("\n== %d agents: v1 -> v2 in waves of 20 %%, dwell %s; %d runs of each tool, alternating (A B C A B C); observer dials every node every %s ==\n",
		n, cfg.dwell, cfg.runs, cfg.observe)
	var cols []string
	for _, t := range rollTools() {
		if t.skip != "" {
			fmt.Printf("  %s: skipped, %s\n", t.name, t.skip)
			continue
		}
		cols = append(cols, t.name)
	}
	printColumns(cols, res, cfg.dwell)
}

func printKV(cfg benchConfig, rs []runResult) {
	fmt.Printf("\n== managed kv app, %d agents: kv 1.0.0 -> 2.0.0 (sockets peerd owns), waves of 20 %%, dwell %s, under a writer's load and the observer's; %d runs ==\n",
		cfg.kvNodes, cfg.dwell, len(rs))
	printColumns([]string{"kv"}, map[string][]runResult{"kv": rs}, cfg.dwell)
	writes := 0
	for _, r := range rs {
		writes += r.writes
	}
	fmt.Printf("  writes acknowledged during the rollouts: %d\n", writes)
}

// printColumns prints a table of the runs of each column: medians over the
// runs, distributions pooled over every node of every run.
func printColumns(cols []string, res map[string][]runResult, dwell time.Duration) {
	// The physical limit: every wave must go offline, restart and dwell,
	// one after another; the fastest restart seen here stands for the
	// minimal one.
	var offline []time.Duration
	waves := 0
	for _, rs := range res {
		offline = append(offline, pooled(rs, func(r runResult) []time.Duration { return r.offline })...)
		for _, r := range rs {
			waves = max(waves, r.waves)
		}
	}
	minRestart := pct(offline, 0)
	limit := time.Duration(waves) * (dwell + minRestart)
	fmt.Printf("  physical limit = waves x (dwell + minimal restart) = %d x (%s + %s) = %s (minimal restart: the shortest offline window of any node in any run here)\n",
		waves, dwell, minRestart, limit)
	total := func(r runResult) float64 { return r.total.Seconds() }
	peerd, hasPeerd := res["peerd"]
	type row struct {
		name string
		f    func([]runResult) string
	}
	rows := []row{
		{"runs where every node reached 2.0.0", func(rs []runResult) string {
			ok := 0
			for _, r := range rs {
				if r.complete == r.nodes {
					ok++
				}
			}
			return fmt.Sprintf("%d/%d", ok, len(rs))
		}},
		{"total, trigger -> complete (median)", func(rs []runResult) string { return fmt.Sprintf("%.1f s", medianOf(rs, total)) }},
		{"  / physical limit", func(rs []runResult) string { return fmt.Sprintf("%.2f", medianOf(rs, total)/limit.Seconds()) }},
	}
	if hasPeerd {
		rows = append(rows, row{"  peerd's total / this total", func(rs []runResult) string {
			return fmt.Sprintf("%.2f", medianOf(peerd, total)/medianOf(rs, total))
		}})
	}
	rows = append(rows, []row{
		{"  trigger -> first node offline (median)", func(rs []runResult) string {
			return fmt.Sprintf("%.2f s", medianOf(rs, func(r runResult) float64 { return r.firstOff.Seconds() }))
		}},
		{"  last node back -> complete (median)", func(rs []runResult) string {
			return fmt.Sprintf("%.2f s", medianOf(rs, func(r runResult) float64 { return r.lastBack.Seconds() }))
		}},
		{"handoff between waves, p50 / p95", func(rs []runResult) string {
			all := pooled(rs, func(r runResult) []time.Duration { return r.handoffs })
			return fmt.Sprintf("%s / %s", ms(pct(all, 50)), ms(pct(all, 95)))
		}},
		{"refused connections: all / worst node", func(rs []runResult) string {
			all, worst := 0, 0
			for _, r := range rs {
				for _, c := range r.refused {
					all += c
					worst = max(worst, c)
				}
			}
			return fmt.Sprintf("%d / %d", all, worst)
		}},
		{"unreachable per node, p50 / p95 / max", func(rs []runResult) string {
			all := pooled(rs, func(r runResult) []time.Duration { return r.unreachable })
			return fmt.Sprintf("%s / %s / %s", ms(pct(all, 50)), ms(pct(all, 95)), ms(pct(all, 100)))
		}},
		{"offline per node, p50 / max", func(rs []runResult) string {
			all := pooled(rs, func(r runResult) []time.Duration { return r.offline })
			return fmt.Sprintf("%s / %s", ms(pct(all, 50)), ms(pct(all, 100)))
		}},
		{"most nodes offline at once (max)", func(rs []runResult) string {
			return fmt.Sprint(foldRuns(rs, func(r runResult) int { return r.mostOffline }, maxInt))
		}},
		{"origin bytes / artifact size (median)", func(rs []runResult) string {
			return fmt.Sprintf("%.1f", medianOf(rs, func(r runResult) float64 { return r.originCopies }))
		}},
		{"fleet CPU-s: agents + orchestrator", func(rs []runResult) string {
			return fmt.Sprintf("%.1f + %.1f", medianOf(rs, func(r runResult) float64 { return r.agentCPU.Seconds() }),
				medianOf(rs, func(r runResult) float64 { return r.orchCPU.Seconds() }))
		}},
		{"observer's mean interval per node (median)", func(rs []runResult) string {
			return ms(time.Duration(medianOf(rs, func(r runResult) float64 { return float64(r.probeEvery) })))
		}},
		{"observer's CPU-s (median)", func(rs []runResult) string {
			return fmt.Sprintf("%.1f", medianOf(rs, func(r runResult) float64 { return r.observerCPU.Seconds() }))
		}},
		{"dropped after accept (all runs)", func(rs []runResult) string {
			return fmt.Sprint(foldRuns(rs, func(r runResult) int { return r.dropped }, add))
		}},
		{"'member failed' log lines (all runs)", func(rs []runResult) string {
			return fmt.Sprint(foldRuns(rs, func(r runResult) int { return r.failedLines }, add))
		}},
	}...)
	fmt.Printf("  %-44s", "")
	for _, c := range cols {
		fmt.Printf(" %-27s", c)
	}
	fmt.Println()
	for _, row := range rows {
		fmt.Printf("  %-44s", row.name)
		for _, c := range cols {
			cell := "-"
			if rs := res[c]; len(rs) > 0 {
				cell = row.f(rs)
			}
			fmt.Printf(" %-27s", cell)
		}
		fmt.Println()
	}
	for _, c := range cols {
		for _, r := range res[c] {
			if len(r.errs) > 0 {
				fmt.Printf("  %s: dropped connections, e.g. %v\n", c, r.errs)
				break
			}
		}
	}
}

func pooled(rs []runResult, f func(runResult) []time.Duration) []time.Duration {
	var all []time.Duration
	for _, r := range rs {
		all = append(all, f(r)...)
	}
	return all
}

func add(x, y int) int    { return x + y }
func maxInt(x, y int) int { return max(x, y) }

func foldRuns(rs []runResult, f func(runResult) int, fold func(x, y int) int) int {
	acc := 0
	for _, r := range rs {
		acc = fold(acc, f(r))
	}
	return acc
}

func printIdle(fig idleFigures) {
	fmt.Printf("\n== idle agent beside a real serf agent (3 of each, encrypted, LAN timings, idle %s) ==\n", fig.window)
	if fig.skip != "" {
		fmt.Printf("  skipped: %s\n", fig.skip)
		return
	}
	pr, sr := medianInt(fig.peerdRSS), medianInt(fig.serfRSS)
	pc, sc := pct(fig.peerdCPU, 50), pct(fig.serfCPU, 50)
	fmt.Printf("  serf: %s (%s), peerd %s built with %s\n", serfModule, fig.serfVersion, "1.0.0", runtime.Version())
	fmt.Printf("  RSS (VmRSS), median agent        peerd %.1f MiB  serf %.1f MiB  ratio %.2f\n", float64(pr)/1024, float64(sr)/1024, float64(pr)/float64(max(1, sr)))
	fmt.Printf("  CPU over the window, median      peerd %s  serf %s  ratio %.2f\n", pc, sc, pc.Seconds()/max(0.01, sc.Seconds()))
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

func medianOf(rs []runResult, f func(runResult) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func medianInt(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
