package artifact

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/minio/selfupdate"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// versions returns two related byte strings, like two builds of one binary:
// the second has edits, an insertion and a longer tail.
func versions(size int) (old, new []byte) {
	r := rand.New(rand.NewPCG(1, 2))
	old = make([]byte, size)
	for i := range old {
		old[i] = byte(r.UintN(256))
	}
	new = bytes.Clone(old)
	for i := 0; i < len(new); i += 4096 {
		new[i] ^= 0xff
	}
	mid := len(new) / 2
	new = append(new[:mid:mid], append([]byte("inserted in version two"), new[mid:]...)...)
	new = append(new, []byte("and a longer tail")...)
	return old, new
}

func TestPatchRoundTrip(t *testing.T) {
	dir := t.TempDir()
	oldBytes, newBytes := versions(512 << 10)
	oldPath, newPath, patchPath := filepath.Join(dir, "v1"), filepath.Join(dir, "v2"), filepath.Join(dir, "v1-v2.bsdiff")
	require.NoError(t, os.WriteFile(oldPath, oldBytes, 0o755))
	require.NoError(t, os.WriteFile(newPath, newBytes, 0o755))

	require.NoError(t, MakePatch(oldPath, newPath, patchPath))
	patch, err := os.ReadFile(patchPath)
	require.NoError(t, err)
	assert.Equal(t, "BSDIFF40", string(patch[:8]))
	assert.Less(t, len(patch), len(newBytes)/4, "the patch should be much smaller than the new file")
	fi, err := os.Stat(patchPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	t.Run("ApplyPatch", func(t *testing.T) {
		var out bytes.Buffer
		require.NoError(t, ApplyPatch(oldPath, bytes.NewReader(patch), &out))
		assert.True(t, bytes.Equal(newBytes, out.Bytes()), "patched bytes differ from the new version")
	})
	t.Run("ApplyPatch into the store checks the digest", func(t *testing.T) {
		s, err := NewStore(filepath.Join(dir, "store"))
		require.NoError(t, err)
		var out bytes.Buffer
		require.NoError(t, ApplyPatch(oldPath, bytes.NewReader(patch), &out))
		_, _, err = s.Put(&out, sha(newBytes))
		require.NoError(t, err)

		// The same patch applied to another base (as a node running an
		// unexpected build would) yields other bytes, which the store refuses.
		wrongBytes := bytes.Clone(oldBytes)
		wrongBytes[1000] ^= 1
		wrongBase := filepath.Join(dir, "v1-other-build")
		require.NoError(t, os.WriteFile(wrongBase, wrongBytes, 0o755))
		out.Reset()
		require.NoError(t, ApplyPatch(wrongBase, bytes.NewReader(patch), &out))
		_, _, err = s.Put(&out, sha(newBytes))
		assert.ErrorIs(t, err, ErrDigestMismatch)
	})
	t.Run("selfupdate.Apply with the bsdiff patcher", func(t *testing.T) {
		target := filepath.Join(dir, "installed")
		require.NoError(t, os.WriteFile(target, oldBytes, 0o755))
		require.NoError(t, selfupdate.Apply(bytes.NewReader(patch), selfupdate.Options{
			TargetPath: target,
			Patcher:    selfupdate.NewBSDiffPatcher(),
		}))
		got, err := os.ReadFile(target)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(newBytes, got), "selfupdate-patched bytes differ from the new version")
	})
	t.Run("corrupt patch", func(t *testing.T) {
		bad := bytes.Clone(patch)
		bad = bad[:len(bad)/2]
		var out bytes.Buffer
		assert.Error(t, ApplyPatch(oldPath, bytes.NewReader(bad), &out))
		assert.Error(t, ApplyPatch(oldPath, bytes.NewReader([]byte("not a patch at all")), &out))
	})
	t.Run("missing input leaves nothing", func(t *testing.T) {
		out := filepath.Join(dir, "never.bsdiff")
		err := MakePatch(filepath.Join(dir, "missing"), newPath, out)
		assert.ErrorIs(t, err, os.ErrNotExist)
		err = MakePatch(oldPath, filepath.Join(dir, "missing"), out)
		assert.ErrorIs(t, err, os.ErrNotExist)
		assert.NoFileExists(t, out)
		assert.ErrorIs(t, ApplyPatch(filepath.Join(dir, "missing"), bytes.NewReader(patch), &bytes.Buffer{}), os.ErrNotExist)
	})
}
