// Package versions is the version store: where a rollout installs new
// versions of a program, so that a self-upgrade never writes over a file
// the package manager owns (/usr/bin/peerd stays as dpkg or rpm left it).
//
// The program the package (or Nomad, or an operator) installed is the
// launcher, or base. The store lives in the agent's data dir:
//
//	DIR/2.0.0/peerd      a verified binary, read-only
//	DIR/2.0.0/sha256     its digest, written before anything points at it
//	DIR/current  -> 2.0.0   the version to run, when newer than the launcher
//	DIR/previous -> 1.5.0   what a rollback brings back; absent: the launcher
//
// At start the launcher asks Select which binary to run: the current stored
// version when it verifies and is newer than the launcher itself, else the
// launcher. So a package upgrade to a still newer version wins over the
// store, and a damaged store never stops a node from starting.
//
// Every change is a rename of a symlink or of a synced file followed by a
// sync of the directory: whatever instant the node dies, current names a
// complete, verified binary or nothing.
package versions

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade/artifact"
	"golang.org/x/mod/semver"
)

const (
	currentLink  = "current"
	previousLink = "previous"
	digestFile   = "sha256"
)

// Store is the version store of one program.
type Store struct {
	dir  string // DIR above
	name string // file name of the program in each version dir
	base string // path of the launcher
}

// New returns the store of the program name under dir, whose launcher is
// the binary at base. It touches nothing on disk.
func New(dir, name, base string) *Store {
	return &Store{dir: dir, name: name, base: base}
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Binary is one runnable version of the program.
type Binary struct {
	// Version is the stored version; empty for the launcher, whose version
	// the store does not know without running it.
	Version string
	Path    string
	// Base is set for the launcher itself.
	Base bool
}

func (s *Store) launcher() Binary { return Binary{Path: s.base, Base: true} }

func (s *Store) stored(version string) Binary {
	return Binary{Version: version, Path: filepath.Join(s.dir, version, s.name)}
}

// link reads the version a link names; ok is false when there is none.
func (s *Store) link(name string) (version string, ok bool, err error) {
	target, err := os.Readlink(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("version store: read %s: %w", name, err)
	}
	if !validVersion(target) {
		return "", false, fmt.Errorf("version store: %s points at %q, which is not a version: remove %s",
			name, target, filepath.Join(s.dir, name))
	}
	return target, true, nil
}

// Current is the stored version the launcher starts when it is newer than
// itself; ok is false when the store holds none.
func (s *Store) Current() (b Binary, ok bool, err error) {
	v, ok, err := s.link(currentLink)
	if !ok || err != nil {
		return Binary{}, false, err
	}
	return s.stored(v), true, nil
}

// Previous is the binary a rollback of the current version brings back:
// the version current replaced, or the launcher.
func (s *Store) Previous() (Binary, error) {
	v, ok, err := s.link(previousLink)
	if err != nil {
		return Binary{}, err
	}
	if !ok {
		return s.launcher(), nil
	}
	return s.stored(v), nil
}

// Stored is version's binary in the store when the store holds it and it
// still matches the digest recorded at install; ok is false otherwise.
func (s *Store) Stored(version string) (b Binary, ok bool) {
	if !validVersion(version) {
		return Binary{}, false
	}
	b = s.stored(version)
	if s.Verify(b) != nil {
		return Binary{}, false
	}
	return b, true
}

// Select decides which binary a launcher at version self runs: the current
// stored version when it is newer than self and its bytes still match the
// digest recorded when it was installed; the launcher otherwise. why says
// in a few words why the launcher was chosen when there was a stored
// version (empty otherwise), for the log.
func (s *Store) Select(self string) (b Binary, why string, err error) {
	return s.SelectTrusting(self, "")
}

// SelectTrusting is Select taking the stored bytes of version trusted on
// their digest file, unhashed: for a re-exec right after a rollout
// activated version, whose bytes Stage hashed and synced as it copied them
// (hashing 17 MB again cost the restart ~70 ms with the node offline). A
// launcher started cold (a boot, a supervisor's restart) uses Select and
// hashes, since a disk may have damaged the file since.
func (s *Store) SelectTrusting(self, trusted string) (b Binary, why string, err error) {
	cur, ok, err := s.Current()
	if err != nil {
		return s.launcher(), "", err
	}
	if !ok {
		return s.launcher(), "", nil
	}
	if Compare(cur.Version, self) <= 0 {
		return s.launcher(), fmt.Sprintf("the launcher (%s) is not older than the stored %s", self, cur.Version), nil
	}
	if trusted != "" && trusted == cur.Version && s.staged(cur.Version) {
		return cur, "", nil
	}
	if err := s.Verify(cur); err != nil {
		return s.launcher(), "", err
	}
	return cur, "", nil
}

// Verify checks a stored binary against the digest recorded at install.
func (s *Store) Verify(b Binary) error {
	want, err := os.ReadFile(filepath.Join(filepath.Dir(b.Path), digestFile))
	if err != nil {
		return fmt.Errorf("version store: %s has no recorded digest: %w", b.Version, err)
	}
	got, _, err := artifact.DigestFile(b.Path)
	if err != nil {
		return fmt.Errorf("version store: %s: %w", b.Version, err)
	}
	if got != strings.TrimSpace(string(want)) {
		return fmt.Errorf("version store: %s does not match its recorded sha256 (damaged?); reinstall it with a rollout", b.Path)
	}
	return nil
}

// ErrNotStaged is returned by Activate for a version the store does not
// hold: it must be staged (or installed) first.
var ErrNotStaged = errors.New("version not staged")

// Install makes version, whose verified binary is at src, the current one:
// Stage, then Activate. running is the path of the binary now running:
// when it is the stored current version, that version becomes previous;
// otherwise the launcher is running and a rollback goes back to it.
// Installing the version that is already current changes nothing, so that
// a rollout step interrupted by a crash can run Install again.
func (s *Store) Install(src, version, running string) error {
	if err := s.Stage(src, version); err != nil {
		return err
	}
	return s.Activate(version, running)
}

// Stage puts version, whose verified binary is at src, into the store
// without pointing anything at it: the copy, its digest and every fsync,
// everything slow about an install, happen here, so that a rollout does
// them while the node still serves and Activate, once it is offline, only
// swaps links. A staged version nothing points at is harmless: a crash
// leaves the node at what current names, and the next Activate prunes it.
// Staging the version that is current or previous changes nothing when its
// bytes still match their digest: a link names it, and it stays as it was.
func (s *Store) Stage(src, version string) error {
	if !validVersion(version) {
		return fmt.Errorf("version store: %q is not a version", version)
	}
	for _, link := range []string{currentLink, previousLink} {
		if v, ok, err := s.link(link); err == nil && ok && v == version && s.Verify(s.stored(v)) == nil {
			return nil
		}
	}
	vdir := filepath.Join(s.dir, version)
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return fmt.Errorf("version store: %w", err)
	}
	// The digest goes first: a binary that is there without one (a crash
	// between the two) is not staged, whatever it holds.
	if err := os.Remove(filepath.Join(vdir, digestFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	sum, err := s.linkIn(src, vdir)
	if err != nil {
		sum, err = s.copyIn(src, vdir)
	}
	if err != nil {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	if err := durable.WriteFile(filepath.Join(vdir, digestFile), []byte(sum+"\n"), 0o644); err != nil {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("version store: %w", err)
	}
	return nil
}

// Activate makes the staged version current, and what runs now (running,
// as for Install) previous. It reads no binary: the bytes were hashed and
// synced by Stage, and the launcher checks them again before it runs them.
// Activating the current version changes nothing; a version not staged is
// ErrNotStaged.
func (s *Store) Activate(version, running string) error {
	if !validVersion(version) {
		return fmt.Errorf("version store: %q is not a version", version)
	}
	if cur, ok, err := s.Current(); err == nil && ok && cur.Version == version {
		return nil
	}
	if !s.staged(version) {
		return fmt.Errorf("version store: activate %s: %w", version, ErrNotStaged)
	}
	return s.activate(version, running)
}

// staged reports whether version's binary and its digest are in the store.
func (s *Store) staged(version string) bool {
	b := s.stored(version)
	if _, err := os.Stat(filepath.Join(filepath.Dir(b.Path), digestFile)); err != nil {
		return false
	}
	_, err := os.Stat(b.Path)
	return err == nil
}

// InstallTree makes version current from a directory tree (an extracted
// application bundle) whose executable is entry, a path inside it:
// StageTree, then Activate.
func (s *Store) InstallTree(tree, entry, version, running string) error {
	if err := s.StageTree(tree, entry, version); err != nil {
		return err
	}
	return s.Activate(version, running)
}

// StageTree stages version from a directory tree (an extracted application
// bundle) whose executable is entry, a path inside it. The tree is moved
// into the store (it must be on the store's filesystem, e.g. made with
// TreeDir); version's binary is then a link to entry. The current version
// cannot be staged again this way (its tree may be running).
func (s *Store) StageTree(tree, entry, version string) error {
	if !validVersion(version) {
		return fmt.Errorf("version store: %q is not a version", version)
	}
	clean := filepath.Clean(entry)
	if filepath.IsAbs(clean) || clean == "." || strings.HasPrefix(clean, "..") {
		return fmt.Errorf("version store: entry %q must be a path inside the bundle", entry)
	}
	sum, _, err := artifact.DigestFile(filepath.Join(tree, clean))
	if err != nil {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	if err := os.Symlink(clean, filepath.Join(tree, s.name)); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	if err := durable.WriteFile(filepath.Join(tree, digestFile), []byte(sum+"\n"), 0o644); err != nil {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	vdir := filepath.Join(s.dir, version)
	if cur, ok, _ := s.Current(); ok && cur.Version == version {
		return fmt.Errorf("version store: %s is current; install another version first", version)
	}
	if err := os.RemoveAll(vdir); err != nil {
		return fmt.Errorf("version store: %w", err)
	}
	if err := os.Rename(tree, vdir); err != nil {
		return fmt.Errorf("version store: stage %s: %w", version, err)
	}
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("version store: %w", err)
	}
	return nil
}

// TreeDir is a fresh path in the store's directory to extract a bundle to
// before InstallTree (same filesystem, so the move is a rename).
func (s *Store) TreeDir(version string) (string, error) {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return "", fmt.Errorf("version store: %w", err)
	}
	return filepath.Join(s.dir, "."+version+".new"), nil
}

// activate points current at version, and previous at what ran before.
func (s *Store) activate(version, running string) error {
	prev := ""
	if cur, ok, err := s.Current(); err == nil && ok && cur.Version != version && sameFile(cur.Path, running) {
		prev = cur.Version
	}
	if err := s.setLink(previousLink, prev); err != nil {
		return err
	}
	if err := s.setLink(currentLink, version); err != nil {
		return err
	}
	s.prune(version, prev)
	return nil
}

// Rollback undoes the install of version: previous becomes current again
// (or the launcher runs, when previous is the launcher). It does nothing
// when version is not current, so it may run again after a crash.
func (s *Store) Rollback(version string) error {
	cur, ok, err := s.Current()
	if err != nil {
		return err
	}
	if !ok || cur.Version != version {
		return nil
	}
	prev, _, err := s.link(previousLink)
	if err != nil {
		return err
	}
	if err := s.setLink(currentLink, prev); err != nil {
		return err
	}
	return s.setLink(previousLink, "")
}

// linkIn puts src into vdir/name as a hard link and returns its sha256:
// a staged artifact is a link to the artifact store's synced blob, so the
// version store shares its inode instead of writing (and syncing) the
// whole binary once more. It fails where src is on another filesystem;
// copyIn then.
func (s *Store) linkIn(src, vdir string) (string, error) {
	path := filepath.Join(vdir, s.name)
	if err := durable.Link(src, path, 0o555); err != nil {
		return "", err
	}
	sum, _, err := artifact.DigestFile(path)
	return sum, err
}

// copyIn copies src into vdir/name through a synced temp file and returns
// its sha256. The stored binary is read-only: nothing edits it in place.
func (s *Store) copyIn(src, vdir string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(vdir, "."+s.name+".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), in)
	if err == nil {
		err = tmp.Chmod(0o555)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(vdir, s.name))
	}
	if err == nil {
		err = durable.SyncDir(vdir)
	}
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// setLink points the link name at version atomically, or removes it when
// version is empty.
func (s *Store) setLink(name, version string) error {
	path := filepath.Join(s.dir, name)
	if version == "" {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("version store: remove %s: %w", name, err)
		}
	} else {
		tmp := filepath.Join(s.dir, "."+name+".tmp")
		_ = os.Remove(tmp)
		if err := os.Symlink(version, tmp); err != nil {
			return fmt.Errorf("version store: point %s at %s: %w", name, version, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("version store: point %s at %s: %w", name, version, err)
		}
	}
	if err := durable.SyncDir(s.dir); err != nil {
		return fmt.Errorf("version store: %w", err)
	}
	return nil
}

// prune removes stored versions other than those kept: a node needs the
// one it runs and the one it would roll back to, nothing older.
func (s *Store) prune(keep ...string) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !validVersion(e.Name()) || contains(keep, e.Name()) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(s.dir, e.Name()))
	}
}

// startsFile counts the launcher's hand-overs to a stored version that
// have not reached a running agent yet.
const startsFile = "starts"

// MaxStarts is how many times the launcher hands over to a stored version
// that never comes up before it gives up on it and rolls back: a binary
// that passed every check but cannot start must not keep a node down.
const MaxStarts = 3

// NoteStart counts one more hand-over to the stored version v and returns
// the count, including this one.
func (s *Store) NoteStart(v string) (int, error) {
	path := filepath.Join(s.dir, v, startsFile)
	n := 0
	if b, err := os.ReadFile(path); err == nil {
		fmt.Sscanf(string(b), "%d", &n)
	}
	n++
	if err := durable.WriteFile(path, []byte(fmt.Sprintf("%d\n", n)), 0o644); err != nil {
		return n, fmt.Errorf("version store: %w", err)
	}
	return n, nil
}

// Started records that the stored version v came up: its count restarts.
func (s *Store) Started(v string) error {
	err := os.Remove(filepath.Join(s.dir, v, startsFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("version store: %w", err)
	}
	return nil
}

// Compare compares two semantic versions, with or without a leading "v";
// a version that does not parse sorts before any that does.
func Compare(a, b string) int {
	return semver.Compare(canonical(a), canonical(b))
}

func canonical(v string) string {
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	return v
}

// validVersion accepts what may name a version dir: a semantic version,
// nothing that could climb out of the store.
func validVersion(v string) bool {
	return v != "" && !strings.ContainsAny(v, `/\`) && v != "." && v != ".." && semver.IsValid(canonical(v))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s && s != "" {
			return true
		}
	}
	return false
}

func sameFile(a, b string) bool {
	ai, err := os.Stat(a)
	if err != nil {
		return false
	}
	bi, err := os.Stat(b)
	if err != nil {
		return false
	}
	return os.SameFile(ai, bi)
}
