package piece

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzParseBitmap: a peer's have-bitmap either fails or names only pieces
// of the list, and encodes back to the same bytes.
func FuzzParseBitmap(f *testing.F) {
	f.Add([]byte{0xff, 0xc0}, 10)
	f.Add([]byte{}, 0)
	f.Add([]byte{0x80}, 1)
	f.Add([]byte{0xff}, 7)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		bm, err := ParseBitmap(b, n)
		if err != nil {
			return
		}
		for i := n; i < len(bm)*8; i++ {
			if bm.Has(i) {
				t.Fatalf("piece %d of %d is set", i, n)
			}
		}
		if !bytes.Equal(bm, b) || bm.Count() > n {
			t.Fatalf("bitmap %x for %d pieces came back as %x (%d set)", b, n, []byte(bm), bm.Count())
		}
	})
}

// FuzzList: a piece list from a plan (JSON a member encoded) either fails
// Check or is safe to use: every piece lies within the declared size and
// no piece is longer than the piece size.
func FuzzList(f *testing.F) {
	b := []byte("0123456789")
	l, _ := Compute(bytes.NewReader(b), int64(len(b)), MinSize)
	seed, _ := json.Marshal(l)
	f.Add(seed, int64(len(b)))
	f.Add([]byte(`{"size":1024,"sha256":[]}`), int64(0))
	f.Add([]byte(`{"size":1025,"sha256":["00"]}`), int64(1))
	f.Fuzz(func(t *testing.T, raw []byte, total int64) {
		var l List
		if json.Unmarshal(raw, &l) != nil || l.Check(total) != nil {
			return
		}
		var sum int64
		for i := range l.Count() {
			n := l.Len(i, total)
			if n <= 0 || n > l.Size || l.Offset(i)+n > total {
				t.Fatalf("piece %d: offset %d length %d of %d bytes", i, l.Offset(i), n, total)
			}
			sum += n
		}
		if sum != total || len(l.Root()) != 64 {
			t.Fatalf("pieces cover %d of %d bytes; root %q", sum, total, l.Root())
		}
	})
}
