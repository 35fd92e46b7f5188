package upgrade

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"runtime"
	"testing"

	"aead.dev/minisign"
	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/cluster"
	"github.com/peerd/peerd/internal/identity"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/peerd/peerd/upgrade/versions"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testEngine is an engine that was never started, running build version
// with the given trusted key.
func testEngine(t *testing.T, version string, keys ...minisign.PublicKey) *Engine {
	dir := t.TempDir()
	e, err := New(Config{DataDir: dir, Identity: identity.New(), TrustedKeys: keys, Target: &Self{
		Executable: filepath.Join(dir, "peerd"), Build: buildinfo.Info{Version: version},
		Store: versions.New(filepath.Join(dir, "versions"), "peerd", filepath.Join(dir, "peerd")),
	}}, nil)
	require.NoError(t, err)
	return e
}

// TestDowngradeNeedsARollbackStatement: a release signature (which anyone
// can replay from a public release) lets a node move up, never down; going
// back below the newest version the node ran needs a rollback statement
// signed by a release key.
func TestDowngradeNeedsARollbackStatement(t *testing.T) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	require.NoError(t, err)
	e := testEngine(t, "1.8.0", pub)
	st := e.State()
	st.Highest = "2.0.0" // it ran 2.0.0, then went back to 1.8.0
	e.setState(st)

	data := []byte("the bytes of release 1.5.0")
	sha, size, err := artifact.Digest(bytes.NewReader(data))
	require.NoError(t, err)
	sign := func(version string, rollback bool) string {
		sig, err := artifact.Sign(priv, data, artifact.Manifest{Target: TargetPeerd, Version: version,
			OS: runtime.GOOS, Arch: runtime.GOARCH, SHA256: sha, Size: size, Rollback: rollback})
		require.NoError(t, err)
		return string(sig)
	}
	plan := func(version, sig string, rollback bool) *plan.Compiled {
		return &plan.Compiled{Plan: plan.Plan{Target: TargetPeerd, Version: version, Rollback: rollback,
			Artifact: plan.Artifact{SHA256: sha, Size: size, Signature: sig}}}
	}
	assert.ErrorContains(t, e.verifySignature(plan("1.5.0", sign("1.5.0", false), true), data),
		"going back needs a rollback statement", "a plain release signature, even on a rollback plan")
	assert.NoError(t, e.verifySignature(plan("1.5.0", sign("1.5.0", true), true), data), "a rollback statement")
	assert.NoError(t, e.verifySignature(plan("2.1.0", sign("2.1.0", false), false), data), "moving up needs a release signature only")
	assert.ErrorContains(t, e.verifySignature(plan("1.5.0", sign("1.6.0", true), true), data), "vouches for another artifact")
}

// TestForgedStateDoesNotFinishAWave: a member's tag that says it is done
// counts only with the member's own signature: a tag another member
// gossiped in its name leaves the wave held up.
func TestForgedStateDoesNotFinishAWave(t *testing.T) {
	honest, forger := identity.New(), identity.New()
	p, err := plan.Compile(plan.Plan{Target: TargetPeerd, Version: "2.0.0", Options: plan.Options{Batch: 1, Deadline: 1},
		Artifact: plan.Artifact{SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Size: 1},
		Members:  []plan.Member{{Name: "a", Key: honest.Public.String()}, {Name: "b", Key: forger.Public.String()}}})
	require.NoError(t, err)
	first := p.Waves[0].Nodes[0]
	tag := func(signer identity.Key) string {
		pr := Progress{PlanShort: p.Short, Wave: 0, Phase: PhaseDone}
		pr.Sig = signer.Sign(domainState, stateMessage(first, TagRollout, pr))
		return pr.String()
	}
	own, other := honest, forger // the keys of the first node, and of the other
	if first == "b" {
		own, other = forger, honest
	}
	v := newView(TagRollout)
	v.update([]cluster.Member{{Name: first, Status: "alive", Tags: map[string]string{TagRollout: tag(other)}}})
	assert.False(t, v.earlierWavesDone(p, 1), "a done signed by another member's key")
	assert.False(t, v.finished(p, first))
	v.update([]cluster.Member{{Name: first, Status: "alive", Tags: map[string]string{TagRollout: tag(own)}}})
	assert.True(t, v.earlierWavesDone(p, 1), "its own signature")
	assert.True(t, v.finished(p, first))
	v.update([]cluster.Member{{Name: first, Status: "alive", Tags: map[string]string{TagRollout: Progress{PlanShort: p.Short, Phase: PhaseDone}.String()}}})
	assert.False(t, v.earlierWavesDone(p, 1), "no signature at all")
}
