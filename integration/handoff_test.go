package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// probe is one attempt of the hammer: a fresh connection, one request.
type probe struct {
	start, end time.Time
	status     int    // HTTP status; 0 when there was no answer
	version    string // the answer's "version" field (peerd's health, kv's), if any
	err        error  // nil when answered
}

// hammer asks one address (a peer HTTP host:port, or a unix socket path)
// for path over a fresh connection every pause, one attempt at
// a time, and records each: a refused connection returns at once, one
// that waits in the kernel's backlog returns when the agent answers it.
type hammer struct {
	name   string
	stop   chan struct{}
	done   chan struct{}
	probes []probe
}

func startHammer(name, network, addr, path string, pause time.Duration) *hammer {
	h := &hammer{name: name, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			select {
			case <-h.stop:
				return
			case <-time.After(pause):
			}
			h.probes = append(h.probes, probeOnce(network, addr, path))
		}
	}()
	return h
}

// probeOnce asks addr for path on a fresh connection, by hand rather than
// with an http.Client: the bench runs a hundred of these every 20 ms on two
// cores, and a client's transport costs goroutines and allocations per
// connection. A connection in the backlog waits up to 20 s for the next
// image to answer it.
func probeOnce(network, addr, path string) probe {
	p := probe{start: time.Now()}
	conn, err := net.DialTimeout(network, addr, 20*time.Second)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: peerd\r\nConnection: close\r\n\r\n")
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
		}
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			p.status = resp.StatusCode
			var v struct {
				Version string `json:"version"`
			}
			if json.Unmarshal(body, &v) == nil {
				p.version = v.Version
			}
		}
		conn.Close()
	}
	p.end, p.err = time.Now(), err
	return p
}

func (h *hammer) finish() []probe {
	close(h.stop)
	<-h.done
	return h.probes
}

// hammerStats sums up a hammer's record.
type hammerStats struct {
	attempts, answered, refused, other int
	errs                               []string
	// noAnswer is the longest time without any HTTP answer (a refused or
	// failed attempt, or one that waited): from the end of one answer to
	// the end of the next. notOK is the same between 200 answers.
	noAnswer, notOK time.Duration
}

func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

func statsOf(ps []probe, from, to time.Time) hammerStats {
	var s hammerStats
	var lastAnswer, lastOK time.Time
	for _, p := range ps {
		if p.start.Before(from) || p.start.After(to) {
			continue
		}
		s.attempts++
		switch {
		case p.err == nil:
			s.answered++
			if !lastAnswer.IsZero() {
				s.noAnswer = max(s.noAnswer, p.end.Sub(lastAnswer))
			}
			lastAnswer = p.end
			if p.status == http.StatusOK {
				if !lastOK.IsZero() {
					s.notOK = max(s.notOK, p.end.Sub(lastOK))
				}
				lastOK = p.end
			}
		case refused(p.err):
			s.refused++
		default:
			s.other++
			if len(s.errs) < 5 {
				s.errs = append(s.errs, p.err.Error())
			}
		}
	}
	return s
}

// handoffRun is one self-upgrade of a 3-node fleet with every node's peer
// HTTP port and control socket hammered from outside.
type handoffRun struct {
	http, control map[string]hammerStats
	pidSame       map[string]bool
	version       map[string]string
	failedSeen    []string // "member failed" lines in any agent's log
	suspects      int
}

func runHandoff(t *testing.T, v1, v2 string) handoffRun {
	agents := startFleetOf(t, 3, v1, nil, "--allow-unsigned")
	pids := pidsOf(agents)
	var hs, cs []*hammer
	for _, a := range agents {
		hs = append(hs, startHammer(a.name, "tcp", a.httpAddr(), "/v1/health", 3*time.Millisecond))
		cs = append(cs, startHammer(a.name, "unix", a.socket(), "/v1/info", 3*time.Millisecond))
	}
	from := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", v2, "--batch", "1",
		"--min-healthy", "1s", "--deadline", "2m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
	out, err := cmd.CombinedOutput()
	to := time.Now()
	r := handoffRun{http: map[string]hammerStats{}, control: map[string]hammerStats{}, pidSame: map[string]bool{}, version: map[string]string{}}
	for i, a := range agents {
		r.http[a.name] = statsOf(hs[i].finish(), from, to)
		r.control[a.name] = statsOf(cs[i].finish(), from, to)
	}
	require.NoError(t, err, "peerd upgrade:\n%s", out)
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		r.version[a.name] = info.Build.Version
		r.pidSame[a.name] = a.pid() == pids[a.name]
	}
	for _, a := range agents {
		b, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `msg="member failed"`) {
				r.failedSeen = append(r.failedSeen, a.name+": "+line)
			}
			if strings.Contains(line, "memberlist: Suspect ") {
				r.suspects++
			}
		}
	}
	return r
}

// TestSelfUpgradeRefusesNoConnection: while each node of a fleet
// re-execs into its new version, a client connecting to its peer HTTP
// port or its control socket every few milliseconds is never refused (it
// waits in the kernel's backlog for the next image, which serves on the
// sockets the old one handed over), and no peer ever sees the node fail.
func TestSelfUpgradeRefusesNoConnection(t *testing.T) {
	r := runHandoff(t, bins["v1"], bins["v2"])
	for _, name := range []string{"n01", "n02", "n03"} {
		assert.Equal(t, "2.0.0", r.version[name], "%s upgraded", name)
		assert.True(t, r.pidSame[name], "%s re-executed in place (same PID)", name)
		for kind, s := range map[string]hammerStats{"peer HTTP": r.http[name], "control socket": r.control[name]} {
			t.Logf("%s %s: %d attempts, %d answered, %d refused, %d other errors %v; longest without an answer %s, without a 200 %s",
				name, kind, s.attempts, s.answered, s.refused, s.other, s.errs, s.noAnswer.Round(time.Millisecond), s.notOK.Round(time.Millisecond))
			assert.Positive(t, s.attempts, "%s %s was hammered", name, kind)
			assert.Zero(t, s.refused, "%s %s refused no connection", name, kind)
			// Not asserted: about one connection in ten thousand is still
			// dropped (EOF or reset) by the old image (see the report on
			// branch handoff); none is refused.
			if s.other > 0 {
				t.Logf("%s %s: %d connections dropped after they were accepted: %v", name, kind, s.other, s.errs)
			}
		}
	}
	assert.Empty(t, r.failedSeen, "no peer saw a node fail during its restart")
	t.Logf("suspect lines in the logs: %d", r.suspects)
}

// TestUnreachableWindowSideBySide measures the per-node windows of this
// tree against the tree at PEERD_BASELINE_SRC (e.g. a checkout of main),
// alternating runs, A B A B. It only measures, and only when asked.
func TestUnreachableWindowSideBySide(t *testing.T) {
	src := os.Getenv("PEERD_BASELINE_SRC")
	if src == "" {
		t.Skip("set PEERD_BASELINE_SRC to a peerd source tree to compare with")
	}
	dir := t.TempDir()
	base := map[string]string{}
	for name, vars := range map[string][]string{
		"v1": {"VERSION=1.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=1"},
		"v2": {"VERSION=2.0.0", "PROTOCOL_MIN=1", "PROTOCOL_MAX=2"},
	} {
		base[name] = dir + "/" + name + "/peerd"
		b, err := exec.Command("make", append([]string{"-s", "-C", src, "build", "OUT=" + base[name]}, vars...)...).CombinedOutput()
		require.NoError(t, err, "%s", b)
	}
	type row struct {
		refused, attempts int
		noAnswer, notOK   []time.Duration
		failed            int
	}
	rows := map[string]*row{"baseline": {}, "this tree": {}}
	var mu sync.Mutex
	for i := range 4 {
		which, v1, v2 := "this tree", bins["v1"], bins["v2"]
		if i%2 == 0 {
			which, v1, v2 = "baseline", base["v1"], base["v2"]
		}
		t.Run(fmt.Sprintf("%d-%s", i, strings.ReplaceAll(which, " ", "-")), func(t *testing.T) {
			r := runHandoff(t, v1, v2)
			mu.Lock()
			defer mu.Unlock()
			w := rows[which]
			for _, s := range r.http {
				w.refused += s.refused
				w.attempts += s.attempts
				w.noAnswer = append(w.noAnswer, s.noAnswer)
				w.notOK = append(w.notOK, s.notOK)
			}
			w.failed += len(r.failedSeen)
		})
	}
	for _, which := range []string{"baseline", "this tree"} {
		w := rows[which]
		sort.Slice(w.noAnswer, func(i, j int) bool { return w.noAnswer[i] < w.noAnswer[j] })
		sort.Slice(w.notOK, func(i, j int) bool { return w.notOK[i] < w.notOK[j] })
		t.Logf("%-9s peer HTTP: %d/%d refused; per node without any answer p50 %s max %s; without a 200 p50 %s max %s; 'member failed' lines %d",
			which, w.refused, w.attempts, pct(w.noAnswer, 50), pct(w.noAnswer, 100), pct(w.notOK, 50), pct(w.notOK, 100), w.failed)
	}
}
