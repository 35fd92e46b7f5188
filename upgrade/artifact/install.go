package artifact

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Install atomically replaces targetPath with a copy of the file at newPath,
// keeping the previous binary at keepPath (for example targetPath+".old") for
// Restore. At every instant targetPath is either the old or the new complete
// binary, and keepPath holds the old one before targetPath changes.
//
// The new binary is copied to a temp file beside targetPath (mode of the old
// binary, 0755 if there is none), synced, and renamed over targetPath; the old
// one is kept by hard-linking it at keepPath first (copying where links are not
// supported). keepPath must be on targetPath's filesystem, most simply in its
// directory. selfupdate.Apply is not used here because it renames the old
// binary away before renaming the new one in, leaving a moment with no binary.
//
// Install is idempotent: if targetPath already holds newPath's bytes it
// changes nothing, so that re-running it after a crash does not overwrite the
// kept old binary with the new one. When targetPath does not exist, a stale
// keepPath is removed, so that a later Restore cannot bring back an unrelated
// binary.
func Install(newPath, targetPath, keepPath string) (err error) {
	if filepath.Clean(keepPath) == filepath.Clean(targetPath) {
		return fmt.Errorf("install %s: the path to keep the old binary at is the target itself", targetPath)
	}
	dir := filepath.Dir(targetPath)
	mode := fs.FileMode(0o755)
	oldInfo, err := os.Stat(targetPath)
	switch {
	case err == nil:
		if !oldInfo.Mode().IsRegular() {
			return fmt.Errorf("install %s: it is not a regular file", targetPath)
		}
		// Keep the old binary's mode, but never install a binary its owner cannot run.
		mode = oldInfo.Mode().Perm() | 0o100
		same, err := sameContent(newPath, targetPath)
		if err != nil {
			return fmt.Errorf("install %s: %w", targetPath, err)
		}
		if same {
			return nil
		}
	case errors.Is(err, fs.ErrNotExist):
		oldInfo = nil
	default:
		return fmt.Errorf("install %s: %w", targetPath, err)
	}

	tmp, err := copyToTemp(newPath, dir, "."+filepath.Base(targetPath)+".new-*", mode)
	if err != nil {
		return fmt.Errorf("install %s: stage new binary: %w", targetPath, err)
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()

	if oldInfo != nil {
		if err = keep(targetPath, keepPath); err != nil {
			return fmt.Errorf("install %s: keep the old binary at %s: %w", targetPath, keepPath, err)
		}
	} else if err = os.Remove(keepPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("install %s: remove stale %s: %w", targetPath, keepPath, err)
	}
	if err = os.Rename(tmp, targetPath); err != nil {
		return fmt.Errorf("install %s: %w", targetPath, err)
	}
	if err = syncDir(dir); err != nil {
		return fmt.Errorf("install %s: %w", targetPath, err)
	}
	return nil
}

// keep makes keepPath a durable copy of targetPath's current bytes, replacing
// whatever keepPath held, without touching targetPath.
func keep(targetPath, keepPath string) error {
	keepDir := filepath.Dir(keepPath)
	if err := os.Remove(keepPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Link(targetPath, keepPath); err != nil {
		// Some filesystems have no hard links; a copy keeps the same bytes.
		fi, serr := os.Stat(targetPath)
		if serr != nil {
			return serr
		}
		tmp, cerr := copyToTemp(targetPath, keepDir, "."+filepath.Base(keepPath)+".tmp-*", fi.Mode().Perm())
		if cerr != nil {
			return fmt.Errorf("link failed (%v), and so did copying: %w", err, cerr)
		}
		if err := os.Rename(tmp, keepPath); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	// The kept binary must be durable before the target changes.
	return syncDir(keepDir)
}

// Restore puts the binary kept at keepPath back at targetPath, atomically
// (rollback). If keepPath does not exist and targetPath does, there is
// nothing to roll back to and it returns nil, so it may be called again
// after a crash.
func Restore(targetPath, keepPath string) error {
	if _, err := os.Lstat(keepPath); errors.Is(err, fs.ErrNotExist) {
		if _, terr := os.Lstat(targetPath); terr == nil {
			return nil
		}
		return fmt.Errorf("restore %s: neither it nor the kept binary %s exists: reinstall peerd from its package", targetPath, keepPath)
	}
	if err := os.Rename(keepPath, targetPath); err != nil {
		return fmt.Errorf("restore %s from %s: %w", targetPath, keepPath, err)
	}
	if err := syncDir(filepath.Dir(targetPath)); err != nil {
		return fmt.Errorf("restore %s: %w", targetPath, err)
	}
	if kd := filepath.Dir(keepPath); kd != filepath.Dir(targetPath) {
		if err := syncDir(kd); err != nil {
			return fmt.Errorf("restore %s: %w", targetPath, err)
		}
	}
	return nil
}

// copyToTemp copies src into a new synced temp file in dir with the given
// mode and returns its path.
func copyToTemp(src, dir, pattern string, mode fs.FileMode) (path string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.Remove(out.Name())
		}
	}()
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(mode)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return out.Name(), nil
}

// sameContent reports whether two files hold the same bytes.
func sameContent(a, b string) (bool, error) {
	ai, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	bi, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	if ai.Size() != bi.Size() {
		return false, nil
	}
	if os.SameFile(ai, bi) {
		return true, nil
	}
	ah, _, err := DigestFile(a)
	if err != nil {
		return false, err
	}
	bh, _, err := DigestFile(b)
	if err != nil {
		return false, err
	}
	return ah == bh, nil
}
