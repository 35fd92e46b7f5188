package durable

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	require.NoError(t, WriteFile(path, []byte("one"), 0o600))
	require.NoError(t, WriteFile(path, []byte("two"), 0o640))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "two", string(b))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), st.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temp file left behind")

	err = WriteFile(filepath.Join(dir, "missing", "x"), nil, 0o600)
	assert.ErrorContains(t, err, "missing/x")
}

func TestLink(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "blob")
	require.NoError(t, WriteFile(src, []byte("bytes"), 0o644))
	path := filepath.Join(dir, "sub", "staged")
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))

	require.NoError(t, Link(src, path, 0o755))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "bytes", string(b), "path replaced")
	a, err := os.Stat(src)
	require.NoError(t, err)
	l, err := os.Stat(path)
	require.NoError(t, err)
	assert.True(t, os.SameFile(a, l), "a link, not a copy")
	assert.Equal(t, os.FileMode(0o755), a.Mode().Perm(), "the mode is the inode's")
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temp link left behind")

	err = Link(filepath.Join(dir, "missing"), path, 0o755)
	assert.ErrorContains(t, err, "sub/staged")
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "bytes", string(b), "a failed link changes nothing")
}
