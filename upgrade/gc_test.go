package upgrade

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/peerd/peerd/upgrade/plan"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCollectSupersededFiles: what plans older than the node's current one
// left (their plan files, artifacts, patches and staged copies) is removed,
// and so are artifacts no plan names after a day and a dead Put's temp
// file; the current plan's files, a newer plan's, and a fresh upload stay.
func TestCollectSupersededFiles(t *testing.T) {
	dir := t.TempDir()
	e, err := safeModeEngine(t, dir, clock.NewFake(time.Now()))
	require.NoError(t, err)
	put := func(content string) string {
		sha, _, err := e.store.Put(bytes.NewReader([]byte(content)), "")
		require.NoError(t, err)
		return sha
	}
	mkPlan := func(seq uint64, art, patch string) *plan.Compiled {
		p := testPlan(t).Plan
		p.Seq, p.Artifact.SHA256 = seq, art
		if patch != "" {
			p.Patch = &plan.Patch{FromVersion: "1.0.0", Artifact: plan.Artifact{SHA256: patch, Size: 1}}
		}
		c, err := plan.Compile(p)
		require.NoError(t, err)
		require.NoError(t, e.plans.save(c))
		require.NoError(t, os.WriteFile(e.stagedPath(c), []byte("x"), 0o755))
		return c
	}
	oldArt, oldPatch, curArt, newArt := put("v1.5"), put("patch"), put("v2"), put("v3")
	old, cur, newer := mkPlan(1, oldArt, oldPatch), mkPlan(2, curArt, ""), mkPlan(3, newArt, "")
	stale, fresh := put("an upload long ago"), put("an upload just now")
	day := time.Now().Add(-unplannedGrace - time.Minute)
	require.NoError(t, os.Chtimes(e.store.Path(stale), day, day))
	tmp := filepath.Join(e.store.Path(""), ".put-123")
	require.NoError(t, os.WriteFile(tmp, []byte("half"), 0o600))
	require.NoError(t, os.Chtimes(tmp, day, day))

	e.collect(NodeState{PlanID: cur.ID, Phase: PhaseDone})

	for _, gone := range []string{oldArt, oldPatch, stale} {
		assert.False(t, e.store.Has(gone), "superseded or unplanned artifact %s collected", short(gone))
	}
	assert.NoFileExists(t, tmp)
	for _, kept := range []string{curArt, newArt, fresh} {
		assert.True(t, e.store.Has(kept), "artifact %s kept", short(kept))
	}
	_, ok := e.plans.local(old.ID)
	assert.False(t, ok, "the superseded plan is gone")
	assert.NoFileExists(t, e.plans.path(old.ID)+".sig")
	for _, p := range []*plan.Compiled{cur, newer} {
		_, ok := e.plans.local(p.ID)
		assert.True(t, ok, "plan %d kept", p.Seq)
		assert.FileExists(t, e.stagedPath(p))
	}
	assert.NoFileExists(t, e.stagedPath(old))
}
