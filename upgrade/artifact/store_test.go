package artifact

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestDigest(t *testing.T) {
	got, n, err := Digest(strings.NewReader("test"))
	require.NoError(t, err)
	assert.Equal(t, testSHA, got) // sha256("test")
	assert.Equal(t, int64(4), n)

	p := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(p, []byte("test"), 0o600))
	got, n, err = DigestFile(p)
	require.NoError(t, err)
	assert.Equal(t, testSHA, got)
	assert.Equal(t, int64(4), n)

	_, _, err = DigestFile(filepath.Join(t.TempDir(), "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, _, err = Digest(iotest.ErrReader(errors.New("disk on fire")))
	assert.ErrorContains(t, err, "disk on fire")
}

// storeFiles lists every name in the store's directory, temp files included.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "artifacts")
	s, err := NewStore(dir)
	require.NoError(t, err)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	blob := []byte("a peerd binary, honest")
	want := sha(blob)
	assert.False(t, s.Has(want))

	got, size, err := s.Put(bytes.NewReader(blob), "")
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, int64(len(blob)), size)
	assert.True(t, s.Has(want))
	assert.Equal(t, filepath.Join(dir, want), s.Path(want))

	f, err := s.Open(want)
	require.NoError(t, err)
	b, err := io.ReadAll(f)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, blob, b)

	// Putting the same bytes again, now with the digest asked for, is fine.
	got, _, err = s.Put(bytes.NewReader(blob), want)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, []string{want}, storeFiles(t, dir))

	t.Run("digest mismatch stores nothing", func(t *testing.T) {
		other := []byte("a substituted binary")
		_, _, err := s.Put(bytes.NewReader(other), testSHA)
		require.Error(t, err)
		assert.ErrorIs(t, err, ErrDigestMismatch)
		assert.Contains(t, err.Error(), sha(other))
		assert.Contains(t, err.Error(), testSHA)
		assert.False(t, s.Has(sha(other)))
		assert.False(t, s.Has(testSHA))
		assert.Equal(t, []string{want}, storeFiles(t, dir))
	})
	t.Run("read error stores nothing", func(t *testing.T) {
		r := io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(errors.New("connection reset")))
		_, _, err := s.Put(r, "")
		assert.ErrorContains(t, err, "connection reset")
		assert.Equal(t, []string{want}, storeFiles(t, dir))
	})
	t.Run("malformed wanted digest", func(t *testing.T) {
		_, _, err := s.Put(bytes.NewReader(blob), strings.ToUpper(want))
		assert.ErrorContains(t, err, "not 64 lowercase hex digits")
		assert.Equal(t, []string{want}, storeFiles(t, dir))
	})
	t.Run("names that are not digests", func(t *testing.T) {
		for _, name := range []string{"", "../artifacts/" + want, strings.ToUpper(want), want[:10]} {
			assert.False(t, s.Has(name), name)
			_, err := s.Open(name)
			assert.ErrorContains(t, err, "not a sha256 digest", name)
		}
		_, err := s.Open(testSHA)
		assert.ErrorIs(t, err, os.ErrNotExist)
	})
}

func TestStoreConcurrentPuts(t *testing.T) {
	dir := t.TempDir()
	s, err := NewStore(dir)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			blob := fmt.Appendf(nil, "blob %d", i%4) // four distinct blobs, eight Puts each
			got, _, err := s.Put(bytes.NewReader(blob), sha(blob))
			if err == nil && got != sha(blob) {
				err = fmt.Errorf("put returned %s, want %s", got, sha(blob))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Len(t, storeFiles(t, dir), 4)
	for i := range 4 {
		assert.True(t, s.Has(sha(fmt.Appendf(nil, "blob %d", i))))
	}
}
