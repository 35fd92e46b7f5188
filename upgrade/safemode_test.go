package upgrade

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/lease"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loneNet is a network of one member, this node, that sends nothing.
type loneNet struct{ name string }

func (n loneNet) LocalMember() cluster.Member {
	return cluster.Member{Name: n.name, Status: "alive", Version: "1.0.0", Protocol: cluster.ProtocolRange{Min: 1, Max: 1}}
}
func (n loneNet) Members() []cluster.Member          { return []cluster.Member{n.LocalMember()} }
func (loneNet) ProtocolRange() cluster.ProtocolRange { return cluster.ProtocolRange{Min: 1, Max: 1} }
func (loneNet) SetTag(string, string) error          { return nil }
func (loneNet) Broadcast(string, []byte) error       { return nil }
func (loneNet) Query(context.Context, string, []byte, []string, time.Duration, func(string, []byte) bool) (map[string][]byte, error) {
	return nil, nil
}

// safeModeKey is node a's identity in the safe mode tests.
var safeModeKey = identity.New()

// safeModeEngine opens node a's engine on dir with a fake clock.
func safeModeEngine(t *testing.T, dir string, clk clock.Clock) (*Engine, error) {
	t.Helper()
	return New(Config{DataDir: dir, Clock: clk, AllowUnsigned: true, Identity: safeModeKey, Target: &Self{
		Executable: filepath.Join(dir, "peerd"), Build: buildinfo.Info{Version: "1.0.0"},
		Store: versions.New(filepath.Join(dir, "versions"), "peerd", filepath.Join(dir, "peerd")),
	}}, loneNet{name: "a"})
}

// TestDamagedFilesStartSafeMode: a rollout file that is empty or torn is
// read from its previous generation; one that is unusable in both
// generations no longer keeps the agent from starting (under systemd, a
// restart loop): the engine starts in safe mode, where it grants no lease,
// answers no plan lock and takes no trigger, until the longest lease TTL
// has passed; then it moves the damaged files aside and carries on.
func TestDamagedFilesStartSafeMode(t *testing.T) {
	for _, file := range []string{"state.json", "grants.json", "lock.json"} {
		t.Run(file, func(t *testing.T) {
			dir := t.TempDir()
			rdir := filepath.Join(dir, "rollout")
			require.NoError(t, os.MkdirAll(rdir, 0o700))
			path := filepath.Join(rdir, file)
			require.NoError(t, os.WriteFile(path, nil, 0o600))                 // empty, as after a torn write
			require.NoError(t, os.WriteFile(path+".prev", []byte("{"), 0o600)) // and its previous generation torn too
			clk := clock.NewFake(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))

			e, err := safeModeEngine(t, dir, clk)
			require.NoError(t, err, "a damaged file does not keep the engine from starting")
			why, until := e.SafeMode()
			require.NotEmpty(t, why)
			assert.Contains(t, why, file)
			assert.Equal(t, clk.Now().Add(maxLeaseTTL), until, "held for the longest lease TTL")
			st, err := e.Status(t.Context())
			require.NoError(t, err)
			assert.Equal(t, why, st.SafeMode, "status says why")

			p := testPlan(t)
			require.NoError(t, e.plans.save(p))
			req, err := safeModeKey.Seal(domainLeaseRequest, lease.Request{PlanID: p.ID, Wave: p.WaveOf("a"), Node: "a", Nonce: "n1"})
			require.NoError(t, err)
			var ans leaseAnswer
			b, err := e.HandleQuery(queryLease, req)
			require.NoError(t, err)
			require.NoError(t, openAnswer(domainLeaseAnswer, b, &ans))
			assert.False(t, ans.Granted, "no lease granted in safe mode")
			assert.Contains(t, ans.Reason, "grants nothing until")
			var lk lockAnswer
			b, err = e.HandleQuery(queryLock, []byte(`{"origin":"b"}`))
			require.NoError(t, err)
			require.NoError(t, openAnswer(domainLockAnswer, b, &lk))
			assert.False(t, lk.OK, "no plan lock in safe mode")
			assert.Contains(t, lk.Reason, "safe mode")
			_, err = e.Trigger(t.Context(), TriggerRequest{Version: "2.0.0"})
			assert.ErrorContains(t, err, "safe mode")

			clk.Advance(maxLeaseTTL)
			why, _ = e.SafeMode()
			assert.Empty(t, why, "safe mode ends once every lease has expired")
			assert.NoFileExists(t, path, "the damaged file was moved aside")
			assert.FileExists(t, path+durable.CorruptSuffix, "and kept")
			assert.FileExists(t, path+".prev"+durable.CorruptSuffix)
			b, err = e.HandleQuery(queryLease, req)
			require.NoError(t, err)
			ans = leaseAnswer{}
			require.NoError(t, openAnswer(domainLeaseAnswer, b, &ans))
			assert.True(t, ans.Granted, "grants again: %s", ans.Reason)

			again, err := safeModeEngine(t, dir, clk)
			require.NoError(t, err)
			why, _ = again.SafeMode()
			assert.Empty(t, why, "the next start is not held again")
		})
	}
	t.Run("a damaged state is read from its previous generation", func(t *testing.T) {
		dir := t.TempDir()
		rdir := filepath.Join(dir, "rollout")
		require.NoError(t, os.MkdirAll(rdir, 0o700))
		path := filepath.Join(rdir, "state.json")
		want := NodeState{PlanID: testPlan(t).ID, Phase: PhaseReady, FromVersion: "1.0.0", ToVersion: "2.0.0"}
		require.NoError(t, SaveState(path, want))
		next := want
		next.Phase = PhaseApply
		require.NoError(t, SaveState(path, next))
		require.NoError(t, os.Truncate(path, 7))
		e, err := safeModeEngine(t, dir, clock.NewFake(time.Now()))
		require.NoError(t, err)
		why, _ := e.SafeMode()
		assert.Empty(t, why)
		assert.Equal(t, PhaseReady, e.State().Phase, "one step back")
	})
}

// testPlan is a valid two-member plan.
func testPlan(t *testing.T) *plan.Compiled {
	t.Helper()
	p, err := plan.Compile(plan.Plan{
		Target: TargetPeerd, Version: "2.0.0",
		Artifact: plan.Artifact{SHA256: hexSHA([]byte("v2")), Size: 2},
		Options:  plan.Options{Batch: 1, Deadline: time.Minute},
		Members:  []plan.Member{{Name: "a", Key: safeModeKey.Public.String()}, {Name: "b", Key: identity.New().Public.String()}}, Origin: "a",
	})
	require.NoError(t, err)
	return p
}

// openAnswer opens an answer node a signed.
func openAnswer(domain string, b []byte, v any) error {
	return identity.Open(domain, b, v, func(any) (identity.PublicKey, error) { return safeModeKey.Public, nil })
}
