// Package durable writes files so that a crash at any instant leaves either
// the old or the new content, never a torn file or a forgotten rename. The
// cluster's peer list, the rollout's state, lease grants and artifact store
// depend on it.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data: temp file in the same directory,
// fsync, rename, then fsync of the directory.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return replace(path, data, mode, nil)
}

// replace writes data to a synced temp file beside path, runs beforeRename
// (if any), renames the temp file over path and syncs the directory.
func replace(path string, data []byte, mode os.FileMode, beforeRename func() error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && beforeRename != nil {
		err = beforeRename()
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Link puts a hard link to src at path, replacing what is there: a link
// beside path, its mode set, synced, renamed over path, then a sync of the
// directory. It copies no data (the sync of the inode is cheap when src
// was synced already), so nothing may ever write src's bytes in place
// afterwards: every name of the inode would see it (every writer in this
// package renames a new file over instead). mode is the inode's, so every
// other name of src gets it too.
// It fails, changing nothing, where src and path are on different
// filesystems or the filesystem has no hard links: copy then.
func Link(src, path string, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".link")
	_ = os.Remove(tmp) // one a crash left behind
	if err := os.Link(src, tmp); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	defer os.Remove(tmp) // fails harmlessly once renamed
	err := os.Chmod(tmp, mode)
	if err == nil {
		err = syncFile(tmp) // the inode's mode, and its data if src was not synced
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir makes the renames in dir durable: without it, power loss can
// bring back a directory entry as it was before the rename.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// PrevSuffix names a file's previous generation: path+PrevSuffix holds the
// content that WriteGenerations last replaced.
const PrevSuffix = ".prev"

// CorruptSuffix is added to a generation that could not be decoded when it
// is moved aside (MoveAside), so that nothing is lost for a post-mortem.
const CorruptSuffix = ".corrupt"

// ErrCorrupt is wrapped when no generation of a file could be decoded.
var ErrCorrupt = errors.New("corrupt")

// WriteGenerations replaces path with data as WriteFile does, and keeps
// the content it replaces as path.prev: a file that is later found empty
// or torn (a disk that lied about a sync, an operator's editor, a bug) can
// be read from the generation before it (ReadGenerations). At every
// instant path holds the old or the new content, and path.prev the old or
// the one before it.
func WriteGenerations(path string, data []byte, mode os.FileMode) error {
	return replace(path, data, mode, func() error { return keepPrevious(path) })
}

// keepPrevious makes path's content its previous generation, leaving path
// in place: a hard link renamed over path.prev, so that no instant lacks
// either file.
func keepPrevious(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	tmp := fmt.Sprintf("%s.link-%d", path+PrevSuffix, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Link(path, tmp); err != nil {
		// A filesystem without hard links: copy it.
		b, rerr := os.ReadFile(path)
		if rerr != nil {
			return rerr
		}
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, path+PrevSuffix); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Generation is which generation of a file ReadGenerations used.
type Generation int

const (
	// None: neither the file nor its previous generation exists.
	None Generation = iota
	// Current: the file itself.
	Current
	// Previous: path.prev, the current one being missing or undecodable.
	Previous
)

// Read is what ReadGenerations found.
type Read struct {
	Gen Generation
	// Refused says why the current generation was not used, when Gen is
	// Previous and it exists.
	Refused error
}

// ReadGenerations reads path and passes its content to decode; when path
// is missing or decode refuses it, it tries path.prev the same way (decode
// must start afresh on each call). A missing file with no previous
// generation is Gen None and no error. When a generation exists but none
// decodes, the error wraps ErrCorrupt and says why each was refused; the
// files are left as they are (see MoveAside). Errors reading a file other
// than its absence are returned as they are: the disk, not the content, is
// the problem.
func ReadGenerations(path string, decode func([]byte) error) (Read, error) {
	cur, curErr := readDecoded(path, decode)
	if curErr == nil {
		return Read{Gen: Current}, nil
	}
	if !errors.Is(curErr, fs.ErrNotExist) && !isUndecodable(curErr) {
		return Read{}, curErr
	}
	_, prevErr := readDecoded(path+PrevSuffix, decode)
	switch {
	case prevErr == nil:
		r := Read{Gen: Previous}
		if cur {
			r.Refused = curErr
		}
		return r, nil
	case !cur && errors.Is(prevErr, fs.ErrNotExist):
		return Read{}, nil
	case !errors.Is(prevErr, fs.ErrNotExist) && !isUndecodable(prevErr):
		return Read{}, prevErr
	}
	if errors.Is(prevErr, fs.ErrNotExist) {
		return Read{}, fmt.Errorf("%w: %w; it has no previous generation (%s)", ErrCorrupt, curErr, path+PrevSuffix)
	}
	if !cur {
		return Read{}, fmt.Errorf("%w: %s is missing and its previous generation is not usable: %w", ErrCorrupt, path, prevErr)
	}
	return Read{}, fmt.Errorf("%w: %w, and so is its previous generation: %w", ErrCorrupt, curErr, prevErr)
}

// undecodable is a file that was read but did not decode.
type undecodable struct {
	path string
	err  error
}

func (u *undecodable) Error() string { return fmt.Sprintf("%s is not usable: %v", u.path, u.err) }
func (u *undecodable) Unwrap() error { return u.err }

func isUndecodable(err error) bool {
	var u *undecodable
	return errors.As(err, &u)
}

// readDecoded reads and decodes one file; exists reports whether it was
// there to read.
func readDecoded(path string, decode func([]byte) error) (exists bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist), err
	}
	if len(b) == 0 {
		return true, &undecodable{path, errors.New("the file is empty")}
	}
	if err := decode(b); err != nil {
		return true, &undecodable{path, err}
	}
	return true, nil
}

// MoveAside renames path and its previous generation, where they exist,
// to NAME.corrupt, so that the next write starts a fresh file and the
// damaged ones stay for a post-mortem. It returns the names it moved to.
func MoveAside(path string) ([]string, error) {
	var moved []string
	for _, p := range []string{path, path + PrevSuffix} {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.Rename(p, p+CorruptSuffix); err != nil {
			return moved, fmt.Errorf("move %s aside: %w", p, err)
		}
		moved = append(moved, p+CorruptSuffix)
	}
	if len(moved) > 0 {
		if err := SyncDir(filepath.Dir(path)); err != nil {
			return moved, err
		}
	}
	return moved, nil
}
