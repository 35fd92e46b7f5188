// Package piece cuts an artifact into fixed-size pieces and names each by
// its sha256, so that a node can fetch an artifact from several peers at
// once and check every piece as it arrives, before the whole artifact's
// digest can be.
//
// A piece list travels in the origin-signed plan; its Root can also be bound
// into the release signature's manifest. The whole artifact's sha256 stays
// the final check: a list only decides which bytes are worth keeping early.
//
// This package is pure: no I/O beyond the reader it is handed, no clock. It
// must never accept a list or bitmap that would make a caller read, write or
// allocate beyond what the artifact's declared size allows.
package piece

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
)

const (
	// DefaultSize is the piece size of artifacts up to MaxCount/2 MiB: small
	// enough that a wave's nodes trade pieces within seconds of each other,
	// large enough that a request's overhead is small beside its bytes.
	DefaultSize = 1 << 20
	// MinSize and MaxSize bound a list's piece size (MinSize lets tests cut
	// small artifacts into many pieces).
	MinSize = 1 << 10
	MaxSize = 64 << 20
	// MaxCount bounds the pieces of one artifact, so that a list stays a
	// small part of a plan (at most ~270 KiB of hex) and a have-bitmap a
	// few hundred bytes. SizeFor keeps lists at half of it.
	MaxCount = 4096
)

// List is an artifact's pieces: every piece is Size bytes but the last,
// which holds the rest.
type List struct {
	Size   int64    `json:"size"`
	SHA256 []string `json:"sha256"`
}

// SizeFor is the piece size for an artifact of total bytes: DefaultSize,
// doubled until the list has at most MaxCount/2 pieces.
func SizeFor(total int64) int64 {
	s := int64(DefaultSize)
	for s < MaxSize && (total+s-1)/s > MaxCount/2 {
		s *= 2
	}
	return s
}

// Compute reads exactly total bytes from r and lists their pieces of size.
func Compute(r io.Reader, total, size int64) (List, error) {
	if err := checkSize(size); err != nil {
		return List{}, err
	}
	n := count(total, size)
	if total <= 0 || n > MaxCount {
		return List{}, fmt.Errorf("piece list of %d bytes in pieces of %d: want 1 to %d pieces", total, size, MaxCount)
	}
	l := List{Size: size, SHA256: make([]string, 0, n)}
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		b := buf[:l.lenOf(i, total)]
		if _, err := io.ReadFull(r, b); err != nil {
			return List{}, fmt.Errorf("piece %d: %w", i, err)
		}
		sum := sha256.Sum256(b)
		l.SHA256 = append(l.SHA256, hex.EncodeToString(sum[:]))
	}
	return l, nil
}

func count(total, size int64) int {
	if total <= 0 || size <= 0 {
		return 0
	}
	c := (total + size - 1) / size
	if c > MaxCount+1 {
		return MaxCount + 1 // too many; the caller refuses it
	}
	return int(c)
}

func checkSize(size int64) error {
	if size < MinSize || size > MaxSize || size&(size-1) != 0 {
		return fmt.Errorf("piece size %d: want a power of two from %d to %d", size, MinSize, MaxSize)
	}
	return nil
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Check reports whether l can be the list of an artifact of total bytes:
// a valid piece size and exactly one well-formed hash per piece. Every
// other method trusts a list that passed it.
func (l List) Check(total int64) error {
	if err := checkSize(l.Size); err != nil {
		return err
	}
	if total <= 0 {
		return fmt.Errorf("piece list for %d bytes: want a non-empty artifact", total)
	}
	if n := count(total, l.Size); n > MaxCount || len(l.SHA256) != n {
		return fmt.Errorf("piece list has %d hashes; %d bytes in pieces of %d make %d (at most %d)", len(l.SHA256), total, l.Size, n, MaxCount)
	}
	for i, h := range l.SHA256 {
		if !hex64.MatchString(h) {
			return fmt.Errorf("piece %d sha256 %.70q: want 64 lowercase hex digits", i, h)
		}
	}
	return nil
}

// CheckSize reports whether l's piece size is one a list may have (a
// peer's request names the size it wants pieces of).
func (l List) CheckSize() error { return checkSize(l.Size) }

// Count is how many pieces l lists.
func (l List) Count() int { return len(l.SHA256) }

// Offset is where piece i starts.
func (l List) Offset(i int) int64 { return int64(i) * l.Size }

// Len is the length of piece i of an artifact of total bytes.
func (l List) Len(i int, total int64) int64 { return l.lenOf(i, total) }

func (l List) lenOf(i int, total int64) int64 {
	return min(l.Size, total-l.Offset(i))
}

// ErrMismatch is wrapped by Verify's error: the bytes are not the piece.
var ErrMismatch = errors.New("piece does not match its hash")

// Verify checks that b is piece i.
func (l List) Verify(i int, b []byte) error {
	if i < 0 || i >= len(l.SHA256) {
		return fmt.Errorf("piece %d of %d: no such piece", i, len(l.SHA256))
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != l.SHA256[i] {
		return fmt.Errorf("piece %d (%d bytes): %w: sha256 %s, want %s", i, len(b), ErrMismatch, got[:12], l.SHA256[i][:12])
	}
	return nil
}

// Root names the list in one digest, as a release signature binds it:
// sha256 over the piece size (8 bytes, big-endian) and then each piece's
// 32-byte hash in order. The size is in it so that the same hashes cannot
// be read as pieces of another size.
func (l List) Root() string {
	h := sha256.New()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(l.Size))
	h.Write(b[:])
	for _, s := range l.SHA256 {
		raw, err := hex.DecodeString(s)
		if err != nil || len(raw) != sha256.Size {
			// A list that fails Check has no root worth comparing: make
			// it match no real one.
			return ""
		}
		h.Write(raw)
	}
	return hex.EncodeToString(h.Sum(nil))
}
