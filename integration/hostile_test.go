package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withHooks gives an agent a test hook dir (PEERD_TEST_HOOK_DIR; v1 is
// built with testhooks) holding the given hook files.
func withHooks(t testing.TB, files ...string) func(*agent) {
	return func(a *agent) {
		hooks := filepath.Join(a.dir, "hooks")
		require.NoError(t, os.MkdirAll(hooks, 0o755))
		a.env = append(a.env, "PEERD_TEST_HOOK_DIR="+hooks)
		for _, f := range files {
			require.NoError(t, os.WriteFile(filepath.Join(hooks, f), nil, 0o644))
		}
	}
}

func setHook(t testing.TB, a *agent, name string, on bool) {
	t.Helper()
	path := filepath.Join(a.dir, "hooks", name)
	if on {
		require.NoError(t, os.WriteFile(path, nil, 0o644))
	} else {
		require.NoError(t, os.Remove(path))
	}
}

// checkOneWaveDown fails the test where the observer saw nodes of two
// waves unreachable at once, and returns how many samples saw any node
// down.
func checkOneWaveDown(t *testing.T, st upgrade.Status, samples []sample) int {
	t.Helper()
	waveOf := map[string]int{}
	for _, w := range st.Waves {
		for _, n := range w.Nodes {
			waveOf[n.Name] = w.Index
		}
	}
	down := 0
	for _, s := range samples {
		waves := map[int]bool{}
		for _, n := range s.down {
			waves[waveOf[n]] = true
		}
		if len(s.down) > 0 {
			down++
		}
		assert.LessOrEqual(t, len(waves), 1, "at %s unreachable %v span waves", s.at.Format("15:04:05.000"), s.down)
	}
	return down
}

// TestMalformedPatchCrashesNoAgent: a plan carries a 32-byte bsdiff patch
// whose header claims a result of 2^62 bytes (the patch that once
// panicked every node in prepare, again on each restart). The origin's own
// check of it is skipped by a test hook, as a compromised member's agent
// would skip it, so the patch reaches every node's decoder. Each node
// says what is wrong with it, falls back to the full artifact and
// upgrades in its wave: the same PID throughout (no crash, no restart
// loop), nobody marked failed, at most one wave offline.
func TestMalformedPatchCrashesNoAgent(t *testing.T) {
	agents := startFleetWith(t, 4, withHooks(t), "--allow-unsigned")
	setHook(t, agents[0], "origin-unchecked", true)
	pids := pidsOf(agents)

	patch := filepath.Join(t.TempDir(), "huge.patch")
	head := make([]byte, 32)
	copy(head, "BSDIFF40")
	binary.LittleEndian.PutUint64(head[24:], 1<<62) // the result's size
	require.NoError(t, os.WriteFile(patch, head, 0o644))

	obs := observe(agents)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agents[0].bin, "upgrade", "--to", "2.0.0", "--artifact", bins["v2"],
		"--patch", patch, "--patch-from", "1.0.0", "--batch", "2", "--min-healthy", "1s", "--deadline", "1m")
	cmd.Env = append(os.Environ(), "PEERD_SOCKET="+agents[0].socket())
	out, err := cmd.CombinedOutput()
	samples, bad := obs.finish()
	require.NoError(t, err, "peerd upgrade:\n%s", out)
	require.Contains(t, string(out), "origin-unchecked", "the origin did not check the patch: the nodes had to")

	st := statusFrom(t, agents)
	assert.Equal(t, upgrade.StateComplete, st.State)
	assert.Empty(t, st.Failed)
	// The situation: every node's decoder was handed the patch and said
	// why it refused it; none of them panicked.
	const why = "its header claims a result of 4611686018427387904 bytes, but the plan's artifact has"
	for _, a := range agents[1:] { // the origin holds the full artifact: it needs no patch
		log, err := os.ReadFile(a.logPath)
		require.NoError(t, err)
		line := ""
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "patch failed; falling back to the full artifact") {
				line = l
				break
			}
		}
		require.NotEmpty(t, line, "%s never tried the patch", a.name)
		assert.Contains(t, line, why, a.name)
		assert.Contains(t, line, "bad patch", a.name)
		assert.NotContains(t, string(log), "panic", a.name)
		assert.NotContains(t, string(log), "built the new binary from the patch", a.name)
		t.Logf("%s: %s", a.name, line[:min(len(line), 400)])
	}
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, "%s upgraded from the full artifact", a.name)
		assert.Equal(t, pids[a.name], a.pid(), "%s kept its PID: it re-executed in place and never crashed", a.name)
		assert.Equal(t, 1, a.starts, "%s was started once", a.name)
		assert.False(t, a.exited(), a.name)
	}
	down := checkOneWaveDown(t, st, samples)
	assert.Positive(t, down, "the observer saw the waves restart")
	assert.Empty(t, bad, "no member was marked failed or left")
	t.Logf("%d samples, %d with a node down; %d waves", len(samples), down, len(st.Waves))
}

// TestMemberPlanToOlderReleaseChangesNoNode: the fleet runs 2.0.0, every
// agent trusting one release key. A member (n03, running 1.0.0, holding
// the gossip key and its own node key) plans a rollout to the validly
// signed 1.0.0 release: for it that is no downgrade, so its own checks pass
// and the plan reaches the others. Both 2.0.0 nodes, in the first wave,
// refuse it in prepare (a plain release signature never allows going back)
// and keep their version and PID; nobody goes offline. The operator's own
// 'peerd upgrade rollback' with a rollback statement by the release key
// then takes them back, showing the refusal was about the statement, not
// the artifact.
func TestMemberPlanToOlderReleaseChangesNoNode(t *testing.T) {
	keys := t.TempDir()
	_, err := execOutput(bins["v1"], "sign", "--generate", filepath.Join(keys, "release"))
	require.NoError(t, err)
	trust := []string{"--trust-key", filepath.Join(keys, "release.pub")}
	// Three 1.0.0 agents; the two of role=fleet are upgraded to the signed
	// 2.0.0 (their launcher stays 1.0.0, as a package's would be below a
	// rollout), the member n03 stays at 1.0.0.
	agents := startFleetOf(t, 3, bins["v1"], func(i int, a *agent) {
		if i < 3 {
			a.args = append(a.args, "--tag", "role=fleet")
		}
	}, trust...)
	fleet, attacker := agents[:2], agents[2]
	v2 := filepath.Join(t.TempDir(), "peerd")
	copyFile(t, bins["v2"], v2)
	_, err = execOutput(bins["v1"], "sign", "--key", filepath.Join(keys, "release.key"), "--version", "2.0.0", v2)
	require.NoError(t, err)
	stdout, stderr, err := fleet[0].cli("upgrade", "--to", "2.0.0", "--artifact", v2, "--signature", v2+".minisig",
		"--where", "role=fleet", "--batch", "1", "--min-healthy", "1s", "--deadline", "1m")
	require.NoError(t, err, "upgrade the fleet to 2.0.0:\n%s%s", stdout, stderr)
	for _, a := range fleet {
		eventually(t, 20*time.Second, func() error {
			info, err := a.info()
			if err == nil && info.Build.Version != "2.0.0" {
				err = fmt.Errorf("%s runs %s", a.name, info.Build.Version)
			}
			return err
		})
	}
	pids := pidsOf(agents)

	// sign copies v1 into a dir of its own and signs it as 1.0.0.
	sign := func(extra ...string) (art, sig string) {
		art = filepath.Join(t.TempDir(), "peerd")
		copyFile(t, bins["v1"], art)
		_, err := execOutput(bins["v1"], append(append([]string{"sign", "--key", filepath.Join(keys, "release.key"), "--version", "1.0.0"}, extra...), art)...)
		require.NoError(t, err)
		b, err := os.ReadFile(art + ".minisig")
		require.NoError(t, err)
		return art, string(b)
	}
	art, sig := sign()
	ctx := t.Context()
	up, err := attacker.client().UploadArtifact(ctx, art)
	require.NoError(t, err)

	// Waves follow from the plan's ID: preview plans until the two 2.0.0
	// nodes form the first wave (each would refuse as it reaches prepare;
	// a later wave would never get there). Each try has even odds of 1/3.
	req := upgrade.TriggerRequest{Version: "1.0.0", ArtifactSHA256: up.SHA256, Signature: sig, DryRun: true,
		Options: plan.Options{Batch: 2, MinHealthy: time.Second, Deadline: time.Minute}}
	var planID string
	for try := 0; planID == "" && try < 60; try++ {
		res, err := attacker.client().Trigger(ctx, req)
		require.NoError(t, err, "the member's own checks pass: 1.0.0 is what it runs")
		if len(res.Waves) == 2 && !slices.Contains(res.Waves[0].Nodes, attacker.name) {
			planID = res.PlanID
		}
	}
	require.NotEmpty(t, planID, "no preview put both 2.0.0 nodes in the first wave")
	obs := observe(fleet)
	_, err = attacker.client().Trigger(ctx, upgrade.TriggerRequest{PlanID: planID})
	require.NoError(t, err)

	var st upgrade.Status
	eventually(t, 30*time.Second, func() error {
		st = statusFrom(t, fleet)
		if st.PlanID != planID || len(st.Failed) != 2 {
			return fmt.Errorf("plan %.8s: %s, %d failed", st.PlanID, st.State, len(st.Failed))
		}
		return nil
	})
	samples, bad := obs.finish()
	assert.Equal(t, upgrade.StateHalted, st.State)
	for _, f := range st.Failed {
		assert.Contains(t, f.Reason, "1.0.0 is older than 2.0.0, which this node has run: going back needs a rollback statement", f.Name)
		t.Logf("%s refused: %s", f.Name, f.Reason)
	}
	for _, a := range fleet {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, a.name)
		assert.Equal(t, pids[a.name], a.pid(), "%s never restarted", a.name)
		_, err = os.Lstat(filepath.Join(a.dataDir(), "versions", "1.0.0"))
		assert.ErrorIs(t, err, os.ErrNotExist, "%s installed nothing", a.name)
	}
	down := 0
	for _, s := range samples {
		down += len(s.down)
	}
	assert.Zero(t, down, "no 2.0.0 node was ever unreachable (%d samples)", len(samples))
	assert.Empty(t, bad)
	t.Logf("plan %.8s halted with %d refusals; %d samples of the 2.0.0 nodes, none down", planID, len(st.Failed), len(samples))

	// The operator ends that plan and goes back with the release key's
	// consent.
	_, stderr, err = fleet[0].cli("upgrade", "abort")
	require.NoError(t, err, stderr)
	rart, _ := sign("--rollback")
	stdout, stderr, err = fleet[0].cli("upgrade", "rollback", "--to", "1.0.0", "--artifact", rart, "--signature", rart+".minisig",
		"--batch", "1", "--min-healthy", "1s", "--deadline", "1m")
	t.Logf("rollback:\n%s%s", stdout, stderr)
	require.NoError(t, err)
	assert.Contains(t, stdout, "minisign rollback statement by a key this agent trusts")
	for _, a := range fleet {
		eventually(t, 20*time.Second, func() error {
			info, err := a.info()
			if err == nil && info.Build.Version != "1.0.0" {
				err = fmt.Errorf("%s runs %s", a.name, info.Build.Version)
			}
			return err
		})
	}
}

// TestPhantomWaveLeaseBlocksNothing: a member asks every granter, with a
// real node's key and a correct signature, for wave 999 of the running
// plan with a TTL of 2^62 ns (once, granters kept that until 2173 and every
// later plan stalled), for a wave its node is not in, and for its node's
// own wave with that TTL. The first two are refused by every granter; the
// third is granted for the plan's TTL only. The rollout then completes,
// and no grant any node persisted, then or after, outlives the plan's
// deadline and one TTL.
func TestPhantomWaveLeaseBlocksNothing(t *testing.T) {
	agents := startFleetWith(t, 3, withHooks(t, "pause-"+string(upgrade.PhasePrepare)), "--allow-unsigned")
	started := time.Now()
	_, stderr, err := agents[0].cli("upgrade", "--to", "2.0.0", "--artifact", bins["v2"], "--batch", "1",
		"--min-healthy", "1s", "--deadline", "1m", "--detach")
	require.NoError(t, err, stderr)
	st := statusFrom(t, agents)
	require.Len(t, st.Waves, 3)
	first, second := byName(agents, st.Waves[0].Nodes[0].Name), byName(agents, st.Waves[1].Nodes[0].Name)
	eventually(t, 20*time.Second, func() error {
		_, err := os.Stat(filepath.Join(first.dir, "hooks", "at-"+string(upgrade.PhasePrepare)))
		return err
	})

	r := newRogue(t, "rogue", agents[0].gossip())
	keys := map[string]identity.PublicKey{}
	for _, a := range agents {
		keys[a.name] = nodeKey(t, a).Public
	}
	const huge = time.Duration(1 << 62)
	ask := func(as *agent, wave int) map[string]leaseAnswerDoc {
		t.Helper()
		// Serf answers travel over UDP and may be lost on a loaded
		// machine: ask again (a new request each time) until each agent
		// answered once.
		got := map[string]leaseAnswerDoc{}
		for try := 0; len(got) < 3 && try < 5; try++ {
			req := lease.Request{PlanID: st.PlanID, Wave: wave, Node: as.name, TTL: huge, Nonce: fmt.Sprint(time.Now().UnixNano())}
			payload, err := nodeKey(t, as).Seal("peerd/lease-request/1", req)
			require.NoError(t, err)
			for from, b := range r.query("peerd-lease", payload, 3*time.Second) {
				if k, ok := keys[from]; ok {
					got[from] = openAnswer(t, b, k)
				}
			}
		}
		require.Len(t, got, 3, "every agent answered")
		return got
	}
	for from, a := range ask(first, 998) {
		assert.False(t, a.Granted, "%s granted a wave that does not exist", from)
		assert.Contains(t, a.Reason, "has no wave 999 (it has 3)", from)
		t.Logf("wave 999, %s: %s", from, a.Reason)
	}
	for from, a := range ask(second, 0) {
		assert.False(t, a.Granted, "%s granted wave 1 to a node of wave 2", from)
		assert.Contains(t, a.Reason, second.name+" is not in wave 1", from)
	}
	for from, a := range ask(first, 0) {
		assert.True(t, a.Granted, "%s: the node's own wave, asked with its key: %s", from, a.Reason)
		assert.LessOrEqual(t, a.For, time.Minute, "%s granted past the plan's TTL", from)
		t.Logf("wave 1 for %s with a TTL of 2^62 ns, %s grants %s", first.name, from, a.For)
	}
	// Every answer is in by now (the rogue asks until all answered, which
	// on a loaded machine takes a few query timeouts): a grant made for
	// the plan's TTL ends within a minute of this instant.
	asked := time.Now()
	// What the granters persisted: no phantom wave, nothing past the TTL.
	latest := time.Time{}
	check := func(when string) int {
		n := 0
		for _, a := range agents {
			for _, g := range grantsOf(t, a) {
				n++
				assert.NotEqual(t, 998, g.Wave, "%s persisted a grant of wave 999 (%s)", a.name, when)
				assert.True(t, g.Expires.Before(started.Add(2*time.Minute+5*time.Second)),
					"%s: grant of wave %d expires %s, past the plan's deadline and a TTL (%s)", a.name, g.Wave+1, g.Expires, when)
				if g.Expires.After(latest) {
					latest = g.Expires
				}
			}
		}
		return n
	}
	require.Positive(t, check("after the queries"), "the own-wave request was granted, so some grant is on disk")
	assert.True(t, latest.Before(asked.Add(time.Minute+time.Second)), "the grant lasts the plan's TTL from the answer: %s", latest)

	for _, a := range agents {
		setHook(t, a, "pause-"+string(upgrade.PhasePrepare), false)
	}
	eventually(t, 90*time.Second, func() error {
		if st := statusFrom(t, agents); st.State != upgrade.StateComplete {
			return fmt.Errorf("rollout %s: %d/%d done", st.State, st.Done, st.Total)
		}
		return nil
	})
	check("after the rollout")
	t.Logf("rollout complete %s after the trigger; latest grant expiry seen %s after it",
		time.Since(started).Round(time.Millisecond), latest.Sub(started).Round(time.Millisecond))
}

// TestForgedVotesGetNoLease: a rogue member (gossip key, its own node key,
// in the plan's snapshot) answers every lease query of the first wave's
// node twice more than it may: in the names of the other two agents, which
// are stopped (SIGSTOP), with grants signed by its own key. Without the
// forgeries no majority is possible (3 of 4 needed: the requester and the
// rogue's own vote); the requester counts neither forgery, says so in its
// log, and stays online at 1.0.0 with its PID. Then the rogue leaves, the
// two agents continue (SIGCONT), and the rollout completes: the setup could
// lease once real granters answered.
func TestForgedVotesGetNoLease(t *testing.T) {
	prep := "pause-" + string(upgrade.PhasePrepare)
	agents := startFleetWith(t, 3, withHooks(t, prep), "--allow-unsigned")
	r := newRogue(t, "rogue", agents[0].gossip())
	waitAlive(t, agents, 4)
	pids := pidsOf(agents)

	// Preview until the origin is the first wave: the requester must be an
	// agent, and one that can fetch the artifact while the others are
	// stopped.
	ctx := t.Context()
	up, err := agents[0].client().UploadArtifact(ctx, bins["v2"])
	require.NoError(t, err)
	req := upgrade.TriggerRequest{Version: "2.0.0", ArtifactSHA256: up.SHA256, DryRun: true,
		Options: plan.Options{Batch: 1, MinHealthy: time.Second, Deadline: time.Minute}}
	var res upgrade.TriggerResult
	for try := 0; res.PlanID == "" && try < 40; try++ {
		got, err := agents[0].client().Trigger(ctx, req)
		require.NoError(t, err)
		if got.Waves[0].Nodes[0] == agents[0].name {
			res = got
		}
	}
	require.NotEmpty(t, res.PlanID)
	require.Len(t, res.Plan.Members, 4, "the rogue is in the snapshot")
	requester := byName(agents, res.Waves[0].Nodes[0])
	var others []*agent
	for _, a := range agents {
		if a != requester {
			others = append(others, a)
		}
	}

	// The rogue: its own vote, honest (granted), and a forged grant in
	// each stopped agent's name, signed by itself.
	forgers := map[string]*serf.Serf{}
	for _, o := range others {
		forgers[o.name] = serfWithKey(t, o.name, nil, nil)
	}
	var mu sync.Mutex
	forged, queries := 0, 0
	stop := make(chan struct{})
	rogueDone := make(chan struct{})
	go func() {
		defer close(rogueDone)
		for {
			var ev serf.Event
			select {
			case ev = <-r.events:
			case <-stop:
				return
			}
			q, ok := ev.(*serf.Query)
			if !ok || q.Name != "peerd-lease" {
				continue
			}
			var req lease.Request
			if identity.Open("peerd/lease-request/1", q.Payload, &req, func(any) (identity.PublicKey, error) { return nil, errNoCheck }) != errNoCheck ||
				req.Release || req.Renew {
				continue
			}
			answer := func(voter string) []byte {
				b, _ := r.key.Seal("peerd/lease-answer/1", leaseAnswerDoc{Voter: voter, PlanID: req.PlanID, Wave: req.Wave,
					Node: req.Node, Nonce: req.Nonce, Granted: true, For: time.Minute})
				return b
			}
			n := 0
			for name, f := range forgers {
				if respondAs(q, f, answer(name)) == nil {
					n++
				}
			}
			_ = q.Respond(answer(r.name))
			mu.Lock()
			queries++
			forged += n
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-rogueDone
	})

	_, err = agents[0].client().Trigger(ctx, upgrade.TriggerRequest{PlanID: res.PlanID})
	require.NoError(t, err)
	eventually(t, 20*time.Second, func() error {
		_, err := os.Stat(filepath.Join(requester.dir, "hooks", "at-"+string(upgrade.PhasePrepare)))
		return err
	})
	for _, o := range others {
		o.signal(syscall.SIGSTOP)
	}
	t.Cleanup(func() {
		for _, o := range others {
			o.signal(syscall.SIGCONT)
		}
	})
	obs := observe([]*agent{requester})
	setHook(t, requester, prep, false)

	// The requester asks, and asks again, and gets no lease.
	const notCounted = "lease answers that do not verify were not counted"
	eventually(t, 40*time.Second, func() error {
		log, _ := os.ReadFile(requester.logPath)
		mu.Lock()
		f, q := forged, queries
		mu.Unlock()
		if strings.Contains(string(log), "phase=apply") {
			return nil // it went offline: the checks below say so
		}
		if n := strings.Count(string(log), notCounted); n < 2 || f < 4 || !strings.Contains(string(log), `did not verify" held=0s`) {
			return fmt.Errorf("%d lease rounds with forgeries refused, %d forged answers sent to %d queries", n, f, q)
		}
		return nil
	})
	samples, bad := obs.finish()
	log, err := os.ReadFile(requester.logPath)
	require.NoError(t, err)
	mu.Lock()
	t.Logf("%d forged answers to %d lease queries; %d rounds logged %q; %d samples of %s",
		forged, queries, strings.Count(string(log), notCounted), notCounted, len(samples), requester.name)
	mu.Unlock()
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, notCounted) || strings.Contains(l, "lease not granted yet") {
			t.Logf("%s: %s", requester.name, l)
		}
	}
	// Two forgeries a round; one may be lost in transit (UDP).
	assert.Regexp(t, `why="[0-2] granted, 0 refused of 4 \(need 3; [0-9] asked\): [12] answer\(s\) did not verify"`, string(log), "the refusal names the forgeries")
	assert.NotContains(t, string(log), "phase=apply", "%s went offline on forged votes", requester.name)
	for _, s := range samples {
		assert.Empty(t, s.down, "%s unreachable at %s while forgeries were sent", requester.name, s.at.Format("15:04:05.000"))
	}
	_ = bad // the stopped agents are seen failed, as they should be
	info, err := requester.info()
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", info.Build.Version)
	assert.Equal(t, pids[requester.name], requester.pid())

	// The rogue goes; the real granters come back; the rollout completes.
	close(stop)
	<-rogueDone
	require.NoError(t, r.s.Leave())
	for _, o := range others {
		o.signal(syscall.SIGCONT)
		setHook(t, o, prep, false)
	}
	eventually(t, 90*time.Second, func() error {
		if st := statusFrom(t, agents); st.State != upgrade.StateComplete {
			return fmt.Errorf("rollout %s: %d/%d done", st.State, st.Done, st.Total)
		}
		return nil
	})
	for _, a := range agents {
		info, err := a.info()
		require.NoError(t, err)
		assert.Equal(t, "2.0.0", info.Build.Version, a.name)
	}
}

// errNoCheck stops identity.Open after decoding: the rogue reads requests
// without checking them.
var errNoCheck = errors.New("not checked")
