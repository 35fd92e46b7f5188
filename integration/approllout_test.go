package integration

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerd/peerd/upgrade"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kvObserver samples every kv instance's health every 20 ms: which are down
// at each instant, and when each first answered.
type kvObserver struct {
	nodes []*kvNode
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	downs   [][]string
	firstUp map[string]time.Time
}

func observeKV(nodes []*kvNode) *kvObserver {
	o := &kvObserver{nodes: nodes, stop: make(chan struct{}), done: make(chan struct{}), firstUp: map[string]time.Time{}}
	client := &http.Client{Timeout: 2 * time.Second}
	go func() {
		defer close(o.done)
		for {
			select {
			case <-o.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			var down []string
			for _, n := range o.nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := client.Get("http://" + n.kvAddr() + "/health")
					ok := err == nil && resp.StatusCode == http.StatusOK
					if err == nil {
						resp.Body.Close()
					}
					mu.Lock()
					defer mu.Unlock()
					if !ok {
						down = append(down, n.name)
					} else if _, seen := o.firstUp[n.name]; !seen {
						o.firstUp[n.name] = time.Now()
					}
				}()
			}
			wg.Wait()
			sort.Strings(down)
			o.mu.Lock()
			o.downs = append(o.downs, down)
			o.mu.Unlock()
		}
	}()
	return o
}

func (o *kvObserver) finish() ([][]string, map[string]time.Time) {
	close(o.stop)
	<-o.done
	return o.downs, o.firstUp
}

// withinOneWave checks that every sample's down instances belong to a
// single wave.
func withinOneWave(t *testing.T, downs [][]string, waves [][]string) {
	t.Helper()
	waveOf := map[string]int{}
	for i, w := range waves {
		for _, n := range w {
			waveOf[n] = i
		}
	}
	for _, d := range downs {
		seen := map[int]bool{}
		for _, n := range d {
			seen[waveOf[n]] = true
		}
		if !assert.LessOrEqual(t, len(seen), 1, "kv instances of two waves down at once: %v (waves %v)", d, waves) {
			return
		}
	}
}

func waveNames(st upgrade.Status) [][]string {
	var out [][]string
	for _, w := range st.Waves {
		var names []string
		for _, n := range w.Nodes {
			names = append(names, n.Name)
		}
		out = append(out, names)
	}
	return out
}

// appCLI runs a peerd client command against node n.
func appCLI(t testing.TB, n *kvNode, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, args...)
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+n.socket())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "peerd %v:\n%s", args, out)
	return string(out)
}

// notDone names the nodes of st not done, each with its phase, Serf
// status and reason.
func notDone(st upgrade.Status) string {
	var out []string
	for _, w := range st.Waves {
		for _, n := range w.Nodes {
			if n.Phase != upgrade.PhaseDone {
				out = append(out, fmt.Sprintf("%s (wave %d: %s, %s, %q)", n.Name, w.Index+1, n.Phase, n.Member, n.Reason))
			}
		}
	}
	return strings.Join(out, "; ")
}

func kvStatus(t testing.TB, n *kvNode) upgrade.Status {
	t.Helper()
	st, err := n.client().ForTarget("kv").RolloutStatus(context.Background())
	require.NoError(t, err)
	return st
}

// writer puts keys on the kv instances in turn and remembers the ones
// acknowledged; a refused write (its node is down) is not acknowledged.
type writer struct {
	stop  chan struct{}
	done  chan struct{}
	acked map[string]string
}

func startWriter(nodes []*kvNode) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{}), acked: map[string]string{}}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			n := nodes[i%len(nodes)]
			key, val := fmt.Sprintf("w%05d", i), fmt.Sprintf("from-%s-%d", n.name, i)
			if n.put(key, val) == nil {
				w.acked[key] = val
			}
		}
	}()
	return w
}

func (w *writer) finish() map[string]string {
	close(w.stop)
	<-w.done
	return w.acked
}

// converged waits until every instance holds every acknowledged write.
func converged(t *testing.T, nodes []*kvNode, acked map[string]string) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, 60*time.Second, func() error {
			for k, v := range acked {
				got, err := n.get(k)
				if err != nil {
					return err
				}
				if got != v {
					return fmt.Errorf("%s: %s = %q, want %q", n.name, k, got, v)
				}
			}
			return nil
		})
	}
}

func kvVersion(t testing.TB, n *kvNode) string {
	t.Helper()
	h, err := n.health()
	require.NoError(t, err)
	return h.Version
}

// TestManagedAppInstallAndRollingUpgrade: six agents that declare kv but
// do not have it; `peerd install kv` installs v1 wave by wave; then, while
// a client writes to random instances, `peerd upgrade kv --to 2.0.0` runs:
// at most one wave of kv down at any instant, v1 and v2 instances read
// each other's writes in the mixed phase, no acknowledged write is lost and
// every instance converges on the same data.
func TestManagedAppInstallAndRollingUpgrade(t *testing.T) {
	var nodes []*kvNode
	for i := 1; i <= 6; i++ {
		join := ""
		if i > 1 {
			join = nodes[0].gossip()
		}
		zone := "a"
		if i > 3 {
			zone = "b"
		}
		nodes = append(nodes, startKVNodeWith(t, fmt.Sprintf("k%d", i), bins["v1"], join, "kv", "", "--tag", "zone="+zone))
	}
	var agents []*agent
	for _, n := range nodes {
		agents = append(agents, n.agent)
	}
	waitAlive(t, agents, 6)
	eventually(t, 10*time.Second, func() error {
		for _, r := range apps(t, nodes[0].agent) {
			if r.State != "not-installed" {
				return fmt.Errorf("%s: %s", r.Node, r.State)
			}
		}
		return nil
	})

	// Install on zone a only, then everywhere, one node per wave: each
	// wave's instance comes up only after the previous wave's.
	appCLI(t, nodes[0], "install", "kv", "--artifact", bins["kv"], "--version", "1.0.0", "--where", "zone=a", "--batch", "2",
		"--min-healthy", "300ms", "--deadline", "1m")
	eventually(t, 10*time.Second, func() error {
		for _, r := range apps(t, nodes[0].agent) {
			if want := map[bool]string{true: "running", false: "not-installed"}[r.Node <= "k3"]; r.State != want {
				return fmt.Errorf("%s: %s, want %s", r.Node, r.State, want)
			}
		}
		return nil
	})
	obs := observeKV(nodes)
	appCLI(t, nodes[0], "install", "kv", "--artifact", bins["kv"], "--version", "1.0.0", "--batch", "1", "--min-healthy", "300ms", "--deadline", "1m")
	_, firstUp := obs.finish()
	st := kvStatus(t, nodes[0])
	require.Equal(t, upgrade.StateComplete, st.State)
	var order []string // zone b's nodes in wave order
	for _, w := range waveNames(st) {
		for _, name := range w {
			if name > "k3" {
				order = append(order, name)
			}
		}
	}
	require.Len(t, order, 3)
	for i := 1; i < len(order); i++ {
		assert.True(t, firstUp[order[i-1]].Before(firstUp[order[i]]), "%s came up before %s, which is in an earlier wave", order[i], order[i-1])
	}
	waitPeers(t, nodes, 6)
	for _, n := range nodes {
		assert.Equal(t, "1.0.0", kvVersion(t, n))
	}

	// Upgrade to 2.0.0 under writes; pause after the first wave to check
	// the mixed phase.
	// nodes[1] triggers next: it must have heard that the install is over
	// (once, under -race beside other packages, that took over 30 s).
	eventually(t, 90*time.Second, func() error {
		if st := kvStatus(t, nodes[1]); st.State != upgrade.StateComplete {
			return fmt.Errorf("nodes[1] sees the install %s", st.State)
		}
		return nil
	})
	w := startWriter(nodes)
	obs = observeKV(nodes)
	appCLI(t, nodes[1], "upgrade", "kv", "--to", "2.0.0", "--artifact", bins["kv2"], "--batch", "2",
		"--min-healthy", "500ms", "--deadline", "1m", "--detach")
	eventually(t, 60*time.Second, func() error {
		st := kvStatus(t, nodes[1])
		if st.Done < 2 {
			return fmt.Errorf("%d done", st.Done)
		}
		return nil
	})
	appCLI(t, nodes[1], "upgrade", "kv", "pause")
	// Mixed phase: a write on a 1.0.0 instance is read on a 2.0.0 one and
	// the other way round. A wave in flight when the pause came may still
	// restart an instance, so each try picks live instances again.
	eventually(t, 60*time.Second, func() error {
		var v1, v2 []*kvNode
		for _, n := range nodes {
			h, err := n.health()
			switch {
			case err != nil || h.Status != "ok":
				continue
			case h.Version == "2.0.0":
				v2 = append(v2, n)
			default:
				v1 = append(v1, n)
			}
		}
		if len(v1) < 2 || len(v2) < 2 {
			return fmt.Errorf("want two live instances at each version: %d at 1.0.0, %d at 2.0.0", len(v1), len(v2))
		}
		if err := v1[0].put("on-v1", "read-on-v2"); err != nil {
			return err
		}
		if err := v2[0].put("on-v2", "read-on-v1"); err != nil {
			return err
		}
		if v, err := v2[1].get("on-v1"); err != nil || v != "read-on-v2" {
			return fmt.Errorf("1.0.0's write on 2.0.0 (%s): %q %v", v2[1].name, v, err)
		}
		if v, err := v1[1].get("on-v2"); err != nil || v != "read-on-v1" {
			return fmt.Errorf("2.0.0's write on 1.0.0 (%s): %q %v", v1[1].name, v, err)
		}
		return nil
	})
	appCLI(t, nodes[1], "upgrade", "kv", "resume")
	eventually(t, 2*time.Minute, func() error {
		if st := kvStatus(t, nodes[1]); st.State != upgrade.StateComplete {
			return fmt.Errorf("rollout %s, %d/%d done; not done: %s", st.State, st.Done, st.Total, notDone(st))
		}
		return nil
	})
	acked := w.finish()
	downs, _ := obs.finish()
	st = kvStatus(t, nodes[1])
	withinOneWave(t, downs, waveNames(st))
	assert.Greater(t, len(acked), 50, "the writer kept writing")
	acked["on-v1"], acked["on-v2"] = "read-on-v2", "read-on-v1"
	converged(t, nodes, acked)
	for _, n := range nodes {
		assert.Equal(t, "2.0.0", kvVersion(t, n), n.name)
	}
	assert.Len(t, st.Failed, 0)
}

// TestManagedAppUpgradeByPatch: nodes running kv 1.0.0 build 2.0.0 from a
// bsdiff patch of the binary they run.
func TestManagedAppUpgradeByPatch(t *testing.T) {
	nodes := kvFleet(t, "p", 3)
	n1, n2 := nodes[0], nodes[1]
	patch := filepath.Join(t.TempDir(), "kv-1-2.patch")
	appCLI(t, n1, "mkpatch", bins["kv"], bins["kv2"], patch)

	w := startWriter(nodes)
	obs := observeKV(nodes)
	out := appCLI(t, n1, "upgrade", "kv", "--to", "2.0.0", "--artifact", bins["kv2"], "--patch", patch, "--patch-from", "1.0.0",
		"--batch", "1", "--min-healthy", "300ms", "--deadline", "1m")
	acked := w.finish()
	downs, _ := obs.finish()
	assert.Contains(t, out, "patch from 1.0.0")
	st := kvStatus(t, n1)
	require.Equal(t, upgrade.StateComplete, st.State)
	withinOneWave(t, downs, waveNames(st))
	converged(t, nodes, acked)
	for _, n := range nodes {
		assert.Equal(t, "2.0.0", kvVersion(t, n))
		if n != n1 { // the origin holds the full artifact already
			log, _ := os.ReadFile(n.logPath)
			assert.Contains(t, string(log), "built the new binary from the patch", n.name)
		}
	}

	// `peerd upgrade kv rollback`: a new progressive plan back to the binary
	// each node kept (here the configured 1.0.0).
	out = appCLI(t, n2, "upgrade", "kv", "rollback", "--batch", "1", "--min-healthy", "300ms", "--deadline", "1m")
	assert.Contains(t, out, "1.0.0")
	for _, n := range nodes {
		assert.Equal(t, "1.0.0", kvVersion(t, n), n.name)
	}
}

// TestManagedAppBadReleaseRollsBackOnlyTheFailingNode: a kv 2.0.0 whose
// health fails halts the rollout after its first node, which goes back to
// 1.0.0; the other nodes never leave 1.0.0.
func TestManagedAppBadReleaseRollsBackOnlyTheFailingNode(t *testing.T) {
	nodes := kvFleet(t, "b", 3)
	n1 := nodes[0]
	pids := map[string]int{}
	for _, n := range nodes {
		pids[n.name] = n.kvPID()
	}

	appCLI(t, n1, "upgrade", "kv", "--to", "2.0.0", "--artifact", bins["kv2bad"], "--batch", "1",
		"--min-healthy", "300ms", "--deadline", "3s", "--detach")
	var st upgrade.Status
	eventually(t, 90*time.Second, func() error {
		st = kvStatus(t, n1)
		if st.State != upgrade.StateHalted || len(st.Failed) != 1 {
			return fmt.Errorf("rollout %s, failed %v", st.State, st.Failed)
		}
		return nil
	})
	failed := st.Failed[0].Name
	assert.Equal(t, waveNames(st)[0][0], failed, "the first wave's node failed")
	assert.Contains(t, st.Failed[0].Reason, "bad-release")
	for _, n := range nodes {
		eventually(t, 30*time.Second, func() error {
			h, err := n.health()
			if err == nil && (h.Version != "1.0.0" || h.Status != "ok") {
				err = fmt.Errorf("%s: kv %s %s", n.name, h.Version, h.Status)
			}
			return err
		})
		if n.name != failed {
			assert.Equal(t, pids[n.name], n.kvPID(), "%s in a later wave was untouched", n.name)
		}
	}
	assert.True(t, slices.ContainsFunc(nodes, func(n *kvNode) bool { return n.name == failed }))
	// It stays halted.
	st = kvStatus(t, n1)
	assert.Equal(t, upgrade.StateHalted, st.State)
	assert.Equal(t, 0, st.Done)
}

// makeBundle writes a tar.gz application bundle: peerd-app.json, declaring
// the protocol range pmin-pmax, and the binary at bin/kv.
func makeBundle(t *testing.T, binary, version, arch string, pmin, pmax int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("kv-%s-%s.tar.gz", version, arch))
	f, err := os.Create(path)
	require.NoError(t, err)
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	manifest, _ := json.Marshal(map[string]any{"name": "kv", "version": version, "os": "linux", "arch": arch, "command": []string{"bin/kv"},
		"protocol_min": pmin, "protocol_max": pmax})
	bin, err := os.ReadFile(binary)
	require.NoError(t, err)
	for _, e := range []struct {
		name string
		mode int64
		data []byte
	}{{"peerd-app.json", 0o644, manifest}, {"bin/", 0o755, nil}, {"bin/kv", 0o755, bin}} {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
		require.NoError(t, tw.WriteHeader(hdr))
		_, err := tw.Write(e.data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	require.NoError(t, f.Close())
	return path
}

// TestManagedAppUpgradeFromBundle: a tar.gz bundle with a manifest; one
// for another platform, and one that shares no protocol with the running
// instances, are refused before anything goes offline.
func TestManagedAppUpgradeFromBundle(t *testing.T) {
	nodes := kvFleet(t, "g", 3)
	n1 := nodes[0]

	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	cmd := exec.Command(n1.bin, "upgrade", "kv", "--to", "2.0.0", "--artifact", makeBundle(t, bins["kv2"], "2.0.0", other, 1, 2), "--min-healthy", "300ms")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+n1.socket())
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "artifact refused before any node went offline")
	assert.Contains(t, string(out), other)

	appCLI(t, n1, "upgrade", "kv", "--to", "2.0.0", "--artifact", makeBundle(t, bins["kv2"], "2.0.0", runtime.GOARCH, 1, 2),
		"--batch", "1", "--min-healthy", "300ms", "--deadline", "1m")
	for _, n := range nodes {
		assert.Equal(t, "2.0.0", kvVersion(t, n), n.name)
		assert.FileExists(t, filepath.Join(n.dataDir(), "apps", "kv", "versions", "2.0.0", "bin", "kv"))
		assert.FileExists(t, filepath.Join(n.dataDir(), "apps", "kv", "versions", "2.0.0", "peerd-app.json"))
	}

	// Every node advertises the range kv 2.0.0 declared...
	n3 := nodes[2]
	eventually(t, 20*time.Second, func() error {
		rows := apps(t, n3.agent)
		for _, r := range rows {
			if r.Protocol != "1-2" {
				return fmt.Errorf("%s advertises kv protocol %q", r.Node, r.Protocol)
			}
		}
		if len(rows) != len(nodes) {
			return fmt.Errorf("peerd apps lists %d instances", len(rows))
		}
		return nil
	})
	// ...so a 3.0.0 that speaks only 3 is refused: no node goes offline.
	cmd = exec.Command(n3.bin, "upgrade", "kv", "--to", "3.0.0", "--artifact", makeBundle(t, bins["kv2"], "3.0.0", runtime.GOARCH, 3, 3))
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+n3.socket())
	out, err = cmd.CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), "artifact refused before any node went offline")
	assert.Contains(t, string(out), "kv 3.0.0 speaks kv protocol 3-3, which shares none with")
	assert.Contains(t, string(out), "(kv 2.0.0 speaks 1-2)")
	for _, n := range nodes {
		assert.Equal(t, "2.0.0", kvVersion(t, n), n.name)
	}
}
