package artifact

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"testing"

	"github.com/peerd/peerd/upgrade/piece"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func pieced(t *testing.T, n int) ([]byte, piece.List) {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	l, err := piece.Compute(bytes.NewReader(b), int64(n), piece.MinSize)
	require.NoError(t, err)
	return b, l
}

func pieceOf(b []byte, l piece.List, i int) []byte {
	off := l.Offset(i)
	return b[off : off+l.Len(i, int64(len(b)))]
}

func TestPartialAssembles(t *testing.T) {
	s, err := NewStore(t.TempDir())
	require.NoError(t, err)
	b, l := pieced(t, 3*piece.MinSize+5)
	p, err := s.NewPartial(sha(b), l, int64(len(b)))
	require.NoError(t, err)

	// Out of order, and each piece served on as soon as it is in.
	for _, i := range []int{3, 1, 0, 2} {
		assert.False(t, p.Has(i))
		_, _, err := p.OpenPiece(i)
		assert.ErrorIs(t, err, os.ErrNotExist, "piece %d is not here yet", i)
		n, err := p.Write(i, bytes.NewReader(pieceOf(b, l, i)))
		require.NoError(t, err)
		assert.Equal(t, l.Len(i, int64(len(b))), n)
		rc, size, err := p.OpenPiece(i)
		require.NoError(t, err)
		got, _ := io.ReadAll(rc)
		rc.Close()
		assert.Equal(t, pieceOf(b, l, i), got)
		assert.Equal(t, int64(len(got)), size)
	}
	assert.True(t, p.Complete())
	assert.Equal(t, 4, p.Have().Count())
	require.NoError(t, p.Commit())
	assert.True(t, s.Has(sha(b)))
	got, _ := os.ReadFile(s.Path(sha(b)))
	assert.Equal(t, b, got)
	blobs, _ := s.List()
	assert.Len(t, blobs, 1, "no temp file is left")
	p.Abort() // a no-op after Commit
	assert.True(t, s.Has(sha(b)))
}

func TestPartialRefusesBadPieces(t *testing.T) {
	s, err := NewStore(t.TempDir())
	require.NoError(t, err)
	b, l := pieced(t, 2*piece.MinSize)
	p, err := s.NewPartial(sha(b), l, int64(len(b)))
	require.NoError(t, err)
	defer p.Abort()
	bad := bytes.Clone(pieceOf(b, l, 0))
	bad[0] ^= 1
	_, err = p.Write(0, bytes.NewReader(bad))
	assert.ErrorIs(t, err, piece.ErrMismatch, "a flipped bit")
	_, err = p.Write(0, bytes.NewReader(append(pieceOf(b, l, 0), 'x')))
	assert.ErrorIs(t, err, piece.ErrMismatch, "a byte too many")
	_, err = p.Write(0, bytes.NewReader(pieceOf(b, l, 0)[1:]))
	assert.ErrorIs(t, err, piece.ErrMismatch, "a byte too few")
	_, err = p.Write(0, io.MultiReader(bytes.NewReader(pieceOf(b, l, 0)), neverEnding{}))
	assert.ErrorIs(t, err, piece.ErrMismatch, "a sender that streams on is cut off")
	_, err = p.Write(2, bytes.NewReader(nil))
	assert.Error(t, err, "no piece 2")
	assert.False(t, p.Has(0))
	assert.Error(t, p.Commit(), "incomplete")
}

type neverEnding struct{}

func (neverEnding) Read(b []byte) (int, error) { return len(b), nil }

func TestPartialCommitChecksTheDigest(t *testing.T) {
	s, err := NewStore(t.TempDir())
	require.NoError(t, err)
	b, l := pieced(t, piece.MinSize)
	// A list that matches bytes other than the digest's: the pieces
	// verify, the whole does not.
	wrong := sha([]byte("other"))
	p, err := s.NewPartial(wrong, l, int64(len(b)))
	require.NoError(t, err)
	_, err = p.Write(0, bytes.NewReader(b))
	require.NoError(t, err)
	assert.ErrorIs(t, p.Commit(), ErrDigestMismatch)
	assert.False(t, s.Has(wrong))
	blobs, _ := s.List()
	assert.Empty(t, blobs)
}

func TestPartialRefusesBadList(t *testing.T) {
	s, err := NewStore(t.TempDir())
	require.NoError(t, err)
	_, l := pieced(t, piece.MinSize)
	_, err = s.NewPartial(sha(nil), l, 10*piece.MinSize)
	assert.Error(t, err, "a list of one piece for ten pieces' bytes")
	_, err = s.NewPartial("../x", l, piece.MinSize)
	assert.Error(t, err)
}
