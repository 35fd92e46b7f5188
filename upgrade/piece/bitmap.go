package piece

import "fmt"

// Bitmap says which pieces a node holds: bit i (byte i/8, most significant
// bit first) for piece i. On the wire it is exactly (n+7)/8 bytes for a list
// of n pieces, with the bits past n clear.
type Bitmap []byte

// NewBitmap is an empty bitmap for n pieces.
func NewBitmap(n int) Bitmap { return make(Bitmap, (n+7)/8) }

// Has reports whether piece i is set.
func (b Bitmap) Has(i int) bool {
	return i >= 0 && i/8 < len(b) && b[i/8]&(0x80>>(i%8)) != 0
}

// Set sets piece i (ignored when out of range).
func (b Bitmap) Set(i int) {
	if i >= 0 && i/8 < len(b) {
		b[i/8] |= 0x80 >> (i % 8)
	}
}

// Count is how many pieces are set.
func (b Bitmap) Count() int {
	c := 0
	for _, x := range b {
		for ; x != 0; x &= x - 1 {
			c++
		}
	}
	return c
}

// ParseBitmap decodes a peer's have-bitmap for a list of n pieces. A peer
// could send anything: a wrong length or a bit past n is refused rather
// than read as pieces the list does not have.
func ParseBitmap(b []byte, n int) (Bitmap, error) {
	if n < 0 || n > MaxCount {
		return nil, fmt.Errorf("have-bitmap for %d pieces: at most %d", n, MaxCount)
	}
	if want := (n + 7) / 8; len(b) != want {
		return nil, fmt.Errorf("have-bitmap of %d bytes for %d pieces: want %d", len(b), n, want)
	}
	if r := n % 8; r != 0 && b[len(b)-1]&(0xff>>r) != 0 {
		return nil, fmt.Errorf("have-bitmap sets pieces past the %d the list has", n)
	}
	return Bitmap(append([]byte(nil), b...)), nil
}
