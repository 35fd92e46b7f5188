package upgrade

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd/peerd/internal/clock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPrepareChecksFreeSpace: prepare refuses, before fetching anything or
// taking the lease, a plan whose artifact, staged copy and version store
// copy do not fit together on the data dir's file system, and says how
// much each needs.
func TestPrepareChecksFreeSpace(t *testing.T) {
	dir := t.TempDir()
	e, err := safeModeEngine(t, dir, clock.NewFake(time.Now()))
	require.NoError(t, err)
	p := testPlan(t)
	p.Artifact.Size = 10 << 20
	free := uint64(0)
	e.cfg.FreeSpace = func(string) (uint64, uint64, error) { return free, 1, nil }

	free = 3*(10<<20) + spaceReserve - 1
	err = e.prepare(t.Context(), p, "1.0.0", filepath.Join(dir, "peerd"), 1)
	require.ErrorIs(t, err, ErrNoSpace)
	assert.ErrorContains(t, err, "needs 34.0 MiB (artifact, staged copy, version store copy")
	assert.ErrorContains(t, err, "peerd upgrade resume")
	entries, _ := os.ReadDir(filepath.Join(dir, "rollout", "artifacts"))
	assert.Empty(t, entries, "nothing fetched")

	free = 3*(10<<20) + spaceReserve
	err = e.prepare(t.Context(), p, "1.0.0", filepath.Join(dir, "peerd"), 1)
	assert.False(t, errors.Is(err, ErrNoSpace), "enough space: prepare goes on (to fail at the fetch here): %v", err)
}
