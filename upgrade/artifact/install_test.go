package artifact

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), mode))
	require.NoError(t, os.Chmod(path, mode)) // WriteFile's mode is filtered by the umask
}

func assertFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, content, string(b), path)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, mode, fi.Mode().Perm(), path)
}

// installDir lays out a node: the running binary at bin/peerd, a staged
// new one elsewhere.
func installDir(t *testing.T) (staged, target, kept string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "staging"), 0o700))
	staged = filepath.Join(dir, "staging", "peerd-2.0.0")
	target = filepath.Join(dir, "bin", "peerd")
	writeFile(t, staged, "peerd v2", 0o600) // staging mode is not what gets installed
	writeFile(t, target, "peerd v1", 0o755)
	return staged, target, target + ".old"
}

func TestInstallRestore(t *testing.T) {
	staged, target, kept := installDir(t)

	require.NoError(t, Install(staged, target, kept))
	assertFile(t, target, "peerd v2", 0o755)
	assertFile(t, kept, "peerd v1", 0o755)
	assertFile(t, staged, "peerd v2", 0o600) // the source is left alone
	assert.ElementsMatch(t, []string{"peerd", "peerd.old"}, dirNames(t, filepath.Dir(target)), "no temp files left behind")

	// Installing again (as after a crash before the state was saved) must
	// not replace the kept v1 with v2.
	require.NoError(t, Install(staged, target, kept))
	assertFile(t, kept, "peerd v1", 0o755)

	require.NoError(t, Restore(target, kept))
	assertFile(t, target, "peerd v1", 0o755)
	assert.NoFileExists(t, kept)

	// Restoring again has nothing to do.
	require.NoError(t, Restore(target, kept))
	assertFile(t, target, "peerd v1", 0o755)
}

func TestInstallKeepsMode(t *testing.T) {
	staged, target, kept := installDir(t)
	require.NoError(t, os.Chmod(target, 0o750))
	require.NoError(t, Install(staged, target, kept))
	assertFile(t, target, "peerd v2", 0o750)

	// A non-executable old file does not yield a non-executable new one.
	require.NoError(t, os.Chmod(target, 0o644))
	writeFile(t, staged, "peerd v3", 0o600)
	require.NoError(t, Install(staged, target, kept))
	assertFile(t, target, "peerd v3", 0o744)
}

func TestInstallReplacesOldKept(t *testing.T) {
	staged, target, kept := installDir(t)
	writeFile(t, kept, "peerd v0", 0o755)
	require.NoError(t, Install(staged, target, kept))
	assertFile(t, kept, "peerd v1", 0o755)
	assertFile(t, target, "peerd v2", 0o755)
}

func TestInstallFresh(t *testing.T) {
	staged, target, kept := installDir(t)
	require.NoError(t, os.Remove(target))
	writeFile(t, kept, "some stale binary", 0o755)

	require.NoError(t, Install(staged, target, kept))
	assertFile(t, target, "peerd v2", 0o755)
	assert.NoFileExists(t, kept, "a stale kept binary must not survive to be restored")
	require.NoError(t, Restore(target, kept)) // nothing to roll back to
	assertFile(t, target, "peerd v2", 0o755)
}

func TestInstallErrors(t *testing.T) {
	staged, target, kept := installDir(t)
	err := Install(filepath.Join(t.TempDir(), "missing"), target, kept)
	assert.ErrorIs(t, err, os.ErrNotExist)
	assertFile(t, target, "peerd v1", 0o755)
	assert.Equal(t, []string{"peerd"}, dirNames(t, filepath.Dir(target)), "a failed install leaves nothing behind")

	assert.ErrorContains(t, Install(staged, target, target), "is the target itself")

	err = Restore(filepath.Join(t.TempDir(), "peerd"), filepath.Join(t.TempDir(), "peerd.old"))
	assert.ErrorContains(t, err, "neither it nor the kept binary")
}

// TestInstallNeverLeavesTargetMissing checks the invariant that matters for
// crash safety while installs run: whoever looks at the target finds a
// complete old or new binary, never nothing and never a partial file.
func TestInstallNeverLeavesTargetMissing(t *testing.T) {
	dir := t.TempDir()
	a := bytes.Repeat([]byte("A"), 256<<10)
	b := bytes.Repeat([]byte("B"), 256<<10)
	aPath, bPath := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	require.NoError(t, os.WriteFile(aPath, a, 0o755))
	require.NoError(t, os.WriteFile(bPath, b, 0o755))
	target, kept := filepath.Join(dir, "peerd"), filepath.Join(dir, "peerd.old")
	require.NoError(t, os.WriteFile(target, a, 0o755))

	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads, bad atomic.Int64
	wg.Go(func() {
		for !stop.Load() {
			got, err := os.ReadFile(target)
			reads.Add(1)
			if err != nil || !(bytes.Equal(got, a) || bytes.Equal(got, b)) {
				bad.Add(1)
			}
		}
	})
	for i := range 40 {
		src := aPath
		if i%2 == 0 {
			src = bPath
		}
		if err := Install(src, target, kept); err != nil {
			stop.Store(true)
			wg.Wait()
			require.NoError(t, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	assert.Zero(t, bad.Load(), "%d of %d reads saw a missing or partial target", bad.Load(), reads.Load())
	assertFile(t, target, string(a), 0o755)
	assertFile(t, kept, string(b), 0o755)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
