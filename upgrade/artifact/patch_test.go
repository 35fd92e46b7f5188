package artifact

import (
	"bytes"
	"errors"
	"io"
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

	decl := Patch{Name: "v1-v2", Size: int64(len(patch)), ResultSize: int64(len(newBytes))}
	t.Run("ApplyPatch", func(t *testing.T) {
		var out bytes.Buffer
		require.NoError(t, ApplyPatch(oldPath, bytes.NewReader(patch), &out, decl))
		assert.True(t, bytes.Equal(newBytes, out.Bytes()), "patched bytes differ from the new version")
	})
	t.Run("ApplyPatch into the store checks the digest", func(t *testing.T) {
		s, err := NewStore(filepath.Join(dir, "store"))
		require.NoError(t, err)
		var out bytes.Buffer
		require.NoError(t, ApplyPatch(oldPath, bytes.NewReader(patch), &out, decl))
		_, _, err = s.Put(&out, sha(newBytes))
		require.NoError(t, err)

		// The same patch applied to another base (as a node running an
		// unexpected build would) yields other bytes, which the store refuses.
		wrongBytes := bytes.Clone(oldBytes)
		wrongBytes[1000] ^= 1
		wrongBase := filepath.Join(dir, "v1-other-build")
		require.NoError(t, os.WriteFile(wrongBase, wrongBytes, 0o755))
		out.Reset()
		require.NoError(t, ApplyPatch(wrongBase, bytes.NewReader(patch), &out, decl))
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
		assert.ErrorIs(t, ApplyPatch(oldPath, bytes.NewReader(bad), &out, decl), ErrBadPatch)
		assert.ErrorIs(t, ApplyPatch(oldPath, bytes.NewReader([]byte("not a patch at all")), &out, decl), ErrBadPatch)
	})
	t.Run("missing input leaves nothing", func(t *testing.T) {
		out := filepath.Join(dir, "never.bsdiff")
		err := MakePatch(filepath.Join(dir, "missing"), newPath, out)
		assert.ErrorIs(t, err, os.ErrNotExist)
		err = MakePatch(oldPath, filepath.Join(dir, "missing"), out)
		assert.ErrorIs(t, err, os.ErrNotExist)
		assert.NoFileExists(t, out)
		assert.ErrorIs(t, ApplyPatch(filepath.Join(dir, "missing"), bytes.NewReader(patch), &bytes.Buffer{}, decl), os.ErrNotExist)
	})
}

// header builds a bsdiff header: magic, control and diff block lengths and
// the result's size, in bsdiff's sign-magnitude encoding.
func header(ctrlLen, diffLen, newSize int64) []byte {
	b := []byte(bsdiffMagic)
	for _, v := range []int64{ctrlLen, diffLen, newSize} {
		var x [8]byte
		neg := v < 0
		if neg {
			v = -v
		}
		for i := range 8 {
			x[i] = byte(v >> (8 * i))
		}
		if neg {
			x[7] |= 0x80
		}
		b = append(b, x[:]...)
	}
	return b
}

// TestApplyPatchRefusesWhatDoesNotFitThePlan: a patch is checked against
// the sizes the plan declares before the decoder allocates anything. The
// first case is the one that crashed agents (a 32-byte patch whose header
// claims a huge control block: makeslice, or a fatal out-of-memory).
func TestApplyPatchRefusesWhatDoesNotFitThePlan(t *testing.T) {
	dir := t.TempDir()
	oldBytes, newBytes := versions(64 << 10)
	oldPath, newPath, patchPath := filepath.Join(dir, "v1"), filepath.Join(dir, "v2"), filepath.Join(dir, "p")
	require.NoError(t, os.WriteFile(oldPath, oldBytes, 0o755))
	require.NoError(t, os.WriteFile(newPath, newBytes, 0o755))
	require.NoError(t, MakePatch(oldPath, newPath, patchPath))
	good, err := os.ReadFile(patchPath)
	require.NoError(t, err)
	newSize := int64(len(newBytes))

	// withHeader is the good patch with another header.
	withHeader := func(h []byte) []byte { return append(h, good[bsdiffHeaderSize:]...) }
	ctrlLen := offtin(good[8:16])
	diffLen := offtin(good[16:24])
	for _, tc := range []struct {
		name  string
		patch []byte
		decl  Patch // zero sizes: the patch's length and newSize
		want  string
	}{
		{name: "huge control block", patch: header(1<<62, 0, newSize), want: "do not fit"},
		{name: "huge diff block", patch: withHeader(header(ctrlLen, 1<<62, newSize)), want: "do not fit"},
		{name: "negative control block", patch: withHeader(header(-5, diffLen, newSize)), want: "do not fit"},
		{name: "blocks that overflow together", patch: withHeader(header(1<<62, 1<<62, newSize)), want: "do not fit"},
		{name: "result larger than the artifact", patch: withHeader(header(ctrlLen, diffLen, 1<<40)), want: "claims a result of 1099511627776 bytes"},
		{name: "result smaller than the artifact", patch: withHeader(header(ctrlLen, diffLen, newSize-1)), want: "it is not a patch to this artifact"},
		{name: "not bsdiff", patch: append([]byte("BSDIFF41"), good[8:]...), want: "not a bsdiff patch"},
		{name: "shorter than a header", patch: good[:20], decl: Patch{Size: 20}, want: "less than a bsdiff header"},
		{name: "shorter than declared", patch: good[:len(good)-10], decl: Patch{Size: int64(len(good))}, want: "is it complete?"},
		{name: "larger than the artifact", patch: good, decl: Patch{Size: newSize + 1}, want: "larger than the artifact"},
		{name: "artifact too big to build", patch: good, decl: Patch{ResultSize: MaxPatchResult + 1}, want: "declares a result of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			decl := tc.decl
			decl.Name = "1a2b3c4d"
			if decl.Size == 0 {
				decl.Size = int64(len(tc.patch))
			}
			if decl.ResultSize == 0 {
				decl.ResultSize = newSize
			}
			var out bytes.Buffer
			err := ApplyPatch(oldPath, bytes.NewReader(tc.patch), &out, decl)
			require.ErrorIs(t, err, ErrBadPatch)
			assert.ErrorContains(t, err, tc.want)
			assert.ErrorContains(t, err, "1a2b3c4d", "the error names the patch")
			assert.Zero(t, out.Len(), "nothing written")
		})
	}

	t.Run("reads no more than declared", func(t *testing.T) {
		// An endless stream after the patch's declared bytes is never read.
		r := io.MultiReader(bytes.NewReader(good), endless{})
		var out bytes.Buffer
		require.NoError(t, ApplyPatch(oldPath, r, &out, Patch{Size: int64(len(good)), ResultSize: newSize}))
		assert.True(t, bytes.Equal(newBytes, out.Bytes()))
	})
}

type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }

// FuzzApplyPatch feeds arbitrary patches for a fixed old file: a patch
// either builds a result of the declared size or is refused with
// ErrBadPatch, never a panic or an allocation it did not declare. Its seed
// corpus (testdata/fuzz/FuzzApplyPatch) holds a real patch and the inputs
// that crashed the decoder before it was bounded.
func FuzzApplyPatch(f *testing.F) {
	dir := f.TempDir()
	oldBytes, newBytes := versions(8 << 10)
	oldPath, newPath, patchPath := filepath.Join(dir, "v1"), filepath.Join(dir, "v2"), filepath.Join(dir, "p")
	require.NoError(f, os.WriteFile(oldPath, oldBytes, 0o755))
	require.NoError(f, os.WriteFile(newPath, newBytes, 0o755))
	require.NoError(f, MakePatch(oldPath, newPath, patchPath))
	good, err := os.ReadFile(patchPath)
	require.NoError(f, err)
	f.Add(good)
	f.Add(header(1<<62, 0, int64(len(newBytes))))
	f.Fuzz(func(t *testing.T, patch []byte) {
		var out bytes.Buffer
		err := ApplyPatch(oldPath, bytes.NewReader(patch), &out, Patch{Name: "fuzz", Size: int64(len(patch)), ResultSize: int64(len(newBytes))})
		if err != nil {
			if !errors.Is(err, ErrBadPatch) {
				t.Fatalf("a bad patch's error does not wrap ErrBadPatch: %v", err)
			}
			return
		}
		if out.Len() != len(newBytes) {
			t.Fatalf("the patch built %d bytes, declared %d", out.Len(), len(newBytes))
		}
	})
}
