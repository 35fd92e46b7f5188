package piece

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func data(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/1000)
	}
	return b
}

func TestComputeVerify(t *testing.T) {
	b := data(5*MinSize + 17)
	l, err := Compute(bytes.NewReader(b), int64(len(b)), MinSize)
	require.NoError(t, err)
	require.NoError(t, l.Check(int64(len(b))))
	assert.Equal(t, 6, l.Count())
	assert.Equal(t, int64(17), l.Len(5, int64(len(b))), "the last piece holds the rest")
	for i := range l.Count() {
		off, n := l.Offset(i), l.Len(i, int64(len(b)))
		assert.NoError(t, l.Verify(i, b[off:off+n]))
	}
	bad := append([]byte(nil), b[:MinSize]...)
	bad[3] ^= 1
	assert.ErrorIs(t, l.Verify(0, bad), ErrMismatch)
	assert.Error(t, l.Verify(6, nil), "no piece 6")
	assert.Error(t, l.Verify(-1, nil))
}

func TestComputeShortReader(t *testing.T) {
	_, err := Compute(bytes.NewReader(data(100)), 200, MinSize)
	assert.Error(t, err, "fewer bytes than declared")
}

func TestRoot(t *testing.T) {
	b := data(3 * MinSize)
	l, err := Compute(bytes.NewReader(b), int64(len(b)), MinSize)
	require.NoError(t, err)
	assert.Len(t, l.Root(), 64)
	assert.Equal(t, l.Root(), l.Root())
	other := List{Size: l.Size * 2, SHA256: l.SHA256}
	assert.NotEqual(t, l.Root(), other.Root(), "the piece size is part of the root")
	swapped := List{Size: l.Size, SHA256: []string{l.SHA256[1], l.SHA256[0], l.SHA256[2]}}
	assert.NotEqual(t, l.Root(), swapped.Root(), "order is part of the root")
	assert.Empty(t, List{Size: MinSize, SHA256: []string{"zz"}}.Root())
}

func TestCheck(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name  string
		l     List
		total int64
		ok    bool
	}{
		{"one piece", List{Size: MinSize, SHA256: []string{h}}, 1, true},
		{"exact pieces", List{Size: MinSize, SHA256: []string{h, h}}, 2 * MinSize, true},
		{"too few hashes", List{Size: MinSize, SHA256: []string{h}}, MinSize + 1, false},
		{"too many hashes", List{Size: MinSize, SHA256: []string{h, h}}, MinSize, false},
		{"size not a power of two", List{Size: MinSize + 1, SHA256: []string{h}}, 10, false},
		{"size too small", List{Size: 512, SHA256: []string{h}}, 10, false},
		{"size too large", List{Size: 2 * MaxSize, SHA256: []string{h}}, 10, false},
		{"bad hash", List{Size: MinSize, SHA256: []string{strings.ToUpper(h)}}, 10, false},
		{"empty artifact", List{Size: MinSize}, 0, false},
		{"too many pieces", List{Size: MinSize, SHA256: make([]string, MaxCount+1)}, (MaxCount + 1) * MinSize, false},
	} {
		err := c.l.Check(c.total)
		if c.ok {
			assert.NoError(t, err, c.name)
		} else {
			assert.Error(t, err, c.name)
		}
	}
}

func TestSizeFor(t *testing.T) {
	assert.Equal(t, int64(DefaultSize), SizeFor(1))
	assert.Equal(t, int64(DefaultSize), SizeFor(MaxCount/2*DefaultSize))
	assert.Equal(t, int64(2*DefaultSize), SizeFor(MaxCount/2*DefaultSize+1))
	for _, total := range []int64{1, 1 << 30, 100 << 30, 1 << 40} {
		s := SizeFor(total)
		assert.NoError(t, checkSize(s))
		if total <= MaxCount*MaxSize {
			assert.LessOrEqual(t, count(total, s), MaxCount, "%d bytes", total)
		}
	}
}

func TestBitmap(t *testing.T) {
	b := NewBitmap(10)
	assert.Len(t, b, 2)
	b.Set(0)
	b.Set(9)
	b.Set(16) // past the bitmap: ignored
	b.Set(-1)
	assert.True(t, b.Has(0))
	assert.True(t, b.Has(9))
	assert.False(t, b.Has(1))
	assert.False(t, b.Has(10))
	assert.Equal(t, 2, b.Count())
	got, err := ParseBitmap(b, 10)
	require.NoError(t, err)
	assert.Equal(t, b, got)

	_, err = ParseBitmap([]byte{0}, 10)
	assert.Error(t, err, "short")
	_, err = ParseBitmap([]byte{0, 0, 0}, 10)
	assert.Error(t, err, "long")
	_, err = ParseBitmap([]byte{0, 0x20}, 10)
	assert.Error(t, err, "bit 10 set for a list of 10")
	_, err = ParseBitmap(nil, MaxCount+1)
	assert.Error(t, err)
}
