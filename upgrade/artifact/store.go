package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/peerd/peerd/internal/durable"
)

// ErrDigestMismatch is wrapped when bytes do not hash to the digest asked
// for: a corrupt or substituted download, which a caller may retry from
// another source.
var ErrDigestMismatch = errors.New("digest mismatch")

// Digest hashes r and returns the lowercase hex sha256 and the byte count.
func Digest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, fmt.Errorf("hash: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// DigestFile hashes the file at path.
func DigestFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("hash: %w", err)
	}
	defer f.Close()
	sha, n, err := Digest(f)
	if err != nil {
		return "", n, fmt.Errorf("%s: %w", path, err)
	}
	return sha, n, nil
}

// Store is a content-addressed cache of artifacts in one directory, each file
// named by the lowercase hex sha256 of its bytes. A file appears under its
// name only once complete and verified (written to a temp file, synced, then
// renamed), so a reader never sees a partial blob. It is safe for concurrent
// use: every Put writes its own temp file, and two Puts of the same bytes
// rename identical content over each other.
type Store struct {
	dir string
}

// NewStore opens the store in dir, creating it (mode 0700) if needed.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create artifact store: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Put copies r into the store, hashing as it writes, and returns the digest
// and size. If wantSHA256 is not empty and the bytes hash to something else,
// nothing is stored and the error wraps ErrDigestMismatch and names both.
func (s *Store) Put(r io.Reader, wantSHA256 string) (sha string, size int64, err error) {
	if wantSHA256 != "" && !sha256Hex.MatchString(wantSHA256) {
		return "", 0, fmt.Errorf("store artifact: wanted digest %q is not 64 lowercase hex digits", wantSHA256)
	}
	f, err := os.CreateTemp(s.dir, ".put-*")
	if err != nil {
		return "", 0, fmt.Errorf("store artifact: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", size, fmt.Errorf("store artifact: %w", err)
	}
	sha = hex.EncodeToString(h.Sum(nil))
	if wantSHA256 != "" && sha != wantSHA256 {
		return "", size, fmt.Errorf("store artifact: %w: the %d bytes received hash to sha256 %s, want %s",
			ErrDigestMismatch, size, sha, wantSHA256)
	}
	if err = os.Rename(tmp, s.Path(sha)); err != nil {
		return "", size, fmt.Errorf("store artifact: %w", err)
	}
	if err = durable.SyncDir(s.dir); err != nil {
		return "", size, fmt.Errorf("store artifact: %w", err)
	}
	return sha, size, nil
}

// Has reports whether the store holds the blob with digest sha.
func (s *Store) Has(sha string) bool {
	if !sha256Hex.MatchString(sha) {
		return false
	}
	fi, err := os.Stat(s.Path(sha))
	return err == nil && fi.Mode().IsRegular()
}

// Path is where the blob with digest sha lives (or would). It does not check
// sha: pass only digests from Put or ones that Has accepted, since anything
// else may name a path outside the store.
func (s *Store) Path(sha string) string { return filepath.Join(s.dir, sha) }

// Open opens the blob with digest sha for reading.
func (s *Store) Open(sha string) (*os.File, error) {
	if !sha256Hex.MatchString(sha) {
		return nil, fmt.Errorf("open artifact %q: not a sha256 digest", sha)
	}
	f, err := os.Open(s.Path(sha))
	if err != nil {
		return nil, fmt.Errorf("open artifact: %w", err)
	}
	return f, nil
}

// Blob is one file of the store, complete or (Temp) a Put's leftover.
type Blob struct {
	SHA256  string // "" for a temp file
	Name    string
	ModTime time.Time
	Temp    bool
}

// List lists the store's files: blobs by digest, and the temp files of
// Puts that are running or died.
func (s *Store) List() ([]Blob, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list artifact store: %w", err)
	}
	var out []Blob
	for _, de := range entries {
		fi, err := de.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		switch name := de.Name(); {
		case sha256Hex.MatchString(name):
			out = append(out, Blob{SHA256: name, Name: name, ModTime: fi.ModTime()})
		case strings.HasPrefix(name, ".put-"):
			out = append(out, Blob{Name: name, ModTime: fi.ModTime(), Temp: true})
		}
	}
	return out, nil
}

// Remove deletes one file List returned.
func (s *Store) Remove(b Blob) error {
	if b.Name == "" || b.Name != filepath.Base(b.Name) || (!b.Temp && !sha256Hex.MatchString(b.Name)) {
		return fmt.Errorf("remove artifact %q: not a file of the store", b.Name)
	}
	if err := os.Remove(filepath.Join(s.dir, b.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove artifact: %w", err)
	}
	return nil
}
