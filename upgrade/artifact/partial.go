package artifact

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade/piece"
)

// Partial is a blob being assembled from pieces, in a temp file of the
// store (collected as a Put's leftover if the process dies). A piece is
// kept only once it matches the list, so every piece Has reports may be
// served to peers at once; Commit moves the whole into the store only if it
// hashes to the blob's digest.
type Partial struct {
	store *Store
	sha   string
	list  piece.List
	size  int64
	path  string

	mu     sync.Mutex // guards what follows; never held across I/O on f
	f      *os.File
	have   piece.Bitmap
	count  int
	closed bool
}

// NewPartial starts assembling the blob sha of size bytes from the pieces
// of list, which must have passed list.Check(size).
func (s *Store) NewPartial(sha string, list piece.List, size int64) (*Partial, error) {
	if !sha256Hex.MatchString(sha) {
		return nil, fmt.Errorf("assemble artifact %q: not a sha256 digest", sha)
	}
	if err := list.Check(size); err != nil {
		return nil, fmt.Errorf("assemble artifact %.12s: %w", sha, err)
	}
	f, err := os.CreateTemp(s.dir, ".put-pieces-*")
	if err != nil {
		return nil, fmt.Errorf("assemble artifact: %w", err)
	}
	// The file's size is the declared one from the start: a piece is
	// written in place, and nothing a peer sends makes it larger.
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("assemble artifact: %w", err)
	}
	return &Partial{store: s, sha: sha, list: list, size: size, path: f.Name(), f: f, have: piece.NewBitmap(list.Count())}, nil
}

// List is the piece list the partial blob is assembled by.
func (p *Partial) List() piece.List { return p.list }

// Has reports whether piece i is here and verified.
func (p *Partial) Has(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.have.Has(i)
}

// Have is a copy of the bitmap of verified pieces.
func (p *Partial) Have() piece.Bitmap {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(piece.Bitmap(nil), p.have...)
}

// Complete reports whether every piece is here.
func (p *Partial) Complete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count == p.list.Count()
}

// Write reads piece i from r (at most one byte more than the piece, so a
// sender that streams on is cut off) and keeps it if it matches its hash.
// A piece of the wrong length or hash is an error wrapping
// piece.ErrMismatch: its sender is not to be trusted again.
func (p *Partial) Write(i int, r io.Reader) (int64, error) {
	if i < 0 || i >= p.list.Count() {
		return 0, fmt.Errorf("piece %d of %d: no such piece", i, p.list.Count())
	}
	want := p.list.Len(i, p.size)
	b, err := io.ReadAll(io.LimitReader(r, want+1))
	if err != nil {
		return 0, fmt.Errorf("read piece %d: %w", i, err)
	}
	if int64(len(b)) != want {
		return 0, fmt.Errorf("piece %d: %w: %d bytes, want %d", i, piece.ErrMismatch, len(b), want)
	}
	if err := p.list.Verify(i, b); err != nil {
		return 0, err
	}
	p.mu.Lock()
	f, closed, dup := p.f, p.closed, p.have.Has(i)
	p.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("piece %d: the partial artifact was closed", i)
	}
	if dup {
		return want, nil
	}
	if _, err := f.WriteAt(b, p.list.Offset(i)); err != nil {
		return 0, fmt.Errorf("write piece %d: %w", i, err)
	}
	p.mu.Lock()
	if !p.have.Has(i) {
		p.have.Set(i)
		p.count++
	}
	p.mu.Unlock()
	return want, nil
}

// OpenPiece opens piece i for a peer, if it is here.
func (p *Partial) OpenPiece(i int) (io.ReadCloser, int64, error) {
	p.mu.Lock()
	ok := !p.closed && p.have.Has(i)
	p.mu.Unlock()
	if !ok {
		return nil, 0, os.ErrNotExist
	}
	// Its own descriptor: Commit may rename and close the partial while
	// the piece streams.
	f, err := os.Open(p.path)
	if err != nil {
		return nil, 0, err
	}
	n := p.list.Len(i, p.size)
	return readCloser{io.NewSectionReader(f, p.list.Offset(i), n), f}, n, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// Commit moves the complete blob into the store once its bytes hash to the
// blob's digest: the pieces' hashes came with a plan, the digest is what
// every later check relies on.
func (p *Partial) Commit() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("commit artifact %.12s: already closed", p.sha)
	}
	if p.count != p.list.Count() {
		p.mu.Unlock()
		return fmt.Errorf("commit artifact %.12s: %d of %d pieces", p.sha, p.count, p.list.Count())
	}
	p.closed = true
	f := p.f
	p.mu.Unlock()
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		var sha string
		if sha, _, err = DigestFile(p.path); err == nil && sha != p.sha {
			err = fmt.Errorf("%w: the assembled %d bytes hash to sha256 %s, want %s", ErrDigestMismatch, p.size, sha, p.sha)
		}
	}
	if err == nil {
		err = os.Rename(p.path, p.store.Path(p.sha))
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(p.path))
	}
	if err != nil {
		os.Remove(p.path)
		return fmt.Errorf("commit artifact %.12s: %w", p.sha, err)
	}
	return nil
}

// Abort discards the partial blob; it is a no-op after Commit or Abort.
func (p *Partial) Abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.f.Close()
	os.Remove(p.path)
}
